"""The `eta` command line: the group, `eta run` and `eta models`, and the registration of every subcommand
(each in its own module of eta/commands/). `python -m eta` runs it too."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from eta.commands.options import model_options, parameter_options
from eta.config import ConfigError, ETAConfig, ModelsConfig

logger = logging.getLogger(__name__)


class CommandError(click.ClickException):
    """A one-line error and exit status 2 (bad input), never a traceback."""

    exit_code = 2


class _Main(click.Group):
    """The `eta` group: a model set that cannot be chosen or loaded ends any command with its one-line error and
    exit status 2 (see eta.models.selection)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            # The base install is the client; serving, workers and models come with extras.
            raise CommandError(f"this command needs {exc.name}, which is not installed: "
                               "pip install 'eta-service[all]' (or [service] / [models])") from exc
        except Exception as exc:
            # Looked up only once a command raised: the client's commands run without the model libraries.
            selection = sys.modules.get("eta.models.selection")
            if selection is not None and isinstance(exc, selection.ModelLoadError | selection.ModelSelectionError):
                raise CommandError(str(exc)) from exc
            settings = sys.modules.get("eta.settings")
            if settings is not None and isinstance(exc, settings.SettingsError):
                raise CommandError(f"settings: {exc}") from exc
            raise


@click.group(cls=_Main)
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """ETA: Evaluating Then Aligning, inference-time safety for vision-language models."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        _quiet_libraries()


def _quiet_libraries() -> None:
    """No weight-loading progress bars or advisory warnings from transformers, without importing it here (a
    command that never loads a model should not pay for the import)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported (e.g. in-process tests): tell it directly
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


# --------------------------------------------------------------------------------------------- models
@main.group()
def models() -> None:
    """Model utilities."""


@models.command("build-tiny")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seeds the random weights.")
@click.option("--shape", default="tiny", show_default=True, type=click.Choice(["tiny", "small"]),
              help="Size: tiny (tests, demo) or small (a CPU benchmark). Both have the production architectures: "
                   "LLaVA-1.5 with the llava-1.5 prompt profile, ArmoRM with a Llama-3-style tokenizer, QuickGELU "
                   "CLIP.")
@click.option("--arch", default=None, help="The VLM's architecture (tiny shape only): llava-1.5 (default), "
                                           "llava-next, llava-onevision, qwen2-vl, qwen2.5-vl, qwen3-vl, mllama, "
                                           "gemma3, internvl.")
def build_tiny(directory: Path, seed: int, shape: str, arch: str | None) -> None:
    """Build random-weight VLM, CLIP and reward models (and their tokenizers) into DIRECTORY."""
    from eta.models.tiny import build_tiny_models

    if arch is not None:
        from eta.models.tiny_vlms import ARCHITECTURES, build_tiny_set

        if arch not in ARCHITECTURES or shape != "tiny":
            raise click.UsageError(f"--arch {arch!r}: one of {', '.join(ARCHITECTURES)}, with --shape tiny")
        root = build_tiny_set(directory, arch, seed=seed)
        click.echo(f"tiny models with a {arch} VLM written to {root} (vlm/, clip/, reward/)")
        return
    paths = build_tiny_models(directory, seed=seed, shape=shape)
    click.echo(f"{shape} models written to {paths.root} (vlm/, clip/, reward/)")


def _register_model_commands() -> None:
    from eta.commands.models import check

    models.add_command(check)


_register_model_commands()


def models_config(*, tiny_dir: Path | None, vlm: str | None, clip: str | None, clip_pretrained: str | None,
                  reward: str | None, device: str, dtype: str) -> ModelsConfig:
    """All three named models, or none (the tiny ones, built on first use): see eta.models.selection."""
    from eta.models.selection import load_options, models_config_from_options
    from eta.settings import get_settings

    settings = get_settings()
    config = models_config_from_options(tiny_dir=tiny_dir or settings.tiny_models_dir, vlm=vlm, clip=clip,
                                        clip_pretrained=clip_pretrained, reward=reward, device=device, dtype=dtype)
    return config.with_load_options(**load_options(settings))


