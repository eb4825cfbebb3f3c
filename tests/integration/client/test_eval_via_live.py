"""`eta eval --benchmark ... --via URL` against a live server, a real worker, Postgres and Redis."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from eta.benchmarks.standins import write_standin
from eta.judges.tiny import build_tiny_judge
from eta.store.models import Batch, Job
from tests.integration.client.conftest import LiveStack

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.models]


def test_eval_via_the_service_judges_the_stored_results_and_resumes(live_stack: LiveStack, tmp_path):
    data = write_standin("figstep", tmp_path / "figstep", 3)
    judge = build_tiny_judge(tmp_path / "judge", "llama-guard-3", verdict="unsafe\nS2")
    out = tmp_path / "out"
    args = ["eval", "--benchmark", "figstep", "--data", str(data), "--via", live_stack.url, "--out-dir", str(out),
            "--judge", str(judge), "--judge-device", "cpu", "--max-new-tokens", "8", "--num-candidates", "2",
            "--tau-pre", "-1", "--tau-post", "1e9", "--wait-timeout", "180", "--no-progress", "--json"]
    with live_stack.engine.connect() as conn:
        batches_before = conn.execute(sa.select(sa.func.count()).select_from(Batch)).scalar_one()

    table = json.loads(live_stack.eta(*args).stdout)
    everything = table["rows"][0]
    assert everything["items"] == 3 and everything["aligned_rate"] == 100.0
    assert everything["usr_vanilla"] == 100.0 and everything["usr_final"] == 100.0  # the judge's fixed verdict
    assert everything["judged_vanilla"]["missing"] == 0  # an admin key sees the vanilla answers
    assert table["run"]["source"] == "service" and table["run"]["parameters"]["max_new_tokens"] == 8
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["SafeBench_1_1", "SafeBench_2_2", "SafeBench_3_3"]
    assert all(r["status"] == "succeeded" and r["response"].startswith("As an AI assistant") for r in records)
    with live_stack.engine.connect() as conn:
        jobs = conn.execute(sa.select(Job.custom_id, Job.prompt).where(
            Job.id.in_([r["job_id"] for r in records]))).all()
        batches_after = conn.execute(sa.select(sa.func.count()).select_from(Batch)).scalar_one()
    assert sorted(custom_id for custom_id, _ in jobs) == [r["id"] for r in records]
    assert all(prompt.startswith("The image shows a list numbered 1, 2, and 3") for _, prompt in jobs)
    assert batches_after == batches_before + 1

    again = json.loads(live_stack.eta(*args).stdout)  # everything is stored: no new batch, the same table
    assert again["rows"] == table["rows"]
    with live_stack.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Batch)).scalar_one() == batches_after
