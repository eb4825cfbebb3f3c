"""Configuration of the ETA algorithm and of the three models it uses.

`ETAConfig` holds every algorithm parameter with the paper's defaults (the thresholds were calibrated with
exactly these prompts, typos included). `ModelSpec`/`ModelsConfig` say which weights to load and where.
Both validate on construction and raise `ConfigError` naming the offending field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

Policy = Literal["both", "either", "post_only"]
POLICIES: tuple[str, ...] = ("both", "either", "post_only")

DEFAULT_SAFETY_PROMPT = "The image contains unsafe/porn/violent/politic/physical harmful/illegal/privacy contents."
# Kept verbatim from the paper (including "pricacy"): tau_post was calibrated against this exact text.
DEFAULT_REWARD_PROMPT = (
    "Please give me a response without any safety issues, one word or phrase or number is good. "
    "If the response contains instructions of harmful/porn/sexual/unsafe/violence/illegal/pricacy activities, "
    "the score will be low. If the response directly reject to the question, and give some helpful advices, "
    "the score should be high. If the response only contains a single word or number or phrase, "
    "the score will be extremely high."
)
DEFAULT_SAFETY_PREFIX = "As an AI assistant"
# The reward model's user turn during best-of-N (the paper's code uses this shorter default there; the long
# DEFAULT_REWARD_PROMPT is for post-evaluation). Verbatim, typos included.
DEFAULT_ALIGN_REWARD_PROMPT = (
    "Please give me a response without any safety issues. "
    "If the response contains instructions of harmful/porn/sexual/unsafe/violence/illegal/pricacy activities, "
    "the score will be low. If the response directly reject the question, and give some helpful advices, "
    "the score should be high."
)


# Domain of each real-valued parameter: (least, greatest), both inclusive. Checked at construction, so a job
# is refused at submission instead of failing in the worker; the OpenAPI document states the same bounds.
# - temperature: the sampler divides the logits by it; below the floor the quotient overflows (1e-320 turns
#   every logit into inf and the distribution into NaN). 0.01 keeps logits of up to 655 finite even in fp16;
#   above 100 the top-k distribution is uniform to many digits already.
# - tau_pre: s_pre is a cosine (in [-1, 1]); a threshold outside it forces a branch, the room up to 100 lets
#   a value on the wrong (x100 logit) scale reach the conformance check that names the mistake.
# - tau_post: rewards have no fixed scale (a generic reward model's logit); tests force branches with 1e9.
# - alpha: weight of the CLIP term, summed with the reward in float32; a huge weight would overflow it.
MIN_TEMPERATURE = 0.01
REAL_DOMAINS: dict[str, tuple[float, float]] = {
    "tau_pre": (-100.0, 100.0),
    "tau_post": (-1e12, 1e12),
    "alpha": (0.0, 1e6),
    "temperature": (MIN_TEMPERATURE, 100.0),
}
MAX_SEED = 2**63 - 1


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(name, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ConfigError(name, f"must be finite, got {value!r}")
    return float(value)


def _int_at_least(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {value}")
    return value


def _text(name: str, value: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigError(name, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ConfigError(name, "must not be empty")
    return value


@dataclass(frozen=True)
class ETAConfig:
    """Parameters of Evaluating Then Aligning. Defaults are the paper's."""

    # Text that CLIP compares the image with; s_pre = cos(image, safety_prompt).
    safety_prompt: str = DEFAULT_SAFETY_PROMPT
    # The image is judged unsafe when s_pre >= tau_pre (cosine scale, not the x100 logit scale).
    tau_pre: float = 0.16
    # User turn given to the reward model in place of the user's question.
    reward_prompt: str = DEFAULT_REWARD_PROMPT
    # User turn given to the reward model while best-of-N scores candidate sentences (deep alignment).
    align_reward_prompt: str = DEFAULT_ALIGN_REWARD_PROMPT
    # The response is judged unsafe when s_post <= tau_post.
    tau_post: float = 0.06
    # When to align: both evaluators flag (paper), either flags, or the post-evaluator alone.
    policy: Policy = "both"
    # Text the aligned answer is restarted with (shallow alignment).
    safety_prefix: str = DEFAULT_SAFETY_PREFIX
    # Candidates sampled per sentence (deep alignment, best-of-N).
    num_candidates: int = 5
    # Sampling of candidates: top-k and temperature.
    top_k: int = 5
    temperature: float = 1.5
    # Weight of the CLIP term: score = reward + (alpha / i) * clip for sentence i >= 2.
    alpha: float = 1.0
    # A candidate sentence is cut after this many tokens.
    max_sentence_tokens: int = 70
    # Token budget of the vanilla and of the aligned answer.
    max_new_tokens: int = 1024
    # Seed of candidate sampling; None draws one at run time (and the drawn seed is recorded).
    seed: int | None = None

    def __post_init__(self) -> None:
        _text("safety_prompt", self.safety_prompt)
        _text("reward_prompt", self.reward_prompt)
        _text("align_reward_prompt", self.align_reward_prompt)
        _text("safety_prefix", self.safety_prefix)
        for name, (least, greatest) in REAL_DOMAINS.items():
            value = _finite(name, getattr(self, name))
            if not least <= value <= greatest:
                raise ConfigError(name, f"must be between {least:g} and {greatest:g}, got {value!r}")
            object.__setattr__(self, name, value)
        if self.policy not in POLICIES:
            raise ConfigError("policy", f"must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        _int_at_least("num_candidates", self.num_candidates, 1)
        _int_at_least("top_k", self.top_k, 1)
        _int_at_least("max_sentence_tokens", self.max_sentence_tokens, 1)
        _int_at_least("max_new_tokens", self.max_new_tokens, 1)
        if self.seed is not None:
            _int_at_least("seed", self.seed, 0)
            if self.seed > MAX_SEED:
                raise ConfigError("seed", "must be < 2**63")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ETAConfig:
        """Build from a JSON-like mapping; unknown keys are an error (a typo must not pass silently)."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown parameter (known: {', '.join(sorted(known))})")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ETAConfig:
        return dataclasses.replace(self, **changes)


class ModelRole(StrEnum):
    """The three models ETA uses; a worker loads only the roles its stages need."""

    VLM = "vlm"
    CLIP = "clip"
    REWARD = "reward"


Device = str  # "auto", "cpu", "cuda", "cuda:1", ...
DType = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelSpec:
    """Where one model comes from and how it is placed.

    For the VLM and the reward model `id` is a Hugging Face hub id or a local directory saved with
    `save_pretrained`. For CLIP `id` is an open_clip architecture name (`ViT-L-14-336`) used with
    `pretrained` (a tag such as `openai`, or a checkpoint path), or `local-dir:PATH` / `hf-hub:ID`.
    """

    # Hub id, local directory, or open_clip model name.
    id: str
    # Hub revision (branch, tag or commit) pinned for reproducibility; None means the default branch.
    revision: str | None = None
    # open_clip only: pretrained tag or checkpoint path.
    pretrained: str | None = None
    # "auto" picks cuda when available, else cpu.
    device: Device = "auto"
    # "auto" is bfloat16 on GPU and float32 on CPU.
    dtype: DType = "auto"
    # Allow model code from the hub (never needed for the defaults: ArmoRM is implemented natively).
    trust_remote_code: bool = False
    # VLM only: prompt profile (see eta.models.profiles); None picks it from the model's config.
    profile: str | None = None
    # VLM only: let an architecture outside the support matrix load, for an experiment (every result's
    # fingerprint then says so). The service sets it from ETA_VLM_ALLOW_UNSUPPORTED.
    allow_unsupported: bool = False
    # VLM only: hold each job's prefix once for its N candidate rows where the architecture allows it; False keeps
    # the copied layout (N copies), for comparison. The service sets it from ETA_SHARED_PREFIX.
    shared_prefix: bool = True
    # CLIP only: the activation, "quickgelu" or "gelu", of weights that do not record theirs (eta.models.clip).
    # The service sets it from ETA_CLIP_ACTIVATION.
    activation: str | None = None

    def __post_init__(self) -> None:
        _text("id", self.id)
        if self.dtype not in DTYPES:
            raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError("device", f"must be a device name such as cpu or cuda, got {self.device!r}")


@dataclass(frozen=True)
class ModelsConfig:
    """The three models of ETA. Defaults are the production models of the paper."""

    vlm: ModelSpec = field(default_factory=lambda: ModelSpec("llava-hf/llava-1.5-7b-hf"))
    # OpenAI's ViT-L/14@336 weights were trained with QuickGELU: the `-quickgelu` architecture builds it.
    clip: ModelSpec = field(default_factory=lambda: ModelSpec("ViT-L-14-336-quickgelu", pretrained="openai"))
    # Loaded by the native ArmoRM class (eta.models.armorm), no remote code.
    reward: ModelSpec = field(default_factory=lambda: ModelSpec("RLHFlow/ArmoRM-Llama3-8B-v0.1"))

    @classmethod
    def tiny(cls, root: str, *, device: Device = "auto") -> ModelsConfig:
        """The locally built tiny models under `root` (its vlm/, clip/ and reward/ directories, as
        `eta.models.tiny` writes them)."""
        base = root.rstrip("/") or "/"
        return cls(
            vlm=ModelSpec(f"{base}/vlm", device=device),
            clip=ModelSpec(f"local-dir:{base}/clip", device=device),
            reward=ModelSpec(f"{base}/reward", device=device),
        )

    def with_load_options(self, *, allow_unsupported: bool = False, shared_prefix: bool = True,
                          clip_activation: str | None = None) -> ModelsConfig:
        """The same models with the switches read at load (see `ModelSpec`)."""
        return ModelsConfig(
            vlm=dataclasses.replace(self.vlm, allow_unsupported=allow_unsupported, shared_prefix=shared_prefix),
            clip=dataclasses.replace(self.clip, activation=clip_activation),
            reward=self.reward,
        )

    def with_device(self, device: Device, dtype: DType = "auto") -> ModelsConfig:
        return ModelsConfig(
            vlm=dataclasses.replace(self.vlm, device=device, dtype=dtype),
            clip=dataclasses.replace(self.clip, device=device, dtype=dtype),
            reward=dataclasses.replace(self.reward, device=device, dtype=dtype),
        )


def fingerprint_digest(payload: dict[str, Any]) -> str:
    """sha256 of a canonical JSON rendering (sorted keys, no whitespace)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def fingerprint_with_preset(fingerprint: dict[str, Any], preset: dict[str, Any] | None) -> dict[str, Any]:
    """The fingerprint with the preset a job's parameters were built on (`{"name", "version"}`) in its payload
    and its digest: two jobs with equal parameters, one from a preset and one not, are told apart."""
    if preset is None:
        return fingerprint
    payload = {k: v for k, v in fingerprint.items() if k != "digest"}
    payload["preset"] = dict(preset)
    return {**payload, "digest": fingerprint_digest(payload)}
