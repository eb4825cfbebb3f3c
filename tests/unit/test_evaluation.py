"""Evaluation metrics and dataset validation on known inputs (no models)."""

from __future__ import annotations

import json
import math

import pytest

from eta.evaluation.dataset import DatasetError, load_dataset
from eta.evaluation.metrics import (
    REFUSAL_PHRASES,
    is_refusal,
    refusal_phrases_for,
    roc_auc,
    summarize,
    threshold_for_fpr,
)


# ------------------------------------------------------------------------------------------------- AUC
def test_auc_perfectly_separated_reversed_and_tied():
    scores = [0.1, 0.2, 0.3, 0.8, 0.9]
    assert roc_auc(scores, [False, False, False, True, True]) == 1.0
    assert roc_auc(scores, [True, True, False, False, False]) == 0.0
    assert roc_auc([0.5] * 6, [True, False] * 3) == 0.5


def test_auc_counts_ties_as_half_and_matches_pairwise_definition():
    scores = [0.1, 0.4, 0.4, 0.35, 0.8, 0.4, 0.05]
    labels = [False, True, False, True, True, False, False]
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    pairwise = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert roc_auc(scores, labels) == pytest.approx(pairwise)


def test_auc_undefined_without_both_classes():
    assert roc_auc([0.1, 0.2], [True, True]) is None
    assert roc_auc([], []) is None


# -------------------------------------------------------------------------------------------- threshold
def test_threshold_for_target_fpr_is_the_lowest_that_meets_it():
    safe = [0.10, 0.12, 0.14, 0.16, 0.18, 0.20, 0.22, 0.24, 0.26, 0.30]
    unsafe = [0.19, 0.25, 0.28, 0.35, 0.40]
    scores, labels = safe + unsafe, [False] * len(safe) + [True] * len(unsafe)
    choice = threshold_for_fpr(scores, labels, 0.10)  # one safe image in ten may be flagged
    assert choice.threshold == 0.28  # 0.26 would flag two safe images
    assert choice.fpr == pytest.approx(0.1) and choice.tpr == pytest.approx(3 / 5)
    loose = threshold_for_fpr(scores, labels, 0.5)
    assert loose.threshold == 0.19 and loose.fpr == 0.5 and loose.tpr == 1.0


def test_threshold_with_zero_fpr_and_above_every_score():
    choice = threshold_for_fpr([0.1, 0.2, 0.3], [False, True, False], 0.0)
    assert choice.threshold > 0.3 and choice.fpr == 0.0 and choice.tpr == 0.0
    assert choice.threshold == math.nextafter(0.3, math.inf)
    separated = threshold_for_fpr([0.1, 0.2, 0.8, 0.9], [False, False, True, True], 0.0)
    assert separated.threshold == 0.8 and separated.tpr == 1.0


def test_threshold_needs_safe_examples_and_a_valid_target():
    with pytest.raises(ValueError, match="safe"):
        threshold_for_fpr([0.1], [True], 0.05)
    with pytest.raises(ValueError, match="within"):
        threshold_for_fpr([0.1, 0.2], [True, False], 1.5)


# ------------------------------------------------------------------------------------------- refusals
def test_refusal_matching_is_case_insensitive_and_handles_curly_apostrophes():
    assert is_refusal("I'M SORRY, but I can't help with that.")
    assert is_refusal("Honestly, I can\u2019t provide that.")
    assert is_refusal("This request is illegal and unethical.")
    assert not is_refusal("Sure! Step 1: gather the materials.")
    assert not is_refusal("")


def test_phrases_inside_the_safety_prefix_are_dropped():
    phrases = refusal_phrases_for("As an AI assistant")
    assert "as an ai" in REFUSAL_PHRASES and "as an ai" not in phrases
    assert "i cannot" in phrases
    assert not is_refusal("As an AI assistant, here is how to do it.", phrases)
    assert is_refusal("As an AI assistant, I cannot help with that.", phrases)


# -------------------------------------------------------------------------------------------- summary
def _record(label, s_pre, refused, aligned, vanilla_refused=False):
    return {"label": label, "s_pre": s_pre, "s_post": 0.1, "s_post_final": 0.2, "aligned": aligned,
            "refused": refused, "vanilla_refused": vanilla_refused}


def test_summary_rates_means_and_pre_evaluator():
    records = [
        _record("safe", 0.10, refused=False, aligned=False),
        _record("safe", 0.12, refused=False, aligned=False),
        _record("unsafe", 0.30, refused=True, aligned=True),
        _record("unsafe", 0.25, refused=False, aligned=True),
        _record(None, None, refused=False, aligned=False),
    ]
    summary = summarize(records, target_fpr=0.0)
    assert summary["all"]["items"] == 5
    assert summary["unsafe"]["unsafe_rate"] == 0.5 and summary["unsafe"]["aligned_rate"] == 1.0
    assert summary["unsafe"]["vanilla_unsafe_rate"] == 1.0
    assert summary["safe"]["mean_s_pre"] == pytest.approx(0.11)
    assert summary["unlabelled"]["mean_s_pre"] is None
    pre = summary["pre_evaluator"]
    assert (pre["labelled_images"], pre["safe"], pre["unsafe"]) == (4, 2, 2)
    assert pre["roc_auc"] == 1.0 and pre["tau_pre"] == 0.25 and pre["tpr"] == 1.0 and pre["fpr"] == 0.0


# -------------------------------------------------------------------------------------------- dataset
def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_dataset_lines_paths_and_labels(tmp_path, samples_dir):
    image = samples_dir / "waterview.jpg"
    path = _write(tmp_path / "d.jsonl", [
        json.dumps({"image": str(image), "prompt": "What is it?", "label": "SAFE", "id": 7}),
        "",
        json.dumps({"image": None, "prompt": "text only"}),
    ])
    first, second = load_dataset(path)
    assert (first.line, first.label, first.item_id, first.image_path) == (1, "safe", "7", image)
    assert (second.line, second.label, second.image_path) == (3, None, None)


def test_relative_image_paths_are_relative_to_the_dataset(tmp_path, samples_dir):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes((samples_dir / "harm_example.png").read_bytes())
    path = _write(tmp_path / "d.jsonl", [json.dumps({"image": "img/a.png", "prompt": "p"})])
    assert load_dataset(path)[0].image_path == tmp_path / "img" / "a.png"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "ok"', "line 2: not valid JSON"),
        ('["a list"]', "line 2: expected a JSON object"),
        ('{"image": null}', "line 2: missing prompt"),
        ('{"prompt": "   "}', "line 2: missing prompt"),
        ('{"prompt": "p", "label": "harmful"}', "line 2: label must be"),
        ('{"prompt": "p", "seed": -1}', "line 2: seed must be"),
        ('{"prompt": "p", "image": "/does/not/exist.png"}', "line 2: cannot read image /does/not/exist.png"),
        ('{"prompt": "p", "image": "d.jsonl"}', "line 2: image"),
    ],
)
def test_bad_lines_name_their_line(tmp_path, line, message):
    path = _write(tmp_path / "d.jsonl", ['{"prompt": "fine"}', line])
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")):
        load_dataset(path)


def test_empty_dataset_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="no items"):
        load_dataset(_write(tmp_path / "d.jsonl", ["", "  "]))
