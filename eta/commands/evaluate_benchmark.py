"""`eta eval --benchmark NAME --data DIR`: reproduce the paper's tables on one of its benchmarks.

A general-ability benchmark (`mmbench`, `textvqa`, `mme`, `scienceqa-img`, `vqav2`, `mmmu-pro`) is answered the same
way and then scored against its ground truth by its official metric (`eta.benchmarks.ability_table`), with no
judge; `mossbench` (over-sensitivity on benign images) reports refusal, flag and aligned rates.

Steps, each resumable (see `eta.benchmarks.run`): read and validate the benchmark; answer every item with ETA
(the local models, or `--via URL`: a running service, as one batch); free the ETA models; load the judge on its
own device and judge the vanilla and the final answer of every item; write table.json and table.md (and with
`--plot` a PNG of the per-category unsafe rates) into the output directory and print the table.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

logger = logging.getLogger(__name__)


class BenchmarkCommandError(click.ClickException):
    """A one-line error and exit status 2 (bad input), as the other commands give."""

    exit_code = 2


@dataclass(frozen=True)
class JudgeOptions:
    """--judge and its companions."""

    judge_id: str | None
    judge_format: str | None
    device: str
    dtype: str
    trust_remote_code: bool
    batch_size: int


@dataclass(frozen=True)
class HelpfulnessOptions:
    """--judge-url and its companions: the helpfulness judge over an OpenAI-compatible chat API."""

    url: str
    model: str
    key_env: str
    send_images: bool


@dataclass(frozen=True)
class ServiceOptions:
    """--via and its companions."""

    url: str
    api_key: str | None
    wait_timeout: float | None


def _check_judge(options: JudgeOptions) -> dict[str, Any] | None:
    """Fail before hours of generation: the judge's format must be known and its config readable.

    Returns:
        The judge's description (id, format, revision), from which its verdicts are keyed; None without --judge.
    """
    from eta.judges import FORMATS, JudgeError, describe_judge, infer_format, judge_revision

    if options.judge_id is None:
        return None
    try:
        name = options.judge_format or infer_format(options.judge_id)
    except JudgeError as exc:
        raise BenchmarkCommandError(str(exc)) from exc
    if name not in FORMATS:
        raise BenchmarkCommandError(f"unknown judge format {name!r}; choose one of {', '.join(FORMATS)}")
    if name == "md-judge-v0.2" and not options.trust_remote_code and not Path(options.judge_id).is_dir():
        raise BenchmarkCommandError(f"{options.judge_id} is an InternLM2 model whose code is in its hub repository: "
                                    f"pass --judge-trust-remote-code to run it")
    _offline_unless_reachable(options.judge_id)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(options.judge_id, trust_remote_code=options.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchmarkCommandError(f"judge {options.judge_id}: {first}") from exc
    return describe_judge(options.judge_id, name, judge_revision(options.judge_id, config=config))


def _offline_unless_reachable(judge_id: str) -> None:
    """A hub id with no network reads the local cache at once instead of retrying for half a minute."""
    if Path(judge_id).expanduser().is_dir():
        return
    from eta.models.selection import hub_reachable

    if hub_reachable():
        return
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        logger.info("the hub is unreachable: judge %s from the local cache only", judge_id)
        constants.HF_HUB_OFFLINE = True


def _model_identity(spec: Any) -> dict[str, Any]:
    """The model choices a run's key records (ids, pretrained tags, revisions, precision; not the device)."""
    identity = {}
    for role in ("vlm", "clip", "reward"):
        model = getattr(spec, role, None)
        if model is not None:
            identity[role] = {name: getattr(model, name, None) for name in ("id", "pretrained", "revision", "dtype")}
    return identity


