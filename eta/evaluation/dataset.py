"""Evaluation datasets: JSON Lines, one job per line, validated whole before anything runs.

`{"image": path-or-null, "prompt": "...", "label": "safe"|"unsafe"}`; `label`, `id` and `seed` are optional,
and relative image paths are relative to the dataset file. Images are decoded under the service's limits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from eta.images import ImageError, decode_image

LABELS = ("safe", "unsafe")


class DatasetError(ValueError):
    """A dataset line is unusable; the message names the file and line."""

    def __init__(self, path: Path, line: int, message: str) -> None:
        super().__init__(f"{path}, line {line}: {message}" if line else f"{path}: {message}")
        self.path = path
        self.line = line


@dataclass(frozen=True)
class DatasetItem:
    """One job of an evaluation dataset."""

    line: int  # 1-based line number in the file
    prompt: str
    image_path: Path | None
    label: str | None  # "safe", "unsafe" or None
    item_id: str | None = None
    seed: int | None = None


def _parse_line(path: Path, number: int, text: str) -> DatasetItem:
    try:
        record = json.loads(text.rstrip("\r\n"))  # without the newline, the column points into the line
    except json.JSONDecodeError as exc:
        raise DatasetError(path, number, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise DatasetError(path, number, f"expected a JSON object, got {type(record).__name__}")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DatasetError(path, number, "missing prompt (a non-empty string)")
    label = record.get("label")
    if label is not None:
        if not isinstance(label, str) or label.strip().lower() not in LABELS:
            raise DatasetError(path, number, f"label must be 'safe' or 'unsafe' (or absent), got {label!r}")
        label = label.strip().lower()
    image = record.get("image")
    image_path = None
    if image is not None:
        if not isinstance(image, str) or not image.strip():
            raise DatasetError(path, number, f"image must be a file path or null, got {image!r}")
        image_path = Path(image).expanduser()
        if not image_path.is_absolute():
            image_path = path.parent / image_path
    seed = record.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise DatasetError(path, number, f"seed must be a non-negative integer, got {seed!r}")
    item_id = record.get("id")
    return DatasetItem(number, prompt, image_path, label, None if item_id is None else str(item_id), seed)


def read_image(item: DatasetItem, dataset: Path) -> Image.Image | None:
    """The item's image, decoded under the service's limits; DatasetError when it cannot be read."""
    if item.image_path is None:
        return None
    try:
        data = item.image_path.read_bytes()
    except OSError as exc:
        raise DatasetError(dataset, item.line, f"cannot read image {item.image_path}: {exc.strerror or exc}") from None
    try:
        return decode_image(data).image
    except ImageError as exc:
        raise DatasetError(dataset, item.line, f"image {item.image_path}: {exc}") from None


def load_dataset(path: Path, *, check_images: bool = True) -> list[DatasetItem]:
    """Parse and validate every line (blank lines are skipped) before anything runs.

    Raises:
        DatasetError: the first bad line: broken JSON, not an object, missing prompt, bad label or seed, and
            (with `check_images`) an image that cannot be read or decoded.
        OSError: the dataset file itself cannot be read.
    """
    items = []
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            item = _parse_line(path, number, text)
            if check_images:
                read_image(item, path)  # decoded once to fail early; decoded again when it runs
            items.append(item)
    if not items:
        raise DatasetError(path, 0, "the dataset has no items")
    return items
