"""ArmoRM (`RLHFlow/ArmoRM-Llama3-8B-v0.1`) as a native transformers model: no remote code.

The published checkpoint's modelling code needs `trust_remote_code` and imports a name transformers 5 removed,
so the architecture is implemented here with the same parameter names, and the published weights load into it
strictly (no missing, unexpected or mis-shaped tensors):

- `model.*`: the Llama-3 backbone (`LlamaModel`);
- `regression_layer.weight`: Linear(hidden, K) without bias, K = `num_objectives` (19) objective rewards read at
  the chat's last real token;
- `gating.layers.{0..n}.weight|bias`: `gating_n_hidden` (3) Linear(., `gating_hidden_dim` = 1024) + ReLU layers and
  a Linear(1024, K); `gating.logit_scale`: a learned scalar. The gate is softmax(logits / `gating_temperature`)
  * logit_scale, read at the hidden state of the `<|eot_id|>` that ends the user turn (the last occurrence of
  `<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n`);
- `reward_transform_matrix`: K x K.

score = sum_k gate_k * (rewards @ reward_transform_matrix)_k.

Differences from the published code, on purpose: the scored position comes from the attention mask (the hub
code looks for `config.pad_token_id`, which reads a padding position under batching when the tokenizer pads with
another id, or the user turn's `<|eot_id|>` when it pads with that one); the caller may pass the scored and gate
positions, or a gate computed earlier (`gating_output`), so a prefix KV cache that already holds the user turn
can be reused (see `eta.models.reward.RewardSession`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaModel, LlamaPreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

# `architectures` entry of the published config.json; the reward loader dispatches on it.
ARMORM_ARCHITECTURE = "LlamaForRewardModelWithGating"
# Text whose first token is the gate position: the end of the user turn followed by the assistant header.
GATE_MARKER = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
# GATE_MARKER in Llama-3's vocabulary (the published model's tokenizer).
LLAMA3_GATE_PATTERN = (128009, 128006, 78191, 128007, 271)


class ArmoRMError(ValueError):
    """A chat the reward head cannot score (no end of user turn to gate on)."""


class GatingNetwork(nn.Module):
    """MLP from the user turn's hidden state to K objective weights (a temperature softmax times a scale)."""

    def __init__(self, in_features: int, out_features: int, *, temperature: float = 10.0, hidden_dim: int = 1024,
                 n_hidden: int = 3) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.logit_scale = nn.Parameter(torch.ones(1))
        sizes = [in_features] + [hidden_dim] * n_hidden
        layers = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        layers.append(nn.Linear(sizes[-1], out_features))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return F.softmax(x / self.temperature, dim=-1) * self.logit_scale[0]


@dataclass
class ArmoRMOutput(ModelOutput):
    """score (B,): the preference score; logits (B, 1): the same, shaped as a sequence classifier's;
    rewards (B, K): objective rewards; gating_output (B, K): the gate; cache: the KV cache when asked for."""

    score: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    gating_output: torch.Tensor | None = None
    cache: Any = None


def find_gate_position(ids: Sequence[int], pattern: Sequence[int], end: int | None = None) -> int:
    """Index of the first token of the last occurrence of `pattern` in `ids[:end]`; -1 when absent."""
    pattern = list(pattern)
    width = len(pattern)
    stop = len(ids) if end is None else min(end, len(ids))
    for start in range(stop - width, -1, -1):
        if list(ids[start:start + width]) == pattern:
            return start
    return -1