def run_benchmark_eval(*, benchmark_name: str, data_dir: Path | None, subset: str | None, limit: int | None,
                       out_dir: Path | None, config: Any, overrides: dict[str, Any], batch_size: int,
                       judge: JudgeOptions, service: ServiceOptions | None, plot: bool, as_json: bool,
                       progress: bool, models_spec: Callable[[], Any],
                       helpfulness: HelpfulnessOptions | None = None) -> None:
    """The body of `eta eval --benchmark`; `models_spec()` gives the model selection of the model options."""
    from eta.benchmarks import BenchmarkError, load_benchmark
    from eta.benchmarks.registry import is_ability_benchmark
    from eta.benchmarks.run import judge_answers, read_verdicts, write_outputs
    from eta.benchmarks.table import build_table, plot_table, table_markdown

    if data_dir is None:
        raise BenchmarkCommandError("--benchmark needs --data DIR (the directory the benchmark was downloaded into)")
    try:
        benchmark = load_benchmark(benchmark_name, data_dir, subset=subset, limit=limit)
    except BenchmarkError as exc:
        raise BenchmarkCommandError(str(exc)) from exc
    ability = is_ability_benchmark(benchmark.name)
    if ability and (judge.judge_id or plot):
        raise BenchmarkCommandError(f"{'--judge' if judge.judge_id else '--plot'}: {benchmark.name} is a "
                                    f"general-ability benchmark, scored by its own metric (no judge, no USR plot)")
    judge_info = _check_judge(judge)
    chat_judge = _chat_judge(helpfulness) if helpfulness is not None else None
    out_dir = out_dir or Path("eta-eval") / benchmark.name
    if out_dir.exists() and not out_dir.is_dir():
        raise BenchmarkCommandError(f"--out-dir {out_dir} is a file, not a directory")

    started = time.perf_counter()
    try:
        if service is not None:
            records, key, run, answered = _answers_via_service(benchmark, service, overrides, out_dir, progress)
        else:
            records, key, run, answered = _answers_locally(benchmark, config, models_spec, out_dir, batch_size,
                                                           progress)
    except BenchmarkError as exc:
        raise BenchmarkCommandError(str(exc)) from exc
    timing: dict[str, Any] = {"answered_now": answered, "answer_s": round(time.perf_counter() - started, 3)}
    helped = _judge_helpfulness(chat_judge, benchmark, records, out_dir, key, progress, timing) if chat_judge else None
    if ability:
        _ability_outputs(benchmark, records, {**run, "key": key, "out_dir": str(out_dir), "timing": timing}, out_dir,
                         as_json, helped)
        return

    verdicts: dict[tuple[str, str], dict[str, Any]] = {}
    if judge_info is not None:
        from eta.judges import JudgeError, judge_fingerprint, load_judge

        def load() -> Any:
            return load_judge(judge.judge_id or "", judge_format=judge_info["format"], device=judge.device,
                              dtype=judge.dtype, trust_remote_code=judge.trust_remote_code)

        started = time.perf_counter()
        before = len(read_verdicts(out_dir, key, judge_fingerprint(judge_info)))
        try:
            verdicts = judge_answers(load, records, out_dir=out_dir, key=key, batch_size=judge.batch_size,
                                     progress=progress, judge_key=judge_fingerprint(judge_info))
        except (JudgeError, BenchmarkError) as exc:
            raise BenchmarkCommandError(str(exc)) from exc
        timing.update(judged_now=len(verdicts) - before, judge_s=round(time.perf_counter() - started, 3))
    for done, seconds, rate in (("answered_now", "answer_s", "items_per_s"), ("judged_now", "judge_s",
                                                                              "verdicts_per_s")):
        if timing.get(done) and timing[seconds] > 0:
            timing[rate] = round(timing[done] / timing[seconds], 4)
    ordered = [records[item.item_id] for item in benchmark.items if item.item_id in records]
    table = build_table(benchmark.name, ordered, verdicts, judge=judge_info, categories=benchmark.categories,
                        run={**run, "key": key, "items": len(benchmark.items), "out_dir": str(out_dir),
                             "timing": timing})
    if helped is not None:
        table["helpfulness"] = helped
    json_path, markdown_path = write_outputs([table], out_dir, markdown=_with_helpfulness(table_markdown))
    plot_path = plot_table(table, out_dir / "usr_by_category.png") if plot else None
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    click.echo(_with_helpfulness(table_markdown)([table]).rstrip())
    click.echo(f"\nthis invocation: {timing['answered_now']} items answered in {timing['answer_s']:.1f} s"
               + (f" ({timing['items_per_s']:.3g} items/s)" if "items_per_s" in timing else "")
               + (f", {timing['judged_now']} answers judged in {timing['judge_s']:.1f} s" if "judge_s" in timing
                  else ""))
    click.echo(f"written: {json_path}, {markdown_path}" + (f", {plot_path}" if plot_path else ""))
    if judge.judge_id is None:
        click.echo("no --judge: USR columns are empty (ASR is the keyword check)")


