"""Placement (device, dtype) and provenance (revision) helpers shared by the model adapters."""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from eta.config import ModelSpec

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on GPU and float32 on CPU (bf16 matmuls on CPU are slow and inexact)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


def local_dir(model_id: str) -> Path | None:
    """The directory a model id points at, when it is a local one."""
    path = Path(model_id.removeprefix("local-dir:")).expanduser()
    return path if path.is_dir() else None


@functools.lru_cache(maxsize=32)
def _local_revision(folder: Path) -> str:
    """Digest of a local model directory's JSON files, read once per process: every result's fingerprint
    asks for it, and the model in memory does not change when the files on disk do."""
    digest = hashlib.sha256()
    for item in sorted(folder.glob("*.json")):
        digest.update(item.name.encode())
        digest.update(item.read_bytes())
    return f"local:{digest.hexdigest()[:16]}"


def describe(spec: ModelSpec, *, model: Any = None, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """What a result's fingerprint records about one model: id, requested and resolved revision, placement.

    A hub model resolves to the commit its files came from; a local directory to a digest of its small
    JSON files (config, processor, tokenizer). Weights are not hashed: seconds per gigabyte is too slow
    for start-up, and a changed checkpoint under an unchanged config is the operator's to version.
    """
    resolved = None
    config = getattr(model, "config", None)
    if config is not None:
        resolved = getattr(config, "_commit_hash", None)
    folder = local_dir(spec.id)
    if folder is not None:
        resolved = _local_revision(folder.resolve())
    return {
        "id": spec.id,
        "pretrained": spec.pretrained,
        "revision": spec.revision,
        "resolved_revision": resolved,
        "dtype": str(dtype).removeprefix("torch."),
        "device_type": device.type,
    }
