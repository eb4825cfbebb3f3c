"""Stage results: one row per job, re-running a stage overwrites it, stale messages write nothing."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from eta.store import repository as repo
from eta.store.lifecycle import JobStatus
from eta.store.models import JobResult
from tests.integration.store.factories import advance, record, submit

GENERATION = {
    "vanilla_response": "Sure, here is how...",
    "s_post": 0.01,
    "post_unsafe": True,
    "tau_post": 0.06,
    "policy": "both",
    "aligned": True,
    "response": "As an AI assistant, I cannot help with that.",
    "trace": [{"sentence": 1, "candidates": ["As an AI assistant, I cannot."], "scores": [0.9], "chosen": 0}],
    "fingerprint": {"vlm": {"id": "tiny-llava", "revision": "abc"}, "params": {"n": 5}},
    "fingerprint_sha256": "f" * 64,
}


def _run_all_stages(session: Session, job_id: uuid.UUID) -> None:
    advance(session, job_id, JobStatus.PRE_EVALUATING)
    for _ in range(2):  # a redelivered message runs the stage a second time
        assert record(session, JobStatus.PRE_EVALUATING, repo.pre_evaluation_result(
            job_id=job_id, s_pre=0.21, pre_unsafe=True, tau_pre=0.16, elapsed_ms=12.5))
    repo.transition_job(session=session, job_id=job_id, expected=JobStatus.PRE_EVALUATING, to=JobStatus.GENERATING)
    for _ in range(2):
        assert record(session, JobStatus.GENERATING,
                      repo.generation_result(job_id=job_id, elapsed_ms=830.0, **GENERATION))
    repo.transition_job(session=session, job_id=job_id, expected=JobStatus.GENERATING, to=JobStatus.POST_EVALUATING)
    for _ in range(2):
        assert record(session, JobStatus.POST_EVALUATING, repo.post_evaluation_result(
            job_id=job_id, s_post_final=0.8, flagged=True, flag_reasons=["pre_unsafe", "post_unsafe"],
            elapsed_ms=40.0))
    repo.transition_job(session=session, job_id=job_id, expected=JobStatus.POST_EVALUATING, to=JobStatus.SUCCEEDED)


def test_every_stage_lands_in_one_row_and_reruns_overwrite(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID
) -> None:
    with sessions() as session, session.begin():
        job_id = submit(session, tenant_id).job_ids[0]
        _run_all_stages(session, job_id)
    with sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).where(JobResult.job_id == job_id)) == 1
        result = repo.get_job_results(session=session, tenant_id=tenant_id, job_ids=[job_id]).get(job_id)
        assert result is not None
        assert (result.s_pre, result.pre_unsafe, result.tau_pre) == (0.21, True, 0.16)
        for name, value in GENERATION.items():
            assert getattr(result, name) == value, name
        assert (result.s_post_final, result.flag_reasons) == (0.8, ["pre_unsafe", "post_unsafe"])
        assert result.timings == {"pre": 12.5, "generate": 830.0, "post": 40.0}
        job = repo.get_job(session=session, tenant_id=tenant_id, job_id=job_id)
        assert job is not None and job.flagged and job.status == JobStatus.SUCCEEDED


def test_a_stale_stage_message_writes_nothing(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        job_id = submit(session, tenant_id).job_ids[0]
        # Not started yet, then cancelled: neither accepts results.
        pre = repo.pre_evaluation_result(job_id=job_id, s_pre=0.1, pre_unsafe=False, tau_pre=0.16, elapsed_ms=1.0)
        assert not record(session, JobStatus.PRE_EVALUATING, pre)
        advance(session, job_id, JobStatus.GENERATING)
        assert not record(session, JobStatus.PRE_EVALUATING, pre)
        repo.cancel_job(session=session, tenant_id=tenant_id, job_id=job_id)
        assert not record(session, JobStatus.GENERATING,
                          repo.generation_result(job_id=job_id, elapsed_ms=1.0, **GENERATION))
        assert repo.get_job_results(session=session, tenant_id=tenant_id, job_ids=[job_id]).get(job_id) is None


def test_text_only_job_records_no_pre_score(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        job_id = submit(session, tenant_id).job_ids[0]
        advance(session, job_id, JobStatus.PRE_EVALUATING)
        assert record(session, JobStatus.PRE_EVALUATING, repo.pre_evaluation_result(
            job_id=job_id, s_pre=None, pre_unsafe=None, tau_pre=0.16, elapsed_ms=0.1))
        result = repo.get_job_results(session=session, tenant_id=tenant_id, job_ids=[job_id]).get(job_id)
        assert result is not None and result.s_pre is None and result.pre_unsafe is None
