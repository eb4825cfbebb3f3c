"""Images and blobs: each content stored once per sha256, also when two uploads race."""

from __future__ import annotations

import hashlib
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from eta.settings import Settings
from eta.store import repository as repo
from eta.store.blobs import BlobStore, DatabaseBlobStore, FilesystemBlobStore, make_blob_store
from eta.store.errors import BlobNotFoundError
from eta.store.models import Blob, Image
from eta.store.repository import NewJob

PNG = b"\x89PNG\r\n\x1a\n" + b"pretend pixels" * 50


def _blob_store(kind: str, session: Session, tmp_path: Path) -> BlobStore:
    return DatabaseBlobStore(session) if kind == "database" else FilesystemBlobStore(tmp_path / "blobs")


@pytest.mark.parametrize("backend", ["database", "filesystem"])
def test_the_same_image_is_stored_once(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, tmp_path: Path, backend: str
) -> None:
    data = PNG + uuid.uuid4().bytes  # unique to this test: the database is shared by the session
    digest = hashlib.sha256(data).hexdigest()
    for _ in range(2):
        with sessions() as session, session.begin():
            blobs = _blob_store(backend, session, tmp_path)
            stored = repo.store_image(session=session, blobs=blobs, data=data, mime="image/png", width=4, height=3)
            assert stored == digest
            repo.create_job(session=session, tenant_id=tenant_id, job=NewJob(prompt="p", image_sha256=stored))
    with sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).where(Image.sha256 == digest)) == 1
        image = repo.get_image(session=session, sha256=digest)
        assert image is not None
        assert (image.mime, image.width, image.height, image.size_bytes) == ("image/png", 4, 3, len(data))
        blobs = _blob_store(backend, session, tmp_path)
        assert blobs.get(digest) == data
        blob_rows = session.scalar(sa.select(sa.func.count()).where(Blob.sha256 == digest))
        assert blob_rows == (1 if backend == "database" else 0)
    if backend == "filesystem":
        files = [path for path in (tmp_path / "blobs").rglob("*") if path.is_file()]
        assert [path.name for path in files] == [digest]


def test_two_uploads_of_one_image_racing_store_it_once(sessions: sessionmaker[Session]) -> None:
    data = PNG + uuid.uuid4().bytes
    barrier = threading.Barrier(2)
    digests: list[str] = []
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            with sessions() as session, session.begin():
                barrier.wait(timeout=10)
                digests.append(
                    repo.store_image(
                        session=session,
                        blobs=DatabaseBlobStore(session),
                        data=data,
                        mime="image/png",
                        width=1,
                        height=1,
                    )
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert len(set(digests)) == 1 and len(digests) == 2
    with sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).where(Image.sha256 == digests[0])) == 1
        assert session.scalar(sa.select(sa.func.count()).where(Blob.sha256 == digests[0])) == 1


def test_database_blob_store_round_trip(sessions: sessionmaker[Session]) -> None:
    data = uuid.uuid4().bytes * 100
    with sessions() as session, session.begin():
        blobs = DatabaseBlobStore(session)
        digest = blobs.put(data, mime="application/octet-stream")
        assert blobs.exists(digest) and blobs.get(digest) == data
        assert blobs.delete(digest)
        assert not blobs.exists(digest) and not blobs.delete(digest)
        with pytest.raises(BlobNotFoundError):
            blobs.get(digest)


def test_database_blobs_roll_back_with_the_submission(sessions: sessionmaker[Session]) -> None:
    data = uuid.uuid4().bytes
    digest = hashlib.sha256(data).hexdigest()
    with sessions() as session:
        with pytest.raises(RuntimeError), session.begin():
            DatabaseBlobStore(session).put(data, mime="image/png")
            raise RuntimeError("a later item of the request failed validation")
        assert not DatabaseBlobStore(session).exists(digest)


def test_blob_backend_follows_the_settings(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    with sessions() as session:
        assert isinstance(make_blob_store(session=session, settings=Settings(eta_data_dir=tmp_path)), DatabaseBlobStore)
        store = make_blob_store(session=session, settings=Settings(eta_data_dir=tmp_path, blob_backend="filesystem"))
        assert isinstance(store, FilesystemBlobStore) and store.root == tmp_path / "blobs"
