"""Evaluating ETA on a labelled dataset and calibrating its pre-evaluator, one module per idea:

- `eta.evaluation.dataset`: the JSON Lines dataset and its validation (`load_dataset`, `DatasetError`);
- `eta.evaluation.metrics`: refusal matching, ROC AUC, the threshold for a false-positive rate, `summarize`;
- `eta.evaluation.run`: running the models (`evaluate_dataset`, `calibrate`);
- `eta.evaluation.plots`: the calibration histogram; `eta.evaluation.output`: files written whole;
- `eta.evaluation.benign`: thresholds that keep the alignment of benign inputs under a target.

The model-free functions are what the tests pin down; `run` needs the models. The paper's own benchmarks,
judged by a safety judge model as in its Table 1, are `eta.benchmarks` (readers, resumable runs, the table)
and `eta.judges` (`eta eval --benchmark`; docs/evaluation.md).
"""
