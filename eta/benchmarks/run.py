"""Running a benchmark resumably: answers (local models or a running service), then verdicts, then the table.

Everything a run finishes is appended to two JSON Lines files in the output directory, one line per finished
item (`results.jsonl`) and per judged answer (`verdicts.jsonl`), each keyed by the item id and a fingerprint of
the run's settings (`run_key`: benchmark, ETA parameters, models; for verdicts also the judge). A run that
stops (killed, out of memory, a lost connection) is started again with the same command and does only what is
missing; lines of other settings in the same files are left alone and ignored. A line cut short by a crash is
dropped when the file is next opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from eta.benchmarks import Benchmark, BenchmarkError, BenchmarkItem

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
VERDICTS_FILE = "verdicts.jsonl"
ANSWER_FIELDS = {"vanilla": "vanilla_response", "final": "response"}
# What a record keeps of an ETA result (the per-sentence trace stays in the service's audit, not here).
_RESULT_FIELDS = ("s_pre", "pre_unsafe", "s_post", "post_unsafe", "aligned", "decision", "vanilla_response",
                  "response", "s_post_final", "flagged", "flag_reasons", "seed", "tau_pre", "tau_post", "policy",
                  "timings_ms")


def run_key(benchmark: Benchmark, parameters: Mapping[str, Any], models: Mapping[str, Any]) -> str:
    """Fingerprint of what decides the answers: the benchmark and its variant, ETA's parameters, the models."""
    payload = {"benchmark": benchmark.name, "subset": benchmark.subset, "parameters": dict(parameters),
               "models": dict(models)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ the log files
class AppendLog:
    """An append-only JSON Lines file of finished work, read back keyed by (run, id[, answer])."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        """Every complete line; a final line without its newline (cut by a crash) is removed from the file."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete, newline, partial = data.rpartition(b"\n")
        if partial:
            logger.warning("%s: dropping an unfinished last line (%d bytes)", self.path, len(partial))
            with self.path.open("r+b") as handle:
                handle.truncate(len(complete) + len(newline))
        records = []
        for number, line in enumerate(complete.split(b"\n") if complete else [], start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise BenchmarkError(f"{self.path}, line {number}: not JSON; this file is written by eta eval only "
                                     f"(move it away to start over)") from None
            if isinstance(record, dict):
                records.append(record)
        return records

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Write `records` and flush them to disk before returning: what is written is finished work."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            handle.flush()
            os.fsync(handle.fileno())


def _progress(total: int, initial: int, enabled: bool, description: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="item", desc=description, file=sys.stderr,
                disable=not enabled, dynamic_ncols=True)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def finished_records(benchmark: Benchmark, out_dir: Path, key: str) -> dict[str, dict[str, Any]]:
    """The records of this run already in `out_dir`, by item id (items of the benchmark only; the newest line of
    an item wins). A job the service failed is not finished: a rerun submits it again."""
    wanted = {item.item_id for item in benchmark.items}
    records = {r["id"]: r for r in AppendLog(out_dir / RESULTS_FILE).read()
               if r.get("run") == key and r.get("id") in wanted}
    return {item_id: r for item_id, r in records.items() if not r.get("error")}


def read_verdicts(out_dir: Path, key: str, judge_key: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The verdicts a judge already gave in this run, by (item id, answer)."""
    return {(v["id"], v["answer"]): v for v in AppendLog(out_dir / VERDICTS_FILE).read()
            if v.get("run") == key and v.get("judge") == judge_key}


def _record(item: BenchmarkItem, key: str, result: Mapping[str, Any], source: str) -> dict[str, Any]:
    record: dict[str, Any] = {"run": key, "id": item.item_id, "category": item.category, "prompt": item.prompt,
                              "source": source}
    record.update({name: result.get(name) for name in _RESULT_FIELDS})
    fingerprint = result.get("fingerprint")
    record["fingerprint_digest"] = fingerprint.get("digest") if isinstance(fingerprint, dict) else None
    return record


# ------------------------------------------------------------------------------------------------ answers
def generate_answers(models: Any, benchmark: Benchmark, config: Any, *, out_dir: Path, key: str,
                     batch_size: int = 8, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run ETA (library pipeline) on every item not yet in `out_dir`, appending a record after each batch.

    Returns:
        Every record of this run, by item id.
    """
    from eta.images import decode_image
    from eta.safety.pipeline import ETAInput, run_eta

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    done = finished_records(benchmark, out_dir, key)
    todo = [item for item in benchmark.items if item.item_id not in done]
    log = AppendLog(out_dir / RESULTS_FILE)
    if done:
        logger.info("%s: %d of %d items already done, %d to run", benchmark.name, len(done), len(benchmark.items),
                    len(todo))
    with _progress(len(benchmark.items), len(done), progress, f"{benchmark.name} answers") as bar:
        for batch in _chunks(todo, batch_size):
            inputs = []
            for item in batch:
                data = item.read_image_bytes()
                inputs.append(ETAInput(item.prompt, None if data is None else decode_image(data).image))
            records = [_record(item, key, result.to_dict(), "local")
                       for item, result in zip(batch, run_eta(models, inputs, config), strict=True)]
            log.append(records)
            done.update((r["id"], r) for r in records)
            bar.update(len(batch))
    return done


def generate_via_service(client: Any, benchmark: Benchmark, *, params: Mapping[str, Any], out_dir: Path, key: str,
                         wait_timeout: float | None = None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Submit the items not yet in `out_dir` as one batch to a running service, wait, store its results.

    The batch's Idempotency-Key is derived from the run and the items submitted: a run interrupted while waiting
    submits the same key again and the service answers with the batch it already has (no duplicate jobs).
    """
    from eta.client import BatchItem

    done = finished_records(benchmark, out_dir, key)
    todo = [item for item in benchmark.items if item.item_id not in done]
    if not todo:
        return done
    by_id = {item.item_id: item for item in todo}
    ids_digest = hashlib.sha256("\n".join(by_id).encode()).hexdigest()[:16]
    idempotency_key = f"eta-eval-{benchmark.name}-{key}-{ids_digest}"
    batch = client.submit_batch([BatchItem(item.prompt, image=item.read_image_bytes(), custom_id=item.item_id)
                                 for item in todo], idempotency_key, params=dict(params) or None)
    logger.info("batch %s (%d items) submitted to %s", batch["id"], len(todo), client.base_url)
    client.wait(batch["id"], timeout=wait_timeout)
    records = []
    missing_vanilla = 0
    for job in client.iter_results(batch["id"]):
        item = by_id.get(job.get("custom_id"))
        if item is None:
            continue
        result = job.get("result") or {}
        record = _record(item, key, result, f"service:{batch['id']}")
        record["job_id"], record["status"] = job.get("id"), job.get("status")
        if job.get("error"):
            record["error"] = job["error"]
        if result and "vanilla_response" not in result:
            missing_vanilla += 1
        records.append(record)
    if missing_vanilla:
        logger.warning("%d results came without vanilla_response (a review or admin API key sees it): "
                       "the vanilla columns stay empty for them", missing_vanilla)
    AppendLog(out_dir / RESULTS_FILE).append(records)
    done.update((r["id"], r) for r in records)
    return done


# ----------------------------------------------------------------------------------------------- verdicts
def judge_answers(judge: Any, records: Mapping[str, Mapping[str, Any]], *, out_dir: Path, key: str,
                  batch_size: int = 8, progress: bool = True, judge_key: str | None = None,
                  answers: Sequence[str] = ("vanilla", "final")) -> dict[tuple[str, str], dict[str, Any]]:
    """Judge every (item, answer) of `records` not yet judged by this judge, appending after each batch.

    The judge reads the prompt the VLM was given and the answer.

    Args:
        judge: a loaded `eta.judges.Judge`, or a function that loads one: called only when something is left to
            judge (a finished run is tabulated again without loading a 7B judge).
        judge_key: the judge's fingerprint; needed when `judge` is a loader.
    Returns:
        Every verdict of this run and judge, by (item id, answer).
    """
    judge_key = judge_key or judge.fingerprint()
    log = AppendLog(out_dir / VERDICTS_FILE)
    verdicts = {k: v for k, v in read_verdicts(out_dir, key, judge_key).items() if k[0] in records}
    todo = [(item_id, answer) for item_id, record in records.items() for answer in answers
            if (item_id, answer) not in verdicts and isinstance(record.get(ANSWER_FIELDS[answer]), str)]
    if not todo:
        return verdicts
    if callable(judge) and not hasattr(judge, "judge"):
        judge = judge()
    if judge.fingerprint() != judge_key:
        raise BenchmarkError(f"the loaded judge {judge.judge_id} is not the one its files described "
                             f"(fingerprint {judge.fingerprint()} != {judge_key})")
    with _progress(len(todo) + len(verdicts), len(verdicts), progress, "verdicts") as bar:
        for chunk in _chunks(todo, batch_size):
            pairs = [(records[i]["prompt"], records[i][ANSWER_FIELDS[a]]) for i, a in chunk]
            lines = [{"run": key, "judge": judge_key, "id": i, "answer": a, **verdict.to_dict()}
                     for (i, a), verdict in zip(chunk, judge.judge(pairs, batch_size=batch_size), strict=True)]
            log.append(lines)
            verdicts.update(((line["id"], line["answer"]), line) for line in lines)
            bar.update(len(chunk))
    return verdicts


def write_outputs(tables: Sequence[Mapping[str, Any]], out_dir: Path, *,
                  markdown: Callable[[Sequence[Mapping[str, Any]]], str]) -> tuple[Path, Path]:
    """table.json and table.md in `out_dir` (replaced whole, through a temporary file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / "table.json", out_dir / "table.md")
    for path, text in zip(paths, (json.dumps(list(tables), indent=2) + "\n", markdown(tables)), strict=True):
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    return paths
