"""Click options shared by the `eta` commands that load models and run ETA.

They live apart from `eta.commands.main` because commands defined in other modules (`eta.commands.evaluate`)
need them at import time, while `eta.commands.main` imports those modules to register their commands: kept
there, the options would make an import cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from eta.config import DTYPES, POLICIES

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Keyword names match `eta.commands.main.models_config(...)`.
_MODEL_OPTIONS = (
    click.option("--tiny-dir", type=click.Path(file_okay=False, path_type=Path),
                 help="Where the tiny models are (default: the data directory's cache)."),
    click.option("--vlm", help="VLM hub id or directory (default: tiny models)."),
    click.option("--clip", help="open_clip model name or local-dir:/hf-hub: id."),
    click.option("--clip-pretrained", help="open_clip pretrained tag or checkpoint path."),
    click.option("--reward", help="Reward model hub id or directory."),
    click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto."),
    click.option("--dtype", default="auto", show_default=True, type=click.Choice(DTYPES)),
)

# Keyword names match `ETAConfig` fields; None means the config's default.
_PARAMETER_OPTIONS = (
    click.option("--tau-pre", type=float, help="CLIP threshold (default 0.16)."),
    click.option("--tau-post", type=float, help="Reward threshold (default 0.06)."),
    click.option("--policy", type=click.Choice(POLICIES), help="When to align (default both)."),
    click.option("--seed", type=int, help="Sampling seed of deep alignment."),
    click.option("--max-new-tokens", type=int, help="Token budget of each answer (default 1024)."),
    click.option("--num-candidates", type=int, help="Candidates per sentence (default 5)."),
)


def _apply(options: tuple[Callable[[F], F], ...], command: F) -> F:
    for option in reversed(options):  # the first listed shows first in --help
        command = option(command)
    return command


def model_options(command: F) -> F:
    """--tiny-dir, --vlm, --clip, --clip-pretrained, --reward, --device, --dtype."""
    return _apply(_MODEL_OPTIONS, command)


def parameter_options(command: F) -> F:
    """--tau-pre, --tau-post, --policy, --seed, --max-new-tokens, --num-candidates."""
    return _apply(_PARAMETER_OPTIONS, command)


PARAMETER_NAMES = ("tau_pre", "tau_post", "policy", "seed", "max_new_tokens", "num_candidates")
MODEL_OPTION_NAMES = ("tiny_dir", "vlm", "clip", "clip_pretrained", "reward", "device", "dtype")