# ------------------------------------------------------------------------------------------------ run
@main.command()
@click.option("--image", "image_path", type=click.Path(path_type=Path), help="Image file; omit for text-only.")
@click.option("--prompt", required=True, help="The user's question.")
@parameter_options
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
@model_options
def run(image_path: Path | None, prompt: str, tau_pre: float | None, tau_post: float | None,
        policy: str | None, seed: int | None, max_new_tokens: int | None, num_candidates: int | None,
        as_json: bool, tiny_dir: Path | None, vlm: str | None, clip: str | None, clip_pretrained: str | None,
        reward: str | None, device: str, dtype: str) -> None:
    """Run ETA on one image and prompt, and print the decision, the scores and the final answer."""
    from eta.images import ImageError, decode_image

    overrides = {"tau_pre": tau_pre, "tau_post": tau_post, "policy": policy, "seed": seed,
                 "max_new_tokens": max_new_tokens, "num_candidates": num_candidates}
    try:
        config = ETAConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise CommandError(f"invalid parameter {exc}") from exc
    if not prompt.strip():
        raise CommandError("--prompt must not be empty")

    image = None
    if image_path is not None:
        try:
            image = decode_image(image_path.read_bytes()).image
        except OSError as exc:
            raise CommandError(f"cannot read {image_path}: {exc.strerror or exc}") from exc
        except ImageError as exc:
            raise CommandError(f"{image_path}: {exc}") from exc

    from eta.models import load_models
    from eta.safety.pipeline import ETAInput, run_eta

    spec = models_config(tiny_dir=tiny_dir, vlm=vlm, clip=clip, clip_pretrained=clip_pretrained,
                         reward=reward, device=device, dtype=dtype)
    loaded = load_models(spec, roles=("vlm", "clip", "reward") if image is not None else ("vlm", "reward"))
    result = run_eta(loaded, [ETAInput(prompt=prompt, image=image)], config)[0]
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    _print_result(result.to_dict())


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:+.4f}" if isinstance(value, float) else str(value)


def _print_result(r: dict[str, Any]) -> None:
    pre = "n/a (no image)" if r["s_pre"] is None else (
        f"{_fmt(r['s_pre'])} vs tau_pre {r['tau_pre']:g} -> {'UNSAFE' if r['pre_unsafe'] else 'safe'}")
    lines = [
        f"pre-evaluation  s_pre  {pre}",
        f"post-evaluation s_post {_fmt(r['s_post'])} vs tau_post {r['tau_post']:g} -> "
        f"{'UNSAFE' if r['post_unsafe'] else 'safe'}",
        f"decision ({r['policy']}): {'ALIGN' if r['aligned'] else 'keep'} - {r['decision']}",
        f"final s_post  {_fmt(r['s_post_final'])}   flagged: {r['flagged']} {r['flag_reasons'] or ''}".rstrip(),
        f"seed {r['seed']}   timings (ms) {json.dumps(r['timings_ms'])}",
        "",
        "answer:",
        r["response"],
    ]
    if r["aligned"]:
        lines += ["", f"(vanilla answer, replaced; {len(r['trace'])} sentences chosen by best-of-N):",
                  r["vanilla_response"]]
    click.echo("\n".join(lines))


def _register_subcommands() -> None:
    from eta.commands.client import audit, results, status, submit
    from eta.commands.db import db
    from eta.commands.demo import demo
    from eta.commands.keys import keys
    from eta.commands.openapi import openapi_command
    from eta.commands.purge import purge
    from eta.commands.serve import serve
    from eta.commands.worker import sweep, worker

    main.add_command(db)
    main.add_command(keys)
    main.add_command(purge)
    main.add_command(serve)
    main.add_command(openapi_command)
    for command in (submit, status, results, audit):
        main.add_command(command)
    main.add_command(worker)
    main.add_command(sweep)
    main.add_command(demo)


_register_subcommands()


def _register_evaluation_commands() -> None:
    from eta.commands.evaluate import calibrate_command, eval_command

    main.add_command(eval_command)
    main.add_command(calibrate_command)


_register_evaluation_commands()


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
