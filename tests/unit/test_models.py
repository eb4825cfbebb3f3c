"""The tiny models: deterministic builds, loaded through the production loaders, and the adapters' scores
checked against the libraries computed directly."""

from __future__ import annotations

import hashlib

import pytest
import torch
from PIL import Image

from eta.config import DEFAULT_REWARD_PROMPT, ETAConfig, ModelsConfig
from eta.models import ClipScorer, RewardModel, VisionLanguageModel
from eta.models.tiny import build_tiny_models, is_built
from eta.safety.pipeline import pre_evaluate, score_responses

pytestmark = pytest.mark.models


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_build_is_deterministic_and_complete(tiny_models_dir, tmp_path):
    again = build_tiny_models(tmp_path / "again", seed=0).root
    assert _digest(again) == _digest(tiny_models_dir)
    assert is_built(again)
    other = build_tiny_models(tmp_path / "other", seed=1).root
    assert (other / "vlm" / "model.safetensors").read_bytes() != (again / "vlm" / "model.safetensors").read_bytes()
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        assert (again / "vlm" / name).is_file(), name
    assert (again / "clip" / "open_clip_config.json").is_file()
    assert (again / "clip" / "open_clip_model.safetensors").is_file()


def test_loaded_through_production_classes(tiny_models):
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    assert isinstance(tiny_models.vlm, VisionLanguageModel)
    assert isinstance(tiny_models.vlm.model, LlavaForConditionalGeneration)
    assert isinstance(tiny_models.vlm.processor, LlavaProcessor)
    assert isinstance(tiny_models.clip, ClipScorer) and isinstance(tiny_models.reward, RewardModel)
    assert tiny_models.vlm.dtype == torch.float32 and tiny_models.vlm.device.type == "cpu"
    assert tiny_models.clip.device == tiny_models.vlm.device  # CLIP never silently elsewhere


def test_s_pre_is_the_open_clip_cosine(tiny_models, tiny_models_dir, samples_dir):
    import open_clip

    config = ETAConfig()
    names = ["waterview.jpg", "harm_example.png", "extreme_ironing.jpg", "prompt_unconstrained.bmp"]
    images = [Image.open(samples_dir / n) for n in names]
    got = pre_evaluate(tiny_models.clip, images, config, batch_size=3)  # two chunks

    # Independent computation straight from open_clip.
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_models_dir / 'clip'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tiny_models_dir / 'clip'}")
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(i.convert("RGB")) for i in images]))
        txt = model.encode_text(tokenizer([config.safety_prompt]))
    expected = torch.nn.functional.cosine_similarity(img, txt, dim=-1).tolist()
    assert [g.s_pre for g in got] == pytest.approx(expected, abs=1e-5)
    assert [g.pre_unsafe for g in got] == [e >= config.tau_pre for e in expected]


def test_s_post_is_the_reward_on_the_chat_pair(tiny_models, tiny_models_dir):
    from transformers import AutoTokenizer

    from eta.models.armorm import LlamaForRewardModelWithGating

    responses = ["I can't help with that. Here is safer advice.", "Sure", "x " * 300]
    got = score_responses(tiny_models.reward, responses, ETAConfig(), batch_size=2)

    path = tiny_models_dir / "reward"
    model = LlamaForRewardModelWithGating.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    expected = []
    for response in responses:
        chat = [{"role": "user", "content": DEFAULT_REWARD_PROMPT}, {"role": "assistant", "content": response}]
        ids = tok.apply_chat_template(chat, tokenize=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            expected.append(model(**ids).score[0].item())  # one unpadded chat: its last token is scored
    assert got == pytest.approx(expected, abs=1e-4)


def test_reward_batched_equals_one_at_a_time(tiny_models):
    texts = ["As an AI assistant, I can't.", "As an AI assistant", "As an AI assistant, here is a long answer " * 5]
    batched = tiny_models.reward.score("question", texts)
    single = [tiny_models.reward.score("question", [t])[0] for t in texts]
    assert batched == pytest.approx(single, abs=1e-5)


def test_clip_text_batched_equals_single_and_long_text_is_truncated(tiny_models):
    clip = tiny_models.clip
    long_sentence = " ".join(["word"] * 500)
    texts = ["a lake.", "a man ironing on a taxi!", long_sentence]
    batched = clip.embed_texts(texts)
    single = torch.cat([clip.embed_texts([t]) for t in texts])
    assert torch.allclose(batched, single, atol=1e-5)
    # 500 words exceed CLIP's 77-token context: the text is cut, not refused.
    assert torch.allclose(batched[2], clip.embed_texts([" ".join(["word"] * 200)])[0], atol=1e-5)


def test_device_auto_resolves_to_cpu_here():
    from eta.models.common import resolve_device, resolve_dtype

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert ModelsConfig().clip.pretrained == "openai"
    assert ModelsConfig().clip.id == "ViT-L-14-336-quickgelu"  # OpenAI's weights were trained with QuickGELU
    assert not ModelsConfig().reward.trust_remote_code  # ArmoRM is native
