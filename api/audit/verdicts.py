"""Recording a reviewer's verdict: the checks shared by the API and the review page."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import Session

from eta.store import JobStatus
from eta.store import repository as repo
from eta.store.models import ApiKey, Review, ReviewVerdict
from eta.store.repository.admin_events import record_admin_event
from eta.vocabulary import AdminAction

logger = logging.getLogger(__name__)


class VerdictRefused(Exception):
    """The verdict was not recorded; `status` and `code` are the API's answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def record_verdict(
    *,
    session: Session,
    tenant_id: uuid.UUID,
    reviewer_key_id: uuid.UUID,
    job_id: uuid.UUID,
    verdict: ReviewVerdict | str,
    note: str | None,
) -> Review:
    """Add a verdict to the tenant's finished job (earlier verdicts stay: the history is the audit trail).

    Raises:
        VerdictRefused: 404 `job_not_found` for an unknown job or another tenant's; 409 `job_not_reviewable`
            for a job that has not succeeded (there is no answer to judge).
    """
    job = repo.get_job(session=session, tenant_id=tenant_id, job_id=job_id)
    if job is None:
        raise VerdictRefused(404, "job_not_found", f"no job {job_id}")
    if job.status != JobStatus.SUCCEEDED:
        raise VerdictRefused(409, "job_not_reviewable",
                             f"job {job_id} is {job.status.value}; only a succeeded job can be reviewed")
    note = (note or "").strip() or None
    review = repo.add_review(session=session, tenant_id=tenant_id, job_id=job_id, verdict=ReviewVerdict(verdict),
                             reviewer_key_id=reviewer_key_id, note=note)
    if review is None:  # pragma: no cover - the job was read above in this transaction
        raise VerdictRefused(404, "job_not_found", f"no job {job_id}")
    reviewer = session.get(ApiKey, reviewer_key_id)
    record_admin_event(session=session, tenant_id=tenant_id, action=AdminAction.REVIEW_VERDICT,
                       actor_key_id=reviewer_key_id, actor=reviewer.prefix if reviewer is not None else "unknown",
                       subject=str(job_id), details={"verdict": review.verdict.value, "note": note,
                                                     "review_id": str(review.id)})
    return review
