"""`eta eval --benchmark` on the general-ability benchmarks end to end: stand-ins of the published layouts, the tiny
ETA models, the table scored against ground truth, a resumed run, malformed files refused with exit 2."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from eta.benchmarks import load_benchmark
from eta.benchmarks.standins import write_standin
from eta.commands.main import main

pytestmark = pytest.mark.models


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _args(tmp_path, tiny_models_dir, name, items=None):
    data = write_standin(name, tmp_path / name, items)
    return ["eval", "--benchmark", name, "--data", data, "--out-dir", tmp_path / "out", "--tiny-dir",
            tiny_models_dir, "--device", "cpu", "--max-new-tokens", "3", "--no-progress"]


@pytest.mark.parametrize("name", ["mmbench", "textvqa", "mme", "scienceqa-img", "vqav2", "mmmu-pro", "mossbench"])
def test_each_reader_runs_and_a_second_run_resumes(tmp_path, tiny_models_dir, name, monkeypatch):
    args = _args(tmp_path, tiny_models_dir, name, 2)
    result = _invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    items = len(load_benchmark(name, tmp_path / name).items)
    assert table["kind"] == "ability" and table["benchmark"] == name and table["answered"] == items
    assert table["run"]["timing"]["answered_now"] == items
    assert table["vanilla"]["answers"] == items and table["eta"]["answers"] == items
    assert 0.0 <= table["aligned_rate"] <= 100.0 and table["post_flag_rate"] is not None
    stored = json.loads((tmp_path / "out" / "table.json").read_text())[0]
    assert stored["headline"] == table["headline"]
    assert f"| {name} | {table['headline']} | {items} |" in (tmp_path / "out" / "table.md").read_text()

    import eta.models

    def no_loading(*_args, **_kwargs):
        raise AssertionError("a finished run loads no model")

    monkeypatch.setattr(eta.models, "load_models", no_loading)
    again = _invoke(*args, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["run"]["timing"]["answered_now"] == 0
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == items


def test_mmbench_scores_the_answers_against_the_ground_truth(tmp_path, tiny_models_dir, monkeypatch):
    import eta.safety.pipeline as pipeline

    args = _args(tmp_path, tiny_models_dir, "mmbench", 3)
    truth = {item.prompt: item.extra["answer"] for item in load_benchmark("mmbench", tmp_path / "mmbench").items}
    real = pipeline.run_eta

    def answering(models, inputs, config):  # the real pipeline, with answers we know the score of
        results = real(models, inputs, config)
        for given, result in zip(inputs, results, strict=True):
            result.vanilla_response = "A"                      # always A
            result.response = f"{truth[given.prompt]}."         # always right
        return results

    monkeypatch.setattr(pipeline, "run_eta", answering)
    result = _invoke(*args, "--batch-size", "4", "--json")
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    # By hand: question 0 (4 rows) has A right in 1 rotation, question 1 (2 options) in 1 of 2, question 2 in
    # 1 of 4: 3 of 10 rows; no question right in every rotation.
    assert table["vanilla"]["accuracy"] == 30.0 and table["vanilla"]["circular_accuracy"] == 0.0
    assert table["eta"]["accuracy"] == 100.0 and table["eta"]["circular_accuracy"] == 100.0
    assert table["vanilla"]["questions"] == 3 and table["paper"]["vanilla"] == 64.60


@pytest.mark.parametrize(
    ("name", "break_it", "message"),
    [
        ("mmbench", lambda d: (d / "mmbench_dev_20230712.tsv").write_text("index\tquestion\n"), "lacks column(s)"),
        ("textvqa", lambda d: (d / "TextVQA_0.5.1_val.json").write_text("{"), "TextVQA_0.5.1_val.json: not valid"),
        ("mme", lambda d: (d / "existence" / "000000000000.txt").write_text("no tab here\n"),
         "000000000000.txt, line 1: expected question<TAB>Yes|No"),
        ("scienceqa-img", lambda d: (d / "problems.json").unlink(), "problems.json: missing (expected"),
        ("vqav2", lambda d: (d / "v2_OpenEnded_mscoco_val2014_questions.json").write_text('{"questions": 1}'),
         "questions.json: expected an object with a `questions` list"),
        ("coco-captions", lambda d: (d / "annotations" / "captions_val2017.json").write_text("[]"),
         "captions_val2017.json: expected an object with `images` and `annotations`"),
        ("mmmu-pro", lambda d: (d / "standard (10 options)" / "test-00000-of-00001.parquet").write_bytes(b"PAR1"),
         "test-00000-of-00001.parquet: not a readable parquet file"),
        ("mossbench", lambda d: (d / "data" / "images_information" / "information.json").write_text("[]"),
         "information.json: expected a JSON object of pid -> query"),
    ],
)
def test_malformed_files_exit_2_in_one_line_and_nothing_runs(tmp_path, tiny_models_dir, name, break_it, message):
    args = _args(tmp_path, tiny_models_dir, name, 2)
    break_it(tmp_path / name)
    result = _invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_mmmu_pro_vision_scores_the_answers_against_the_ground_truth(tmp_path, tiny_models_dir, monkeypatch):
    import eta.safety.pipeline as pipeline

    args = [*_args(tmp_path, tiny_models_dir, "mmmu-pro", 4), "--subset", "vision"]
    real = pipeline.run_eta
    calls = iter(range(100))

    def answering(models, inputs, config):  # the real pipeline, with answers of known score
        results = real(models, inputs, config)
        for result in results:
            n = next(calls)  # items in order: answers A, B, C, D
            result.vanilla_response = "Answer: A"                          # right for the first item only
            result.response = f"The answer is ({'ABCD'[n]})."               # always right
        return results

    monkeypatch.setattr(pipeline, "run_eta", answering)
    result = _invoke(*args, "--batch-size", "8", "--json")
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    assert table["answered"] == 4 and table["headline"] == "accuracy"
    assert table["vanilla"]["accuracy"] == 25.0 and table["eta"]["accuracy"] == 100.0
    assert table["eta"]["categories"] == {"Art": 100.0, "Physics": 100.0} and table["eta"]["guessed"] == 0
    assert table["paper"] is None
    assert "| mmmu-pro | accuracy | 4 | 25.00 | 100.00 |  |  |" in (tmp_path / "out" / "table.md").read_text()


def test_a_judge_or_a_plot_is_refused_for_an_ability_benchmark(tmp_path, tiny_models_dir):
    args = _args(tmp_path, tiny_models_dir, "scienceqa-img", 2)
    judged = _invoke(*args, "--judge", "meta-llama/Llama-Guard-3-8B")
    assert judged.exit_code == 2 and "--judge: scienceqa-img is a general-ability benchmark" in judged.stderr
    assert _invoke(*args, "--plot").exit_code == 2


def test_a_benign_run_then_calibrate_for_a_target_aligned_rate(tmp_path, tiny_models_dir):
    args = _args(tmp_path, tiny_models_dir, "coco-captions", 3)
    # thresholds that align everything: every benign answer is rewritten, the over-refusal a target would cap
    result = _invoke(*args, "--tau-pre", "-1", "--tau-post", "1e9", "--json")
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    assert table["headline"] == "refusal_rate" and table["aligned_rate"] == 100.0
    assert table["pre_flag_rate"] == 100.0 and table["post_flag_rate"] == 100.0
    results = tmp_path / "out" / "results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()]
    s_pre = sorted(r["s_pre"] for r in records)

    calibrated = _invoke("calibrate", "--from-results", results, "--target-aligned-rate", "0.34",
                         "--tau-pre", "-1", "--tau-post", "1e9", "--json")
    assert calibrated.exit_code == 0, calibrated.output
    report = json.loads(calibrated.stdout)
    assert report["current"]["aligned_rate"] == 1.0 and report["items"] == 3
    assert report["move_tau_pre"]["tau_pre"] == s_pre[2]  # only the highest-scoring image stays flagged
    assert report["move_tau_pre"]["aligned_rate"] == pytest.approx(1 / 3)
    text = _invoke("calibrate", "--from-results", results, "--target-aligned-rate", "0.34")
    assert text.exit_code == 0 and "raise tau_pre:" in text.stdout and "lower tau_post:" in text.stdout

    with results.open("a") as handle:  # a second run in the same file must be named
        handle.write(json.dumps({**records[0], "run": "other"}) + "\n")
    several = _invoke("calibrate", "--from-results", results, "--target-aligned-rate", "0.1")
    assert several.exit_code == 2 and "name one with --run" in several.stderr
    assert _invoke("calibrate", "--from-results", results, "--target-aligned-rate", "0.1", "--run",
                   "other").exit_code == 0
    results.write_text('{"s_pre": 0.1, "s_post": "high"}\n')
    bad = _invoke("calibrate", "--from-results", results, "--target-aligned-rate", "0.1")
    assert bad.exit_code == 2 and "results.jsonl, line 1: expected numeric s_post" in bad.stderr
    assert _invoke("calibrate", "--from-results", results).exit_code == 2  # no target
    assert "within [0, 1]" in _invoke("calibrate", "--from-results", results, "--target-aligned-rate", "2").stderr
