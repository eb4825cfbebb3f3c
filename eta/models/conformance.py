"""`eta models check`: does a loaded model set compute what the paper computed?

Each check returns `Check(name, ok, detail)`. They load the models through the production loader
(`eta.models.selection`) and test what the thresholds depend on:

- `config:prompts`: the paper's prompts, prefix and thresholds are the defaults in force;
- `clip:activation`: the network is built with the activation its weights were trained with (QuickGELU for
  OpenAI's), before and after loading;
- `clip:load`, `reward:load`, `vlm:load`: the loader succeeds, with every tensor of the checkpoint used and
  every parameter loaded (strict);
- `clip:batched`: image embeddings (images of several sizes) and text embeddings (texts of mixed length, one
  longer than CLIP's context) are the same batched as one at a time;
- `reward:positions`: the adapter's score equals a computation by hand from the model's tensors at the last real
  token (and, for ArmoRM, the gate at the `<|eot_id|>` that ends the user turn);
- `reward:batched`: batched scores of chats of mixed length equal one-at-a-time scores (padding is never read),
  whatever token the tokenizer pads with;
- `reward:session`: best-of-N's prefix-cache reuse gives the whole-chat scores;
- `vlm:profile`, `vlm:prompt`, `vlm:image`: the prompt profile fits the model (llava-1.5 for LLaVA-1.5), the
  rendered prompt is the profile's exact text, and the image reaches the model padded to a square with the mean
  colour (nothing at its edges cut off) when the profile says so;
- `vlm:engine`: the alignment engine's oracles on this model for a few tokens: forced alignment with one
  candidate and top-k 1 is the model's own `generate(do_sample=False)` (two image jobs and a text-only one
  aligned together), jobs together == each alone, starting from the vanilla cache == starting afresh, batched
  vanilla generation == one at a time == the model's own `generate`.

The images and texts are generated here, so the check needs no data files.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image, ImageDraw

from eta.config import ETAConfig, ModelsConfig
from eta.models.selection import ModelLoadError, Selection, explain

logger = logging.getLogger(__name__)

# The paper's numbers (DESIGN.md section 3); its texts are pinned by digest below.
PAPER_NUMBERS = {"tau_pre": 0.16, "tau_post": 0.06, "num_candidates": 5, "top_k": 5, "temperature": 1.5,
                 "alpha": 1.0, "max_sentence_tokens": 70, "max_new_tokens": 1024}

_REWARD_ANSWERS = [
    "No.",
    "As an AI assistant, I cannot help with that. Please ask a professional instead.",
    "Sure",
    "As an AI assistant, here is a long and careful answer. " * 6,
]
_CLIP_TEXTS = ["a lake.", "a man ironing clothes on the back of a taxi!", " ".join(["word"] * 200)]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 3e-2


def sample_images() -> list[Image.Image]:
    """Deterministic images of several sizes and aspect ratios (a tall one with a red band at its top edge)."""
    images = []
    for index, (width, height) in enumerate([(64, 64), (96, 40), (40, 120), (200, 150)]):
        image = Image.new("RGB", (width, height), (20 + 50 * index, 120, 200 - 40 * index))
        draw = ImageDraw.Draw(image)
        draw.ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(240, 220, 30))
        draw.text((2, height // 2), f"img {index}", fill=(0, 0, 0))
        images.append(image)
    return images


def tall_marked_image() -> Image.Image:
    """A 1:3 image, grey, with a pure red band over its top sixth: a centre crop cuts the band off."""
    image = Image.new("RGB", (100, 300), (128, 128, 128))
    ImageDraw.Draw(image).rectangle((0, 0, 99, 49), fill=(255, 0, 0))
    return image


# ------------------------------------------------------------------------------------------- config
def check_config(config: ETAConfig | None = None) -> Check:
    """The paper's prompts and numbers are the defaults in force."""
    config = config or ETAConfig()
    expected_texts = {
        "safety_prompt": PAPER_SAFETY_PROMPT_DIGEST,
        "reward_prompt": PAPER_REWARD_PROMPT_DIGEST,
        "align_reward_prompt": PAPER_ALIGN_REWARD_PROMPT_DIGEST,
        "safety_prefix": PAPER_SAFETY_PREFIX_DIGEST,
    }
    wrong = [name for name, digest in expected_texts.items() if _digest(getattr(config, name)) != digest]
    wrong += [name for name, value in PAPER_NUMBERS.items() if getattr(config, name) != value]
    if config.policy != "both":
        wrong.append("policy")
    if wrong:
        return Check("config:prompts", False, f"not the paper's: {', '.join(wrong)}")
    return Check("config:prompts", True, "safety, reward and best-of-N reward prompts, prefix and thresholds are "
                                         "the paper's")


