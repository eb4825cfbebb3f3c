"""Store rows to API documents."""

from __future__ import annotations

from typing import Any

from eta.store.lifecycle import TERMINAL_JOB_STATUSES
from eta.store.models import Batch, Job, JobResult


def preset_ref(job: Job) -> dict[str, Any] | None:
    """The preset a job's parameters were built on, as `{"name", "version"}`."""
    return {"name": job.preset_name, "version": job.preset_version} if job.preset_name else None


def result_doc(job: Job, result: JobResult | None, *, show_vanilla: bool) -> dict[str, Any] | None:
    if result is None:
        return None
    doc: dict[str, Any] = {
        "s_pre": result.s_pre,
        "pre_unsafe": result.pre_unsafe,
        "tau_pre": result.tau_pre,
        "s_post": result.s_post,
        "post_unsafe": result.post_unsafe,
        "tau_post": result.tau_post,
        "policy": result.policy,
        "aligned": result.aligned,
        "response": result.response,
        "s_post_final": result.s_post_final,
        "flagged": job.flagged,
        "flag_reasons": result.flag_reasons,
        "trace": result.trace,
        "fingerprint": result.fingerprint,
        "timings_ms": result.timings or {},
        "preset": preset_ref(job),
    }
    if show_vanilla:
        doc["vanilla_response"] = result.vanilla_response
    return doc


def job_doc(job: Job, result: JobResult | None, *, show_vanilla: bool) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "object": "job",
        "batch_id": str(job.batch_id) if job.batch_id else None,
        "custom_id": job.custom_id,
        "status": job.status.value,
        "prompt": job.prompt,
        "image_sha256": job.image_sha256,
        "seed": job.seed,
        "params": job.params,
        "attempts": job.attempts,
        "image_url": job.image_url,
        "preset": preset_ref(job),
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "result": result_doc(job, result, show_vanilla=show_vanilla),
    }


def batch_doc(batch: Batch, counts: dict[Any, int]) -> dict[str, Any]:
    by_name = {getattr(status, "value", status): n for status, n in counts.items()}
    total = sum(by_name.values())
    finished = sum(n for status, n in counts.items() if status in TERMINAL_JOB_STATUSES)
    return {
        "id": str(batch.id),
        "object": "batch",
        "status": batch.status.value,
        "total": total,
        "counts": by_name,
        "finished": finished,
        "progress": round(finished / total, 4) if total else 1.0,
        "params": batch.params,
        "callback_url": batch.callback_url,
        "idempotency_key": batch.idempotency_key,
        "created_at": batch.created_at.isoformat(),
        "finished_at": batch.finished_at.isoformat() if batch.finished_at else None,
    }
