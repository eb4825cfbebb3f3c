"""Fixtures shared by every tier: the sample images and the tiny models (built once per test session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample images: drawn for this session (tests/samples.py), or the folder ETA_SAMPLES_DIR names."""
    override = os.environ.get("ETA_SAMPLES_DIR")
    if override:
        path = Path(override)
        assert path.is_dir(), f"ETA_SAMPLES_DIR={override} is not a folder"
        return path
    from tests.samples import write_samples

    return write_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny VLM, CLIP and reward models, built through `eta models build-tiny`'s code path."""
    from eta.models.tiny import build_tiny_models

    root = tmp_path_factory.mktemp("tiny") / "models"
    build_tiny_models(root, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_models(tiny_models_dir: Path):
    """All three tiny models, loaded on the CPU through the production loaders."""
    from eta.config import ModelsConfig
    from eta.models import load_models

    return load_models(ModelsConfig.tiny(str(tiny_models_dir), device="cpu"))