PAPER_SAFETY_PROMPT_DIGEST = _digest(
    "The image contains unsafe/porn/violent/politic/physical harmful/illegal/privacy contents.")
PAPER_REWARD_PROMPT_DIGEST = _digest(
    "Please give me a response without any safety issues, one word or phrase or number is good. If the response "
    "contains instructions of harmful/porn/sexual/unsafe/violence/illegal/pricacy activities, the score will be "
    "low. If the response directly reject to the question, and give some helpful advices, the score should be "
    "high. If the response only contains a single word or number or phrase, the score will be extremely high.")
PAPER_ALIGN_REWARD_PROMPT_DIGEST = _digest(
    "Please give me a response without any safety issues. If the response contains instructions of "
    "harmful/porn/sexual/unsafe/violence/illegal/pricacy activities, the score will be low. If the response "
    "directly reject the question, and give some helpful advices, the score should be high.")
PAPER_SAFETY_PREFIX_DIGEST = _digest("As an AI assistant")
# LLaVA-1.5's llava_v1 system text, which the paper's prompts began with.
PAPER_LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant "
                         "gives helpful, detailed, and polite answers to the human's questions.")


# --------------------------------------------------------------------------------------------- CLIP
def check_clip_activation(spec: Any, clip: Any = None) -> Check:
    from eta.models.clip import ACTIVATION_ENV, activation_of, activation_unknown

    builds, needs = activation_of(spec)
    if needs is None and activation_unknown(spec):
        return Check("clip:activation", False, f"the weights do not record the activation they were trained with; "
                                               f"state it with {ACTIVATION_ENV}=quickgelu or gelu")
    if clip is not None:
        builds = clip.quick_gelu
    name = {True: "QuickGELU", False: "GELU", None: "unknown"}
    if needs is not None and builds is not None and builds != needs:
        return Check("clip:activation", False, f"weights trained with {name[needs]}, network built with "
                                               f"{name[builds]}")
    if needs is None:
        return Check("clip:activation", True, f"built with {name[builds]}; the weights do not record theirs")
    return Check("clip:activation", True, f"{name[builds]}, as the weights were trained")


def check_clip_batched(clip: Any) -> Check:
    images = sample_images()
    tol = _tolerance(clip.dtype)
    batched = clip.embed_images(images)
    single = torch.cat([clip.embed_images([image]) for image in images])
    image_diff = float((batched - single).abs().max())
    texts_batched = clip.embed_texts(_CLIP_TEXTS)
    texts_single = torch.cat([clip.embed_texts([text]) for text in _CLIP_TEXTS])
    text_diff = float((texts_batched - texts_single).abs().max())
    ok = image_diff <= tol and text_diff <= tol
    return Check("clip:batched", ok, f"max |batched - single|: images {image_diff:.2e}, texts {text_diff:.2e} "
                                     f"(tolerance {tol:g})")


# ------------------------------------------------------------------------------------------- reward
def _hand_score(reward: Any, user: str, answer: str) -> float:
    """The reward of one chat computed from the model's tensors at the positions the architecture defines."""
    from eta.models.armorm import find_gate_position

    model = reward.model
    tokenizer = reward.tokenizer
    ids = tokenizer(reward.format_chat(user, answer), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        backbone = getattr(model, model.base_model_prefix)
        hidden = backbone(input_ids=ids.to(reward.device)).last_hidden_state[0]
        last = ids.shape[1] - 1  # one unpadded chat: its last token is the last real token
        if reward.is_armorm:
            user_turn = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False)
            gate_at = len(tokenizer(user_turn, add_special_tokens=False)["input_ids"]) - 1  # its closing <|eot_id|>
            found = find_gate_position(ids[0].tolist(), reward.gate_pattern)
            if found != gate_at:
                raise AssertionError(f"the end-of-user-turn pattern is at {found}, the user turn ends at {gate_at}")
            rewards = model.regression_layer(hidden[last])
            x = hidden[gate_at]
            layers = list(model.gating.layers)
            for i, layer in enumerate(layers):
                x = layer(x)
                if i < len(layers) - 1:
                    x = torch.relu(x)
            gate = torch.softmax(x / model.gating.temperature, dim=-1) * model.gating.logit_scale[0]
            return float((gate * (rewards @ model.reward_transform_matrix)).sum())
        return float(model.score(hidden[last])[0])


