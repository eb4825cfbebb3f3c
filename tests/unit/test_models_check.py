"""`eta models check`: it passes on the production-shaped tiny set, and each check fails when what it checks is
broken (one mutation per check)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from eta.config import ETAConfig, ModelsConfig, ModelSpec
from eta.models import conformance as conf
from eta.models.profiles import PROFILES, PromptProfile
from eta.models.selection import Selection

pytestmark = pytest.mark.models


def test_check_json_passes_on_the_tiny_production_shaped_set(tiny_models_dir):
    from eta.commands.main import main

    result = CliRunner().invoke(main, ["models", "check", "--json", "--tiny-dir", str(tiny_models_dir),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True
    names = [c["name"] for c in report["checks"]]
    assert names == ["config:prompts", "clip:activation", "clip:load", "clip:batched", "reward:load",
                     "reward:positions", "reward:batched", "reward:session", "vlm:load", "vlm:profile",
                     "vlm:prompt", "vlm:image", "vlm:engine"]
    assert all(set(c) == {"name", "ok", "detail"} for c in report["checks"])


def _by_name(checks):
    return {c.name: c for c in checks}


# ------------------------------------------------------------------------------------------ mutations
@pytest.mark.parametrize("change", [{"align_reward_prompt": "Rate it."}, {"tau_pre": 16.0},
                                    {"reward_prompt": conf.PAPER_LLAVA_V1_SYSTEM}])
def test_config_prompts_fails_when_the_paper_s_values_change(change):
    assert conf.check_config(ETAConfig()).ok
    assert not conf.check_config(ETAConfig(**change)).ok


def test_clip_activation_fails_for_a_gelu_build_of_quickgelu_weights(tiny_models_dir, tmp_path):
    from eta.models.clip import ClipActivationError, ClipScorer

    gelu = tmp_path / "clip"
    shutil.copytree(tiny_models_dir / "clip", gelu)
    config = json.loads((gelu / "open_clip_config.json").read_text())
    config["model_cfg"]["quick_gelu"] = False  # the weights' pretrained_cfg still says QuickGELU
    (gelu / "open_clip_config.json").write_text(json.dumps(config))
    spec = ModelSpec(f"local-dir:{gelu}", device="cpu")
    assert not conf.check_clip_activation(spec).ok
    with pytest.raises(ClipActivationError, match="QuickGELU"):
        ClipScorer.load(spec)
    # The paper's default architecture name with OpenAI's tag: GELU is refused with the fix in the message.
    assert not conf.check_clip_activation(ModelSpec("ViT-L-14-336", pretrained="openai")).ok
    assert conf.check_clip_activation(ModelSpec("ViT-L-14-336-quickgelu", pretrained="openai")).ok
    checks = _by_name(conf.run_checks(Selection(config=ModelsConfig(clip=spec)), ["clip"]))
    assert not checks["clip:activation"].ok and not checks["clip:load"].ok


def test_clip_batched_fails_when_a_score_depends_on_the_batch(tiny_models, monkeypatch):
    clip = tiny_models.clip
    assert conf.check_clip_batched(clip).ok
    encode = clip.model.encode_image

    def batch_dependent(pixels, normalize=False):
        return encode(pixels, normalize=normalize) + 1e-2 * pixels.shape[0]

    monkeypatch.setattr(clip.model, "encode_image", batch_dependent)
    assert not conf.check_clip_batched(clip).ok


def _hub_position(self, input_ids, attention_mask):
    """The published code's rule: the token before the first pad id (pad == <|eot_id|>: the user turn's end)."""
    pad = self.config.pad_token_id if self.config.pad_token_id is not None else self.config.eos_token_id
    return (torch.eq(input_ids, pad).int().argmax(-1) - 1) % input_ids.shape[-1]


def test_reward_positions_fails_when_the_scored_token_is_found_through_the_pad_id(tiny_models, monkeypatch):
    from eta.models.armorm import LlamaForRewardModelWithGating

    reward = tiny_models.reward
    user = ETAConfig().reward_prompt
    assert conf.check_reward_positions(reward, user).ok
    monkeypatch.setattr(LlamaForRewardModelWithGating, "score_positions", _hub_position)
    assert not conf.check_reward_positions(reward, user).ok


def test_reward_positions_fails_when_the_gate_is_read_elsewhere(tiny_models, monkeypatch):
    reward = tiny_models.reward
    eot = reward.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    monkeypatch.setattr(reward, "gate_pattern", (eot,))  # the last <|eot_id|>: the end of the answer
    monkeypatch.setattr(reward.model, "gate_token_pattern", (eot,))
    assert not conf.check_reward_positions(reward, ETAConfig().reward_prompt).ok


def test_reward_batched_fails_when_padding_is_read(tiny_models, monkeypatch):
    from eta.models.armorm import LlamaForRewardModelWithGating

    reward = tiny_models.reward
    assert conf.check_reward_batched(reward, "q").ok

    def last_column(self, input_ids, attention_mask):  # ignores the mask: reads the padding of short chats
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long)

    monkeypatch.setattr(LlamaForRewardModelWithGating, "score_positions", last_column)
    assert not conf.check_reward_batched(reward, "q").ok


def test_reward_session_fails_when_the_reused_prefix_loses_the_gate(tiny_models, monkeypatch):
    reward = tiny_models.reward
    reward._header = None
    assert conf.check_reward_session(reward, ETAConfig().align_reward_prompt).ok
    reward._header = None
    monkeypatch.setattr(type(reward), "gate_positions", lambda self, rows, user=None: [len(row) - 2 for row in rows])
    assert not conf.check_reward_session(reward, ETAConfig().align_reward_prompt).ok
    reward._header = None


def _drop_tensor(source, target, prefix):
    shutil.copytree(source, target)
    state = load_file(str(target / "model.safetensors"))
    del state[next(k for k in sorted(state) if k.startswith(prefix))]  # the first tensor under `prefix`
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})


def test_reward_load_fails_for_a_checkpoint_missing_a_tensor(tiny_models_dir, tmp_path):
    _drop_tensor(tiny_models_dir / "reward", tmp_path / "reward", "gating.")
    selection = Selection(config=ModelsConfig(reward=ModelSpec(str(tmp_path / "reward"), device="cpu")))
    checks = _by_name(conf.run_checks(selection, ["reward"]))
    assert not checks["reward:load"].ok and "missing" in checks["reward:load"].detail
    assert "reward:positions" not in checks


def test_vlm_load_fails_for_a_checkpoint_missing_a_tensor(tiny_models_dir, tmp_path):
    _drop_tensor(tiny_models_dir / "vlm", tmp_path / "vlm", "multi_modal_projector.")
    selection = Selection(config=ModelsConfig(vlm=ModelSpec(str(tmp_path / "vlm"), device="cpu")))
    checks = _by_name(conf.run_checks(selection, ["vlm"]))
    assert not checks["vlm:load"].ok and "missing" in checks["vlm:load"].detail


def test_vlm_profile_fails_when_llava_15_gets_the_chat_template(tiny_models, monkeypatch):
    vlm = tiny_models.vlm
    assert conf.check_vlm_profile(vlm).ok
    monkeypatch.setattr(vlm, "profile", PROFILES["chat-template"])
    assert not conf.check_vlm_profile(vlm).ok


@pytest.mark.parametrize("profile", [
    PromptProfile("llava-1.5", system="A chat between a human and an assistant.", image="pad-square"),
    PromptProfile("llava-1.5", system=None, image="pad-square"),  # llava-hf's template: no system text
])
def test_vlm_prompt_fails_when_the_text_is_not_the_paper_s(tiny_models, monkeypatch, profile):
    vlm = tiny_models.vlm
    config = ETAConfig()
    assert conf.check_vlm_prompt(vlm, config).ok
    monkeypatch.setattr(vlm, "profile", profile)
    assert not conf.check_vlm_prompt(vlm, config).ok


def test_vlm_prompt_fails_when_image_tokens_do_not_match(tiny_models, monkeypatch):
    vlm = tiny_models.vlm
    monkeypatch.setattr(vlm.processor, "num_additional_image_tokens", 0)  # one image token short
    assert not conf.check_vlm_prompt(vlm, ETAConfig()).ok


@pytest.mark.parametrize("mutation", ["centre-crop", "black-fill", "processor-profile"])
def test_vlm_image_fails_when_the_image_is_cropped_or_padded_with_another_colour(tiny_models, monkeypatch,
                                                                                mutation):
    from eta.models import profiles

    vlm = tiny_models.vlm
    assert conf.check_vlm_image(vlm).ok
    if mutation == "centre-crop":
        monkeypatch.setattr(profiles, "pad_to_square", lambda image, fill, **_: image)  # the processor crops instead
    elif mutation == "processor-profile":  # llava-1.5's text with the processor's own (cropping) preprocessing
        monkeypatch.setattr(vlm, "profile", PromptProfile("llava-1.5", PROFILES["llava-1.5"].system, "processor"))
    else:
        pad = profiles.pad_to_square
        monkeypatch.setattr(profiles, "pad_to_square", lambda image, fill, **kw: pad(image, (0, 0, 0), **kw))
    assert not conf.check_vlm_image(vlm).ok


def test_vlm_engine_fails_on_a_planted_position_shift(tiny_models, monkeypatch):
    """Alignment that diverges from the model's own generation: every aligned row sits one position off."""
    from eta.models.kv_cache import PackedRows

    vlm = tiny_models.vlm
    assert conf.check_vlm_engine(vlm).ok
    feed = PackedRows.feed

    def shifted(self, real):
        mask, positions = feed(self, real)
        return mask, positions + 1

    monkeypatch.setattr(PackedRows, "feed", shifted)
    check = conf.check_vlm_engine(vlm)
    assert not check.ok
    assert "differ from the model's own forward" in check.detail
