"""Input images: bytes in a blob store, metadata in `images`, both once per sha256."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from eta.store.blobs import BlobStore
from eta.store.models import Image
from eta.store.sql import insert_ignoring_duplicates

logger = logging.getLogger(__name__)


def store_image(*, session: Session, blobs: BlobStore, data: bytes, mime: str, width: int, height: int) -> str:
    """Store an already-validated image and return its sha256; storing the same bytes again is a no-op.

    Safe when two requests upload the same image at once: both get the digest, one row exists.
    """
    digest = blobs.put(data, mime=mime)
    inserted = insert_ignoring_duplicates(
        session,
        Image,
        {"sha256": digest, "mime": mime, "width": width, "height": height, "size_bytes": len(data)},
        conflict_columns=("sha256",),
    )
    if inserted:
        logger.debug("new image %s (%s, %dx%d, %d bytes)", digest, mime, width, height, len(data))
    return digest


def get_image(*, session: Session, sha256: str) -> Image | None:
    return session.get(Image, sha256)
