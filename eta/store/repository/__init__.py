"""Data access for the API and the workers: small functions with keyword-only arguments, one module per idea
(jobs: submission and reads; transitions; recovery: the sweeper's queries; leases; results; audit; tenants
and keys; images; model calls; retention), re-exported here; admin_events and presets are imported from
their modules.

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
    SubmittedBatch,
    attach_fetched_image,
    batches_with_callback,
    count_active_jobs,
    count_jobs_by_status,
    create_batch_with_jobs,
    create_job,
    get_batch,
    get_batch_any_tenant,
    get_job,
    get_job_version,
    get_jobs_any_tenant,
    list_batch_jobs,
)
from eta.store.repository.leases import release_leases, renew_leases, take_leases
from eta.store.repository.model_calls import add_model_calls, get_model_calls
from eta.store.repository.pagination import Page
from eta.store.repository.recovery import (
    StalledJob,
    find_completable_batches,
    find_stalled_jobs,
    find_undelivered_callbacks,
    requeue_stalled_job,
)
from eta.store.repository.results import (
    StageResult,
    generation_result,
    get_job_results,
    get_job_with_result,
    get_stage_results,
    post_evaluation_result,
    pre_evaluation_result,
    record_stage_results,
)
from eta.store.repository.retention import PurgedJobs, count_expired_jobs, purge_expired_jobs
from eta.store.repository.tenants import (
    authenticate_api_key,
    create_api_key,
    create_tenant,
    get_or_create_tenant,
    get_tenant,
    get_tenant_by_name,
    hash_api_key,
    list_api_keys,
    live_key,
    revoke_api_key_by_id,
)
from eta.store.repository.transitions import (
    cancel_batch,
    cancel_job,
    complete_batch_if_finished,
    mark_batch_callback_sent,
    transition_job,
    transition_jobs,
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
    "StageResult",
    "StalledJob",
    "SubmittedBatch",
    "SummaryCounts",
    "ThresholdGroup",
    "add_model_calls",
    "add_review",
    "attach_fetched_image",
    "authenticate_api_key",
    "live_key",
    "batches_with_callback",
    "cancel_batch",
    "cancel_job",
    "complete_batch_if_finished",
    "count_expired_jobs",
    "count_active_jobs",
    "count_jobs_by_status",
    "create_api_key",
    "create_batch_with_jobs",
    "create_job",
    "create_tenant",
    "find_completable_batches",
    "find_stalled_jobs",
    "find_undelivered_callbacks",
    "get_batch",
    "get_batch_any_tenant",
    "get_image",
    "get_job",
    "get_jobs_any_tenant",
    "get_flagged_job",
    "get_job_results",
    "get_job_version",
    "get_model_calls",
    "generation_result",
    "get_job_with_result",
    "post_evaluation_result",
    "pre_evaluation_result",
    "get_or_create_tenant",
    "get_tenant_by_name",
    "get_stage_results",
    "get_tenant",
    "hash_api_key",
    "list_api_keys",
    "list_batch_jobs",
    "list_flagged_jobs",
    "list_review_history",
    "mark_batch_callback_sent",
    "purge_expired_jobs",
    "record_stage_results",
    "release_leases",
    "renew_leases",
    "requeue_stalled_job",
    "take_leases",
    "revoke_api_key_by_id",
    "store_image",
    "stream_flagged_rows",
    "summarize_audit",
    "transition_job",
    "transition_jobs",
]
