"""The support matrix at the edges: a VLM outside it is refused in one line (exit 2), an experiment override marks
every result's fingerprint, and `eta run` with forced alignment runs on every tiny architecture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from eta.commands.main import main
from eta.config import ETAConfig, ModelsConfig, ModelSpec
from eta.models import architectures
from eta.models.architectures import ALLOW_UNSUPPORTED_ENV
from eta.models.selection import load_options
from eta.models.tiny_vlms import ARCHITECTURES, build_tiny_set
from eta.settings import Settings, get_settings

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def outside_matrix(tiny_models_dir, tmp_path_factory) -> Path:
    """The tiny set with a VLM whose config names an architecture outside the matrix (PaliGemma)."""
    from transformers import PaliGemmaConfig

    root = tmp_path_factory.mktemp("outside") / "models"
    shutil.copytree(tiny_models_dir, root)
    shutil.rmtree(root / "vlm")
    PaliGemmaConfig().save_pretrained(root / "vlm")
    return root


def test_an_architecture_outside_the_matrix_is_refused_in_one_line_exit_2(outside_matrix, monkeypatch):
    monkeypatch.delenv(ALLOW_UNSUPPORTED_ENV, raising=False)
    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["run", "--tiny-dir", str(outside_matrix), "--prompt", "Hi"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "'paligemma' is outside the VLM support matrix" in lines[0]
    assert "qwen2.5-vl (qwen2_5_vl)" in lines[0] and "mllama (mllama)" in lines[0]
    assert ALLOW_UNSUPPORTED_ENV in lines[0]


def test_the_experiment_override_marks_every_fingerprint(tiny_models, monkeypatch):
    from eta.models import Models, VisionLanguageModel
    from eta.safety.pipeline import fingerprint

    spec = ModelSpec(tiny_models.vlm.spec.id, device="cpu")
    # Take LLaVA out of the matrix: now the tiny VLM is an architecture the engine was never proven on.
    monkeypatch.setattr(architectures, "BY_MODEL_TYPE",
                        {k: v for k, v in architectures.BY_MODEL_TYPE.items() if k != "llava"})
    with pytest.raises(architectures.UnsupportedArchitecture, match="'llava' is outside"):
        VisionLanguageModel.load(spec)
    # ETA_VLM_ALLOW_UNSUPPORTED=1 reaches the loader as the spec's switch.
    monkeypatch.setenv(ALLOW_UNSUPPORTED_ENV, "1")
    allowed = ModelsConfig(vlm=spec).with_load_options(**load_options(Settings())).vlm
    assert allowed.allow_unsupported
    vlm = VisionLanguageModel.load(allowed)
    printed = fingerprint(Models(vlm=vlm, clip=tiny_models.clip, reward=tiny_models.reward), ETAConfig())
    marked = printed["models"]["vlm"]["architecture"]
    assert marked["supported"] is False and ALLOW_UNSUPPORTED_ENV in marked["override"]
    assert printed["digest"] != fingerprint(tiny_models, ETAConfig())["digest"]


@pytest.fixture(scope="module")
def arch_sets(tmp_path_factory) -> dict[str, Path]:
    return {arch: build_tiny_set(tmp_path_factory.mktemp(arch.replace(".", "_")) / "models", arch)
            for arch in ARCHITECTURES}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_eta_run_with_forced_alignment_on_every_architecture(arch, arch_sets, samples_dir):
    """The CLI as a user runs it: exit 0 with and without an image, the answer aligned."""
    for image in (["--image", str(samples_dir / "waterview.jpg")], []):
        done = CliRunner().invoke(main, [
            "run", "--tiny-dir", str(arch_sets[arch]), "--prompt", "Describe it.", "--tau-pre", "-1",
            "--tau-post", "1e9", "--max-new-tokens", "12", "--num-candidates", "2", "--device", "cpu", "--json",
            *image])
        assert done.exit_code == 0, (done.output[-2000:], done.exception)
        result = json.loads(done.output)
        assert result["aligned"] is True
        assert result["fingerprint"]["models"]["vlm"]["architecture"]["name"] == arch
