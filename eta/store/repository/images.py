"""Input images: bytes in a blob store, metadata in `images`, both once per sha256."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.orm import Session

from eta.store.blobs import BlobStore, sha256_hex
from eta.store.models import Image
from eta.store.sql import insert_ignoring_duplicates

logger = logging.getLogger(__name__)


def store_image(*, session: Session, blobs: BlobStore, data: bytes, mime: str, width: int, height: int) -> str:
    """Store an already-validated image and return its sha256; storing the same bytes again is a no-op.

    Safe when two requests upload the same image at once: both get the digest, one row exists.

    Safe against the retention purge too: the image's row, when it exists, is share-locked (until this
    transaction ends) before the bytes are checked or written. A purge that has found the image unreferenced
    holds that row `FOR UPDATE` until it has deleted the bytes and committed, so this waits and then writes
    the bytes again; a later purge waits for this transaction and then sees its job. (On SQLite every write
    transaction holds the database's write lock from its start, so the two never overlap.) A submission
    storing several images should store them in digest order, the order the purge locks them in.
    """
    digest = sha256_hex(data)
    session.execute(
        sa.select(Image.sha256).where(Image.sha256 == digest).with_for_update(read=True, key_share=True)
    )
    blobs.put(data, mime=mime)
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