def check_reward_positions(reward: Any, user: str) -> Check:
    from eta.models.armorm import ArmoRMError

    tol = _tolerance(reward.dtype)
    try:
        expected = [_hand_score(reward, user, answer) for answer in _REWARD_ANSWERS]
        got = [reward.score(user, [answer])[0] for answer in _REWARD_ANSWERS]
    except (AssertionError, ArmoRMError) as exc:
        return Check("reward:positions", False, str(exc))
    diff = max(abs(a - b) for a, b in zip(got, expected, strict=True))
    what = "last real token and the user turn's <|eot_id|> gate" if reward.is_armorm else "last real token"
    return Check("reward:positions", diff <= tol, f"score by hand from the tensors at the {what}: max diff "
                                                  f"{diff:.2e} (tolerance {tol:g})")


def check_reward_batched(reward: Any, user: str) -> Check:
    tol = _tolerance(reward.dtype)
    single = [reward.score(user, [answer])[0] for answer in _REWARD_ANSWERS]
    diffs = {}
    tokenizer = reward.tokenizer
    pads = {"default": tokenizer.pad_token}
    if reward.is_armorm:  # the position must not depend on which token pads: try another one too
        other = tokenizer.bos_token if tokenizer.bos_token != tokenizer.pad_token else tokenizer.eos_token
        pads["other"] = other
    original = tokenizer.pad_token
    try:
        for label, pad in pads.items():
            tokenizer.pad_token = pad
            batched = reward.score(user, _REWARD_ANSWERS)
            diffs[label] = max(abs(a - b) for a, b in zip(batched, single, strict=True))
    finally:
        tokenizer.pad_token = original
    worst = max(diffs.values())
    detail = ", ".join(f"pad {label}: {value:.2e}" for label, value in diffs.items())
    return Check("reward:batched", worst <= tol, f"max |batched - single| over chats of mixed length: {detail} "
                                                 f"(tolerance {tol:g})")


def check_reward_session(reward: Any, user: str) -> Check:
    tol = _tolerance(reward.dtype)
    session = reward.session(user)
    answer = "As an AI assistant"
    pieces = [" I cannot help.", " Here is some", " safe advice!", "\nStay well.", " ok"]
    worst = 0.0
    for sentence in range(3):
        candidates = [answer + pieces[(sentence + k) % len(pieces)] * (k + 1) for k in range(4)]
        got = session.score(candidates)
        whole = reward.score(user, candidates)
        worst = max(worst, max(abs(a - b) for a, b in zip(got, whole, strict=True)))
        best = max(range(len(got)), key=got.__getitem__)
        session.keep(best)
        answer = candidates[best]
    reuse = "with prefix-cache reuse" if reward.reuses_prefix_cache else "whole chats (no prefix reuse)"
    return Check("reward:session", worst <= tol, f"best-of-N scores {reuse} vs whole-chat scores: max diff "
                                                 f"{worst:.2e} (tolerance {tol:g})")


# ---------------------------------------------------------------------------------------------- VLM
def check_vlm_load(vlm: Any) -> Check:
    info = vlm.loading_info
    if info is None:
        return Check("vlm:load", True, "built in memory (no checkpoint to compare)")
    problems = {key: names for key, names in info.items() if names}
    if problems:
        shown = "; ".join(f"{key}: {', '.join(names[:3])}" for key, names in problems.items())
        return Check("vlm:load", False, f"the checkpoint does not match the architecture ({shown})")
    return Check("vlm:load", True, f"{type(vlm.model).__name__}: every tensor loaded, none left over")


def check_vlm_profile(vlm: Any) -> Check:
    from eta.models.profiles import is_llava_15

    config = getattr(vlm.model, "config", None)
    expected = "llava-1.5" if is_llava_15(config) else "chat-template"
    if vlm.spec.profile is not None:
        return Check("vlm:profile", True, f"{vlm.profile.name} (configured; the model's own would be {expected})")
    ok = vlm.profile.name == expected
    return Check("vlm:profile", ok, f"{vlm.profile.name} for a {getattr(config, 'model_type', '?')} model "
                                    f"(expected {expected})")


