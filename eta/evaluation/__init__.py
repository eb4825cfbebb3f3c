"""Evaluating ETA on a labelled dataset and calibrating its pre-evaluator, one module per idea:

- `eta.evaluation.dataset`: the JSON Lines dataset and its validation (`load_dataset`, `DatasetError`);
- `eta.evaluation.metrics`: refusal matching, ROC AUC, the threshold for a false-positive rate, `summarize`;
- `eta.evaluation.run`: running the models (`evaluate_dataset`, `calibrate`);
- `eta.evaluation.plots`: the calibration histogram; `eta.evaluation.output`: files written whole;
- `eta.evaluation.benign`: thresholds that keep the alignment of benign inputs under a target.

Every public name is also importable from `eta.evaluation` itself, as before the split. The model-free
functions are what the tests pin down; `run` needs the models. The paper's own benchmarks,
judged by a safety judge model as in its Table 1, are `eta.benchmarks` (readers, resumable runs, the table)
and `eta.judges` (`eta eval --benchmark`; docs/evaluation.md).
"""

from __future__ import annotations

from eta.evaluation.benign import aligned_share, read_benign_scores, thresholds_for_aligned_rate
from eta.evaluation.dataset import LABELS, DatasetError, DatasetItem, load_dataset, read_image
from eta.evaluation.metrics import (
    REFUSAL_PHRASES,
    ThresholdChoice,
    is_refusal,
    pre_evaluator_report,
    refusal_phrases_for,
    roc_auc,
    summarize,
    threshold_for_fpr,
)
from eta.evaluation.output import save_figure
from eta.evaluation.plots import plot_calibration
from eta.evaluation.run import Calibration, calibrate, evaluate_dataset

__all__ = [
    "LABELS",
    "REFUSAL_PHRASES",
    "Calibration",
    "DatasetError",
    "DatasetItem",
    "ThresholdChoice",
    "aligned_share",
    "calibrate",
    "evaluate_dataset",
    "is_refusal",
    "load_dataset",
    "plot_calibration",
    "pre_evaluator_report",
    "read_benign_scores",
    "read_image",
    "refusal_phrases_for",
    "roc_auc",
    "save_figure",
    "summarize",
    "threshold_for_fpr",
    "thresholds_for_aligned_rate",
]
