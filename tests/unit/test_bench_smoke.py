"""The benchmarks run end to end with tiny sizes and print the JSON they promise. Not a timed test: no
assertion on speed, only on the report's shape."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.models


def _bench(script, *args, models_dir, samples_dir, tmp_path):
    command = [sys.executable, str(REPO / "bench" / script), "--shape", "tiny", "--models-dir", str(models_dir),
               "--samples", str(samples_dir), "--threads", "1", "--repeats", "1", *map(str, args)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_align_benchmark_report(tiny_models_dir, samples_dir, tmp_path):
    plot = tmp_path / "align.png"
    report = _bench("align.py", "--candidates", "1,3", "--max-new-tokens", "6", "--max-sentence-tokens", "3",
                    "--plot", plot, models_dir=tiny_models_dir, samples_dir=samples_dir, tmp_path=tmp_path)
    assert report["benchmark"] == "deep_alignment_batched_vs_sequential"
    assert {"tokens_per_s", "baseline", "models", "environment", "config", "results", "target"} <= set(report)
    assert report["environment"]["torch_threads"]["intra_op"] == 1
    assert report["models"]["shape"] == "tiny" and report["models"]["parameters"]["vlm"] > 0
    assert [r["n"] for r in report["results"]] == [1, 3]
    for result in report["results"]:
        for key in ("speedup", "batched_tokens_per_s", "sequential_tokens_per_s"):
            assert set(result[key]) == {"min", "median", "max"}
        assert all(t > 0 for t in result["batched_candidate_tokens"] + result["sequential_candidate_tokens"])
    assert report["target"]["n"] == 5 and report["target"]["met"] is None  # N = 5 was not run
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_overhead_benchmark_report_built_in_memory(tiny_models_dir, samples_dir, tmp_path):
    # --in-memory is the code path of the 7B shape on a GPU (built on the device, never saved).
    report = _bench("overhead.py", "--max-new-tokens", "6", "--max-sentence-tokens", "3", "--num-candidates", "2",
                    "--in-memory", models_dir=tiny_models_dir, samples_dir=samples_dir, tmp_path=tmp_path)
    assert report["benchmark"] == "eta_pipeline_vs_vanilla_generation"
    assert report["models"]["source"].startswith("built in memory")
    assert set(report["branches"]) == {"safe", "aligned"}
    for branch in report["branches"].values():
        assert set(branch["time_ratio"]) == {"min", "median", "max"}
        assert set(branch["eta_stage_seconds_median"]) >= {"pre_evaluation", "generation", "alignment", "other"}
        assert isinstance(branch["met"], bool)
    assert report["branches"]["aligned"]["eta_stage_seconds_median"]["alignment"] > 0
    assert set(report["branches"]["aligned"]["peak_memory_mb"]) == {"vanilla", "eta"}
    assert report["branches"]["safe"]["eta_stage_seconds_median"]["alignment"] == 0


def test_cross_job_benchmark_report(tiny_models_dir, samples_dir, tmp_path):
    report = _bench("align.py", "--jobs", "1,3", "--candidates", "2", "--max-new-tokens", "6",
                    "--max-sentence-tokens", "3", models_dir=tiny_models_dir, samples_dir=samples_dir,
                    tmp_path=tmp_path)
    assert report["benchmark"] == "cross_job_alignment_together_vs_one_after_another"
    assert report["config"]["num_candidates"] == 2
    assert [r["jobs"] for r in report["results"]] == [1, 3]
    for result in report["results"]:
        for key in ("throughput_ratio", "throughput_ratio_in_cpu_time", "together_jobs_per_s",
                    "one_after_another_jobs_per_s"):
            assert set(result[key]) == {"min", "median", "max"}
        assert set(result["peak_memory_mb"]) == {"together", "one_after_another"}
        assert result["model_calls_last_together_run"]["align_vlm_forward"] > 0
    assert report["results"][0]["padding_share_of_packed_prefix"] == 0.0  # one job: nothing to pad
    assert report["target"] == {"jobs": 8, "throughput_ratio_at_least": 3.0, "median": None, "met": None,
                                "kv_peak_over_floor_at_most": 1.5, "kv_peak_over_floor": None}
    for result in report["results"]:  # one prompt cache per job: the peak stays near the floor
        assert 0 < result["kv_floor_bytes"] <= result["kv_peak_bytes"]
        assert result["kv_peak_over_floor"] == round(result["kv_peak_bytes"] / result["kv_floor_bytes"], 3)
        # float32 on the CPU: together == alone is required, and it held for every job.
        assert result["identity_required"] is True
        assert result["answers_identical_to_alone"] == [result["jobs"]]


def test_cross_job_benchmark_in_bfloat16_reports_agreement(tiny_models_dir, samples_dir, tmp_path):
    # The GPU run's precision, built in memory as the 7B shape is. bf16 rounding moves with the batch (at the
    # default 128-token budget two tiny jobs already differ), so the report says how many answers agree where
    # the run used to abort and print nothing.
    report = _bench("align.py", "--jobs", "1,4", "--candidates", "3", "--max-new-tokens", "12",
                    "--max-sentence-tokens", "4", "--in-memory", "--dtype", "bfloat16", models_dir=tiny_models_dir,
                    samples_dir=samples_dir, tmp_path=tmp_path)
    assert report["models"]["dtype"] == "bfloat16"
    for result in report["results"]:
        assert result["identity_required"] is False
        assert len(result["answers_identical_to_alone"]) == 1
        assert 0 <= result["answers_identical_to_alone"][0] <= result["jobs"]
        assert result["kv_peak_over_floor"] is not None