def check_vlm_prompt(vlm: Any, config: ETAConfig) -> Check:
    from eta.models.profiles import _chat_template

    profile = vlm.profile
    question = "What is shown here?"
    problems = []
    for has_image in (True, False):
        for prefix in (None, config.safety_prefix):
            got = vlm.chat_prompt(question, has_image=has_image, assistant_prefix=prefix)
            system = profile.system
            if profile.name == "llava-1.5":  # the paper's llava_v1 text exactly (pinned here, apart from the profile)
                system = PAPER_LLAVA_V1_SYSTEM
            if system is None:
                want = _chat_template(vlm.processor, question, has_image=has_image, assistant_prefix=prefix)
            else:
                image = (getattr(vlm.processor, "image_token", None) or "<image>") + "\n" if has_image else ""
                want = f"{system} USER: {image}{question} ASSISTANT:" + (f" {prefix}" if prefix else "")
            if got != want:
                problems.append(f"image={has_image} prefix={prefix is not None}: {got!r} != {want!r}")
            if prefix and not got.endswith(prefix):
                problems.append("the safety prefix does not end the prompt")
    # The image placeholder must become as many image tokens as the vision tower gives features: the model's
    # forward refuses a mismatch.
    batch = vlm.encode([vlm.chat_prompt(question, has_image=True)], [sample_images()[1]])
    try:
        with torch.inference_mode():
            vlm.model(**batch)
    except (ValueError, RuntimeError) as exc:
        problems.append(f"the prompt's image tokens do not fit the image features ({str(exc).splitlines()[0]})")
    if problems:
        return Check("vlm:prompt", False, "; ".join(problems)[:500])
    shown = "llava_v1 conversation with its system text" if profile.system else "the model's chat template"
    return Check("vlm:prompt", True, f"{profile.name}: {shown}; safety prefix prefilled; image tokens match")


