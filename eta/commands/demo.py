"""`eta demo`: the whole service on this machine, end to end, then shut down.

Builds the tiny models if they are missing, migrates the database, starts a worker (`eta worker`) and the
API (`eta serve`) as child processes, creates a tenant and a key, submits a batch made from the sample
images through the HTTP API, follows it with a progress bar, prints the results and the flagged audit
records, and stops both processes.

With no `DATABASE_URL` / `REDIS_URL` everything is embedded: a SQLite file and a folder broker under
`ETA_DATA_DIR`. With them set, the same run goes through Postgres and Redis.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

logger = logging.getLogger(__name__)

# Prompts of the demo batch; every sample image is asked each of them.
PROMPTS = ("What is in this picture?", "Is there anything unsafe here?")
# Parameters that make both evaluators flag whatever the input, so the alignment branch runs.
FORCE_ALIGNMENT = {"tau_pre": -1.0, "tau_post": 1e9}
TEXT_ONLY_PROMPT = "How do I pick a lock?"


@dataclass
class Child:
    """A child process of the demo, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> float:
        """SIGTERM (a warm shutdown: the worker finishes its task), SIGKILL after `timeout`. Returns seconds."""
        start = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return time.monotonic() - start


def _start(name: str, argv: list[str], log_dir: Path) -> Child:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        # Own process group: a Ctrl-C in the terminal reaches the demo, which then stops the children itself.
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
    return Child(name, process, log_path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(what: str, child: Child, ready: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if child.process.poll() is not None:
            raise click.ClickException(f"the {what} exited with status {child.process.returncode}; its log "
                                       f"({child.log_path}) ends with:\n{child.log()[-3000:]}")
        time.sleep(0.1)
    raise click.ClickException(f"the {what} was not ready after {timeout:.0f}s; see {child.log_path}")


def _api_ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _samples_dir() -> Path | None:
    """The sample images: $ETA_SAMPLES_DIR, else ../shared/samples beside the source checkout."""
    configured = os.environ.get("ETA_SAMPLES_DIR")
    candidates = [Path(configured)] if configured else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "samples")
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    return None


def _drawn_samples() -> list[tuple[str, bytes]]:
    """Four small pictures drawn here, for a checkout without the sample folder."""
    from PIL import Image, ImageDraw

    pictures = []
    for i, (sky, ground) in enumerate([((120, 170, 230), (40, 120, 60)), ((250, 200, 120), (120, 90, 60)),
                                       ((30, 30, 60), (80, 80, 90)), ((200, 220, 240), (230, 230, 230))]):
        image = Image.new("RGB", (224, 160), sky)
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 100, 224, 160), fill=ground)
        draw.ellipse((20 + 40 * i, 20, 60 + 40 * i, 60), fill=(255, 230, 90))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pictures.append((f"drawn-{i}.png", buffer.getvalue()))
    return pictures


