"""Prometheus metrics of the API: requests by route and status, latency, jobs submitted.

Each app has its own registry. Under gunicorn with several workers set PROMETHEUS_MULTIPROC_DIR: every
process then writes its samples there and `/metrics` aggregates them.
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("eta_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("eta_http_request_duration_seconds", "Request latency by route",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.jobs_submitted = Counter("eta_jobs_submitted", "Jobs accepted, by how they were submitted",
                                      ["kind"], registry=self.registry)

    def install(self, app: Flask) -> None:
        @app.before_request
        def _start() -> None:
            g.metrics_start = time.perf_counter()

        @app.after_request
        def _record(response: Response) -> Response:
            start = g.pop("metrics_start", None)
            # Labels from closed sets only: a client's made-up methods or paths must not grow the series.
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            method = request.method if request.method in _METHODS else "other"
            status = str(response.status_code) if 100 <= response.status_code < 600 else "other"
            self.requests.labels(method, route, status).inc()
            if start is not None:
                self.latency.labels(method, route).observe(time.perf_counter() - start)
            return response

    def render(self) -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)
