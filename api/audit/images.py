"""A job's input image for reviewers: the bytes from the blob store, only for the job's own tenant, and
thumbnails for the review list. Used by the API (`GET /v1/jobs/{id}/image`) and the review page.
"""

from __future__ import annotations

import io
import logging
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from flask import Response, request
from sqlalchemy.orm import Session

from eta.images import ImageError, ImageLimits, decode_image
from eta.settings import Settings
from eta.store import BlobNotFoundError, make_blob_store
from eta.store import repository as repo

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 320


class ImageUnavailable(Exception):
    """No image to serve; `code` says why (`job_not_found`, `job_has_no_image`, `image_purged`,
    `image_not_found`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class JobImage:
    sha256: str
    mime: str
    data: bytes


def load_job_image(*, session: Session, settings: Settings, tenant_id: uuid.UUID, job_id: uuid.UUID) -> JobImage:
    """The image of the tenant's job.

    Raises:
        ImageUnavailable: another tenant's or an unknown job (both `job_not_found`, so existence does
            not leak), a text-only job, an image purged by retention, or bytes missing from the store.
    """
    job = repo.get_job(session=session, tenant_id=tenant_id, job_id=job_id)
    if job is None:
        raise ImageUnavailable("job_not_found", f"no job {job_id}")
    if job.image_sha256 is None:
        raise ImageUnavailable("job_has_no_image", f"job {job_id} was submitted without an image")
    if job.purged_at is not None:
        raise ImageUnavailable("image_purged",
                               f"the image of job {job_id} was purged by retention on {job.purged_at:%Y-%m-%d}")
    image = repo.get_image(session=session, sha256=job.image_sha256)
    try:
        data = make_blob_store(session=session, settings=settings).get(job.image_sha256)
    except BlobNotFoundError:
        image = None
    if image is None:
        logger.warning("job %s: image %s is missing from the blob store", job_id, job.image_sha256)
        raise ImageUnavailable("image_not_found", f"the image of job {job_id} is missing from storage")
    return JobImage(sha256=job.image_sha256, mime=image.mime, data=data)


# Thumbnails by (sha256, side): an image's bytes never change under its digest, so a thumbnail made once is
# right for good. Bounded: the review list shows a page at a time.
_THUMBNAILS: OrderedDict[tuple[str, int], JobImage] = OrderedDict()
_THUMBNAIL_CACHE_SIZE = 512
_thumbnails_lock = threading.Lock()


def make_thumbnail(image: JobImage, settings: Settings, *, side: int = THUMBNAIL_SIDE) -> JobImage:
    """A JPEG of at most `side` pixels on the long side (decoded under the intake limits; cached per digest)."""
    key = (image.sha256, side)
    with _thumbnails_lock:
        if (cached := _THUMBNAILS.get(key)) is not None:
            _THUMBNAILS.move_to_end(key)
            return cached
    thumbnail = _render_thumbnail(image, settings, side)
    with _thumbnails_lock:
        _THUMBNAILS[key] = thumbnail
        while len(_THUMBNAILS) > _THUMBNAIL_CACHE_SIZE:
            _THUMBNAILS.popitem(last=False)
    return thumbnail


def _render_thumbnail(image: JobImage, settings: Settings, side: int) -> JobImage:
    limits = ImageLimits(max_bytes=settings.limits.max_image_bytes, max_pixels=settings.limits.max_image_pixels,
                         formats=frozenset(settings.limits.image_formats))
    try:
        decoded = decode_image(image.data, limits=limits, at_least=side).image
    except ImageError as exc:
        # Stored images passed these checks at intake; a failure here means the limits were lowered since.
        raise ImageUnavailable("image_not_found", f"the stored image cannot be decoded: {exc}") from exc
    decoded.thumbnail((side, side))
    out = io.BytesIO()
    decoded.save(out, format="JPEG", quality=82, optimize=True)
    return JobImage(sha256=image.sha256, mime="image/jpeg", data=out.getvalue())


def image_response(image: JobImage, *, variant: str) -> Response:
    """The bytes with their type, never sniffed, revalidated on each view (ETag: a purge takes effect at once)."""
    response = Response(image.data, mimetype=image.mime)
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Opened directly, the image is a document of its own: let it do nothing.
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["Cache-Control"] = "private, no-cache"
    response.set_etag(f"{image.sha256}-{variant}")
    response.make_conditional(request)  # turns itself into a 304 when the client's copy is current
    return response
