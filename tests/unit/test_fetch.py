"""Fetching an image by reference against real local servers: the outbound policy on every hop, the limits,
and which failures are retried."""

from __future__ import annotations

import hashlib
import ipaddress
import time
from pathlib import Path

import pytest

from eta import outbound
from eta.fetch import FetchFailed, FetchPolicy, check_image_url, fetch_image_bytes, fetch_many
from eta.outbound import OutboundRefused
from tests.image_server import image_server

LOCAL = (ipaddress.ip_network("127.0.0.1/32"),)


@pytest.fixture
def image(samples_dir: Path) -> bytes:
    return (samples_dir / "waterview.jpg").read_bytes()


@pytest.fixture
def server(image):
    with image_server("127.0.0.1", image) as s:
        yield s


@pytest.fixture
def victim(image):
    """A server on another loopback address, which nothing may reach."""
    with image_server("127.0.0.2", image) as s:
        yield s


def _policy(**kw) -> FetchPolicy:
    return FetchPolicy(**{"allowed": LOCAL, "timeout_s": 2.0, "attempts": 2, "backoff_s": 0.05, **kw})


def test_an_allowed_server_serves_the_bytes_whatever_type_it_declares(server, image):
    data = fetch_image_bytes(server.url("/image.jpg"), _policy())
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(image).hexdigest()


def test_a_redirect_to_loopback_is_not_followed(server, victim):
    server.redirect_to = victim.url("/image.jpg")
    with pytest.raises(FetchFailed, match="127.0.0.2.*loopback") as caught:
        fetch_image_bytes(server.url("/redirect"), _policy())
    assert not caught.value.transient and victim.hits == []
    # An allowed redirect target is followed (and checked like the first URL).
    server.redirect_to = server.url("/image.jpg")
    assert fetch_image_bytes(server.url("/redirect"), _policy())
    assert server.hits[-2:] == ["/redirect", "/image.jpg"]


def test_redirects_are_bounded(server):
    server.redirect_to = server.url("/redirect")
    with pytest.raises(FetchFailed, match="more than 2 redirects"):
        fetch_image_bytes(server.url("/redirect"), _policy(max_redirects=2))
    assert server.hits == ["/redirect"] * 3
    with pytest.raises(FetchFailed, match="more than 0 redirects"):
        fetch_image_bytes(server.url("/redirect"), _policy(max_redirects=0))


def test_a_stalling_server_fails_within_the_time_limit_of_each_attempt(server):
    start = time.monotonic()
    with pytest.raises(FetchFailed, match="time limit.*after 2 attempts"):
        fetch_image_bytes(server.url("/stall"), _policy(timeout_s=0.5))
    assert time.monotonic() - start < 0.5 * 2 + 0.2 + 1.0
    assert server.hits == ["/stall", "/stall"]


def test_too_many_bytes_fail_at_once_without_reading_them_all(server):
    start = time.monotonic()
    with pytest.raises(FetchFailed, match="exceeds 100000 bytes") as caught:
        fetch_image_bytes(server.url("/endless"), _policy(max_bytes=100_000))
    assert not caught.value.transient and server.hits == ["/endless"]  # not retried
    assert time.monotonic() - start < 2
    with pytest.raises(FetchFailed, match="announced"):
        fetch_image_bytes(server.url("/image.jpg"), _policy(max_bytes=1000))


def test_transient_failures_are_retried_with_backoff_and_final_ones_are_not(server, image):
    server.failures_left["/flaky-a"] = 2
    slept: list[float] = []
    assert fetch_image_bytes(server.url("/flaky-a"), _policy(attempts=3), sleep=slept.append) == image
    assert len(slept) == 2 and slept[1] > slept[0]  # exponential
    server.failures_left["/flaky-b"] = 5
    with pytest.raises(FetchFailed, match="HTTP 503 .after 3 attempts"):
        fetch_image_bytes(server.url("/flaky-b"), _policy(attempts=3), sleep=lambda s: None)
    with pytest.raises(FetchFailed, match="HTTP 404") as caught:
        fetch_image_bytes(server.url("/missing"), _policy(attempts=3))
    assert not caught.value.transient and server.hits.count("/missing") == 1


def test_many_urls_at_once_each_get_their_own_outcome(server, image):
    out = fetch_many({"a": server.url("/image.jpg"), "b": server.url("/missing"), "c": server.url("/image.jpg")},
                     _policy(), concurrency=4)
    assert out["a"] == image and out["c"] == image and isinstance(out["b"], FetchFailed)
    assert server.hits.count("/image.jpg") == 1  # one fetch per distinct URL


@pytest.mark.parametrize(("url", "code"), [
    ("http://169.254.169.254/latest/meta-data/", "image_url_forbidden"),
    ("http://127.0.0.1:9/x.jpg", "image_url_forbidden"),
    ("https://[::1]/x.jpg", "image_url_forbidden"),
    ("http://10.1.2.3/x.jpg", "image_url_forbidden"),
    ("http://public.test/x.jpg", "image_url_forbidden"),  # public, but plain http
    ("ftp://public.test/x.jpg", "image_url_invalid"),
    ("https://user:pw@public.test/x.jpg", "image_url_invalid"),
    ("https://nowhere.test/x.jpg", "image_url_unresolvable"),
])
def test_urls_are_checked_before_any_connection(url, code):
    previous = outbound.set_resolver(lambda host, port: {"public.test": ["93.184.216.34"]}.get(host) or (
        [host.strip("[]")] if host[0].isdigit() or ":" in host else []))
    try:
        with pytest.raises(OutboundRefused) as caught:
            check_image_url(url)
        assert caught.value.code == code and "image_url" in str(caught.value)
        assert check_image_url("https://public.test/x.jpg").address == "93.184.216.34"
    finally:
        outbound.set_resolver(previous)


def test_plain_http_is_accepted_only_on_allowed_networks(server):
    assert check_image_url(server.url("/image.jpg"), allowed=LOCAL).address == "127.0.0.1"
    with pytest.raises(OutboundRefused, match="loopback"):
        check_image_url(server.url("/image.jpg"))


def test_a_policy_from_settings_reads_the_shared_allow_list(monkeypatch):
    from eta.settings import Settings

    monkeypatch.setenv("ETA_CALLBACK_ALLOWED_NETWORKS", "10.0.0.0/8")
    assert FetchPolicy.from_settings(Settings()).allowed == (ipaddress.ip_network("10.0.0.0/8"),)
    monkeypatch.setenv("ETA_OUTBOUND_ALLOWED_NETWORKS", "192.168.0.0/16")  # the new name wins
    policy = FetchPolicy.from_settings(Settings())
    assert policy.allowed == (ipaddress.ip_network("192.168.0.0/16"),)


