"""The general-ability table: each benchmark's official metric on the vanilla and on ETA's final answers, beside
the paper's numbers, with the share of items ETA aligned and each evaluator's flag rate on these benign inputs.

Metrics (`eta.benchmarks.metrics`):
- `mmbench`: accuracy over every row (each index on its own) and CircularEval accuracy over questions (a question
  counts when all its rotated rows are right; LLaVA publishes this figure). Headline: CircularEval.
- `textvqa`, `vqav2`: VQA accuracy (%), the mean over questions (VQAv2 also by answer type).
- `mme`: perception and cognition scores (sums of acc + acc+ per subtask). Headline: perception.
- `scienceqa-img`: accuracy (%) on the questions with an image.
- `mmmu-pro`: accuracy (%) with MMMU-Pro's answer parsing (an unreadable answer gets a seeded random letter, as
  the official evaluator draws one; `guessed` counts them), and by subject.
- `coco-captions` (benign images, their captions as prompts): the refusal rate (%) of the answers, by refusal
  phrases (those inside ETA's safety prefix left out: the aligned share is its own column).
- `mossbench` (benign queries built to draw refusals): the refusal rate (%), as `coco-captions`, overall and by
  stimulus type. MOSSBench's own scorer asks GPT-4 whether an answer refuses; phrases are a cruder reading.

Flag rates on benign inputs are the over-refusal side of ETA: `pre` = images CLIP flags (s_pre >= tau_pre),
`post` = vanilla answers the reward model flags (s_post <= tau_post), `aligned` = items ETA rewrote (under the
paper's `both` policy, items both flag).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from eta.benchmarks import BenchmarkItem
from eta.benchmarks.metrics import (
    MME_COGNITION,
    MME_PERCEPTION,
    choice_letter,
    circular_accuracy,
    mme_scores,
    mmmu_pro_letter,
    scienceqa_letter,
    vqa_accuracy,
)
from eta.benchmarks.paper import GENERAL_ABILITY_CITATION, PAPER_MODEL, paper_ability_values

logger = logging.getLogger(__name__)

ANSWER_FIELDS = {"vanilla": "vanilla_response", "eta": "response"}
HEADLINE = {"mmbench": "circular_accuracy", "textvqa": "accuracy", "mme": "perception",
            "scienceqa-img": "accuracy", "vqav2": "accuracy", "coco-captions": "refusal_rate",
            "mmmu-pro": "accuracy", "mossbench": "refusal_rate"}


def _percent(numerator: float, denominator: int) -> float | None:
    return 100.0 * numerator / denominator if denominator else None


def _multiple_choice(name: str, pairs: Sequence[tuple[BenchmarkItem, str]]) -> dict[str, Any]:
    reader = choice_letter if name == "mmbench" else scienceqa_letter
    correct = {item.item_id: reader(answer, item.extra["options"]) == item.extra["answer"] for item, answer in pairs}
    unread = sum(reader(answer, item.extra["options"]) is None for item, answer in pairs)
    metrics: dict[str, Any] = {"accuracy": _percent(sum(correct.values()), len(correct)), "answers": len(pairs),
                               "no_letter": unread}
    if name == "mmbench":
        circular, questions = circular_accuracy({item.extra["index"]: correct[item.item_id] for item, _ in pairs})
        metrics.update(circular_accuracy=None if circular is None else 100.0 * circular, questions=questions)
    by_category: dict[str, list[bool]] = defaultdict(list)
    for item, _ in pairs:
        by_category[item.category].append(correct[item.item_id])
    metrics["categories"] = {category: _percent(sum(oks), len(oks)) for category, oks in by_category.items()}
    return metrics


def score(name: str, pairs: Sequence[tuple[BenchmarkItem, str]]) -> dict[str, Any]:
    """The metrics of benchmark `name` for (item, answer) pairs (empty metrics without pairs)."""
    if name in ("mmbench", "scienceqa-img"):
        return _multiple_choice(name, pairs)
    if name == "mmmu-pro":
        picks = {item.item_id: mmmu_pro_letter(answer, item.extra["options"], item.item_id) for item, answer in pairs}
        right = {item.item_id: picks[item.item_id][0] == item.extra["answer"] for item, _ in pairs}
        by_subject: dict[str, list[bool]] = defaultdict(list)
        for item, _ in pairs:
            by_subject[item.category].append(right[item.item_id])
        return {"accuracy": _percent(sum(right.values()), len(right)), "answers": len(pairs),
                "guessed": sum(guessed for _, guessed in picks.values()),
                "categories": {subject: _percent(sum(oks), len(oks)) for subject, oks in by_subject.items()}}
    if name in ("textvqa", "vqav2"):
        scores = {item.item_id: vqa_accuracy(answer, item.extra["answers"]) for item, answer in pairs}
        metrics: dict[str, Any] = {"accuracy": _percent(sum(scores.values()), len(scores)), "answers": len(pairs)}
        if name == "vqav2":  # by answer type (yes/no, number, other), as VQA reports it
            by_type: dict[str, list[float]] = defaultdict(list)
            for item, _ in pairs:
                by_type[item.category].append(scores[item.item_id])
            metrics["categories"] = {kind: _percent(sum(v), len(v)) for kind, v in by_type.items()}
        return metrics
    if name in ("coco-captions", "mossbench"):
        from eta.config import DEFAULT_SAFETY_PREFIX
        from eta.evaluation.metrics import is_refusal, refusal_phrases_for

        phrases = refusal_phrases_for(DEFAULT_SAFETY_PREFIX)
        refusals = {item.item_id: is_refusal(answer, phrases) for item, answer in pairs}
        metrics = {"refusal_rate": _percent(sum(refusals.values()), len(pairs)), "answers": len(pairs)}
        if name == "mossbench":  # by stimulus type, as MOSSBench reports its refusal rates
            by_stimulus: dict[str, list[bool]] = defaultdict(list)
            for item, _ in pairs:
                by_stimulus[item.category].append(refusals[item.item_id])
            metrics["categories"] = {kind: _percent(sum(v), len(v)) for kind, v in by_stimulus.items()}
        return metrics
    if name == "mme":
        result = mme_scores((item.extra["subtask"], item.extra["image"], item.extra["answer"], answer)
                            for item, answer in pairs)
        return {**result, "answers": len(pairs)}
    raise ValueError(f"{name} is not a general-ability benchmark")


def _rate(flags: Sequence[bool | None]) -> float | None:
    known = [flag for flag in flags if flag is not None]
    return _percent(sum(bool(flag) for flag in known), len(known))


def build_ability_table(name: str, items: Sequence[BenchmarkItem], records: Mapping[str, Mapping[str, Any]], *,
                        run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The table of one general-ability run.

    Args:
        items: the benchmark's items (their ground truth in `extra`).
        records: item id -> result record (`vanilla_response`, `response`, `aligned`, `pre_unsafe`, `post_unsafe`).
    Returns:
        `{"benchmark", "kind": "ability", "items", "answered", "headline", "vanilla": metrics, "eta": metrics,
        "aligned_rate", "pre_flag_rate", "post_flag_rate", "paper", "citation", "run"}`.
    """
    answered = [item for item in items if item.item_id in records]
    table: dict[str, Any] = {"benchmark": name, "kind": "ability", "items": len(items), "answered": len(answered),
                             "headline": HEADLINE[name]}
    for column, field in ANSWER_FIELDS.items():
        pairs = [(item, records[item.item_id][field]) for item in answered
                 if isinstance(records[item.item_id].get(field), str)]
        table[column] = score(name, pairs)
    if name == "mme":
        present = {item.extra["subtask"] for item in items}
        table["missing_subtasks"] = [s for s in (*MME_PERCEPTION, *MME_COGNITION) if s not in present]
    table["aligned_rate"] = _rate([bool(records[item.item_id].get("aligned")) for item in answered])
    table["pre_flag_rate"] = _rate([records[item.item_id].get("pre_unsafe") for item in answered])
    table["post_flag_rate"] = _rate([records[item.item_id].get("post_unsafe") for item in answered])
    paper = paper_ability_values(name)
    table["paper"] = {"model": PAPER_MODEL, **paper} if paper else None
    table["citation"] = GENERAL_ABILITY_CITATION
    table["run"] = dict(run or {})
    return table


