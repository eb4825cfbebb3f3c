"""The VLM support matrix: the architectures whose aligned answers are proven exact (docs/models.md).

Each entry passed the engine's oracles on a tiny build of its architecture (`tests/unit/test_vlm_architectures.py`)
and `eta models check` runs the same oracles on a deployment's real weights. A model of any other architecture is
refused at load in one line naming it and the supported ones: its aligned answer, the one the audit trail records
as the safe answer, could be silently wrong. `ModelSpec.allow_unsupported` (the service's `ETA_VLM_ALLOW_UNSUPPORTED=1`)
lets one load for an experiment; every result's fingerprint then says so (`describe()["supported"]` is false).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The setting's variable that lets a VLM outside the matrix load (experiments only), named in messages.
ALLOW_UNSUPPORTED_ENV = "ETA_VLM_ALLOW_UNSUPPORTED"


@dataclass(frozen=True)
class Architecture:
    """One row of the support matrix."""

    name: str  # as `eta models build-tiny --arch` spells it
    model_type: str  # transformers' `config.model_type`
    hub_ids: tuple[str, ...]  # checkpoints of this architecture (examples; any checkpoint of it works)
    # How its jobs share a batch in deep alignment (see eta.safety.alignment._packs): all, equal-pending,
    # equal-cross.
    packing: str


MATRIX: tuple[Architecture, ...] = (
    Architecture("llava-1.5", "llava", ("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"), "all"),
    Architecture("llava-next", "llava_next", ("llava-hf/llama3-llava-next-8b-hf", "llava-hf/llava-v1.6-mistral-7b-hf"),
                 "all"),
    Architecture("llava-onevision", "llava_onevision", ("llava-hf/llava-onevision-qwen2-7b-ov-chat-hf",), "all"),
    Architecture("qwen2-vl", "qwen2_vl", ("Qwen/Qwen2-VL-7B-Instruct",), "all"),
    Architecture("qwen2.5-vl", "qwen2_5_vl", ("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"), "all"),
    Architecture("qwen3-vl", "qwen3_vl", ("Qwen/Qwen3-VL-8B-Instruct",), "all"),
    Architecture("mllama", "mllama", ("meta-llama/Llama-3.2-11B-Vision-Instruct",), "equal-cross"),
    Architecture("gemma3", "gemma3", ("google/gemma-3-4b-it", "google/gemma-3-12b-it"), "equal-pending"),
    Architecture("internvl", "internvl", ("OpenGVLab/InternVL3-8B-hf", "OpenGVLab/InternVL3-2B-hf"), "all"),
)
BY_MODEL_TYPE = {a.model_type: a for a in MATRIX}
# Used by the paper, served only with the authors' remote code: outside the matrix (said so in docs/models.md).
REMOTE_CODE_ONLY = ("InternVL-Chat-1.0", "InternLM-XComposer-2.5")


class UnsupportedArchitecture(ValueError):
    """A VLM outside the support matrix, without the experiment override."""


def supported_names() -> str:
    return ", ".join(f"{a.name} ({a.model_type})" for a in MATRIX)


def architecture_of(config: Any, *, allow_unsupported: bool = False) -> dict[str, Any]:
    """What the fingerprint records: the architecture's matrix name (or its model type) and whether it is in the
    matrix.

    Raises:
        UnsupportedArchitecture: outside the matrix and not `allow_unsupported`.
    """
    model_type = str(getattr(config, "model_type", None) or "unknown")
    entry = BY_MODEL_TYPE.get(model_type)
    if entry is not None:
        return {"name": entry.name, "model_type": model_type, "supported": True}
    if allow_unsupported:
        return {"name": model_type, "model_type": model_type, "supported": False,
                "override": f"{ALLOW_UNSUPPORTED_ENV}=1 (experiment: alignment not proven exact)"}
    raise UnsupportedArchitecture(
        f"architecture {model_type!r} is outside the VLM support matrix (supported: {supported_names()}); "
        f"use a model of a supported architecture, or set {ALLOW_UNSUPPORTED_ENV}=1 for an experiment (every result "
        "is then marked unsupported in its fingerprint)")