def _chat_judge(options: HelpfulnessOptions) -> Any:
    """The helpfulness judge, built before anything runs so a bad URL stops the command at once."""
    import os

    from eta.judges import JudgeError
    from eta.judges.chat_api import ChatAPIJudge

    key = os.environ.get(options.key_env) or None
    if key is None:
        logger.info("$%s is not set: the judge API is called without a key", options.key_env)
    try:
        return ChatAPIJudge(options.url, options.model, key, send_images=options.send_images)
    except JudgeError as exc:
        raise BenchmarkCommandError(str(exc)) from exc


def _judge_helpfulness(chat_judge: Any, benchmark: Any, records: dict[str, dict[str, Any]], out_dir: Path, key: str,
                       progress: bool, timing: dict[str, Any]) -> dict[str, Any]:
    from eta.benchmarks import BenchmarkError
    from eta.benchmarks.helpfulness import judge_helpfulness, read_judgements, summarize_helpfulness
    from eta.judges import JudgeError

    started = time.perf_counter()
    before = len(read_judgements(out_dir, key, chat_judge.fingerprint()))
    try:
        with chat_judge:
            judgements = judge_helpfulness(chat_judge, benchmark, records, out_dir=out_dir, key=key,
                                           progress=progress)
    except (JudgeError, BenchmarkError) as exc:
        raise BenchmarkCommandError(str(exc)) from exc
    timing.update(helpfulness_now=len(judgements) - before, helpfulness_s=round(time.perf_counter() - started, 3))
    return summarize_helpfulness(judgements, judge=chat_judge.describe())


def _with_helpfulness(markdown: Callable[[Any], str]) -> Callable[[Any], str]:
    """A table's Markdown followed by its helpfulness section, when it has one."""
    from eta.benchmarks.helpfulness import helpfulness_markdown

    def render(tables: Any) -> str:
        return markdown(tables) + "".join(helpfulness_markdown(t.get("helpfulness")) for t in tables)

    return render


def _ability_outputs(benchmark: Any, records: dict[str, dict[str, Any]], run: dict[str, Any], out_dir: Path,
                     as_json: bool, helped: dict[str, Any] | None = None) -> None:
    """Score a general-ability run against its ground truth, write table.json/.md and print the table."""
    from eta.benchmarks.ability_table import ability_markdown, build_ability_table
    from eta.benchmarks.run import write_outputs

    timing = run["timing"]
    if timing["answered_now"] and timing["answer_s"] > 0:
        timing["items_per_s"] = round(timing["answered_now"] / timing["answer_s"], 4)
    table = build_ability_table(benchmark.name, benchmark.items, records, run=run)
    if helped is not None:
        table["helpfulness"] = helped
    json_path, markdown_path = write_outputs([table], out_dir, markdown=_with_helpfulness(ability_markdown))
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    click.echo(_with_helpfulness(ability_markdown)([table]).rstrip())
    click.echo(f"\nthis invocation: {timing['answered_now']} items answered in {timing['answer_s']:.1f} s")
    click.echo(f"written: {json_path}, {markdown_path}")


def _answers_locally(benchmark: Any, config: Any, models_spec: Callable[[], Any], out_dir: Path, batch_size: int,
                     progress: bool) -> tuple[dict[str, dict[str, Any]], str, dict[str, Any], int]:
    from eta.benchmarks.run import finished_records, generate_answers, run_key
    from eta.models import load_models

    spec = models_spec()
    identity = _model_identity(spec)
    key = run_key(benchmark, config.to_dict(), identity)
    run = {"source": "local", "models": identity, "parameters": config.to_dict()}
    done = finished_records(benchmark, out_dir, key)
    if len(done) == len(benchmark.items):
        return done, key, run, 0  # nothing to generate: no models to load
    roles = ("vlm", "clip", "reward") if any(item.has_image for item in benchmark.items) else ("vlm", "reward")
    models = load_models(spec, roles=roles)
    try:
        records = generate_answers(models, benchmark, config, out_dir=out_dir, key=key, batch_size=batch_size,
                                   progress=progress)
    finally:
        del models  # the judge may need the memory
        gc.collect()
        _empty_cuda_cache()
    return records, key, run, len(records) - len(done)


