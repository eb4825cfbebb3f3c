"""Batches: submit many items at once (JSON or a JSONL manifest with files), read, page results, cancel."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from flask import Blueprint, request
from spectree import Response as Responses

from api.auth import READ, SUBMIT, current_principal, requires
from api.etags import client_has, make_etag, not_modified, tagged
from api.guards import field_bytes
from api.intake import (
    ItemError,
    RawItem,
    SubmissionInvalid,
    decode_base64_image,
    parse_manifest,
    parse_params,
    take_image_url,
)
from api.intake import validate_items as validate
from api.problems import Problem
from api.ratelimit import check_quota
from api.routes.jobs import not_found
from api.routes.submit import dispatch, image_url_check, invalid, preset_lookup, single_error, store_images
from api.schemas import BatchCreate, BatchCreateForm, BatchOut, BatchSubmitted, PageQuery, ProblemOut, ResultsPage
from api.serialize import batch_doc, job_doc
from api.spec import spec, validated
from api.state import state
from eta.config import ConfigError
from eta.outbound import OutboundRefused, check_target, parse_networks
from eta.store import IdempotencyConflictError, InvalidCursorError
from eta.store import repository as repo

logger = logging.getLogger(__name__)

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")

_ERRORS = {"HTTP_401": ProblemOut, "HTTP_403": ProblemOut, "HTTP_404": ProblemOut}
MAX_IDEMPOTENCY_KEY = 255


def _check_callback_url(url: Any) -> str | None:
    """An absolute http(s) URL whose host resolves to public addresses only (or the operator's allowed
    networks); checked again when the callback is sent."""
    if url is None or url == "":
        return None
    try:
        check_target(url, allowed=parse_networks(state().settings.workers.callback_allowed_networks))
    except OutboundRefused as exc:
        raise invalid(single_error("callback_url", exc.code, str(exc)), what="batch") from exc
    return str(url)


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise Problem(400, "idempotency_key_invalid", "Bad Request",
                      f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters")
    return key


def _items_from_json(body: BatchCreate) -> list[RawItem]:
    items = []
    for index, entry in enumerate(body.items):
        item = RawItem(prompt=entry.prompt, params=entry.params, custom_id=entry.custom_id, preset=entry.preset)
        if entry.image_base64 is not None:
            try:
                item.image = decode_base64_image(entry.image_base64)
            except ValueError as exc:
                item.image_error = ItemError(index, "image_base64", "image_base64_invalid", str(exc))
        take_image_url(item, entry.image_url, index=index)
        items.append(item)
    return items


def _items_from_form() -> tuple[list[RawItem], list[ItemError]]:
    manifest = request.files.get("manifest")
    if manifest is not None:
        manifest_bytes = manifest.read()
    elif request.form.get("manifest"):
        manifest_bytes = field_bytes(request.form["manifest"])  # a part without a file name
    else:
        raise invalid(single_error("manifest", "manifest_missing", "upload the JSONL manifest as `manifest`"),
                      what="batch")
    if "files" in request.form:
        raise invalid(single_error("files", "files_not_uploaded", "upload images as file parts named `files`"),
                      what="batch")
    files: dict[str, bytes] = {}
    for field_name, upload in request.files.items(multi=True):
        if field_name != "manifest" and upload.filename:
            files[upload.filename] = upload.read()
    return parse_manifest(manifest_bytes, files)


@bp.post("")
@requires(SUBMIT)
@spec.validate(json=BatchCreate, form=BatchCreateForm,
               resp=Responses(HTTP_202=BatchSubmitted, HTTP_409=ProblemOut, HTTP_413=ProblemOut, HTTP_422=ProblemOut,
                              **_ERRORS),
               tags=["batches"])
def submit_batch() -> Any:
    """Submit a batch. All-or-nothing: one bad item rejects the batch with a 422 naming every bad item.

    `Idempotency-Key`: the same key with the same body returns the same batch; with another body, 409.
    """
    principal = current_principal()
    json: BatchCreate | None = validated("json")
    form: BatchCreateForm | None = validated("form")
    key = _idempotency_key()
    line_numbers = form is not None
    read_errors: list[ItemError] = []
    callback_url: Any
    batch_preset: Any = None
    if json is not None:
        raw_items = _items_from_json(json)
        params, callback_url, batch_preset = json.params, json.callback_url, json.preset
    elif form is not None:
        raw_items, read_errors = _items_from_form()
        try:
            params = parse_params(form.params, where="params")
        except ConfigError as exc:
            raise invalid(single_error("params", "params_invalid", str(exc)), what="batch") from exc
        callback_url, batch_preset = form.callback_url, form.preset or None
    else:
        raise Problem(415, "unsupported_media_type", "Unsupported Media Type",
                      "send application/json or multipart/form-data")
    callback_url = _check_callback_url(callback_url)
    try:
        if not raw_items and not read_errors:
            raise SubmissionInvalid([ItemError(0, "items", "batch_empty", "the batch has no items")])
        try:
            submission = validate(raw_items, batch_params=params, settings=state().settings,
                                  presets=preset_lookup(raw_items, batch_preset), batch_preset=batch_preset,
                                  check_url=image_url_check())
        except SubmissionInvalid as exc:
            exc.errors = sorted(read_errors + exc.errors, key=lambda e: e.index)
            raise
        if read_errors:
            raise SubmissionInvalid(read_errors)
    except SubmissionInvalid as exc:
        raise invalid(exc, what="batch", line_numbers=line_numbers) from exc

    request_hash = submission.request_hash(callback_url=callback_url)
    try:
        with state().transaction() as session:
            check_quota(session, tenant_id=principal.tenant_id, adding=len(submission.jobs), settings=state().settings)
            store_images(session, submission)
            submitted = repo.create_batch_with_jobs(
                session=session, tenant_id=principal.tenant_id, jobs=submission.jobs, params=submission.batch_params,
                idempotency_key=key, request_hash=request_hash, callback_url=callback_url,
            )
            counts = repo.count_jobs_by_status(session=session, tenant_id=principal.tenant_id,
                                               batch_id=submitted.batch.id)
            doc = batch_doc(submitted.batch, counts)
    except IdempotencyConflictError as exc:
        raise Problem(409, "idempotency_key_reused", "Conflict",
                      "this Idempotency-Key was already used with a different request body") from exc
    if submitted.created:
        state().metrics.jobs_submitted.labels("batch").inc(len(submitted.job_ids))
        outcome = dispatch(submitted.job_ids)
    else:
        outcome = "replayed"
    doc["submission"] = {"dispatch": outcome}
    headers = {"Location": f"/v1/batches/{doc['id']}"}
    if not submitted.created:
        headers["Idempotent-Replayed"] = "true"
    return doc, 202, headers


def _load_batch_doc(batch_id: uuid.UUID) -> dict[str, Any]:
    principal = current_principal()
    with state().read() as session:
        batch = repo.get_batch(session=session, tenant_id=principal.tenant_id, batch_id=batch_id)
        if batch is None:
            raise not_found("batch", batch_id)
        counts = repo.count_jobs_by_status(session=session, tenant_id=principal.tenant_id, batch_id=batch_id)
        return batch_doc(batch, counts)


@bp.get("/<uuid:batch_id>")
@requires(READ)
@spec.validate(resp=Responses(HTTP_200=BatchOut, HTTP_304=None, **_ERRORS), tags=["batches"])
def get_batch(batch_id: uuid.UUID) -> Any:
    """A batch with its job counts per status and its progress.

    Every answer carries an `ETag`; `If-None-Match: <etag>` answers 304 (no body) while nothing changed.
    """
    doc = _load_batch_doc(batch_id)
    etag = make_etag("batch", doc["status"], doc["counts"], doc["finished_at"])
    if client_has(etag):
        return not_modified(etag)
    return tagged(doc, etag)


@bp.get("/<uuid:batch_id>/results")
@requires(READ)
@spec.validate(query=PageQuery, resp=Responses(HTTP_200=ResultsPage, HTTP_422=ProblemOut, **_ERRORS),
               tags=["batches"])
def batch_results(batch_id: uuid.UUID) -> Any:
    """The batch's jobs in submission order with their results, keyset-paged (`next_cursor`)."""
    principal = current_principal()
    query: PageQuery = validated("query")
    with state().read() as session:
        if repo.get_batch(session=session, tenant_id=principal.tenant_id, batch_id=batch_id) is None:
            raise not_found("batch", batch_id)
        try:
            page = repo.list_batch_jobs(session=session, tenant_id=principal.tenant_id, batch_id=batch_id,
                                        limit=query.limit, cursor=query.cursor)
        except InvalidCursorError as exc:
            raise Problem(422, "cursor_invalid", "Invalid cursor", str(exc)) from exc
        results = repo.get_job_results(session=session, tenant_id=principal.tenant_id,
                                       job_ids=[job.id for job in page.items])
        show = principal.can("review")
        data = [job_doc(job, results.get(job.id), show_vanilla=show) for job in page.items]
    return {"object": "list", "data": data, "next_cursor": page.next_cursor}


@bp.post("/<uuid:batch_id>/cancel")
@requires(SUBMIT)
@spec.validate(resp=Responses(HTTP_200=BatchOut, HTTP_409=ProblemOut, **_ERRORS), tags=["batches"])
def cancel_batch(batch_id: uuid.UUID) -> Any:
    """Cancel a batch and every job of it that has not ended; 409 when the batch already ended."""
    principal = current_principal()
    with state().transaction() as session:
        batch = repo.get_batch(session=session, tenant_id=principal.tenant_id, batch_id=batch_id)
        if batch is None:
            raise not_found("batch", batch_id)
        if not repo.cancel_batch(session=session, tenant_id=principal.tenant_id, batch_id=batch_id):
            raise Problem(409, "batch_not_cancellable", "Conflict",
                          f"batch {batch_id} already ended ({batch.status.value})")
    return _load_batch_doc(batch_id)