class LlamaForRewardModelWithGating(LlamaPreTrainedModel):
    """ArmoRM's architecture with the published parameter names (see the module docstring).

    The class carries the published architecture name, so `save_pretrained` writes a config.json that names it
    as ArmoRM's does, and a directory saved from it loads like the published checkpoint.
    """

    config_class = LlamaConfig
    base_model_prefix = "model"

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.model = LlamaModel(config)
        objectives = int(getattr(config, "num_objectives", 19))
        self.num_objectives = objectives
        self.regression_layer = nn.Linear(config.hidden_size, objectives, bias=False)
        self.reward_transform_matrix = nn.Parameter(torch.eye(objectives), requires_grad=False)
        self.gating = GatingNetwork(
            config.hidden_size, objectives,
            temperature=float(getattr(config, "gating_temperature", 10)),
            hidden_dim=int(getattr(config, "gating_hidden_dim", 1024)),
            n_hidden=int(getattr(config, "gating_n_hidden", 3)),
        )
        # Token ids of GATE_MARKER: Llama-3's unless the config says otherwise (the small test builds, whose
        # vocabulary differs); the reward adapter sets them from the model's own tokenizer.
        self.gate_token_pattern: tuple[int, ...] = tuple(getattr(config, "gate_token_pattern", None)
                                                         or LLAMA3_GATE_PATTERN)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LlamaForRewardModelWithGating):
            init.eye_(module.reward_transform_matrix)
        elif isinstance(module, GatingNetwork):
            init.ones_(module.logit_scale)

    def score_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The last real token of each row: from the attention mask (its last 1), else the last position."""
        batch, length = input_ids.shape
        if attention_mask is None:
            return torch.full((batch,), length - 1, dtype=torch.long, device=input_ids.device)
        mask = attention_mask[:, -length:].to(input_ids.device)  # with a cache the mask also covers the past
        index = torch.arange(length, device=input_ids.device)
        last = torch.where(mask.bool(), index, torch.full_like(index, -1)).max(dim=-1).values
        if bool((last < 0).any()):
            raise ArmoRMError("a row of the batch has no real token")
        return last

    def gate_positions(self, input_ids: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
        """The end of the user turn of each row (searched up to its scored token)."""
        out = []
        for row, end in zip(input_ids.tolist(), scored.tolist(), strict=True):
            position = find_gate_position(row, self.gate_token_pattern, end + 1)
            if position < 0:
                raise ArmoRMError("no end of user turn (<|eot_id|> before the assistant header) in the chat: "
                                  "format it with the reward model's chat template")
            out.append(position)
        return torch.tensor(out, dtype=torch.long, device=input_ids.device)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        score_positions: torch.Tensor | None = None,
        gate_positions: torch.Tensor | None = None,
        gating_output: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> ArmoRMOutput:
        """Score a batch of chats.

        Args:
            score_positions: (B,) index of the scored token of each row in `input_ids`; default from the mask.
            gate_positions: (B,) index of the gate token in `input_ids`; default: found in `input_ids`.
            gating_output: (B, K) or (1, K) gate computed before (its token lies in `cache`); overrides
                `gate_positions`.
        """
        if input_ids is None:
            raise ArmoRMError("ArmoRM scores token ids (input_ids), not embeddings")
        outputs = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                             inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden = outputs.last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if score_positions is None:
            score_positions = self.score_positions(input_ids, attention_mask)
        rewards = self.regression_layer(hidden[rows, score_positions.to(hidden.device)])
        if gating_output is None:
            if gate_positions is None:
                gate_positions = self.gate_positions(input_ids, score_positions)
            gating_output = self.gating(hidden[rows, gate_positions.to(hidden.device)])
        gate = gating_output.to(rewards.dtype).expand(rewards.shape[0], -1)
        score = (gate * (rewards @ self.reward_transform_matrix)).sum(dim=-1)
        return ArmoRMOutput(score=score, logits=score[:, None], rewards=rewards, gating_output=gate,
                            cache=getattr(outputs, "cache", None))


ArmoRMForRewardModel = LlamaForRewardModelWithGating


def is_armorm(config: Any) -> bool:
    """Whether a loaded config (or its `architectures` list) names ArmoRM's architecture."""
    return ARMORM_ARCHITECTURE in (getattr(config, "architectures", None) or [])
