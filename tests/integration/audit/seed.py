"""Flagged jobs for the audit tests, walked through the stages with the repository's own functions
(the same calls the workers make), so the rows look exactly like real ones."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session

from eta.settings import Settings
from eta.store import JobStatus, make_blob_store
from eta.store import repository as repo
from eta.store.repository import NewJob
from tests.integration.store.factories import record

FINGERPRINT = {"models": {"vlm": {"id": "tiny-llava", "revision": "local"}}, "params": {"tau_pre": 0.16}}
STAGES = [JobStatus.QUEUED, JobStatus.PRE_EVALUATING, JobStatus.GENERATING, JobStatus.POST_EVALUATING,
          JobStatus.SUCCEEDED]


@dataclass
class Scores:
    s_pre: float | None = 0.25
    s_post: float = 0.01
    s_post_final: float = 0.5
    tau_pre: float = 0.16
    tau_post: float = 0.06
    policy: str = "both"
    aligned: bool | None = None  # default: what the policy decides

    @property
    def pre_unsafe(self) -> bool | None:
        return None if self.s_pre is None else self.s_pre >= self.tau_pre

    @property
    def post_unsafe(self) -> bool:
        return self.s_post <= self.tau_post

    def decide(self) -> bool:
        if self.aligned is not None:
            return self.aligned
        return bool(self.post_unsafe and (self.pre_unsafe is None or self.pre_unsafe))

    def reasons(self) -> list[str]:
        reasons = []
        if self.pre_unsafe:
            reasons.append("image_unsafe")
        if self.post_unsafe:
            reasons.append("response_unsafe")
        if self.s_post_final <= self.tau_post:
            reasons.append("final_response_unsafe")
        return reasons


def image_info(data: bytes) -> tuple[str, int, int]:
    with Image.open(io.BytesIO(data)) as image:
        mime = Image.MIME[image.format or "PNG"]
        return mime, image.width, image.height


def store_sample(session: Session, settings: Settings, data: bytes) -> str:
    mime, width, height = image_info(data)
    return repo.store_image(session=session, blobs=make_blob_store(session=session, settings=settings), data=data,
                            mime=mime, width=width, height=height)


def seed_job(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    scores: Scores | None = None,
    prompt: str = "What is shown here?",
    image_sha256: str | None = None,
    custom_id: str | None = None,
    batch_id: uuid.UUID | None = None,
    created_at: datetime | None = None,
    vanilla: str = "Here is exactly how to do that: first ...",
    trace: list[dict[str, Any]] | None = None,
    finish: bool = True,
) -> uuid.UUID:
    """One job through all three stages (or left `queued` with finish=False); flagged when any evaluator
    says so, as the post-evaluation stage decides."""
    scores = scores or Scores()
    if batch_id is None:
        job = repo.create_job(session=session, tenant_id=tenant_id, now=created_at,
                              job=NewJob(prompt=prompt, image_sha256=image_sha256, custom_id=custom_id))
    else:
        from eta.store.models import Job

        job = Job(tenant_id=tenant_id, batch_id=batch_id, prompt=prompt, image_sha256=image_sha256,
                  custom_id=custom_id, seed=7, status=JobStatus.QUEUED,
                  **({"created_at": created_at, "status_changed_at": created_at} if created_at else {}))
        session.add(job)
        session.flush()
    if not finish:
        return job.id
    for current, target in zip(STAGES, STAGES[1:], strict=False):
        assert repo.transition_job(session=session, job_id=job.id, expected=current, to=target)
        if target == JobStatus.PRE_EVALUATING:
            assert record(session, target, repo.pre_evaluation_result(
                job_id=job.id, s_pre=scores.s_pre, pre_unsafe=scores.pre_unsafe, tau_pre=scores.tau_pre,
                elapsed_ms=3.0))
        elif target == JobStatus.GENERATING:
            aligned = scores.decide()
            assert record(session, target, repo.generation_result(
                job_id=job.id, vanilla_response=vanilla, s_post=scores.s_post,
                post_unsafe=scores.post_unsafe, tau_post=scores.tau_post, policy=scores.policy, aligned=aligned,
                response="As an AI assistant, I can't help with that. Here is something safer." if aligned
                else vanilla,
                trace=trace if trace is not None else (default_trace() if aligned else []),
                fingerprint=FINGERPRINT, fingerprint_sha256="f" * 64, elapsed_ms=40.0))
        elif target == JobStatus.POST_EVALUATING:
            reasons = scores.reasons()
            assert record(session, target, repo.post_evaluation_result(
                job_id=job.id, s_post_final=scores.s_post_final, flagged=bool(reasons), flag_reasons=reasons,
                elapsed_ms=5.0))
    return job.id


def default_trace() -> list[dict[str, Any]]:
    def candidate(text: str, reward: float, clip: float | None) -> dict[str, Any]:
        score = reward + (clip or 0.0)
        return {"text": text, "end": "sentence", "num_tokens": 6, "reward": reward, "clip": clip, "score": score}

    return [
        {"sentence": 1, "use_clip": False, "clip_weight": 0.0, "chosen": 1,
         "candidates": [candidate(" I can't help with that.", 0.2, None),
                        candidate(" I won't describe that, but I can explain the risks.", 0.7, None)]},
        {"sentence": 2, "use_clip": True, "clip_weight": 0.5, "chosen": 0,
         "candidates": [candidate(" The picture shows a city by the water.", 0.4, 0.21),
                        candidate(" Try a different question.", 0.3, 0.05)]},
    ]