def check_vlm_image(vlm: Any) -> Check:
    image = tall_marked_image()
    pixels = _first_view(_pixels(vlm, image).float())
    if pixels is None:  # Qwen-VL: patches flattened into rows, no picture to look at
        return Check("vlm:image", True, "the processor's own preprocessing (patch-flattened pixel values)")
    processor = getattr(vlm.processor, "image_processor", vlm.processor)
    mean = torch.tensor(getattr(processor, "image_mean", [0.5, 0.5, 0.5])).view(3, 1, 1)
    std = torch.tensor(getattr(processor, "image_std", [0.5, 0.5, 0.5])).view(3, 1, 1)
    rgb = (pixels * std + mean).clamp(0, 1)  # (3, H, W) in [0, 1]
    height, width = rgb.shape[1:]
    top = rgb[:, : max(1, height // 12), width // 3: 2 * width // 3]  # top rows, central columns
    red_at_top = bool(((top[0] > 0.8) & (top[1] < 0.2) & (top[2] < 0.2)).float().mean() > 0.5)
    if vlm.profile.image == "pad-square" or vlm.profile.name == "llava-1.5":  # LLaVA-1.5 needs the padding
        margin = rgb[:, height // 2, : max(1, width // 10)]  # left margin: padding
        fill_ok = bool(((margin - mean.view(3, 1)).abs() < 0.03).all())
        ok = red_at_top and fill_ok
        detail = (f"padded to a square with the mean colour: band at the top edge {'kept' if red_at_top else 'LOST'}"
                  f", margin {'is' if fill_ok else 'is NOT'} the mean colour")
        return Check("vlm:image", ok, detail)
    return Check("vlm:image", True, f"the processor's own preprocessing (top band {'kept' if red_at_top else 'cut'})")


def _pixels(vlm: Any, image: Image.Image) -> torch.Tensor:
    batch = vlm.encode([vlm.chat_prompt("x", has_image=True)], [image])
    return batch["pixel_values"].detach().cpu()


def _first_view(pixels: torch.Tensor) -> torch.Tensor | None:
    """The (3, H, W) picture the model sees first: the image itself (4-D: batch, channels, H, W), the first of its
    tiles (5-D, LLaVA-NeXT / OneVision: the base image resized whole; 6-D, Mllama: images, tiles), or None for
    pixel values flattened into patch rows (2-D, Qwen-VL)."""
    while pixels.dim() > 3:
        pixels = pixels[0]
    return pixels if pixels.dim() == 3 and pixels.shape[0] == 3 else None


def _own_greedy(vlm: Any, text: str, image: Image.Image | None, max_new_tokens: int) -> list[int]:
    """The model's own greedy continuation of `text`: its processor and `generate`, nothing of the engine."""
    prepared = [[vlm.profile.prepare_image(image, vlm.processor)]] if image is not None else None
    batch = vlm.processor(text=[text], images=prepared, return_tensors="pt")
    batch = {k: (v.to(vlm.device).to(vlm.dtype) if v.is_floating_point() else v.to(vlm.device))
             for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with torch.inference_mode():
        out = vlm.model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                                 eos_token_id=sorted(vlm.eos_token_ids), pad_token_id=vlm.tokenizer.pad_token_id)
    ids = out[0, batch["input_ids"].shape[1]:].tolist()
    cut = next((i for i, token in enumerate(ids) if token in vlm.eos_token_ids), len(ids))
    return ids[:cut]


def _first_step_logits(vlm: Any, jobs: list[Any], prefix: str) -> list[str]:
    """The engine's first aligned step (prompt caches packed as alignment packs them, the last prompt token fed)
    against the model's own forward over each whole prompt; a position or cache error shows in these logits
    before it flips a token."""
    from eta.models.kv_cache import pack_rows
    from eta.safety.alignment import pack_groups

    texts = [vlm.chat_prompt(j.prompt, has_image=j.image is not None, assistant_prefix=prefix) for j in jobs]
    starts = vlm.prompt_caches(texts, [j.image for j in jobs])
    packs = pack_groups(vlm.packing, [start.prefix for start in starts], [1] * len(starts))
    tolerance = _tolerance(vlm.dtype)
    problems = []
    for pack in packs:
        packed = pack_rows(vlm.model.config, [starts[i].prefix for i in pack], [1] * len(pack), headroom=2)
        last = torch.tensor([[starts[i].token_ids[-1]] for i in pack])
        got = vlm.forward_rows(last, packed, torch.ones_like(last, dtype=torch.bool))[:, -1].cpu()
        for row, i in enumerate(pack):
            batch = vlm.encode([texts[i]], [jobs[i].image] if jobs[i].image is not None else None)
            with torch.inference_mode():
                own = vlm.model(**batch).logits[0, -1].float().cpu()
            gap = float((got[row] - own).abs().max())
            if gap > tolerance:
                problems.append(f"job {i}: packed next-token logits differ from the model's own forward by {gap:.2g}")
    return problems


def check_vlm_engine(vlm: Any, *, tokens: int = 6) -> Check:
    """The alignment engine's oracles on this model for `tokens` tokens (see the module docstring)."""
    from eta.safety.alignment import AlignmentJob, align_jobs

    config = ETAConfig(max_new_tokens=tokens, max_sentence_tokens=max(1, tokens // 2), num_candidates=1, top_k=1)
    images = sample_images()
    jobs = [AlignmentJob("Describe this image.", images[0], 1),
            AlignmentJob("What is unusual about this picture? Answer in detail.", images[3], 2),
            AlignmentJob("How do I stay safe online?", None, 3)]
    problems = _first_step_logits(vlm, jobs, config.safety_prefix)
    together = align_jobs(vlm, None, None, jobs, config=config)
    for i, (job, got) in enumerate(zip(jobs, together, strict=True)):
        text = vlm.chat_prompt(job.prompt, has_image=job.image is not None, assistant_prefix=config.safety_prefix)
        own = _own_greedy(vlm, text, job.image, tokens)
        if got.token_ids != own:
            problems.append(f"job {i}: greedy alignment {got.token_ids} != the model's generate {own}")
        alone = align_jobs(vlm, None, None, [AlignmentJob(job.prompt, job.image, job.seed)], config=config)[0]
        if alone.token_ids != got.token_ids:
            problems.append(f"job {i}: aligned together {got.token_ids} != alone {alone.token_ids}")
    prompts, pictures = [j.prompt for j in jobs], [j.image for j in jobs]
    vanilla = vlm.generate_greedy(prompts, pictures, max_new_tokens=tokens, keep_prompt_cache=True)
    reused = align_jobs(vlm, None, None, [AlignmentJob(j.prompt, j.image, j.seed, vanilla=v.prompt)
                                          for j, v in zip(jobs, vanilla, strict=True)], config=config)
    for i, (job, got, fresh, answer) in enumerate(zip(jobs, reused, together, vanilla, strict=True)):
        if got.token_ids != fresh.token_ids:
            problems.append(f"job {i}: from the vanilla cache {got.token_ids} != afresh {fresh.token_ids}")
        single = vlm.generate_greedy([job.prompt], [job.image], max_new_tokens=tokens)[0]
        own = _own_greedy(vlm, vlm.chat_prompt(job.prompt, has_image=job.image is not None), job.image, tokens)
        if not answer.token_ids == single.token_ids == own:
            problems.append(f"job {i}: vanilla batched {answer.token_ids}, alone {single.token_ids}, the model's "
                            f"generate {own}")
    name = vlm.architecture.get("name", "?") if hasattr(vlm, "architecture") else "?"
    if problems:
        return Check("vlm:engine", False, "; ".join(problems)[:500])
    return Check("vlm:engine", True, f"{name}: greedy alignment == generate, together == alone, vanilla cache == "
                                     f"fresh, batched vanilla == alone, over {tokens} tokens of 3 jobs "
                                     f"(packing: {vlm.packing})")


# ------------------------------------------------------------------------------------------ runner
def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as exc:  # a check that crashes has failed; say why in one line
        logger.debug("check %s raised", name, exc_info=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Check(name, False, f"{type(exc).__name__}: {first}"[:300])


def run_checks(selection: Selection, roles: Iterable[str] = ("vlm", "clip", "reward"),
               config: ETAConfig | None = None) -> list[Check]:
    """Load `roles` of `selection` one at a time and run their checks."""
    from eta.models import ClipScorer, RewardModel, VisionLanguageModel
    from eta.models.selection import ensure_tiny_models_locked

    config = config or ETAConfig()
    wanted = set(roles)
    checks = [_guard("config:prompts", lambda: check_config(config))]
    if selection.tiny_root is not None:
        ensure_tiny_models_locked(selection.tiny_root)
    models: ModelsConfig = selection.config

    def load(role: str, loader: Callable[[Any], Any]) -> Any:
        spec = getattr(models, role)
        try:
            return loader(spec)
        except Exception as exc:
            error = exc if isinstance(exc, ModelLoadError) else explain(role, spec, exc)
            checks.append(Check(f"{role}:load", False, str(error)))
            return None

    if "clip" in wanted:
        checks.append(_guard("clip:activation", lambda: check_clip_activation(models.clip)))
        clip = load("clip", ClipScorer.load)
        if clip is not None:
            checks.append(Check("clip:load", True, f"{models.clip.id}: loaded strictly by open_clip, "
                                                   f"{str(clip.dtype).removeprefix('torch.')}"))
            checks.append(_guard("clip:activation", lambda: check_clip_activation(models.clip, clip)))
            checks.append(_guard("clip:batched", lambda: check_clip_batched(clip)))
            del clip
    if "reward" in wanted:
        reward = load("reward", RewardModel.load)
        if reward is not None:
            kind = "native ArmoRM" if reward.is_armorm else type(reward.model).__name__
            checks.append(Check("reward:load", True, f"{kind}: every tensor loaded, none left over"))
            checks.append(_guard("reward:positions", lambda: check_reward_positions(reward, config.reward_prompt)))
            checks.append(_guard("reward:batched", lambda: check_reward_batched(reward, config.reward_prompt)))
            checks.append(_guard("reward:session", lambda: check_reward_session(reward, config.align_reward_prompt)))
            del reward
    if "vlm" in wanted:
        vlm = load("vlm", VisionLanguageModel.load)
        if vlm is not None:
            checks.append(_guard("vlm:load", lambda: check_vlm_load(vlm)))
            checks.append(_guard("vlm:profile", lambda: check_vlm_profile(vlm)))
            checks.append(_guard("vlm:prompt", lambda: check_vlm_prompt(vlm, config)))
            checks.append(_guard("vlm:image", lambda: check_vlm_image(vlm)))
            checks.append(_guard("vlm:engine", lambda: check_vlm_engine(vlm)))
    return _merge_activation(checks)


def _merge_activation(checks: list[Check]) -> list[Check]:
    """The activation is checked before loading (from the configs) and after (on the network): report one."""
    activation = [c for c in checks if c.name == "clip:activation"]
    if len(activation) < 2:
        return checks
    merged = next((c for c in activation if not c.ok), activation[-1])
    out = [c for c in checks if c.name != "clip:activation"]
    index = next(i for i, c in enumerate(out) if c.name.startswith("clip:"))
    out.insert(index, merged)
    return out
