"""Audit: flagged jobs (paged and exported), the tenant's summary, reviewers' verdicts, job images.

Reading needs a key that may read (any role); the vanilla answer is only shown to review and admin keys;
recording a verdict needs a review or admin key. Another tenant's job is a 404, like an unknown id.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, stream_with_context
from spectree import Response as Responses
from werkzeug.wrappers import Response as WerkzeugResponse

from api.audit.images import ImageUnavailable, image_response, load_job_image, make_thumbnail
from api.audit.records import csv_chunks, flat_row, jsonl_chunks, record_doc, review_doc, summary_doc
from api.audit.schemas import (
    AuditPage,
    ExportQuery,
    FlaggedQuery,
    ImageQuery,
    ReviewCreate,
    ReviewList,
    ReviewOut,
    SummaryOut,
    SummaryQuery,
)
from api.audit.verdicts import VerdictRefused, record_verdict
from api.auth import READ, REVIEW, current_principal, requires
from api.problems import Problem
from api.routes.jobs import not_found
from api.schemas import ProblemOut
from api.spec import spec, validated
from api.state import close_request_session, state
from eta.store import InvalidCursorError
from eta.store import repository as repo
from eta.store.models import utcnow

logger = logging.getLogger(__name__)

bp = Blueprint("audit", __name__, url_prefix="/v1")

_ERRORS = {"HTTP_401": ProblemOut, "HTTP_403": ProblemOut}
_EXPORT_TYPES = {"jsonl": "application/x-ndjson; charset=utf-8", "csv": "text/csv; charset=utf-8"}


class StreamedResponse(WerkzeugResponse):
    """A streamed body. Deliberately not a `flask.Response`: spectree's response step calls `get_data()` on
    those, which would read the whole stream into memory before sending a byte; Flask adopts this one as is."""


@bp.get("/audit/flagged")
@requires(READ)
@spec.validate(query=FlaggedQuery, resp=Responses(HTTP_200=AuditPage, HTTP_422=ProblemOut, **_ERRORS),
               tags=["audit"])
def list_flagged() -> Any:
    """The tenant's flagged jobs, newest first, keyset-paged (`next_cursor`).

    Each record has the scores with the thresholds in force, both flags, the decision (policy, aligned),
    the final answer, the fingerprint and the newest verdict; `result.vanilla_response` for review and
    admin keys only.
    """
    principal = current_principal()
    query: FlaggedQuery = validated("query")
    with_vanilla = principal.can(REVIEW)
    with state().read() as session:
        try:
            page = repo.list_flagged_jobs(session=session, tenant_id=principal.tenant_id, filters=query.to_filter(),
                                          limit=query.limit, cursor=query.cursor)
        except InvalidCursorError as exc:
            raise Problem(422, "cursor_invalid", "Invalid cursor", str(exc)) from exc
        data = [record_doc(flat_row(item, with_vanilla=with_vanilla), with_vanilla=with_vanilla)
                for item in page.items]
    return {"object": "list", "data": data, "next_cursor": page.next_cursor}


@bp.get("/audit/export")
@requires(READ)
@spec.validate(query=ExportQuery,
               resp=Responses(HTTP_200=(None, "The records as JSON Lines or CSV, streamed."), HTTP_422=ProblemOut,
                              **_ERRORS),
               tags=["audit"])
def export_flagged() -> StreamedResponse:
    """Every flagged job matching the filters, newest first, streamed as JSON Lines (one record per line,
    as in `/v1/audit/flagged`) or CSV (flat columns; `fingerprint_sha256` instead of the fingerprint).

    Memory stays flat however many rows match: rows come through a server-side cursor in small batches
    and are written out as they arrive. CSV cells starting with `= + - @` are prefixed with `'`.
    """
    principal = current_principal()
    query: ExportQuery = validated("query")
    filters, with_vanilla = query.to_filter(), principal.can(REVIEW)
    sessions, fetch_rows = state().sessions, state().settings.api.export_fetch_rows
    # Authentication's session is done with: return its connection now rather than hold it for the stream.
    close_request_session()

    def rows() -> Iterator[Any]:
        with sessions() as session, session.begin():
            yield from repo.stream_flagged_rows(session=session, tenant_id=principal.tenant_id, filters=filters,
                                                with_vanilla=with_vanilla, with_fingerprint=query.format == "jsonl",
                                                fetch_rows=fetch_rows)

    encode = csv_chunks if query.format == "csv" else jsonl_chunks
    response = StreamedResponse(stream_with_context(encode(rows(), with_vanilla=with_vanilla)),
                                content_type=_EXPORT_TYPES[query.format])
    filename = f"eta-flagged-{utcnow():%Y%m%dT%H%M%SZ}.{query.format}"
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    # Proxies that buffer responses (nginx) would hold the whole export back.
    response.headers["X-Accel-Buffering"] = "no"
    logger.info("export (%s) of flagged jobs for tenant %s by key %s", query.format, principal.tenant_id,
                principal.prefix)
    return response


@bp.get("/audit/summary")
@requires(READ)
@spec.validate(query=SummaryQuery, resp=Responses(HTTP_200=SummaryOut, HTTP_422=ProblemOut, **_ERRORS),
               tags=["audit"])
def audit_summary() -> Any:
    """Counts over the tenant's jobs created in a time range: evaluated, flagged, aligned, reviewed, newest
    verdicts and false-positive rates, in total and per pair of thresholds (`tau_pre`, `tau_post`) in force:
    the numbers to tune the thresholds with."""
    principal = current_principal()
    query: SummaryQuery = validated("query")
    with state().read() as session:
        summary = repo.summarize_audit(session=session, tenant_id=principal.tenant_id,
                                       created_from=query.created_from, created_before=query.created_before,
                                       batch_id=query.batch_id)
    return summary_doc(summary, batch_id=query.batch_id)


@bp.post("/jobs/<uuid:job_id>/review")
@requires(REVIEW)
@spec.validate(json=ReviewCreate,
               resp=Responses(HTTP_201=ReviewOut, HTTP_404=ProblemOut, HTTP_409=ProblemOut, HTTP_422=ProblemOut,
                              **_ERRORS),
               tags=["audit"])
def review_job(job_id: uuid.UUID) -> Any:
    """Record a verdict (`confirmed_unsafe`, `false_positive`, `needs_escalation`) and an optional note on a
    succeeded job. Earlier verdicts are kept; the newest is the job's review state."""
    principal = current_principal()
    body: ReviewCreate = validated("json")
    with state().transaction() as session:
        try:
            review = record_verdict(session=session, tenant_id=principal.tenant_id, reviewer_key_id=principal.key_id,
                                    job_id=job_id, verdict=body.verdict, note=body.note)
        except VerdictRefused as exc:
            raise Problem(exc.status, exc.code, "Not Found" if exc.status == 404 else "Conflict", str(exc)) from exc
        doc = review_doc(repo.ReviewEntry(review=review, reviewer_prefix=principal.prefix))
    return doc, 201, {"Location": f"/v1/jobs/{job_id}/reviews"}