def _answers_via_service(benchmark: Any, service: ServiceOptions, overrides: dict[str, Any], out_dir: Path,
                         progress: bool) -> tuple[dict[str, dict[str, Any]], str, dict[str, Any], int]:
    from eta.benchmarks.run import finished_records, generate_via_service, run_key
    from eta.client import ETAClient, ETAClientError

    params = {name: value for name, value in overrides.items() if value is not None}
    key = run_key(benchmark, params, {"service": service.url})
    run = {"source": "service", "url": service.url, "parameters": params}
    before = len(finished_records(benchmark, out_dir, key))
    try:
        with ETAClient(service.url, service.api_key, progress=progress) as client:
            records = generate_via_service(client, benchmark, params=params, out_dir=out_dir, key=key,
                                           wait_timeout=service.wait_timeout, progress=progress)
    except ETAClientError as exc:
        raise BenchmarkCommandError(f"service {service.url}: {exc}") from exc
    return records, key, run, len(records) - before


def _empty_cuda_cache() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


BENCHMARK_OPTION_NAMES = ("benchmark", "data_dir", "subset", "limit", "out_dir", "judge_id", "judge_format",
                          "judge_device", "judge_dtype", "judge_trust_remote_code", "judge_batch_size", "plot",
                          "via", "api_key", "wait_timeout", "judge_url", "judge_model", "judge_api_key_env",
                          "judge_no_image")


def benchmark_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of `eta eval --benchmark` (their keyword names are BENCHMARK_OPTION_NAMES)."""
    from eta.benchmarks.registry import READERS
    from eta.config import DTYPES
    from eta.judges.formats import FORMATS

    options = (
        click.option("--benchmark", type=click.Choice(list(READERS)),
                     help="Evaluate one of the paper's safety or general-ability benchmarks (instead of a JSONL "
                          "DATASET)."),
        click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
                     help="The benchmark's directory, in its published layout (see docs/evaluation.md)."),
        click.option("--subset", help="The benchmark's variant: MM-SafetyBench SD_TYPO (default), SD or TYPO; the "
                                      "cross-modal attack's image file name; MMBench's TSV file name; MMMU-Pro's "
                                      "setting ('standard (10 options)' by default, 'standard (4 options)', "
                                      "'vision'); MOSSBench 'contrast' for its harmful counterparts."),
        click.option("--limit", type=click.IntRange(min=1), help="Only the first N items of the benchmark."),
        click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Where results.jsonl, verdicts.jsonl, table.json/.md go; a rerun resumes there "
                          "(default: eta-eval/BENCHMARK)."),
        click.option("--judge", "judge_id", help="Judge model hub id or directory (MD-Judge, Llama Guard 3)."),
        click.option("--judge-format", type=click.Choice(list(FORMATS)),
                     help="The judge's prompt/verdict format (default: from the id or its config)."),
        click.option("--judge-device", default="auto", show_default=True, help="The judge's own device."),
        click.option("--judge-dtype", default="auto", show_default=True, type=click.Choice(DTYPES)),
        click.option("--judge-trust-remote-code", is_flag=True,
                     help="Run the judge's hub code (MD-Judge v0.2 is InternLM2, defined in its repository)."),
        click.option("--judge-batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Verdicts per generate call."),
        click.option("--judge-url",
                     help="Also judge helpfulness (the paper's GPT-4 prompts: 1-10 score, win-tie of ETA vs vanilla) "
                          "through this OpenAI-compatible chat API base URL, e.g. https://api.openai.com/v1 or a "
                          "local vLLM/llama.cpp server."),
        click.option("--judge-model", default="gpt-4-turbo", show_default=True,
                     help="The model name --judge-url serves."),
        click.option("--judge-api-key-env", default="OPENAI_API_KEY", show_default=True,
                     help="Environment variable holding the --judge-url key (none sent when it is unset)."),
        click.option("--judge-no-image", is_flag=True, help="Do not send the image to --judge-url (text-only model)."),
        click.option("--plot", is_flag=True, help="Also draw per-category unsafe-rate bars (usr_by_category.png)."),
        click.option("--via", help="Answer through a running ETA service at this URL (one batch) instead of local "
                                   "models."),
        click.option("--api-key", envvar="ETA_API_KEY", help="API key for --via (default $ETA_API_KEY; a review "
                                                             "key also returns the vanilla answers)."),
        click.option("--wait-timeout", type=float, help="Seconds to wait for the service's batch (default: no limit)."),
    )
    for option in reversed(options):
        command = option(command)
    return command
