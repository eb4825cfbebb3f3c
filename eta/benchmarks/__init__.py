"""The safety benchmarks of the ETA paper, read from their published layouts into ETA jobs.

Each reader takes the directory a user downloaded the benchmark into and yields `BenchmarkItem`s: the prompt
exactly as the benchmark builds it (FigStep's fixed typographic question, the cross-modality attack's suffix),
the image, the benchmark's own category and an id that is stable across runs (what a resumed run keys on).
Everything is read and every image decoded before anything runs: a missing or malformed file raises
`BenchmarkError` naming the file and what was expected.

    benchmark = load_benchmark("figstep", Path("data/FigStep"))
    for item in benchmark.items: ...
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class BenchmarkError(ValueError):
    """A benchmark file is missing or not what its layout promises; the message names the file."""


@dataclass(frozen=True)
class BenchmarkItem:
    """One job of a benchmark.

    Attributes:
        item_id: stable id within the benchmark (e.g. `01-Illegal_Activitiy/3`); a resumed run keys on it.
        prompt: the text the VLM is asked, built the way the benchmark builds it.
        category: the benchmark's own category of the item (`all` where the benchmark has none).
        image_path: the image file, when the image is a file of the layout.
        image_bytes: the encoded image, when the layout embeds it (SPA-VL's parquet file).
        extra: the benchmark's other fields of the item (original question, sub-categories, ...).
    """

    item_id: str
    prompt: str
    category: str
    image_path: Path | None = None
    image_bytes: bytes | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_image(self) -> bool:
        return self.image_path is not None or self.image_bytes is not None

    def read_image_bytes(self) -> bytes | None:
        """The encoded image (None for a text-only item)."""
        if self.image_bytes is not None:
            return self.image_bytes
        if self.image_path is None:
            return None
        try:
            return self.image_path.read_bytes()
        except OSError as exc:
            raise BenchmarkError(f"{self.image_path}: cannot read the image of item {self.item_id} "
                                 f"({exc.strerror or exc})") from None


@dataclass(frozen=True)
class Benchmark:
    """A benchmark read from disk: its name, where it came from, its items in the benchmark's order."""

    name: str
    data_dir: Path
    items: list[BenchmarkItem]
    subset: str | None = None

    @property
    def categories(self) -> list[str]:
        """Categories in the order they first appear."""
        return list(dict.fromkeys(item.category for item in self.items))

    def digest(self) -> str:
        """A digest of what the items ask (ids, prompts, image bytes): two copies of one benchmark agree."""
        hasher = hashlib.sha256(f"{self.name}\0{self.subset}\0".encode())
        for item in self.items:
            hasher.update(f"{item.item_id}\0{item.prompt}\0{item.category}\0".encode())
            if item.image_bytes is not None:
                hasher.update(hashlib.sha256(item.image_bytes).digest())
            elif item.image_path is not None:
                hasher.update(str(item.image_path.name).encode())
        return hasher.hexdigest()


Reader = Callable[..., list[BenchmarkItem]]


def benchmark_names() -> tuple[str, ...]:
    from eta.benchmarks.registry import READERS

    return tuple(READERS)


def load_benchmark(name: str, data_dir: Path, *, subset: str | None = None, limit: int | None = None,
                   check_images: bool = True) -> Benchmark:
    """Read benchmark `name` from `data_dir` (its published layout) and validate every item.

    Args:
        name: one of `benchmark_names()`.
        data_dir: the directory the benchmark was downloaded into.
        subset: the benchmark's variant where it has several (MM-SafetyBench: `SD_TYPO` (default), `SD`, `TYPO`).
        limit: keep only the first `limit` items (in the benchmark's order).
        check_images: decode every image now (under the service's image limits), so a broken one stops the run
            before anything runs.
    Raises:
        BenchmarkError: unknown benchmark, missing directory or file, malformed file, an undecodable image.
    """
    from eta.benchmarks.registry import READERS

    reader = READERS.get(name)
    if reader is None:
        raise BenchmarkError(f"unknown benchmark {name!r}; choose one of {', '.join(READERS)}")
    if not data_dir.is_dir():
        raise BenchmarkError(f"{data_dir}: not a directory (expected the downloaded {name} benchmark)")
    items = reader(data_dir, subset=subset)
    if limit is not None:
        if limit < 1:
            raise BenchmarkError(f"limit must be >= 1, got {limit}")
        items = items[:limit]
    if not items:
        raise BenchmarkError(f"{data_dir}: the {name} benchmark has no items")
    duplicates = _duplicates([item.item_id for item in items])
    if duplicates:
        raise BenchmarkError(f"{data_dir}: item ids repeat ({', '.join(duplicates[:5])}); ids must be unique")
    if check_images:
        _check_images(items)
    return Benchmark(name, data_dir, items, subset)


def _duplicates(ids: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    repeated = []
    for item_id in ids:
        if item_id in seen:
            repeated.append(item_id)
        seen.add(item_id)
    return repeated


def _check_images(items: Sequence[BenchmarkItem]) -> None:
    from eta.images import ImageError, decode_image

    checked: set[Path] = set()
    for item in items:
        if item.image_path is not None and item.image_path in checked:
            continue  # one image shared by every item (the cross-modality attack) is decoded once
        data = item.read_image_bytes()
        if data is None:
            continue
        try:
            decode_image(data)
        except ImageError as exc:
            where = item.image_path or f"the image embedded in item {item.item_id}"
            raise BenchmarkError(f"{where}: {exc} (expected an image of item {item.item_id})") from None
        if item.image_path is not None:
            checked.add(item.image_path)