@bp.get("/jobs/<uuid:job_id>/reviews")
@requires(READ)
@spec.validate(resp=Responses(HTTP_200=ReviewList, HTTP_404=ProblemOut, **_ERRORS), tags=["audit"])
def list_job_reviews(job_id: uuid.UUID) -> Any:
    """Every verdict on the job, oldest first, with the key that recorded it."""
    principal = current_principal()
    with state().read() as session:
        if repo.get_job(session=session, tenant_id=principal.tenant_id, job_id=job_id) is None:
            raise not_found("job", job_id)
        history = repo.list_review_history(session=session, tenant_id=principal.tenant_id, job_id=job_id)
        return {"object": "list", "data": [review_doc(entry) for entry in history]}


@bp.get("/jobs/<uuid:job_id>/image")
@requires(READ)
@spec.validate(query=ImageQuery,
               resp=Responses(HTTP_200=(None, "The image bytes (thumb: a JPEG)."), HTTP_304=None,
                              HTTP_404=ProblemOut, **_ERRORS),
               tags=["audit"])
def job_image(job_id: uuid.UUID) -> Response:
    """The job's input image, for the job's tenant only. 404 `image_purged` once retention removed it,
    `job_has_no_image` for a text-only job."""
    principal = current_principal()
    query: ImageQuery = validated("query")
    settings = state().settings
    with state().read() as session:
        try:
            image = load_job_image(session=session, settings=settings, tenant_id=principal.tenant_id, job_id=job_id)
            if query.size == "thumb":
                image = make_thumbnail(image, settings)
        except ImageUnavailable as exc:
            raise Problem(404, exc.code, "Not Found", str(exc)) from exc
    return image_response(image, variant=query.size)
