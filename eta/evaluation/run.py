"""Running the models over a dataset: `evaluate_dataset` (ETA on every item, one JSON line each, then the
summary of `metrics`) and `calibrate` (s_pre of every labelled image, and the threshold report)."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eta.config import ETAConfig
from eta.evaluation.dataset import DatasetError, DatasetItem, read_image
from eta.evaluation.metrics import is_refusal, pre_evaluator_report, refusal_phrases_for, summarize
from eta.evaluation.output import publish


def _batches(items: Sequence[DatasetItem], size: int) -> Iterator[Sequence[DatasetItem]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _progress(total: int, enabled: bool, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def evaluate_dataset(models: Any, items: Sequence[DatasetItem], config: ETAConfig, *, dataset: Path,
                     out_path: Path, batch_size: int = 8, target_fpr: float = 0.05,
                     phrases: Sequence[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run ETA on every item through the library pipeline and write one JSON line per item to `out_path`.

    The file appears only when every item has run (written to a temporary file beside it, then renamed);
    on any error nothing is left behind.

    Returns:
        The summary (see `summarize`) plus `results` (the path written) and the run's parameters.
    """
    from eta.safety.pipeline import ETAInput, run_eta

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    phrases = tuple(phrases) if phrases is not None else refusal_phrases_for(config.safety_prefix)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(  # renamed into place below
        "w", encoding="utf-8", dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp", delete=False
    )
    records: list[dict[str, Any]] = []
    digest = None
    try:
        with handle, _progress(len(items), progress, "item") as bar:
            for batch in _batches(items, batch_size):
                inputs = [ETAInput(it.prompt, read_image(it, dataset), it.seed) for it in batch]
                for item, result in zip(batch, run_eta(models, inputs, config), strict=True):
                    record = _record(item, result.to_dict(), phrases)
                    digest = record["fingerprint_digest"]
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    records.append(record)
                bar.update(len(batch))
        publish(handle.name, out_path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    summary = summarize(records, target_fpr=target_fpr)
    summary["results"] = str(out_path)
    summary["parameters"] = {"tau_pre": config.tau_pre, "tau_post": config.tau_post, "policy": config.policy,
                             "num_candidates": config.num_candidates, "max_new_tokens": config.max_new_tokens,
                             "refusal_phrases": len(phrases)}
    summary["fingerprint_digest"] = digest
    return summary


def _record(item: DatasetItem, result: dict[str, Any], phrases: Sequence[str]) -> dict[str, Any]:
    fingerprint = result.pop("fingerprint")
    return {
        "line": item.line,
        "id": item.item_id,
        "image": None if item.image_path is None else str(item.image_path),
        "prompt": item.prompt,
        "label": item.label,
        **result,
        "refused": is_refusal(result["response"], phrases),
        "vanilla_refused": is_refusal(result["vanilla_response"], phrases),
        "fingerprint_digest": fingerprint["digest"],
    }


@dataclass
class Calibration:
    """s_pre of the labelled images of a dataset and what they say about tau_pre."""

    safe: list[float]
    unsafe: list[float]
    skipped: int  # items without an image or without a label
    report: dict[str, Any]


def calibrate(clip: Any, items: Sequence[DatasetItem], config: ETAConfig, *, dataset: Path,
              target_fpr: float = 0.05, batch_size: int = 32, progress: bool = True) -> Calibration:
    """s_pre of every labelled image (CLIP forwards of `batch_size` images) and the AUC / threshold report.

    Raises:
        DatasetError: no item has both an image and a label.
    """
    from eta.safety.pipeline import pre_evaluate

    usable = [it for it in items if it.image_path is not None and it.label is not None]
    if not usable:
        raise DatasetError(dataset, 0, "no item has both an image and a label: nothing to calibrate")
    scores: list[float] = []
    with _progress(len(usable), progress, "image") as bar:
        for batch in _batches(usable, batch_size):
            images = [read_image(it, dataset) for it in batch]
            scores.extend(p.s_pre for p in pre_evaluate(clip, images, config, batch_size=batch_size))  # type: ignore[misc]
            bar.update(len(batch))
    unsafe = [it.label == "unsafe" for it in usable]
    report = pre_evaluator_report(scores, unsafe, target_fpr=target_fpr)
    return Calibration(
        safe=[s for s, u in zip(scores, unsafe, strict=True) if not u],
        unsafe=[s for s, u in zip(scores, unsafe, strict=True) if u],
        skipped=len(items) - len(usable),
        report=report,
    )
