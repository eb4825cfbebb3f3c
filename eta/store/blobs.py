"""Content-addressed storage of image bytes: a database backend (default) and a filesystem backend.

Both store each distinct content once, under the hex sha256 of its bytes, and `put` is idempotent:
storing the same bytes twice, even from two processes at once, leaves one copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.orm import Session

from eta.settings import Settings
from eta.store.errors import BlobNotFoundError
from eta.store.models import Blob
from eta.store.sql import affected_rows, insert_ignoring_duplicates

logger = logging.getLogger(__name__)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checked_digest(sha256: str) -> str:
    # Digests become file names: anything but 64 lower-case hex digits is refused, not joined to a path.
    if not _SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


class BlobStore(Protocol):
    """Bytes by sha256. Implementations are safe to call from several processes at once."""

    def put(self, data: bytes, *, mime: str) -> str:
        """Store `data` (once per content) and return its sha256 hex digest."""
        ...

    def get(self, sha256: str) -> bytes:
        """The bytes stored under `sha256`; raises `BlobNotFoundError` when there are none."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> bool:
        """Remove the blob; True if it existed."""
        ...


class DatabaseBlobStore:
    """Blobs as rows of the `blobs` table, written in the caller's session (and so its transaction).

    Writing in the caller's transaction means a batch that fails validation rolls back its images too.
    """

    def __init__(self, session: Session) -> None:
        self._session = session

    def put(self, data: bytes, *, mime: str) -> str:
        digest = sha256_hex(data)
        insert_ignoring_duplicates(
            self._session,
            Blob,
            {"sha256": digest, "mime": mime, "size_bytes": len(data), "data": data},
            conflict_columns=("sha256",),
        )
        return digest

    def get(self, sha256: str) -> bytes:
        data = self._session.scalar(sa.select(Blob.data).where(Blob.sha256 == _checked_digest(sha256)))
        if data is None:
            raise BlobNotFoundError(sha256)
        return data

    def exists(self, sha256: str) -> bool:
        found = self._session.scalar(sa.select(Blob.sha256).where(Blob.sha256 == _checked_digest(sha256)))
        return found is not None

    def delete(self, sha256: str) -> bool:
        result = self._session.execute(sa.delete(Blob).where(Blob.sha256 == _checked_digest(sha256)))
        return affected_rows(result) > 0


class FilesystemBlobStore:
    """Blobs as files `<root>/<aa>/<bb>/<sha256>`, written atomically (temporary file, fsync, rename).

    Not transactional: a rolled-back submission can leave an unreferenced file behind, which is
    harmless (content-addressed) and can be collected by comparing with the `images` table.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_of(self, sha256: str) -> Path:
        digest = _checked_digest(sha256)
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes, *, mime: str) -> str:
        digest = sha256_hex(data)
        path = self.path_of(digest)
        if path.exists():
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=f"-{digest[:8]}")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            # Atomic on POSIX: readers see no file or the whole file; a racing writer of the same
            # content replaces identical bytes.
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        logger.debug("stored blob %s (%s, %d bytes)", digest, mime, len(data))
        return digest

    def get(self, sha256: str) -> bytes:
        try:
            return self.path_of(sha256).read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(sha256) from None

    def exists(self, sha256: str) -> bool:
        return self.path_of(sha256).is_file()

    def delete(self, sha256: str) -> bool:
        try:
            self.path_of(sha256).unlink()
        except FileNotFoundError:
            return False
        return True


def make_blob_store(*, session: Session, settings: Settings) -> BlobStore:
    """The blob backend chosen by `settings.blobs.backend` (the database one writes through `session`)."""
    if settings.blobs.backend == "filesystem":
        return FilesystemBlobStore(settings.blobs_dir)
    return DatabaseBlobStore(session)
