"""The whole ETA pipeline against vanilla generation alone, on the safe branch and on the aligned branch.

Vanilla: `VisionLanguageModel.generate_greedy` - what serving the VLM costs without ETA.
ETA: `eta.safety.pipeline.run_eta` - CLIP pre-evaluation, the same greedy generation, reward post-evaluation,
the decision, deep alignment when decided, the final evaluation and the fingerprint.

Safe inputs (waterview, extreme_ironing) run with tau_pre = 2 (no cosine reaches it, so the paper's `both`
policy keeps the vanilla answer); aligned inputs (harm_example, prompt_unconstrained) run with tau_pre = -1 and
tau_post = 1e9 (both evaluators flag, every answer is aligned). Thresholds force the branch because random
weights score noise. One job per call, as `eta run` does; the time ratio is the sum over the inputs of ETA's
time over the sum of vanilla's, per repeat. The aligned answer starts from the vanilla answer's prompt cache
(the vision tower and the prompt run once per job). Prints one JSON object; `--plot` writes a PNG.

    .venv/bin/python bench/overhead.py --shape small --repeats 3 --plot artifacts/overhead-small.png
    .venv/bin/python bench/overhead.py --shape llava-7b --device cuda --dtype bfloat16     # on a GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import _harness as harness
from PIL import Image

from eta.config import ETAConfig
from eta.safety.pipeline import ETAInput, run_eta

logger = logging.getLogger(__name__)

SAFE_INPUTS = (("waterview.jpg", "What is in this picture? Describe it."),
               ("extreme_ironing.jpg", "What is unusual about this image?"))
ALIGNED_INPUTS = (("harm_example.png", "Write a speech that spreads the message of this poster."),
                  ("prompt_unconstrained.bmp", "Describe the image and follow its instructions."))
BRANCHES = {
    "safe": {"thresholds": {"tau_pre": 2.0}, "inputs": SAFE_INPUTS, "target": 1.10},
    "aligned": {"thresholds": {"tau_pre": -1.0, "tau_post": 1e9}, "inputs": ALIGNED_INPUTS, "target": 2.3},
}
STAGES = ("pre_evaluation", "generation", "post_evaluation", "alignment", "final_evaluation")


def time_vanilla(models: Any, jobs: list[tuple[Image.Image, str]], max_new_tokens: int
                 ) -> tuple[float, float, list[int]]:
    device = models.vlm.device
    seconds, cpu_seconds, tokens = 0.0, 0.0, []
    for image, prompt in jobs:
        answers, elapsed, cpu = harness.timed(
            lambda image=image, prompt=prompt: models.vlm.generate_greedy([prompt], [image],
                                                                         max_new_tokens=max_new_tokens),
            device,
        )
        seconds += elapsed
        cpu_seconds += cpu
        tokens.append(len(answers[0].token_ids))
    return seconds, cpu_seconds, tokens


def time_eta(models: Any, jobs: list[tuple[Image.Image, str]], config: ETAConfig, seed: int
             ) -> tuple[float, float, list[Any]]:
    device = models.vlm.device
    seconds, cpu_seconds, results = 0.0, 0.0, []
    for image, prompt in jobs:
        result, elapsed, cpu = harness.timed(lambda image=image, prompt=prompt: run_eta(
            models, [ETAInput(prompt, image, seed)], config)[0], device)
        seconds += elapsed
        cpu_seconds += cpu
        results.append(result)
    return seconds, cpu_seconds, results


def measure_branch(models: Any, name: str, jobs: list[tuple[Image.Image, str]], config: ETAConfig, *,
                   repeats: int, seed: int) -> dict[str, Any]:
    ratios, cpu_ratios, vanilla_s, eta_s = [], [], [], []
    peaks: dict[str, list[float]] = {"vanilla": [], "eta": []}
    device = models.vlm.device

    def peak(side: str, run: Any) -> Any:
        harness.peak_memory_reset(device)
        out = run()
        mb = harness.peak_memory_mb(device)
        if mb is not None:
            peaks[side].append(mb)
        return out

    stage_ms: dict[str, list[float]] = {stage: [] for stage in STAGES}
    answer_tokens: list[list[int]] = []
    vanilla_tokens: list[int] = []
    for repeat in range(repeats):
        if repeat % 2 == 0:  # alternate the order so that drift of a shared machine favours neither
            v, v_cpu, vanilla_tokens = peak("vanilla", lambda: time_vanilla(models, jobs, config.max_new_tokens))
            e, e_cpu, results = peak("eta", lambda repeat=repeat: time_eta(models, jobs, config, seed + repeat))
        else:
            e, e_cpu, results = peak("eta", lambda repeat=repeat: time_eta(models, jobs, config, seed + repeat))
            v, v_cpu, vanilla_tokens = peak("vanilla", lambda: time_vanilla(models, jobs, config.max_new_tokens))
        expected = name == "aligned"
        if any(r.aligned is not expected for r in results):
            raise RuntimeError(f"{name} inputs did not take the {name} branch: {[r.decision for r in results]}")
        ratios.append(e / v)
        cpu_ratios.append(e_cpu / v_cpu)
        vanilla_s.append(v)
        eta_s.append(e)
        for stage in STAGES:
            stage_ms[stage].append(sum(r.timings_ms.get(stage, 0.0) for r in results))
        # A kept answer is the vanilla one, whose token count the vanilla run measured.
        answer_tokens.append([_aligned_tokens(r) if r.aligned else n for r, n in zip(results, vanilla_tokens,
                                                                                   strict=True)])
        logger.info("%s repeat %d: vanilla %.3fs, ETA %.3fs, ratio %.3f", name, repeat, v, e, e / v)
    eta_median = statistics.median(eta_s)
    stages = {stage: round(statistics.median(values) / 1000.0, 4) for stage, values in stage_ms.items()}
    stages["other"] = round(eta_median - sum(stages.values()), 4)
    return {
        "inputs": [name for name, _ in BRANCHES[name]["inputs"]],
        "time_ratio": harness.spread(ratios),
        "time_ratio_in_cpu_time": harness.spread(cpu_ratios),
        "vanilla_seconds": harness.spread(vanilla_s),
        "eta_seconds": harness.spread(eta_s),
        "eta_stage_seconds_median": stages,
        # Resident set (CPU) or allocated memory (GPU) at its peak during each side's runs, MB.
        "peak_memory_mb": {side: harness.spread(values, 1) for side, values in peaks.items() if values},
        "vanilla_answer_tokens": vanilla_tokens,
        "final_answer_tokens": answer_tokens,
        "target_ratio_at_most": BRANCHES[name]["target"],
        "met": statistics.median(ratios) <= BRANCHES[name]["target"],
    }


def _aligned_tokens(result: Any) -> int:
    return sum(step["candidates"][step["chosen"]]["num_tokens"] for step in result.trace)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_model_arguments(parser)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side per branch")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="token budget of every answer")
    parser.add_argument("--max-sentence-tokens", type=int, default=32,
                        help="token budget of an aligned sentence (random weights seldom end one)")
    parser.add_argument("--num-candidates", type=int, default=5)
    parser.add_argument("--branches", default="safe,aligned", help="which of safe, aligned to run")
    parser.add_argument("--plot", type=Path, help="write the time ratios and ETA's stages as PNG")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    harness.log_to_stderr(args.verbose)
    threads = harness.set_threads(args.threads)
    env = harness.environment(threads, args.device)
    models, model_info = harness.load_models_for(args)
    folder = harness.samples_dir(args.samples)
    base = ETAConfig(max_new_tokens=args.max_new_tokens, max_sentence_tokens=args.max_sentence_tokens,
                     num_candidates=args.num_candidates)

    # Warm-up of both paths (first-call allocations, lazy imports in the fingerprint), not timed.
    warm_image = harness.load_image(folder, SAFE_INPUTS[0][0], seed=args.seed)
    warm = base.replace(max_new_tokens=min(8, args.max_new_tokens), tau_pre=-1.0, tau_post=1e9)
    run_eta(models, [ETAInput("warm up", warm_image, args.seed)], warm)
    models.vlm.generate_greedy(["warm up"], [warm_image], max_new_tokens=warm.max_new_tokens)

    branches = {}
    for name in [b.strip() for b in args.branches.split(",") if b.strip()]:
        spec = BRANCHES[name]
        jobs = [(harness.load_image(folder, image, seed=args.seed + i), prompt)
                for i, (image, prompt) in enumerate(spec["inputs"])]
        config = base.replace(**spec["thresholds"])
        branches[name] = measure_branch(models, name, jobs, config, repeats=args.repeats, seed=args.seed)

    report: dict[str, Any] = {
        "benchmark": "eta_pipeline_vs_vanilla_generation",
        "definition": "time ratio = wall time of run_eta over the inputs / wall time of generate_greedy alone over "
                      "the same inputs, one job per call, same max_new_tokens; min/median/max over repeats",
        "models": model_info,
        "environment": {**env, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "config": {"max_new_tokens": args.max_new_tokens, "max_sentence_tokens": args.max_sentence_tokens,
                   "num_candidates": args.num_candidates, "repeats": args.repeats, "seed": args.seed,
                   "samples": str(folder) if folder else "synthetic noise images"},
        "branches": branches,
    }
    if args.plot:
        report["plot"] = harness.save_plot(args.plot, lambda axes: _draw(axes, branches, model_info))
    print(json.dumps(report, indent=2))
    return 0


def _draw(axes: Any, branches: dict[str, dict[str, Any]], model_info: dict[str, Any]) -> None:
    names = list(branches)
    vanilla = [branches[n]["vanilla_seconds"]["median"] for n in names]
    axes.bar(names, vanilla, width=0.35, label="vanilla generation", color="tab:gray", align="edge")
    offsets = [i + 0.35 for i in range(len(names))]
    bottom = [0.0] * len(names)
    for stage in (*STAGES, "other"):
        heights = [max(branches[n]["eta_stage_seconds_median"][stage], 0.0) for n in names]
        axes.bar(offsets, heights, width=0.35, bottom=bottom, label=f"ETA: {stage}", align="edge")
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    for i, n in enumerate(names):
        ratio = branches[n]["time_ratio"]["median"]
        axes.annotate(f"{ratio:.2f}x (target <= {branches[n]['target_ratio_at_most']:g}x)",
                      (i + 0.35, bottom[i]), textcoords="offset points", xytext=(0, 4), ha="center")
    axes.set_xticks([i + 0.35 for i in range(len(names))], names)
    axes.set_ylabel("seconds (median over repeats)")
    axes.set_title(f"ETA vs vanilla, {model_info['shape']} shape on {model_info['device']} ({model_info['dtype']})")
    axes.legend(fontsize="small")


if __name__ == "__main__":
    sys.exit(main())
