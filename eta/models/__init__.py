"""Model adapters: the VLM, CLIP and the reward model, loaded once per process through their real loaders."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, overload

from eta.config import ModelRole, ModelsConfig
from eta.models.clip import ClipScorer
from eta.models.reward import RewardModel
from eta.models.vlm import Generated, VisionLanguageModel

logger = logging.getLogger(__name__)

ROLES = ("vlm", "clip", "reward")

__all__ = ["ROLES", "ClipScorer", "Generated", "Models", "RewardModel", "VisionLanguageModel", "load_models"]


@dataclass
class Models:
    """The models a process holds; a role it does not need stays None (a `pre` worker loads CLIP only)."""

    vlm: VisionLanguageModel | None = None
    clip: ClipScorer | None = None
    reward: RewardModel | None = None

    @overload
    def require(self, role: Literal["vlm", ModelRole.VLM]) -> VisionLanguageModel: ...
    @overload
    def require(self, role: Literal["clip", ModelRole.CLIP]) -> ClipScorer: ...
    @overload
    def require(self, role: Literal["reward", ModelRole.REWARD]) -> RewardModel: ...

    def require(self, role: str) -> VisionLanguageModel | ClipScorer | RewardModel:
        """The model of `role`, typed by role.

        Raises:
            RuntimeError: this process did not load it (its worker's queues do not need it).
        """
        model: VisionLanguageModel | ClipScorer | RewardModel | None = getattr(self, ModelRole(role).value)
        if model is None:
            raise RuntimeError(f"the {role} model is not loaded in this process")
        return model

    def describe(self) -> dict[str, Any]:
        return {role: getattr(self, role).describe() for role in ROLES if getattr(self, role) is not None}


def load_models(config: ModelsConfig, roles: Iterable[str] = ROLES) -> Models:
    """Load the requested roles from `config`.

    Raises:
        eta.models.selection.ModelLoadError: a model cannot be loaded (one line: model, cause, fix).
    """
    from eta.models.selection import Selection, load_selection

    return load_selection(Selection(config=config), roles)
