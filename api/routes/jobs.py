"""Single jobs: submit (JSON or multipart), read, cancel."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from flask import Blueprint, request
from spectree import Response as Responses

from api.auth import READ, SUBMIT, current_principal, requires
from api.etags import client_has, make_etag, not_modified, tagged
from api.guards import field_bytes
from api.intake import RawItem, SubmissionInvalid, decode_base64_image, take_image_url, validate_items
from api.problems import Problem
from api.ratelimit import check_quota
from api.routes.submit import dispatch, image_url_check, invalid, preset_lookup, single_error, store_images
from api.schemas import JobCreate, JobCreateForm, JobOut, JobSubmitted, ProblemOut
from api.serialize import job_doc
from api.spec import spec, validated
from api.state import state
from eta.store import repository as repo

logger = logging.getLogger(__name__)

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

_ERRORS = {"HTTP_401": ProblemOut, "HTTP_403": ProblemOut, "HTTP_404": ProblemOut}


def _raw_item_from_request(json: JobCreate | None, form: JobCreateForm | None) -> RawItem:
    if json is not None:
        item = RawItem(prompt=json.prompt, params=json.params, custom_id=json.custom_id, preset=json.preset)
        if json.image_base64 is not None:
            try:
                item.image = decode_base64_image(json.image_base64)
            except ValueError as exc:
                raise invalid(single_error("image_base64", "image_base64_invalid", str(exc)), what="job") from exc
        take_image_url(item, json.image_url, index=0)
        return item
    if form is not None:
        upload = request.files.get("image")
        image = upload.read() if upload is not None else None
        if upload is None and request.form.get("image"):
            image = field_bytes(request.form["image"])  # a part without a file name: its bytes as sent
        item = RawItem(prompt=form.prompt, params=form.params, custom_id=form.custom_id, image=image,
                       preset=form.preset or None)
        take_image_url(item, form.image_url or None, index=0)
        return item
    raise Problem(415, "unsupported_media_type", "Unsupported Media Type",
                  "send application/json or multipart/form-data")


def not_found(kind: str, ident: uuid.UUID) -> Problem:
    return Problem(404, f"{kind}_not_found", "Not Found", f"no {kind} {ident}")


@bp.post("")
@requires(SUBMIT)
@spec.validate(json=JobCreate, form=JobCreateForm,
               resp=Responses(HTTP_202=JobSubmitted, HTTP_422=ProblemOut, HTTP_413=ProblemOut, **_ERRORS),
               tags=["jobs"])
def submit_job() -> Any:
    """Submit one job: a prompt and an optional image. Answers 202 with the queued job."""
    principal = current_principal()
    item = _raw_item_from_request(validated("json"), validated("form"))
    try:
        submission = validate_items([item], batch_params=None, settings=state().settings,
                                    presets=preset_lookup([item]), check_url=image_url_check())
    except SubmissionInvalid as exc:
        raise invalid(exc, what="job") from exc
    with state().transaction() as session:
        check_quota(session, tenant_id=principal.tenant_id, adding=1, settings=state().settings)
        store_images(session, submission)
        job = repo.create_job(session=session, tenant_id=principal.tenant_id, job=submission.jobs[0])
        doc = job_doc(job, None, show_vanilla=False)
    state().metrics.jobs_submitted.labels("job").inc()
    doc["submission"] = {"dispatch": dispatch([uuid.UUID(doc["id"])])}
    return doc, 202, {"Location": f"/v1/jobs/{doc['id']}"}


def load_job_doc(job_id: uuid.UUID) -> dict[str, Any]:
    principal = current_principal()
    with state().read() as session:
        found = repo.get_job_with_result(session=session, tenant_id=principal.tenant_id, job_id=job_id)
        if found is None:
            raise not_found("job", job_id)
        return job_doc(*found, show_vanilla=principal.can("review"))


def _job_etag(version: tuple[Any, ...], show_vanilla: bool) -> str:
    return make_etag("job", version, show_vanilla)


@bp.get("/<uuid:job_id>")
@requires(READ)
@spec.validate(resp=Responses(HTTP_200=JobOut, HTTP_304=None, **_ERRORS), tags=["jobs"])
def get_job(job_id: uuid.UUID) -> Any:
    """A job with its status and, once stages have run, its scores and answer.

    Every answer carries an `ETag`; polling with `If-None-Match: <etag>` answers 304 (no body) until the job
    changes, which costs the service a fraction of a full read.
    """
    principal = current_principal()
    show_vanilla = principal.can("review")
    with state().read() as session:
        if request.if_none_match:
            version = repo.get_job_version(session=session, tenant_id=principal.tenant_id, job_id=job_id)
            if version is None:
                raise not_found("job", job_id)
            etag = _job_etag(version, show_vanilla)
            if client_has(etag):
                return not_modified(etag)
        found = repo.get_job_with_result(session=session, tenant_id=principal.tenant_id, job_id=job_id)
        if found is None:
            raise not_found("job", job_id)
        job = found[0]
        etag = _job_etag((job.updated_at, job.status, job.purged_at), show_vanilla)
        return tagged(job_doc(*found, show_vanilla=show_vanilla), etag)


@bp.post("/<uuid:job_id>/cancel")
@requires(SUBMIT)
@spec.validate(resp=Responses(HTTP_200=JobOut, HTTP_409=ProblemOut, **_ERRORS), tags=["jobs"])
def cancel_job(job_id: uuid.UUID) -> Any:
    """Cancel a job that has not ended. A job already ended answers 409."""
    principal = current_principal()
    with state().transaction() as session:
        job = repo.get_job(session=session, tenant_id=principal.tenant_id, job_id=job_id)
        if job is None:
            raise not_found("job", job_id)
        if not repo.cancel_job(session=session, tenant_id=principal.tenant_id, job_id=job_id):
            raise Problem(409, "job_not_cancellable", "Conflict", f"job {job_id} already ended ({job.status.value})")
    return load_job_doc(job_id)
