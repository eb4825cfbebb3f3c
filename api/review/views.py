"""Views of the review page. Reads go through the same repository functions and record documents as the
audit API, so the page shows exactly what `/v1/audit/flagged` returns."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

from flask import Blueprint, Flask, Response, abort, flash, redirect, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from api.audit.images import ImageUnavailable, image_response, load_job_image, make_thumbnail
from api.audit.records import counts_doc, flat_row, record_doc, review_doc
from api.audit.schemas import MAX_NOTE_CHARS, AuditFilters, FlaggedQuery
from api.audit.verdicts import VerdictRefused, record_verdict
from api.problems import Problem
from api.review.session import (
    CSRF_FIELD,
    Reviewer,
    check_csrf,
    check_key,
    configure_cookie,
    csrf_token,
    current_reviewer,
    sign_in,
    sign_out,
)
from api.state import state
from eta.store import InvalidCursorError
from eta.store import repository as repo
from eta.store.models import ReviewVerdict, utcnow

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint("review", __name__, url_prefix="/review", template_folder="../templates",
               static_folder="../static/review", static_url_path="/static")

PAGE_SIZE = 25
SUMMARY_DAYS = 30
FILTER_FIELDS = tuple(AuditFilters.model_fields)
VERDICT_LABELS = {verdict.value: verdict.label for verdict in ReviewVerdict}
_PLACEHOLDERS = {
    "image_purged": "Image purged by retention",
    "job_has_no_image": "Text-only job: no image",
    "image_not_found": "Image missing from storage",
}
# No script runs on these pages; images and styles come from this site only.
_PAGE_CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; "
             "base-uri 'none'")


@bp.record_once
def _configure(setup: BlueprintSetupState) -> None:
    configure_cookie(cast(Flask, setup.app))


# Fields whose text may run over several lines (a textarea); every other field is one line.
_MULTILINE_FIELDS = frozenset({"note"})
_LINE_BREAKS = frozenset("\t\r\n")


def _field_problem(name: str, value: str) -> str | None:
    """Why a query or form value cannot be taken as it is, or None. Invalid UTF-8 reaches here as lone
    surrogates (the strict form parsers of `api.guards`)."""
    shown = name.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")[:40]
    try:
        value.encode("utf-8")
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"The field {shown!r} is not valid UTF-8."
    if "\x00" in value or "\x00" in name:
        return f"The field {shown!r} contains a NUL character."
    allowed = _LINE_BREAKS if name in _MULTILINE_FIELDS else frozenset()
    if any((c < " " or c == "\x7f") and c not in allowed for c in value):
        return f"The field {shown!r} contains a line break or another control character."
    return None


@bp.before_request
def _check_fields() -> None:
    # Before anything reads a field (the CSRF check, sign-in, a redirect): a value that cannot be stored or
    # put in a header is a 400 naming the field, and nothing has been written.
    fields = list(request.args.items(multi=True))
    if request.method == "POST":
        fields += list(request.form.items(multi=True))
    for name, value in fields:
        if (problem := _field_problem(name, value)) is not None:
            abort(400, description=problem)


@bp.before_request
def _csrf() -> None:
    if request.method == "POST":
        check_csrf()


@bp.after_request
def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", _PAGE_CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        # Pages show flagged content and the vanilla answers: keep them out of shared and back-button caches.
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(HTTPException)
def _error_page(exc: HTTPException) -> tuple[str, int]:
    return render_template("review/error.html", status=exc.code or 500, title=exc.name,
                           message=exc.description), exc.code or 500


@bp.context_processor
def _template_helpers() -> dict[str, Any]:
    return {"csrf_field": CSRF_FIELD, "csrf_token": csrf_token, "verdict_labels": VERDICT_LABELS,
            "score": _score, "when": _when, "reviewer": current_reviewer()}


def _score(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _when(value: str | datetime | None) -> str:
    if value is None:
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def reviewer_required(view: F) -> F:
    """Run the view with the signed-in reviewer, or send the browser to the sign-in form."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        reviewer = current_reviewer()
        if reviewer is None:
            return redirect(url_for(".login", next=request.full_path.rstrip("?")))
        return view(reviewer, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def inside_review_pages(target: str | None) -> bool:
    """Whether `target` is a path of the review pages: no scheme or host (an open redirect), no backslash
    (some browsers read it as a slash), no control character (a header split), no dot segment, plain or
    percent-encoded, that climbs out of /review."""
    if not target or "\\" in target or any(c < " " or c == "\x7f" for c in target):
        return False
    parts = urlsplit(target)
    path = unquote(parts.path)
    if parts.scheme or parts.netloc or "\\" in path or any(c < " " or c == "\x7f" for c in path):
        return False
    if path != "/review" and not path.startswith("/review/"):
        return False
    return not any(segment in (".", "..") for segment in path.split("/"))


def _safe_next(target: str | None) -> str:
    # Only back into this page; anything else lands on the list.
    return target if target is not None and inside_review_pages(target) else url_for(".flagged")


# ------------------------------------------------------------------------------------------- sign-in
@bp.get("/login")
def login() -> Any:
    if current_reviewer() is not None:
        return redirect(_safe_next(request.args.get("next")))
    return render_template("review/login.html", next=request.args.get("next", ""), error=None)


@bp.post("/login")
def login_submit() -> Any:
    # Wrong keys typed here count against the address like wrong keys sent to the API: no guessing through
    # the sign-in form once the API refuses the address.
    limits = state().rate_limits
    address = request.remote_addr or "unknown"
    try:
        limits.check_address(address)
    except Problem as limited:
        return render_template("review/login.html", next=request.form.get("next", ""),
                               error=limited.detail), limited.status, limited.headers
    key, refusal = check_key(request.form.get("api_key", ""))
    if key is None:
        assert refusal is not None  # noqa: S101 - check_key gives one or the other
        if refusal.status == 401:
            limits.failed_authentication(address)
        return render_template("review/login.html", next=request.form.get("next", ""),
                               error=refusal.message), refusal.status
    sign_in(key)
    return redirect(_safe_next(request.form.get("next")))


@bp.post("/logout")
def logout() -> Any:
    sign_out()
    return redirect(url_for(".login"))


# --------------------------------------------------------------------------------------------- list
def _filter_values() -> dict[str, str]:
    return {name: request.args[name].strip() for name in FILTER_FIELDS if request.args.get(name, "").strip()}


@bp.get("/")
@reviewer_required
def flagged(reviewer: Reviewer) -> Any:
    values: dict[str, Any] = _filter_values()
    errors: list[str] = []
    try:
        query = FlaggedQuery.model_validate({**values, "limit": PAGE_SIZE, "cursor": request.args.get("cursor")})
    except ValidationError as exc:
        errors = [f"{'.'.join(str(p) for p in e['loc']) or 'filters'}: {e['msg']}" for e in exc.errors()]
        query = None
    records: list[dict[str, Any]] = []
    next_cursor = None
    summary = None
    db = state().session()
    if query is not None:
        try:
            page = repo.list_flagged_jobs(session=db, tenant_id=reviewer.tenant_id, filters=query.to_filter(),
                                          limit=PAGE_SIZE, cursor=query.cursor)
        except InvalidCursorError:
            errors.append("That page link is no longer valid: showing the first page.")
            page = repo.list_flagged_jobs(session=db, tenant_id=reviewer.tenant_id, filters=query.to_filter(),
                                          limit=PAGE_SIZE)
        records = [record_doc(flat_row(item, with_vanilla=False), with_vanilla=False) for item in page.items]
        next_cursor = page.next_cursor
        # Without a time range the strip covers the last SUMMARY_DAYS days: one pass over a bounded range
        # however long the tenant's history is.
        ranged = query.created_from is not None or query.created_before is not None
        summary_from = query.created_from if ranged else utcnow() - timedelta(days=SUMMARY_DAYS)
        summary = counts_doc(repo.summarize_audit(session=db, tenant_id=reviewer.tenant_id,
                                                  created_from=summary_from, created_before=query.created_before,
                                                  batch_id=query.batch_id).total)
        summary["label"] = "Selected range" if ranged else f"Last {SUMMARY_DAYS} days"
    next_url = url_for(".flagged", **values, cursor=next_cursor) if next_cursor else None
    return render_template("review/list.html", records=records, filters=values, errors=errors, summary=summary,
                           next_url=next_url, first_url=url_for(".flagged", **values) if "cursor" in request.args
                           else None)


# ------------------------------------------------------------------------------------------- detail
@bp.get("/jobs/<uuid:job_id>")
@reviewer_required
def job_detail(reviewer: Reviewer, job_id: uuid.UUID) -> Any:
    db = state().session()
    item = repo.get_flagged_job(session=db, tenant_id=reviewer.tenant_id, job_id=job_id)
    if item is None:
        abort(404, description=f"There is no job {job_id} with results in your tenant.")
    record = record_doc(flat_row(item, with_vanilla=True), with_vanilla=True)
    record["result"]["flagged"] = item.job.flagged
    history = [review_doc(entry) for entry in repo.list_review_history(session=db, tenant_id=reviewer.tenant_id,
                                                                      job_id=job_id)]
    return render_template("review/detail.html", record=record, trace=item.result.trace or [],
                           timings=item.result.timings or {}, seed=item.job.seed, history=history[::-1],
                           note_limit=MAX_NOTE_CHARS, back_url=_safe_next(request.args.get("back")))


@bp.post("/jobs/<uuid:job_id>/verdict")
@reviewer_required
def job_verdict(reviewer: Reviewer, job_id: uuid.UUID) -> Any:
    verdict = request.form.get("verdict", "")
    note = request.form.get("note", "")
    back = request.form.get("back")
    back_args: dict[str, Any] = {"back": back} if back else {}
    detail = url_for(".job_detail", job_id=job_id, **back_args)
    if verdict not in VERDICT_LABELS:
        abort(400, description="Choose one of the verdict buttons.")
    if len(note) > MAX_NOTE_CHARS:
        flash(f"The note is longer than {MAX_NOTE_CHARS} characters; nothing was recorded.", "error")
        return redirect(detail)
    try:
        with state().transaction() as db:
            record_verdict(session=db, tenant_id=reviewer.tenant_id, reviewer_key_id=reviewer.key_id,
                           job_id=job_id, verdict=verdict, note=note)
    except VerdictRefused as exc:
        if exc.status == 404:
            abort(404, description=str(exc))
        flash(str(exc), "error")
        return redirect(detail)
    flash(f"Recorded: {VERDICT_LABELS[verdict]}.", "success")
    return redirect(detail)


# -------------------------------------------------------------------------------------------- image
@bp.get("/jobs/<uuid:job_id>/image")
def job_image(job_id: uuid.UUID) -> Any:
    reviewer = current_reviewer()
    if reviewer is None:
        abort(401, description="Sign in to see images.")
    variant = "thumb" if request.args.get("size") == "thumb" else "full"
    settings = state().settings
    try:
        image = load_job_image(session=state().session(), settings=settings, tenant_id=reviewer.tenant_id,
                               job_id=job_id)
        if variant == "thumb":
            image = make_thumbnail(image, settings)
    except ImageUnavailable as exc:
        if exc.code == "job_not_found":
            abort(404, description=str(exc))
        return _placeholder(_PLACEHOLDERS.get(exc.code, "Image unavailable"))
    return image_response(image, variant=variant)


def _placeholder(message: str) -> WerkzeugResponse:
    response = Response(render_template("review/placeholder.svg", message=message), mimetype="image/svg+xml")
    response.headers["Cache-Control"] = "no-store"
    return response
