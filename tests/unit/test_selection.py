"""Choosing models: one rule for the CLI, the workers and the demo; a model that cannot load ends the command
with one line (model, cause, fix) and exit status 2."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from eta.config import ModelsConfig, ModelSpec
from eta.models import selection
from eta.models.clip import clip_dtype
from eta.models.selection import (
    ModelLoadError,
    ModelSelectionError,
    Selection,
    explain,
    load_selection,
    select_models,
    selection_from_settings,
)
from eta.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PAPER = ("--vlm", "llava-hf/llava-1.5-7b-hf", "--clip", "ViT-L-14-336-quickgelu", "--clip-pretrained", "openai",
         "--reward", "RLHFlow/ArmoRM-Llama3-8B-v0.1")


def test_no_model_named_is_the_tiny_set(tmp_path):
    chosen = select_models(tiny_dir=tmp_path / "tiny", device="cpu")
    assert chosen.is_tiny and chosen.tiny_root == tmp_path / "tiny"
    assert chosen.config.reward.id == str(tmp_path / "tiny" / "reward")
    assert chosen.config.clip.id == f"local-dir:{tmp_path / 'tiny' / 'clip'}"


def test_all_three_named_are_used_as_given_without_remote_code():
    chosen = select_models(vlm="a/vlm", clip="ViT-L-14-336-quickgelu", clip_pretrained="openai", reward="b/rm",
                           vlm_revision="abc", device="cpu", dtype="bfloat16")
    assert not chosen.is_tiny
    assert (chosen.config.vlm.id, chosen.config.vlm.revision, chosen.config.vlm.dtype) == ("a/vlm", "abc", "bfloat16")
    assert not chosen.config.reward.trust_remote_code
    assert chosen.config.clip.pretrained == "openai"


@pytest.mark.parametrize(("given", "missing"), [({"vlm": "x"}, "--clip, --reward"), ({"vlm": "x", "clip": "y"},
                                                                                    "--reward")])
def test_a_partial_set_is_refused_naming_what_is_missing(given, missing):
    with pytest.raises(ModelSelectionError) as info:
        select_models(**given)
    message = str(info.value)
    assert message.startswith(missing) and "ViT-L-14-336-quickgelu" in message and "\n" not in message


def test_settings_follow_the_same_rule():
    with pytest.raises(ModelSelectionError, match="ETA_CLIP, ETA_REWARD not set"):
        selection_from_settings(Settings(eta_vlm="llava-hf/llava-1.5-7b-hf"))
    assert selection_from_settings(Settings(eta_models="instant")).backend == "instant"
    full = selection_from_settings(Settings(eta_vlm="a", eta_clip="ViT-B-32", eta_reward="b",
                                            eta_reward_revision="r1"))
    assert full.config.reward.revision == "r1" and not full.is_tiny


def test_cli_partial_set_exits_2_with_one_line():
    from eta.commands.main import main

    result = CliRunner().invoke(main, ["run", "--vlm", "llava-hf/llava-1.5-7b-hf", "--prompt", "hi"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "--clip, --reward not set" in result.output


def test_cli_missing_directory_exits_2_naming_model_cause_and_fix(tmp_path):
    from eta.commands.main import main

    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(main, ["run", "--prompt", "hi", "--vlm", str(missing / "vlm"), "--clip",
                                       f"local-dir:{missing / 'clip'}", "--reward", str(missing / "reward")])
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1, result.output
    assert "cannot load the reward model" in line and "no such directory" in line and "fix:" in line


def test_unreachable_hub_fails_at_once_instead_of_retrying(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)  # restored afterwards
    monkeypatch.setattr(selection, "hub_reachable", lambda: False)
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_selection(Selection(config=ModelsConfig(reward=ModelSpec("RLHFlow/ArmoRM-Llama3-8B-v0.1",
                                                                      device="cpu"))), ["reward"])
    assert time.monotonic() - start < 10  # the hub client would retry for ~30 s
    message = str(info.value)
    assert message.startswith("cannot load the reward model RLHFlow/ArmoRM-Llama3-8B-v0.1:")
    assert "not in the local cache" in message and "hf download RLHFlow/ArmoRM-Llama3-8B-v0.1" in message


def test_gelu_clip_for_quickgelu_weights_is_refused_with_the_fix(tiny_models_dir, tmp_path):
    clip = tmp_path / "clip"
    shutil.copytree(tiny_models_dir / "clip", clip)
    config = json.loads((clip / "open_clip_config.json").read_text())
    config["model_cfg"]["quick_gelu"] = False
    (clip / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="trained with QuickGELU but the architecture builds GELU; fix: set"):
        load_selection(Selection(config=ModelsConfig(clip=ModelSpec(f"local-dir:{clip}", device="cpu"))), ["clip"])
    error = explain("clip", ModelSpec("ViT-L-14-336", pretrained="openai"),
                    _activation_error(ModelSpec("ViT-L-14-336", pretrained="openai")))
    assert "fix: use ViT-L-14-336-quickgelu" in str(error)


def _activation_error(spec):
    from eta.models.clip import ClipActivationError, check_activation

    try:
        check_activation(spec)
    except ClipActivationError as exc:
        return exc
    raise AssertionError("not refused")


def test_hub_errors_map_to_causes_and_fixes():
    class GatedRepoError(OSError):
        pass

    class RepositoryNotFoundError(OSError):
        pass

    spec = ModelSpec("meta-llama/secret")
    for cls, cause in ((GatedRepoError, "gated repository"), (RepositoryNotFoundError, "no such model")):
        try:
            try:
                raise cls("401")
            except OSError as inner:
                raise OSError("meta-llama/secret is not a valid model") from inner
        except OSError as exc:
            error = explain("vlm", spec, exc)
        assert cause in str(error) and "fix:" in str(error)


def test_clip_runs_in_float32_unless_configured():
    cuda = torch.device("cuda")
    assert clip_dtype(ModelSpec("ViT-L-14-336-quickgelu"), cuda) == torch.float32
    assert clip_dtype(ModelSpec("ViT-L-14-336-quickgelu", dtype="bfloat16"), cuda) == torch.bfloat16


def test_no_import_cycles_between_cli_and_commands_or_config_and_models():
    evaluate = (REPO / "eta" / "commands" / "evaluate.py").read_text()
    config = (REPO / "eta" / "config.py").read_text()
    assert "from eta.commands.main import" not in evaluate and "import eta.commands.main" not in evaluate
    assert "from eta.models" not in config and "import eta.models" not in config
