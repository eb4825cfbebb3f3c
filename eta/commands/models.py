"""`eta models check`: load a model set through the production loader and check it against the paper."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("check")
@click.option("--vlm", help="VLM hub id or directory to check.")
@click.option("--clip", help="open_clip model name or local-dir:/hf-hub: id to check.")
@click.option("--clip-pretrained", help="open_clip pretrained tag or checkpoint path.")
@click.option("--reward", help="Reward model hub id or directory to check.")
@click.option("--tiny-dir", type=click.Path(file_okay=False, path_type=Path),
              help="With no model named: where the tiny production-shaped models are (built if missing).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "float32", "bfloat16", "float16"]))
@click.option("--json", "as_json", is_flag=True, help='Print {"ok": bool, "checks": [{"name", "ok", "detail"}]}.')
def check(vlm: str | None, clip: str | None, clip_pretrained: str | None, reward: str | None,
          tiny_dir: Path | None, device: str, dtype: str, as_json: bool) -> None:
    """Check the models a deployment will serve: strict weights, QuickGELU where the weights need it, batched ==
    single scores, the prompt profile and image preprocessing, the paper's prompts.

    With no model named, checks the tiny production-shaped test models. Run it once against the real weights
    before serving. Exit status 0 only when every check passes.
    """
    from dataclasses import replace

    from eta.config import ModelsConfig, ModelSpec
    from eta.models.conformance import run_checks
    from eta.models.selection import Selection, load_options, select_models
    from eta.settings import get_settings

    settings = get_settings()
    if clip_pretrained and not clip:
        raise click.UsageError("--clip-pretrained needs --clip")
    named = {"vlm": vlm, "clip": clip, "reward": reward}
    if any(named.values()):
        # Only the named models are checked (a deployer may check one model at a time).
        default = ModelsConfig()
        config = ModelsConfig(
            vlm=ModelSpec(vlm) if vlm else default.vlm,
            clip=ModelSpec(clip, pretrained=clip_pretrained) if clip else default.clip,
            reward=ModelSpec(reward) if reward else default.reward,
        ).with_device(device, dtype)  # type: ignore[arg-type]
        selection = Selection(config=config)
        roles = [role for role, value in named.items() if value]
    else:
        selection = select_models(tiny_dir=tiny_dir or settings.tiny_models_dir, device=device, dtype=dtype)
        roles = ["vlm", "clip", "reward"]
    # The switches read at load (ETA_CLIP_ACTIVATION, ETA_VLM_ALLOW_UNSUPPORTED, ETA_SHARED_PREFIX) apply here too.
    selection = replace(selection, config=selection.config.with_load_options(**load_options(settings)))
    checks = run_checks(selection, roles)
    ok = all(c.ok for c in checks)
    if as_json:
        click.echo(json.dumps({"ok": ok, "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        click.echo(f"models: {selection.describe()}")
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<{width}}  {c.detail}")
        click.echo("all checks passed" if ok else f"{sum(not c.ok for c in checks)} check(s) failed")
    if not ok:
        raise SystemExit(1)