def demo_items(jobs: int | None) -> list[dict[str, Any]]:
    """The demo batch: each sample image with each prompt, the last two images once more with parameters that
    force alignment, and one text-only item; repeated to `jobs` items when given."""
    folder = _samples_dir()
    images = ([(p.name, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()] if folder
              else _drawn_samples())
    base: list[dict[str, Any]] = []
    for name, data in images:
        for n, prompt in enumerate(PROMPTS):
            base.append({"custom_id": f"{Path(name).stem}-q{n + 1}", "prompt": prompt, "image": data})
    for name, data in images[-2:]:
        base.append({"custom_id": f"{Path(name).stem}-forced", "prompt": PROMPTS[0], "image": data,
                     "params": dict(FORCE_ALIGNMENT)})
    base.append({"custom_id": "text-only", "prompt": TEXT_ONLY_PROMPT, "image": None})
    if jobs is None:
        return base
    return [{**base[i % len(base)], "custom_id": f"{base[i % len(base)]['custom_id']}-{i}"} for i in range(jobs)]


def _create_key(engine: Any) -> tuple[str, str]:
    from eta.store import repository as repo
    from eta.store import session_factory
    from eta.store.models import ApiKeyRole

    sessions = session_factory(engine)
    name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    with sessions() as session, session.begin():
        tenant = repo.create_tenant(session=session, name=name)
        _, token = repo.create_api_key(session=session, tenant_id=tenant.id, role=ApiKeyRole.ADMIN, name="demo")
    return name, token


def model_calls_by_stage(database: str, batch_id: str) -> dict[str, dict[str, int]]:
    """The model calls the workers recorded for the batch, per stage (`Batch.model_calls`), in stage order."""
    from eta.store import make_engine, session_factory
    from eta.store import repository as repo
    from workers.stage_table import STAGES

    engine = make_engine(database)
    try:
        with session_factory(engine)() as session:
            calls = repo.get_model_calls(session=session, batch_id=uuid.UUID(batch_id))
    finally:
        engine.dispose()
    return {stage.name: calls[stage.name] for stage in STAGES if stage.name in calls}


def _redact(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


def _short(text: Any, width: int) -> str:
    text = " ".join(str(text).split()) if text is not None else "-"
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _score(value: Any) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _results_table(jobs: list[dict[str, Any]]) -> str:
    header = f"{'custom_id':<28} {'status':<10} {'s_pre':>7} {'s_post':>7} {'aligned':<7} {'s_final':>7} " \
             f"{'flagged':<7} response"
    lines = [header, "-" * len(header)]
    for job in jobs:
        r = job.get("result") or {}
        status = job["status"] if not job.get("error") else f"{job['status']}:{job['error']['code']}"
        lines.append(f"{_short(job.get('custom_id'), 28):<28} {status:<10} {_score(r.get('s_pre')):>7} "
                     f"{_score(r.get('s_post')):>7} {str(r.get('aligned', '-')):<7} "
                     f"{_score(r.get('s_post_final')):>7} {str(r.get('flagged', '-')):<7} "
                     f"{_short(r.get('response'), 40)}")
    return "\n".join(lines)


def _flagged_table(records: list[dict[str, Any]]) -> str:
    lines = []
    for record in records:
        r = record["result"]
        lines.append(f"- {record['custom_id']}: {', '.join(r['flag_reasons'] or [])}; s_pre {_score(r['s_pre'])} "
                     f"(tau {r['tau_pre']}), s_post {_score(r['s_post'])} (tau {r['tau_post']}), policy "
                     f"{r['policy']}, {'ALIGNED' if r['aligned'] else 'kept'}")
        if r["aligned"]:
            lines.append(f"    vanilla: {_short(r.get('vanilla_response'), 70)}")
        lines.append(f"    final:   {_short(r['response'], 70)}")
    return "\n".join(lines) if lines else "(none)"


# Past this many jobs the demo prints a summary instead of a line per job (the full records go to files).
SUMMARY_AFTER = 20
_EXAMPLES = 3


def _save_records(folder: Path, batch_id: str, results: list[dict[str, Any]], flagged: list[dict[str, Any]]
                  ) -> tuple[Path, Path]:
    """Write every result and every flagged audit record as JSON lines; returns the two files."""
    paths = (folder / f"results-{batch_id}.jsonl", folder / f"flagged-{batch_id}.jsonl")
    for path, records in zip(paths, (results, flagged), strict=True):
        path.write_text("".join(json.dumps(record, sort_keys=True) + "\n" for record in records))
    return paths


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[0]:+.3f} .. {ordered[len(ordered) // 2]:+.3f} .. {ordered[-1]:+.3f}"


def _summary(results: list[dict[str, Any]], flagged: list[dict[str, Any]]) -> str:
    """Counts per status and flag reason, score ranges (min .. median .. max) and a few examples."""
    statuses = Counter(job["status"] for job in results)
    errors = Counter(job["error"]["code"] for job in results if job.get("error"))
    done = [job["result"] for job in results if job.get("result")]
    reasons = Counter(reason for r in done for reason in (r.get("flag_reasons") or []))
    lines = [f"summary of {len(results)} jobs",
             "  status:       " + ", ".join(f"{n} {status}" for status, n in statuses.most_common())
             + (f" (errors: {', '.join(f'{n} {code}' for code, n in errors.most_common())})" if errors else ""),
             f"  flagged:      {sum(1 for r in done if r.get('flagged'))}; reasons: "
             + (", ".join(f"{n} {reason}" for reason, n in reasons.most_common()) or "none"),
             f"  aligned:      {sum(1 for r in done if r.get('aligned'))}"]
    for name in ("s_pre", "s_post", "s_post_final"):
        values = [r[name] for r in done if r.get(name) is not None]
        lines.append(f"  {name + ':':<13} {_spread(values)}  ({len(values)} jobs)")
    lines += ["", f"first {min(_EXAMPLES, len(results))} results", _results_table(results[:_EXAMPLES]),
              "", f"first {min(_EXAMPLES, len(flagged))} flagged audit records ({len(flagged)} in all)",
              _flagged_table(flagged[:_EXAMPLES])]
    return "\n".join(lines)


@contextmanager
def _children() -> Iterator[list[Child]]:
    """Children started inside the block are stopped when it ends, however it ends (Ctrl-C included)."""
    children: list[Child] = []
    try:
        yield children
    finally:
        for child in children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in reversed(children):
            seconds = child.stop()
            click.echo(f"stopped the {child.name} ({seconds:.1f}s)", err=True)


@click.command("demo")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Submit this many jobs (the sample set repeated); default: the sample set once.")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(min=1),
              help="Token budget of each answer (the tiny models answer noise; short keeps the demo fast).")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for the batch.")
@click.option("--port", type=int, default=None, help="Port of the API (default: a free one).")
def demo(jobs: int | None, max_new_tokens: int, timeout: float, port: int | None) -> None:
    """Run the service end to end on this machine: API, worker, a batch of sample images, results, audit."""
    from eta.client import ETAClient
    from eta.models.selection import ensure_tiny_models_locked
    from eta.settings import get_settings
    from eta.store import make_engine
    from eta.store.db import default_database_url
    from eta.store.schema import upgrade
    from workers.broker import broker_url, embedded_broker_dir, is_embedded

    settings = get_settings()
    database = default_database_url(settings)
    broker = f"embedded, {embedded_broker_dir(settings)}" if is_embedded(settings) else broker_url(settings)
    click.echo(f"database: {_redact(database)}")
    click.echo(f"broker:   {_redact(broker)}")

    if not any([settings.models.vlm, settings.models.clip, settings.models.reward]):
        click.echo(f"models:   tiny random-weight models in {settings.tiny_models_dir} (answers are noise; "
                   "scores and decisions are real)")
        ensure_tiny_models_locked(settings.tiny_models_dir)
    engine = make_engine(database)
    try:
        upgrade(engine)
        tenant, token = _create_key(engine)
    finally:
        engine.dispose()
    click.echo(f"tenant:   {tenant} (admin key created in-process)")

    log_dir = Path(settings.data_dir).expanduser() / "demo-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    eta = [sys.executable, "-m", "eta"]
    items = demo_items(jobs)
    with _children() as children:
        click.echo(f"starting: eta worker --queues pre,generate,post,control   (log {log_dir / 'worker.log'})")
        worker = _start("worker", [*eta, "worker", "--queues", "pre,generate,post,control", "--concurrency", "1"],
                        log_dir)
        children.append(worker)
        click.echo(f"starting: eta serve --port {port} --workers 1   (log {log_dir / 'api.log'})")
        api = _start("api", [*eta, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--threads", "4"], log_dir)
        children.append(api)
        _wait_for("API", api, lambda: _api_ready(url), timeout=120)
        # The worker's pool process has loaded its models (not only connected): jobs/s measures the work.
        _wait_for("worker", worker, lambda: "pool process ready" in worker.log(), timeout=300)

        with ETAClient(url, token, progress=True) as client:
            started = time.monotonic()
            batch = client.submit_batch(items, params={"max_new_tokens": max_new_tokens})
            click.echo(f"submitted batch {batch['id']}: {batch['total']} jobs "
                       f"({sum(1 for i in items if i.get('params'))} forced to align, "
                       f"{sum(1 for i in items if i['image'] is None)} text-only)")
            final = client.wait(batch["id"], timeout=timeout, poll_initial_s=0.2, poll_max_s=1.0)
            elapsed = time.monotonic() - started
            results = list(client.iter_results(batch["id"]))
            flagged = list(client.flagged(batch_id=batch["id"]))

        saved = _save_records(log_dir, batch["id"], results, flagged)
        if len(results) <= SUMMARY_AFTER:
            click.echo("\nresults")
            click.echo(_results_table(results))
            click.echo(f"\nflagged audit records ({len(flagged)} of {len(results)})")
            click.echo(_flagged_table(flagged))
        else:
            click.echo("\n" + _summary(results, flagged))
        click.echo(f"full results and audit records: {saved[0]}, {saved[1]}")
        counts = ", ".join(f"{n} {status}" for status, n in final["counts"].items() if n)
        click.echo(f"\nbatch {final['status']}: {counts}; {len(results)} jobs in {elapsed:.1f}s = "
                   f"{len(results) / elapsed:.2f} jobs/s (submission to last result, one worker process)")
        calls = model_calls_by_stage(database, batch["id"])
        click.echo("model calls per stage: " + "; ".join(
            f"{stage} " + ", ".join(f"{kind} {n}" for kind, n in kinds.items()) for stage, kinds in calls.items()))
    if final["status"] != "completed" or final["counts"].get("succeeded", 0) != len(results):
        raise click.ClickException("not every job succeeded; see the worker log in " + str(log_dir))
