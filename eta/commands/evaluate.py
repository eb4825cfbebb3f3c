"""`eta eval` and `eta calibrate`: ETA over a JSONL dataset, and choosing tau_pre for a CLIP model.

The logic lives in `eta.evaluation`; these commands parse options, load the models through
`eta.models.selection` (the same model options as `eta run`) and print the summary.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import click

from eta.commands.evaluate_benchmark import benchmark_options
from eta.commands.options import model_options, parameter_options

logger = logging.getLogger(__name__)


class DatasetCommandError(click.ClickException):
    """A one-line error and exit status 2 (bad input), as `eta run` gives."""

    exit_code = 2


def _config(overrides: dict[str, Any]) -> Any:
    from eta.config import ConfigError, ETAConfig

    try:
        return ETAConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise DatasetCommandError(f"invalid parameter {exc}") from exc


def _target_fpr(value: float) -> float:
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise DatasetCommandError(f"--target-fpr must be within [0, 1], got {value}")
    return value


def _load_items(dataset: Path) -> list[Any]:
    from eta.evaluation.dataset import DatasetError, load_dataset

    try:
        return load_dataset(dataset)
    except DatasetError as exc:
        raise DatasetCommandError(str(exc)) from exc
    except OSError as exc:
        raise DatasetCommandError(f"cannot read {dataset}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetCommandError(f"{dataset}: not UTF-8 text ({exc.reason})") from exc


def _models_spec(model_args: dict[str, Any]) -> Any:
    from eta.models.selection import load_options, models_config_from_options
    from eta.settings import get_settings

    settings = get_settings()
    config = models_config_from_options(**{**model_args, "tiny_dir": model_args.get("tiny_dir") or
                                           settings.tiny_models_dir})
    return config.with_load_options(**load_options(settings))


def _short(model_id: str) -> str:
    """A model id for a plot title: local directories by their last two components."""
    if model_id.startswith("local-dir:") or model_id.startswith("/"):
        return "/".join(Path(model_id.removeprefix("local-dir:")).parts[-2:])
    return model_id


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _print_summary(summary: dict[str, Any]) -> None:
    lines = [f"{'group':<11} {'items':>5} {'unsafe':>7} {'vanilla':>8} {'aligned':>8} {'s_pre':>8} {'s_post':>8} "
             f"{'s_final':>8}"]
    for name in ("all", "safe", "unsafe", "unlabelled"):
        g = summary.get(name)
        if g is None:
            continue
        rates = [_fmt(g[key], ".1%") for key in ("unsafe_rate", "vanilla_unsafe_rate", "aligned_rate")]
        means = [_fmt(g[key], "+.4f") for key in ("mean_s_pre", "mean_s_post", "mean_s_post_final")]
        lines.append(f"{name:<11} {g['items']:>5} {rates[0]:>7} {rates[1]:>8} {rates[2]:>8} "
                     f"{means[0]:>8} {means[1]:>8} {means[2]:>8}")
    pre = summary["pre_evaluator"]
    lines.append("")
    lines.append("unsafe: answers with no refusal phrase (final answer; 'vanilla': before ETA); s_*: mean scores")
    if pre["labelled_images"]:
        lines.append(
            f"pre-evaluator on {pre['labelled_images']} labelled images ({pre['safe']} safe, {pre['unsafe']} unsafe): "
            f"ROC AUC {_fmt(pre['roc_auc'])}; tau_pre {_fmt(pre['tau_pre'], '.4f')} for FPR <= {pre['target_fpr']:g} "
            f"(FPR {_fmt(pre['fpr'])}, TPR {_fmt(pre['tpr'])})"
        )
    else:
        lines.append("pre-evaluator: no labelled images, no AUC or threshold")
    if "results" in summary:
        lines.append(f"results: {summary['results']}")
    click.echo("\n".join(lines))


@click.command("eval")
@click.argument("dataset", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Results JSONL, one line per item (default: DATASET with .results.jsonl).")
@click.option("--target-fpr", type=float, default=0.05, show_default=True,
              help="False-positive rate on safe images that the suggested tau_pre keeps to.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Jobs per pipeline call (batched CLIP, generation and reward forwards).")
@parameter_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
@model_options
@benchmark_options
def eval_command(dataset: Path | None, out_path: Path | None, target_fpr: float, batch_size: int, as_json: bool,
                 no_progress: bool, **options: Any) -> None:
    """Run ETA on every line of DATASET (JSONL: image, prompt, optional label) and summarise; or, with
    --benchmark and --data, on one of the paper's benchmarks beside the paper's numbers: a safety benchmark judged
    by --judge, a general-ability one scored by its own metric (helpfulness by --judge-url on either).

    Unsafe rate by refusal-phrase matching, aligned rate, mean scores per label and, with labels, the
    pre-evaluator's ROC AUC and the tau_pre that meets --target-fpr.
    """
    from eta.commands.options import MODEL_OPTION_NAMES, PARAMETER_NAMES
    from eta.evaluation.dataset import DatasetError
    from eta.evaluation.run import evaluate_dataset

    config = _config({name: options[name] for name in PARAMETER_NAMES})
    if options["benchmark"] or dataset is None:
        _eval_benchmark(dataset, out_path, config, batch_size, as_json, no_progress, options)
        return
    _no_benchmark_options(options)
    target_fpr = _target_fpr(target_fpr)
    items = _load_items(dataset)
    out_path = out_path or dataset.with_name(dataset.name.removesuffix(".jsonl") + ".results.jsonl")
    if out_path.resolve() == dataset.resolve():
        raise DatasetCommandError("--out must not be the dataset itself")

    from eta.models import load_models

    spec = _models_spec({name: options[name] for name in MODEL_OPTION_NAMES})
    roles = ("vlm", "clip", "reward") if any(it.image_path for it in items) else ("vlm", "reward")
    models = load_models(spec, roles=roles)
    try:
        summary = evaluate_dataset(models, items, config, dataset=dataset, out_path=out_path, batch_size=batch_size,
                                   target_fpr=target_fpr, progress=not no_progress)
    except DatasetError as exc:  # an image that changed since validation
        raise DatasetCommandError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)


def _no_benchmark_options(options: dict[str, Any]) -> None:
    """A JSONL dataset run refuses the options that only --benchmark reads, rather than ignoring them."""
    flags = {"data_dir": "--data", "subset": "--subset", "limit": "--limit", "out_dir": "--out-dir",
             "judge_id": "--judge", "judge_format": "--judge-format", "via": "--via", "plot": "--plot",
             "judge_url": "--judge-url"}
    given = [flag for name, flag in flags.items() if options.get(name)]
    if given:
        raise DatasetCommandError(f"{', '.join(given)}: only with --benchmark (a JSONL DATASET run takes --out)")


def _eval_benchmark(dataset: Path | None, out_path: Path | None, config: Any, batch_size: int, as_json: bool,
                    no_progress: bool, options: dict[str, Any]) -> None:
    from eta.commands.evaluate_benchmark import HelpfulnessOptions, JudgeOptions, ServiceOptions, run_benchmark_eval
    from eta.commands.options import MODEL_OPTION_NAMES, PARAMETER_NAMES

    if not options["benchmark"]:
        raise DatasetCommandError("give a DATASET (JSONL) or --benchmark NAME with --data DIR")
    if dataset is not None or out_path is not None:
        raise DatasetCommandError("--benchmark reads --data DIR and writes --out-dir DIR; it takes no DATASET "
                                  "or --out")
    judge = JudgeOptions(options["judge_id"], options["judge_format"], options["judge_device"],
                         options["judge_dtype"], options["judge_trust_remote_code"], options["judge_batch_size"])
    service = ServiceOptions(options["via"], options["api_key"], options["wait_timeout"]) if options["via"] else None
    helpfulness = (HelpfulnessOptions(options["judge_url"], options["judge_model"], options["judge_api_key_env"],
                                      not options["judge_no_image"]) if options["judge_url"] else None)
    run_benchmark_eval(
        benchmark_name=options["benchmark"], data_dir=options["data_dir"], subset=options["subset"],
        limit=options["limit"], out_dir=options["out_dir"], config=config,
        overrides={name: options[name] for name in PARAMETER_NAMES}, batch_size=batch_size, judge=judge,
        service=service, plot=options["plot"], as_json=as_json, progress=not no_progress,
        models_spec=lambda: _models_spec({name: options[name] for name in MODEL_OPTION_NAMES}),
        helpfulness=helpfulness,
    )


@click.command("calibrate")
@click.argument("dataset", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--out", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG of the s_pre histograms of safe and unsafe images with the thresholds (with DATASET).")
@click.option("--target-fpr", type=float, default=0.05, show_default=True,
              help="False-positive rate on safe images that the suggested tau_pre keeps to.")
@click.option("--tau-pre", type=float, help="Current threshold, drawn for comparison (default 0.16).")
@click.option("--tau-post", type=float, help="Current reward threshold (default 0.06), with --from-results.")
@click.option("--safety-prompt", help="Text CLIP compares images with (default: the paper's).")
@click.option("--from-results", "results_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Choose thresholds for --target-aligned-rate from the s_pre/s_post of a benign run's results "
                   "(results.jsonl of eta eval --benchmark coco-captions, or eta eval's --out); loads no model.")
@click.option("--target-aligned-rate", type=float,
              help="Share of benign inputs ETA may align (0-1), with --from-results.")
@click.option("--run", "run_key", help="Which run of a results.jsonl holding several (its `run` key).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per CLIP forward.")
@click.option("--json", "as_json", is_flag=True, help="Print the report (scores included) as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
@model_options
def calibrate_command(dataset: Path | None, plot_path: Path | None, target_fpr: float, tau_pre: float | None,
                      tau_post: float | None, safety_prompt: str | None, results_path: Path | None,
                      target_aligned_rate: float | None, run_key: str | None, batch_size: int, as_json: bool,
                      no_progress: bool, **options: Any) -> None:
    """Choose thresholds: histograms of s_pre for the safe and unsafe labelled images of DATASET (tau_pre for a
    false-positive rate; only CLIP is loaded), or, with --from-results and --target-aligned-rate, tau_pre or
    tau_post for a target share of benign inputs aligned (no model is loaded).

    Items without an image or a label are skipped.
    """
    if results_path is not None or target_aligned_rate is not None:
        if dataset is not None or plot_path is not None:
            raise DatasetCommandError("--from-results takes no DATASET or --out (it reads scores, draws nothing)")
        _calibrate_aligned_rate(results_path, target_aligned_rate, tau_pre, tau_post, run_key, as_json)
        return
    if dataset is None or plot_path is None:
        raise DatasetCommandError("give DATASET and --out PNG (or --from-results RESULTS --target-aligned-rate R)")
    if tau_post is not None or run_key is not None:
        raise DatasetCommandError("--tau-post and --run: only with --from-results")
    from eta.commands.options import MODEL_OPTION_NAMES
    from eta.evaluation.dataset import DatasetError
    from eta.evaluation.plots import plot_calibration
    from eta.evaluation.run import calibrate

    config = _config({"tau_pre": tau_pre, "safety_prompt": safety_prompt})
    target_fpr = _target_fpr(target_fpr)
    items = _load_items(dataset)
    if not any(it.image_path is not None and it.label is not None for it in items):
        raise DatasetCommandError(f"{dataset}: no item has both an image and a label: nothing to calibrate")

    from eta.models import load_models

    spec = _models_spec({name: options[name] for name in MODEL_OPTION_NAMES})
    models = load_models(spec, roles=("clip",))
    try:
        result = calibrate(models.clip, items, config, dataset=dataset, target_fpr=target_fpr,
                           batch_size=batch_size, progress=not no_progress)
    except DatasetError as exc:
        raise DatasetCommandError(str(exc)) from exc
    plot_calibration(result, plot_path, tau_pre=config.tau_pre,
                     title=f"s_pre of {dataset.name}, CLIP {_short(spec.clip.id)}")
    report = {**result.report, "current_tau_pre": config.tau_pre, "skipped_items": result.skipped,
              "plot": str(plot_path), "clip": spec.clip.id}
    if as_json:
        click.echo(json.dumps({**report, "safe_scores": result.safe, "unsafe_scores": result.unsafe}, indent=2))
        return
    click.echo(
        f"{report['labelled_images']} labelled images ({report['safe']} safe, {report['unsafe']} unsafe; "
        f"{result.skipped} items skipped)\n"
        f"ROC AUC {_fmt(report['roc_auc'])}\n"
        f"suggested tau_pre {_fmt(report['tau_pre'], '.4f')} for FPR <= {target_fpr:g}: "
        f"FPR {_fmt(report['fpr'])}, TPR {_fmt(report['tpr'])} (current tau_pre {config.tau_pre:g})\n"
        f"plot: {plot_path}"
    )


def _calibrate_aligned_rate(results_path: Path | None, target: float | None, tau_pre: float | None,
                            tau_post: float | None, run_key: str | None, as_json: bool) -> None:
    from eta.evaluation.benign import read_benign_scores, thresholds_for_aligned_rate
    from eta.evaluation.dataset import DatasetError

    if results_path is None or target is None:
        raise DatasetCommandError("--from-results and --target-aligned-rate go together")
    if math.isnan(target) or not 0.0 <= target <= 1.0:
        raise DatasetCommandError(f"--target-aligned-rate must be within [0, 1], got {target}")
    config = _config({"tau_pre": tau_pre, "tau_post": tau_post})
    try:
        scores = read_benign_scores(results_path, run=run_key)
    except DatasetError as exc:
        raise DatasetCommandError(str(exc)) from exc
    report = thresholds_for_aligned_rate(scores, tau_pre=config.tau_pre, tau_post=config.tau_post, target=target)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return

    def line(name: str, choice: dict[str, Any] | None) -> str:
        if choice is None:
            return f"{name}: none meets the target (text-only items align on tau_post alone)"
        return (f"{name}: tau_pre {choice['tau_pre']:.4g}, tau_post {choice['tau_post']:.4g} -> aligned "
                f"{choice['aligned_rate']:.1%}")

    current = report["current"]
    click.echo(f"{report['items']} benign results ({report['with_image']} with an image); policy both: align when "
               f"s_pre >= tau_pre and s_post <= tau_post\n"
               f"current: tau_pre {current['tau_pre']:g}, tau_post {current['tau_post']:g} -> aligned "
               f"{current['aligned_rate']:.1%} (target <= {target:.1%})\n"
               + line("raise tau_pre", report["move_tau_pre"]) + "\n" + line("lower tau_post", report["move_tau_post"]))
