"""Shared by job and batch submission: store a validated submission, then enqueue after the commit."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from api.auth import current_principal
from api.intake import ItemError, RawItem, SubmissionInvalid, ValidSubmission
from api.problems import Problem
from api.state import state
from eta.fetch import check_image_url
from eta.outbound import parse_networks
from eta.store import make_blob_store
from eta.store import repository as repo
from eta.store.models import Preset
from eta.store.repository.presets import resolve_presets

logger = logging.getLogger(__name__)


def invalid(exc: SubmissionInvalid, *, what: str, line_numbers: bool = False) -> Problem:
    errors = [e.to_dict(line_numbers=line_numbers) for e in exc.errors]
    first = exc.errors[0]
    where = f"line {first.index + 1}" if line_numbers else f"item {first.index}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return Problem(422, f"{what}_invalid", f"Invalid {what}", f"{where}: {first.message}{more}", errors=errors)


def single_error(field: str, code: str, message: str) -> SubmissionInvalid:
    return SubmissionInvalid([ItemError(0, field, code, message)])


def store_images(session: Any, submission: ValidSubmission) -> None:
    """Write each distinct image once (content-addressed), in the submission's transaction.

    In digest order: each image's row is locked, and the retention purge locks them in that order too.
    """
    blobs = make_blob_store(session=session, settings=state().settings)
    for image in sorted(submission.images.values(), key=lambda image: image.sha256):
        repo.store_image(session=session, blobs=blobs, data=image.data, mime=image.mime, width=image.width,
                         height=image.height)


def dispatch(job_ids: Sequence[uuid.UUID]) -> str:
    """Enqueue committed jobs. A broker failure is not the client's: the jobs stay `queued` for the sweeper.

    The tenant's other unfinished jobs set the new chunks' place in the queues, so tenants take turns.
    """
    try:
        with state().read() as session:
            active = repo.count_active_jobs(session=session, tenant_id=current_principal().tenant_id)
        state().enqueue(job_ids, ahead=max(0, active - len(job_ids)))
    except Exception as exc:
        logger.warning("broker unreachable, %d job(s) left queued for the sweeper: %s", len(job_ids), exc)
        return "deferred"
    return "dispatched"


def preset_lookup(items: Sequence[RawItem], batch_preset: Any = None) -> dict[str, Preset | str]:
    """The stored version of every preset the items (or the batch) name, read in one short transaction."""
    references = [r for r in [batch_preset, *(item.preset for item in items)] if isinstance(r, str)]
    if not references:
        return {}
    with state().read() as session:
        return resolve_presets(session=session, tenant_id=current_principal().tenant_id, references=references)


def image_url_check() -> Callable[[str], object]:
    """Checks an item's `image_url` at submission with this server's outbound networks: a URL whose host
    resolves to loopback, a private or a metadata address is refused before anything is stored."""
    allowed = parse_networks(state().settings.workers.callback_allowed_networks)
    return lambda url: check_image_url(url, allowed=allowed)
