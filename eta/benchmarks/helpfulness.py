"""Helpfulness of a benchmark run, judged over the OpenAI-compatible chat API (`eta.judges.chat_api`), resumably.

For every answered item: the paper's 1-10 score of the vanilla and of the final answer, and the win-tie
comparison of ETA's final answer against the vanilla one. Each judgement is appended to `helpfulness.jsonl` as
soon as it is made (one network call each), keyed by the run, the judge's fingerprint, the item and the kind
(`score_vanilla`, `score_final`, `compare`): a rerun asks only what is missing.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eta.benchmarks import Benchmark
from eta.benchmarks.run import AppendLog, _progress

logger = logging.getLogger(__name__)

HELPFULNESS_FILE = "helpfulness.jsonl"
KINDS = ("score_vanilla", "score_final", "compare")

# The ETA paper's abstract: 96.6 % win-tie in GPT-4's helpfulness comparison (SPA-VL's help split, LLaVA-1.5-7B).
PAPER_WIN_TIE = {"benchmark": "spa-vl-help", "model": "llava-1.5-7b", "win_tie": 96.6}


def read_judgements(out_dir: Path, key: str, judge_key: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(line["id"], line["kind"]): line for line in AppendLog(out_dir / HELPFULNESS_FILE).read()
            if line.get("run") == key and line.get("judge") == judge_key}


def judge_helpfulness(judge: Any, benchmark: Benchmark, records: Mapping[str, Mapping[str, Any]], *, out_dir: Path,
                      key: str, progress: bool = True) -> dict[tuple[str, str], dict[str, Any]]:
    """Every missing judgement of the answered items of `benchmark`; returns all of this run and judge."""
    judge_key = judge.fingerprint()
    log = AppendLog(out_dir / HELPFULNESS_FILE)
    done = read_judgements(out_dir, key, judge_key)
    todo = []
    for item in benchmark.items:
        record = records.get(item.item_id)
        if record is None or not isinstance(record.get("response"), str):
            continue
        has_vanilla = isinstance(record.get("vanilla_response"), str)
        for kind in KINDS:
            if (item.item_id, kind) not in done and (kind == "score_final" or has_vanilla):
                todo.append((item, kind))
    with _progress(len(todo) + len(done), len(done), progress, "helpfulness") as bar:
        for item, kind in todo:
            record = records[item.item_id]
            image = item.read_image_bytes()
            if kind == "compare":
                verdict = judge.compare(item.prompt, record["response"], record["vanilla_response"], image,
                                        item_id=item.item_id)
            else:
                answer = record["vanilla_response" if kind == "score_vanilla" else "response"]
                verdict = judge.score(item.prompt, answer, image)
            line = {"run": key, "judge": judge_key, "id": item.item_id, "kind": kind, **verdict.to_dict()}
            log.append([line])
            done[(item.item_id, kind)] = line
            bar.update(1)
    return done


def summarize_helpfulness(judgements: Mapping[tuple[str, str], Mapping[str, Any]], *,
                          judge: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Mean scores of the vanilla and final answers, and ETA's win/tie/lose against the vanilla answers."""
    summary: dict[str, Any] = {"judge": dict(judge) if judge else None}
    for kind in ("score_vanilla", "score_final"):
        lines = [line for (_, k), line in judgements.items() if k == kind]
        scores = [line["score"] for line in lines if line.get("score") is not None]
        summary[kind] = {"mean": statistics.fmean(scores) if scores else None, "scored": len(scores),
                         "malformed": len(lines) - len(scores)}
    comparisons = [line for (_, k), line in judgements.items() if k == "compare"]
    outcomes = [line.get("outcome") for line in comparisons]
    decided = [o for o in outcomes if o is not None]
    counts = {name: outcomes.count(name) for name in ("win", "tie", "lose")}
    summary["compare"] = {**counts, "malformed": len(outcomes) - len(decided),
                          "asked": sum(bool(line.get("asked")) for line in comparisons),
                          "win_tie_rate": 100.0 * (counts["win"] + counts["tie"]) / len(decided) if decided else None}
    summary["paper"] = PAPER_WIN_TIE
    return summary


def helpfulness_markdown(summary: Mapping[str, Any] | None) -> str:
    """A short Markdown section of the helpfulness summary ('' without one)."""
    if not summary:
        return ""

    def cell(value: float | None, spec: str = ".2f") -> str:
        return "" if value is None else format(value, spec)

    compare, judge = summary["compare"], summary.get("judge") or {}
    return "\n".join([
        "", f"### Helpfulness (judge {judge.get('model')} at {judge.get('url')})", "",
        "| score vanilla (1-10) | score ETA (1-10) | ETA win | tie | lose | win-tie % | paper win-tie % | malformed |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {cell(summary['score_vanilla']['mean'])} | {cell(summary['score_final']['mean'])} | {compare['win']} | "
        f"{compare['tie']} | {compare['lose']} | {cell(compare['win_tie_rate'], '.1f')} | "
        f"{summary['paper']['win_tie']} ({summary['paper']['benchmark']}) | "
        f"{summary['score_vanilla']['malformed'] + summary['score_final']['malformed'] + compare['malformed']} |",
        "", f"{compare['asked']} comparisons asked the judge; the others were ties without asking (the two answers "
            "agree on their first 40 characters, as when ETA did not align).", ""])

