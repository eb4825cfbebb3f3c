"""Data access for the API and the workers: small functions with keyword-only arguments.

    from eta.store import repository as repo
    with Session() as session, session.begin():
        job = repo.get_job(session=session, tenant_id=tenant.id, job_id=job_id)

No function commits; the caller's transaction decides what is written together. Tenant-facing reads
take `tenant_id` and find nothing for another tenant's ids.
"""

from __future__ import annotations

from eta.store.repository.audit import (
    EXPORT_COLUMNS,
    AuditFilter,
    AuditSummary,
    FlaggedJob,
    ReviewEntry,
    SummaryCounts,
    ThresholdGroup,
    add_review,
    get_flagged_job,
    list_flagged_jobs,
    list_review_history,
    stream_flagged_rows,
    summarize_audit,
)
from eta.store.repository.images import get_image, store_image
from eta.store.repository.jobs import (
    NewJob,
    StalledJob,
    SubmittedBatch,
    batches_with_callback,
    cancel_batch,
    cancel_job,
    complete_batch_if_finished,
    count_jobs_by_status,
    create_batch_with_jobs,
    create_job,
    find_completable_batches,
    find_stalled_jobs,
    get_batch,
    get_batch_any_tenant,
    get_job,
    get_jobs_any_tenant,
    list_batch_jobs,
    mark_batch_callback_sent,
    requeue_stalled_job,
    transition_job,
)
from eta.store.repository.pagination import Page
from eta.store.repository.results import (
    get_job_results,
    get_job_with_result,
    get_stage_results,
    record_generation,
    record_post_evaluation,
    record_pre_evaluation,
)
from eta.store.repository.retention import PurgedJobs, count_expired_jobs, purge_expired_jobs
from eta.store.repository.tenants import (
    authenticate_api_key,
    create_api_key,
    create_tenant,
    get_live_api_key,
    get_or_create_tenant,
    get_tenant,
    hash_api_key,
    list_api_keys,
    revoke_api_key,
    revoke_api_key_by_prefix,
)

__all__ = [
    "EXPORT_COLUMNS",
    "AuditFilter",
    "AuditSummary",
    "FlaggedJob",
    "NewJob",
    "Page",
    "PurgedJobs",
    "ReviewEntry",
    "StalledJob",
    "SubmittedBatch",
    "SummaryCounts",
    "ThresholdGroup",
    "add_review",
    "authenticate_api_key",
    "batches_with_callback",
    "cancel_batch",
    "cancel_job",
    "complete_batch_if_finished",
    "count_expired_jobs",
    "count_jobs_by_status",
    "create_api_key",
    "create_batch_with_jobs",
    "create_job",
    "create_tenant",
    "find_completable_batches",
    "find_stalled_jobs",
    "get_batch",
    "get_batch_any_tenant",
    "get_image",
    "get_job",
    "get_jobs_any_tenant",
    "get_flagged_job",
    "get_job_results",
    "get_live_api_key",
    "get_job_with_result",
    "get_or_create_tenant",
    "get_stage_results",
    "get_tenant",
    "hash_api_key",
    "list_api_keys",
    "list_batch_jobs",
    "list_flagged_jobs",
    "list_review_history",
    "mark_batch_callback_sent",
    "purge_expired_jobs",
    "record_generation",
    "record_post_evaluation",
    "record_pre_evaluation",
    "requeue_stalled_job",
    "revoke_api_key",
    "revoke_api_key_by_prefix",
    "store_image",
    "stream_flagged_rows",
    "summarize_audit",
    "transition_job",
]
