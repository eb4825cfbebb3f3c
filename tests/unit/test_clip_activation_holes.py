"""CLIP weights that do not record their activation (a checkpoint file as the pretrained value, a `local-dir:` model
without `pretrained_cfg.quick_gelu`) are refused unless the deployer states it: OpenAI's QuickGELU weights under a
GELU architecture would otherwise load silently and shift every s_pre off the scale tau_pre was calibrated on."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from eta.config import ModelsConfig, ModelSpec
from eta.models import conformance as conf
from eta.models.clip import ACTIVATION_ENV, ClipActivationError, check_activation
from eta.models.selection import ModelLoadError, Selection, load_options, load_selection
from eta.settings import Settings

pytestmark = pytest.mark.models


@pytest.fixture
def unrecorded_local_dir(tiny_models_dir, tmp_path):
    clip = tmp_path / "clip"
    shutil.copytree(tiny_models_dir / "clip", clip)
    config = json.loads((clip / "open_clip_config.json").read_text())
    config.pop("pretrained_cfg", None)  # builds QuickGELU; how the weights were trained is not recorded
    (clip / "open_clip_config.json").write_text(json.dumps(config))
    return ModelSpec(f"local-dir:{clip}", device="cpu")


def test_a_local_dir_without_an_activation_record_is_refused_unless_stated(unrecorded_local_dir):
    with pytest.raises(ModelLoadError) as info:
        load_selection(Selection(config=ModelsConfig(clip=unrecorded_local_dir)), ["clip"])
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "activation these weights were trained with is unknown" in message and ACTIVATION_ENV in message
    assert not conf.check_clip_activation(unrecorded_local_dir).ok

    stated = replace(unrecorded_local_dir, activation="quickgelu")  # true for these weights: loads
    assert load_selection(Selection(config=ModelsConfig(clip=stated)), ["clip"]).clip is not None
    assert conf.check_clip_activation(stated).ok
    # The settings' ETA_CLIP_ACTIVATION reaches the spec the same way.
    from_settings = ModelsConfig(clip=unrecorded_local_dir).with_load_options(
        **load_options(Settings(eta_clip_activation="quickgelu")))
    assert from_settings.clip == stated
    # Stated GELU, the architecture builds QuickGELU: refused.
    with pytest.raises(ClipActivationError, match="trained with GELU but the architecture builds QuickGELU"):
        check_activation(replace(unrecorded_local_dir, activation="gelu"))
    with pytest.raises(ClipActivationError, match="not an activation"):
        check_activation(replace(unrecorded_local_dir, activation="relu"))
    with pytest.raises(ValueError, match="'quickgelu' or 'gelu'"):
        Settings(eta_clip_activation="relu")


def test_a_checkpoint_file_is_refused_unless_its_activation_is_stated(tmp_path):
    checkpoint = tmp_path / "open_clip_pytorch_model.bin"
    checkpoint.write_bytes(b"")  # only its being a file matters here: the check runs before any weight is read
    spec = ModelSpec("ViT-B-32", pretrained=str(checkpoint))  # builds GELU
    with pytest.raises(ClipActivationError, match=f"the checkpoint file .* does not record it.*{ACTIVATION_ENV}"):
        check_activation(spec)
    with pytest.raises(ClipActivationError, match="use ViT-B-32-quickgelu"):
        check_activation(replace(spec, activation="quickgelu"))
    check_activation(ModelSpec("ViT-B-32-quickgelu", pretrained=str(checkpoint), activation="quickgelu"))
    check_activation(replace(spec, activation="gelu"))
    # A tag from open_clip's registry records its activation: nothing to state.
    check_activation(ModelSpec("ViT-B-32-quickgelu", pretrained="openai"))