def _cell(value: float | None, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


def ability_markdown(tables: Sequence[Mapping[str, Any]]) -> str:
    """The summary (headline metric: vanilla, ETA, the paper's) and each benchmark's detail, as Markdown."""
    lines = ["| benchmark | metric | items | vanilla | ETA | paper vanilla | paper ETA | aligned % | pre flag % | "
             "post flag % |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for table in tables:
        metric, paper = table["headline"], table.get("paper") or {}
        lines.append(f"| {table['benchmark']} | {metric} | {table['answered']} | "
                     f"{_cell(table['vanilla'].get(metric))} | {_cell(table['eta'].get(metric))} | "
                     f"{_cell(paper.get('vanilla'))} | {_cell(paper.get('eta'))} | {_cell(table['aligned_rate'])} | "
                     f"{_cell(table['pre_flag_rate'])} | {_cell(table['post_flag_rate'])} |")
    lines += ["", f"Paper: {GENERAL_ABILITY_CITATION}, {PAPER_MODEL}; an empty paper cell is a number the paper's "
              "published text and code did not give us (none is invented). Flag rates are on benign inputs: "
              "pre = CLIP flags the image, post = the reward model flags the vanilla answer."]
    for table in tables:
        lines += ["", f"### {table['benchmark']}", ""]
        if table["benchmark"] == "mme":
            lines += ["| subtask | vanilla acc | vanilla acc+ | vanilla score | ETA score |",
                      "| --- | ---: | ---: | ---: | ---: |"]
            eta_subtasks = table["eta"].get("subtasks", {})
            for subtask, values in table["vanilla"].get("subtasks", {}).items():
                lines.append(f"| {subtask} | {_cell(values['acc'])} | {_cell(values['acc_plus'])} | "
                             f"{_cell(values['score'])} | {_cell(eta_subtasks.get(subtask, {}).get('score'))} |")
            lines.append(f"| cognition | | | {_cell(table['vanilla'].get('cognition'))} | "
                         f"{_cell(table['eta'].get('cognition'))} |")
            if table.get("missing_subtasks"):
                lines += ["", f"Subtasks not in the data (left out of the totals): "
                              f"{', '.join(table['missing_subtasks'])}."]
        elif "categories" in table["vanilla"]:
            extra = {"mmbench": " (plain accuracy by index; CircularEval in the summary)",
                     "vqav2": " (answer type; VQA accuracy)",
                     "mossbench": " (stimulus type; refusal rate %)",
                     "mmmu-pro": f" (subject; letters guessed: vanilla {table['vanilla'].get('guessed', 0)}, "
                                 f"ETA {table['eta'].get('guessed', 0)})"}.get(table["benchmark"], "")
            lines += [f"| category{extra} | vanilla | ETA |", "| --- | ---: | ---: |"]
            eta_categories = table["eta"].get("categories", {})
            overall = "refusal_rate" if table["benchmark"] == "mossbench" else "accuracy"
            lines.append(f"| all | {_cell(table['vanilla'].get(overall))} | {_cell(table['eta'].get(overall))} |")
            for category, value in table["vanilla"]["categories"].items():
                lines.append(f"| {category} | {_cell(value)} | {_cell(eta_categories.get(category))} |")
        elif table["benchmark"] == "coco-captions":
            lines.append(f"Benign images with their captions as prompts: {table['answered']} answered; refusal rate "
                         f"(refusal phrases, the safety prefix's own left out) vanilla "
                         f"{_cell(table['vanilla'].get('refusal_rate'))} %, ETA "
                         f"{_cell(table['eta'].get('refusal_rate'))} %; ETA aligned "
                         f"{_cell(table['aligned_rate'])} % of them.")
        else:
            lines.append(f"VQA accuracy over {table['vanilla'].get('answers', 0)} answers: vanilla "
                         f"{_cell(table['vanilla'].get('accuracy'))}, ETA {_cell(table['eta'].get('accuracy'))}.")
    return "\n".join(lines) + "\n"


def read_ability_tables(paths: Sequence[str]) -> list[dict[str, Any]]:
    """The general-ability tables of finished runs: each path an `--out-dir` or its `table.json`.

    Raises:
        ValueError: a path without a readable table.json, or one that is not a general-ability table.
    """
    import json
    from pathlib import Path

    tables = []
    for name in paths:
        path = Path(name)
        path = path / "table.json" if path.is_dir() else path
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable table.json ({exc})") from None
        for table in loaded if isinstance(loaded, list) else [loaded]:
            if not isinstance(table, dict) or table.get("kind") != "ability":
                raise ValueError(f"{path}: not a general-ability table (written by eta eval --benchmark mmbench, ...)")
            tables.append(table)
    return tables


if __name__ == "__main__":  # pragma: no cover - exercised through main() in the tests
    import sys

    try:
        print(ability_markdown(read_ability_tables(sys.argv[1:])), end="")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
