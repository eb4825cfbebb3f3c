"""The filesystem blob backend: sharded paths, atomic writes, one file per content."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from eta.store.blobs import FilesystemBlobStore
from eta.store.errors import BlobNotFoundError


def test_put_get_exists_delete(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    data = b"\xff\xd8\xff" + b"jpeg" * 100
    digest = store.put(data, mime="image/jpeg")
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.path_of(digest) == tmp_path / digest[:2] / digest[2:4] / digest
    assert store.exists(digest) and store.get(digest) == data
    assert store.put(data, mime="image/jpeg") == digest
    assert store.delete(digest) and not store.exists(digest) and not store.delete(digest)
    with pytest.raises(BlobNotFoundError):
        store.get(digest)


def test_concurrent_writers_of_one_content_leave_one_whole_file(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    data = bytes(range(256)) * 4096  # 1 MiB
    barrier = threading.Barrier(4)
    digests: list[str] = []

    def write() -> None:
        barrier.wait(timeout=10)
        digests.append(store.put(data, mime="image/png"))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(digests) == 4 and len(set(digests)) == 1
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert files == [store.path_of(digests[0])]  # no temporary file left behind
    assert store.get(digests[0]) == data


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABC", "g" * 64, "a" * 63])
def test_only_hex_digests_become_paths(tmp_path: Path, bad: str) -> None:
    store = FilesystemBlobStore(tmp_path)
    with pytest.raises(ValueError, match="sha256"):
        store.get(bad)
    with pytest.raises(ValueError, match="sha256"):
        store.exists(bad)
