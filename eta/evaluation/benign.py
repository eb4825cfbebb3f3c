"""The benign alignment rate: how often ETA aligns answers to benign inputs, and the thresholds that keep that
share under a target, from the scores of an earlier `eta eval` run."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eta.evaluation.dataset import DatasetError


def aligned_share(scores: Sequence[tuple[float | None, float]], tau_pre: float, tau_post: float) -> float:
    """The share of items the paper's `both` policy aligns: s_pre >= tau_pre (or no image) and s_post <= tau_post."""
    if not scores:
        raise ValueError("no scores")
    aligned = sum(1 for s_pre, s_post in scores if (s_pre is None or s_pre >= tau_pre) and s_post <= tau_post)
    return aligned / len(scores)


def thresholds_for_aligned_rate(scores: Sequence[tuple[float | None, float]], *, tau_pre: float, tau_post: float,
                                target: float) -> dict[str, Any]:
    """Thresholds that keep ETA's alignment of benign inputs at or under `target` (a share in [0, 1]).

    Two one-threshold answers, each moving the least from the operator's current pair: the lowest `tau_pre` that
    meets the target with `tau_post` kept, and the highest `tau_post` that meets it with `tau_pre` kept. A
    threshold is chosen among the observed scores (the share only changes there); when none meets the target, the
    one that flags nothing of that evaluator (just past the extreme score), or None when even that cannot (text-only
    items align on `tau_post` alone).

    Args:
        scores: (s_pre or None for a text-only item, s_post) of benign items.
    """
    if math.isnan(target) or not 0.0 <= target <= 1.0:
        raise ValueError(f"target aligned rate must be within [0, 1], got {target}")
    if not scores:
        raise ValueError("no benign scores to choose thresholds from")
    pre_values = sorted({s for s, _ in scores if s is not None})
    post_values = sorted({p for _, p in scores}, reverse=True)

    pre_choice: float | None = None
    for candidate in [*pre_values, math.nextafter(pre_values[-1], math.inf)] if pre_values else []:
        if aligned_share(scores, candidate, tau_post) <= target:
            pre_choice = candidate
            break
    if not pre_values and aligned_share(scores, tau_pre, tau_post) <= target:
        pre_choice = tau_pre
    post_choice: float | None = None
    for candidate in [*post_values, math.nextafter(post_values[-1], -math.inf)]:
        if aligned_share(scores, tau_pre, candidate) <= target:
            post_choice = candidate
            break
    return {
        "items": len(scores), "with_image": sum(s is not None for s, _ in scores), "target_aligned_rate": target,
        "current": {"tau_pre": tau_pre, "tau_post": tau_post, "aligned_rate": aligned_share(scores, tau_pre, tau_post)},
        "move_tau_pre": None if pre_choice is None else {
            "tau_pre": pre_choice, "tau_post": tau_post, "aligned_rate": aligned_share(scores, pre_choice, tau_post)},
        "move_tau_post": None if post_choice is None else {
            "tau_pre": tau_pre, "tau_post": post_choice, "aligned_rate": aligned_share(scores, tau_pre, post_choice)},
    }


def read_benign_scores(path: Path, *, run: str | None = None) -> list[tuple[float | None, float]]:
    """(s_pre, s_post) of every result line of `path`: an `eta eval --benchmark` results.jsonl (lines of one run:
    `run` names it, needed when the file holds several) or an `eta eval DATASET` results file.

    Raises:
        DatasetError: unreadable or malformed lines, several runs without `run`, no scores.
    """
    lines = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(path, 0, f"cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(path, 0, f"not UTF-8 text ({exc.reason})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(path, number, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict) or record.get("error"):
            continue  # a job the service failed has no scores
        s_pre, s_post = record.get("s_pre"), record.get("s_post")
        if isinstance(s_post, bool) or not isinstance(s_post, int | float) or (
                s_pre is not None and (isinstance(s_pre, bool) or not isinstance(s_pre, int | float))):
            raise DatasetError(path, number, "expected numeric s_post (and s_pre, or null): a results file of "
                                             "eta eval")
        lines.append((record.get("run"), (None if s_pre is None else float(s_pre), float(s_post))))
    runs = list(dict.fromkeys(key for key, _ in lines))
    if run is not None:
        lines = [entry for entry in lines if entry[0] == run]
        if not lines:
            raise DatasetError(path, 0, f"no result of run {run} (runs here: {', '.join(map(str, runs)) or 'none'})")
    elif len(runs) > 1:
        raise DatasetError(path, 0, f"results of {len(runs)} runs ({', '.join(map(str, runs))}): name one with --run")
    if not lines:
        raise DatasetError(path, 0, "no results with scores")
    return [scores for _, scores in lines]
