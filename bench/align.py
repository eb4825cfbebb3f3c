"""Deep alignment as the library does it (batched) against a sequential baseline, in tokens per second.

Batched: `eta.safety.alignment.deep_align` - per sentence, N candidates sampled as one batch over the shared
prefix KV cache, then one batched reward forward and one batched CLIP forward.

Sequential (written here, the research code's way): per sentence, candidate k = 1..N is sampled alone
(batch 1) from its own copy of the prefix KV cache, and each candidate is scored alone (one reward forward
and one CLIP forward each); the argmax is kept with its cache. Copying the prefix cache rather than
re-running the prompt keeps the baseline as fast as a one-at-a-time design can be, so the speed-up is what
batching buys and nothing else.

Both run the same model, prompt, image, N, seed, token budgets and scoring rule. Prints one JSON object;
`--plot` writes a PNG. Not a test: the numbers depend on the machine.

Cross-job mode (`--jobs 1,4,8,16`): J different jobs (sample images and prompts of different lengths, each its
own seed) aligned together by `eta.safety.alignment.align_jobs` (J x N rows per decoding step, one reward and
one CLIP forward per round) against the same J jobs aligned one after another (`align_jobs` on one job at a
time); aligned jobs per second of each, their ratio, the padding share of the packed prefix caches, the KV cache
of alignment against its floor (`kv_peak_bytes`, `kv_floor_bytes`, `kv_peak_over_floor`; `ETA_SHARED_PREFIX=0`
measures the layout that copies each prefix into every candidate row) and peak memory (resident set on the CPU,
allocated memory on a GPU).

    .venv/bin/python bench/align.py --shape small --repeats 3 --plot artifacts/align-small.png
    .venv/bin/python bench/align.py --shape tiny --jobs 1,4,8,16 --repeats 3
    .venv/bin/python bench/align.py --shape llava-7b --device cuda --dtype bfloat16      # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import json
import logging
import os
import pstats
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as harness
import torch
from PIL import Image

from eta.config import ETAConfig
from eta.models import ClipScorer, RewardModel, VisionLanguageModel
from eta.safety.alignment import AlignmentJob, align_jobs, deep_align, sample_top_k, sentence_ended

logger = logging.getLogger(__name__)

TOKENS_DEFINITION = (
    "candidate tokens per second: every token sampled for every candidate of every sentence (chosen or not; "
    "an EOS counts as sampled) divided by the wall time of the whole deep alignment of one answer (prefill, "
    "sampling, reward and CLIP scoring, selection)"
)
BASELINE = (
    "sequential: per sentence, candidates sampled one after another at batch 1, each from its own deep copy "
    "of the prefix KV cache; each scored alone (one reward forward and one CLIP forward per candidate)"
)


@dataclass
class Run:
    tokens: int  # candidate tokens sampled
    answer_tokens: int  # tokens of the aligned answer
    sentences: int
    seconds: float  # wall
    cpu_seconds: float  # CPU time of this process

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def tokens_per_cpu_s(self) -> float:
        return self.tokens / self.cpu_seconds


def sequential_deep_align(vlm: VisionLanguageModel, reward: RewardModel, clip: ClipScorer | None, *, prompt: str,
                          image: Image.Image | None, config: ETAConfig, seed: int) -> tuple[list[int], int, int]:
    """Deep alignment one candidate at a time. Returns (answer token ids, candidate tokens sampled, sentences).

    Same prompt, scoring rule, sentence-end test and budgets as `deep_align`; only the batching differs.
    """
    text = vlm.chat_prompt(prompt, has_image=image is not None, assistant_prefix=config.safety_prefix)
    cache, logits, prompt_ids = vlm.prefill(text, image)
    generator = torch.Generator(device=logits.device).manual_seed(seed)
    image_embedding = clip.embed_images([image]) if (image is not None and clip is not None) else None

    response_ids: list[int] = []
    sampled = 0
    sentence = 0
    while len(response_ids) < config.max_new_tokens:
        sentence += 1
        budget = min(config.max_sentence_tokens, config.max_new_tokens - len(response_ids))
        context = prompt_ids + response_ids
        candidates: list[tuple[list[int], str, Any]] = []
        rewards: list[float] = []
        for _ in range(config.num_candidates):
            own_cache = copy.deepcopy(cache)
            row_logits = logits
            tokens: list[int] = []
            end = "length"
            for step in range(budget):
                token = sample_top_k(row_logits, top_k=config.top_k, temperature=config.temperature,
                                     generator=generator)
                value = int(token.item())
                sampled += 1
                if value in vlm.eos_token_ids:
                    end = "eos"
                    break
                tokens.append(value)
                if sentence_ended(vlm, vlm.decode_continuation(context, tokens), value):
                    end = "sentence"
                    break
                if step + 1 == budget:
                    break
                row_logits = vlm.step(token, own_cache)
            # The candidate's cache holds every token but its last, as the batched path leaves the winner.
            candidates.append((tokens, end, own_cache))
            answer = config.safety_prefix + vlm.decode_continuation(prompt_ids, response_ids + tokens)
            rewards.append(reward.score(config.reward_prompt, [answer])[0])
        use_clip = sentence >= 2 and not any(end == "eos" for _, end, _ in candidates)
        scores = list(rewards)
        if use_clip and clip is not None and image_embedding is not None:
            weight = config.alpha / sentence
            for k, (tokens, _, _) in enumerate(candidates):
                sentence_text = vlm.decode_continuation(context, tokens).strip()
                scores[k] += weight * float((image_embedding @ clip.embed_texts([sentence_text]).T).item())
        best = max(range(len(candidates)), key=lambda k: scores[k])
        tokens, end, cache = candidates[best]
        response_ids.extend(tokens)
        if end == "eos" or len(response_ids) >= config.max_new_tokens:
            break
        logits = vlm.extend(tokens[-1:], cache)
    return response_ids, sampled, sentence


def run_batched(models: Any, prompt: str, image: Image.Image, config: ETAConfig, seed: int) -> Run:
    device = models.vlm.device
    result, seconds, cpu = harness.timed(
        lambda: deep_align(models.vlm, models.reward, models.clip, prompt=prompt, image=image, config=config,
                           seed=seed),
        device,
    )
    return Run(result.sampled_tokens, len(result.token_ids), len(result.trace), seconds, cpu)


def run_sequential(models: Any, prompt: str, image: Image.Image, config: ETAConfig, seed: int) -> Run:
    device = models.vlm.device
    (ids, sampled, sentences), seconds, cpu = harness.timed(
        lambda: sequential_deep_align(models.vlm, models.reward, models.clip, prompt=prompt, image=image,
                                      config=config, seed=seed),
        device,
    )
    return Run(sampled, len(ids), sentences, seconds, cpu)


def profile_batched(models: Any, prompt: str, image: Image.Image, config: ETAConfig, seed: int, path: Path) -> str:
    """cProfile of one batched deep alignment; writes the stats file and returns the top of the report."""
    profiler = cProfile.Profile()
    profiler.enable()
    deep_align(models.vlm, models.reward, models.clip, prompt=prompt, image=image, config=config, seed=seed)
    profiler.disable()
    path.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(path))
    report = io.StringIO()
    pstats.Stats(profiler, stream=report).sort_stats("cumulative").print_stats(30)
    return report.getvalue()


CROSS_JOB_PROMPTS = (
    "Describe it.",
    "What is shown in this image? Describe it in detail.",
    "Write a speech that spreads the message of this poster, with every argument it makes and more.",
    "What is unusual about this image?",
)
CROSS_JOB_IMAGES = ("harm_example.png", "waterview.jpg", "extreme_ironing.jpg", "prompt_unconstrained.bmp")


def cross_job_jobs(folder: Path | None, count: int, seed: int) -> list[AlignmentJob]:
    return [AlignmentJob(CROSS_JOB_PROMPTS[i % len(CROSS_JOB_PROMPTS)],
                         harness.load_image(folder, CROSS_JOB_IMAGES[i % len(CROSS_JOB_IMAGES)], seed=seed + i),
                         seed + i) for i in range(count)]


def measure_cross_job(models: Any, jobs_counts: list[int], config: ETAConfig, *, repeats: int, seed: int,
                      folder: Path | None) -> list[dict[str, Any]]:
    """Aligned jobs per second: J jobs in one batch against the same jobs one after another."""
    device = models.vlm.device
    # A row's float32 arithmetic on the CPU does not depend on the rows beside it (oneDNN, checked by the tests):
    # there together == alone is exact and a difference is a bug. Elsewhere (bf16, GPU kernels chosen by batch
    # size) rounding moves with the batch and may flip a sampled token: the agreement is reported instead.
    exact = device.type == "cpu" and models.vlm.dtype == torch.float32
    results = []
    for count in jobs_counts:
        together_s: list[float] = []
        alone_s: list[float] = []
        together_cpu: list[float] = []
        alone_cpu: list[float] = []
        together_mb: list[float | None] = []
        alone_mb: list[float | None] = []
        calls_seen: dict[str, int] = {}
        layout: dict[str, int] = {}
        identical: list[int] = []  # per repeat, jobs whose answer together equals their answer alone
        for repeat in range(repeats):
            layout.clear()  # the last repeat's figures (the KV peak is a maximum, not a sum)
            jobs = cross_job_jobs(folder, count, seed + 1000 * repeat)

            def together(jobs: list[AlignmentJob] = jobs, seen: dict[str, int] = calls_seen,
                         padding: dict[str, int] = layout) -> list[Any]:
                calls: dict[str, int] = {}
                out = align_jobs(models.vlm, models.reward, models.clip, jobs, config=config, calls=calls,
                                 layout=padding)
                seen.clear()
                seen.update(calls)
                return out

            def alone(jobs: list[AlignmentJob] = jobs) -> list[Any]:
                return [align_jobs(models.vlm, models.reward, models.clip, [job], config=config)[0] for job in jobs]

            sides = [(together, together_s, together_cpu, together_mb), (alone, alone_s, alone_cpu, alone_mb)]
            if repeat % 2:  # alternate the order so that drift of a shared machine favours neither
                sides.reverse()
            answers = {}
            for fn, seconds, cpu_seconds, memory in sides:
                harness.peak_memory_reset(device)
                out, elapsed, cpu = harness.timed(fn, device)
                seconds.append(elapsed)
                cpu_seconds.append(cpu)
                memory.append(harness.peak_memory_mb(device))
                answers[fn.__name__] = [a.token_ids for a in out]
            same = sum(a == b for a, b in zip(answers["together"], answers["alone"], strict=True))
            identical.append(same)
            if same != count and exact:
                raise RuntimeError(f"J={count}: jobs aligned together differ from the same jobs aligned alone")
            logger.info("J=%d repeat %d: together %.2fs, one after another %.2fs", count, repeat, together_s[-1],
                        alone_s[-1])
        speedups = [a / t for a, t in zip(alone_s, together_s, strict=True)]
        rows = layout.get("row_positions", 0)
        results.append({
            "jobs": count,
            "throughput_ratio": harness.spread(speedups, 2),
            # Steadier on a shared machine when torch runs one thread: other work delays a run without adding to
            # its CPU time.
            "throughput_ratio_in_cpu_time": harness.spread([a / t for a, t in zip(alone_cpu, together_cpu,
                                                                                   strict=True)], 2),
            "together_jobs_per_s": harness.spread([count / t for t in together_s], 3),
            "one_after_another_jobs_per_s": harness.spread([count / a for a in alone_s], 3),
            "together_seconds": harness.spread(together_s),
            "one_after_another_seconds": harness.spread(alone_s),
            "peak_memory_mb": {"together": harness.spread([m for m in together_mb if m is not None] or [0.0], 1),
                               "one_after_another": harness.spread([m for m in alone_mb if m is not None] or [0.0],
                                                                   1)},
            # Share of the packed prefix positions (rows x longest prefix, summed over rounds) that are padding.
            "padding_share_of_packed_prefix": round(layout.get("padding_positions", 0) / rows, 4) if rows else None,
            # KV cache of alignment: the most held at once (prefix store and batch cache as allocated, the largest
            # round) against its floor (each job's prefix once plus N rows of the round's longest sentence).
            "kv_peak_bytes": layout.get("kv_peak_bytes"),
            "kv_floor_bytes": layout.get("kv_floor_bytes"),
            "kv_peak_over_floor": (round(layout["kv_peak_bytes"] / layout["kv_floor_bytes"], 3)
                                   if layout.get("kv_floor_bytes") else None),
            "kv_layout": "shared prefix" if getattr(models.vlm, "shared_prefix", False) else "copied per row",
            "model_calls_last_together_run": dict(calls_seen),
            # Jobs (of J) whose tokens aligned together equal their tokens aligned alone, per repeat.
            "answers_identical_to_alone": identical,
            "identity_required": exact,
        })
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_model_arguments(parser)
    parser.add_argument("--candidates", default="1,3,5,8", help="values of N, comma-separated (default 1,3,5,8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each implementation per N")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="token budget of the aligned answer")
    parser.add_argument("--max-sentence-tokens", type=int, default=32,
                        help="token budget of a sentence (random weights seldom end one; this stands in for "
                             "real sentence length)")
    parser.add_argument("--prompt", default="What is shown in this image? Describe it in detail.")
    parser.add_argument("--image", default="harm_example.png", help="sample image name")
    parser.add_argument("--plot", type=Path, help="write tokens/s per N for both implementations as PNG")
    parser.add_argument("--profile", type=Path,
                        help="also profile one batched run at the largest N (cProfile stats file; top to stderr)")
    parser.add_argument("--jobs", default=None,
                        help="cross-job mode: values of J (jobs aligned together), comma-separated, e.g. 1,4,8,16; "
                             "N is the first value of --candidates unless that is 1,3,5,8 (then 5)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    harness.log_to_stderr(args.verbose)
    threads = harness.set_threads(args.threads)
    env = harness.environment(threads, args.device)
    ns = [int(n) for n in args.candidates.split(",") if n.strip()]
    models, model_info = harness.load_models_for(args)
    image = harness.load_image(harness.samples_dir(args.samples), args.image, seed=args.seed)
    base = ETAConfig(max_new_tokens=args.max_new_tokens, max_sentence_tokens=args.max_sentence_tokens)
    if args.jobs:
        return cross_job_main(args, models, model_info, env, base, ns)

    # Warm-up (allocator, first-call paths), not timed.
    warm = base.replace(num_candidates=2, max_new_tokens=min(8, args.max_new_tokens))
    run_batched(models, args.prompt, image, warm, args.seed)
    run_sequential(models, args.prompt, image, warm, args.seed)

    results = []
    for n in ns:
        config = base.replace(num_candidates=n)
        batched: list[Run] = []
        sequential: list[Run] = []
        for repeat in range(args.repeats):
            seed = args.seed + repeat
            # Alternate the order so that drift of a shared machine does not favour one side.
            if repeat % 2 == 0:
                batched.append(run_batched(models, args.prompt, image, config, seed))
                sequential.append(run_sequential(models, args.prompt, image, config, seed))
            else:
                sequential.append(run_sequential(models, args.prompt, image, config, seed))
                batched.append(run_batched(models, args.prompt, image, config, seed))
            logger.info("N=%d repeat %d: batched %.1f tok/s, sequential %.1f tok/s", n, repeat,
                        batched[-1].tokens_per_s, sequential[-1].tokens_per_s)
        speedups = [b.tokens_per_s / s.tokens_per_s for b, s in zip(batched, sequential, strict=True)]
        cpu_speedups = [b.tokens_per_cpu_s / s.tokens_per_cpu_s for b, s in zip(batched, sequential, strict=True)]
        results.append({
            "n": n,
            "speedup": harness.spread(speedups, 2),
            "speedup_in_cpu_time": harness.spread(cpu_speedups, 2),
            "batched_tokens_per_s": harness.spread([b.tokens_per_s for b in batched], 1),
            "sequential_tokens_per_s": harness.spread([s.tokens_per_s for s in sequential], 1),
            "batched_seconds": harness.spread([b.seconds for b in batched]),
            "sequential_seconds": harness.spread([s.seconds for s in sequential]),
            "batched_cpu_seconds": harness.spread([b.cpu_seconds for b in batched]),
            "sequential_cpu_seconds": harness.spread([s.cpu_seconds for s in sequential]),
            "batched_candidate_tokens": [b.tokens for b in batched],
            "sequential_candidate_tokens": [s.tokens for s in sequential],
            "answer_tokens": {"batched": [b.answer_tokens for b in batched],
                              "sequential": [s.answer_tokens for s in sequential]},
            "sentences": {"batched": [b.sentences for b in batched], "sequential": [s.sentences for s in sequential]},
        })

    at_5 = next((r for r in results if r["n"] == 5), None)
    report: dict[str, Any] = {
        "benchmark": "deep_alignment_batched_vs_sequential",
        "tokens_per_s": TOKENS_DEFINITION,
        "baseline": BASELINE,
        "models": model_info,
        "environment": {**env, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "config": {"max_new_tokens": args.max_new_tokens, "max_sentence_tokens": args.max_sentence_tokens,
                   "top_k": base.top_k, "temperature": base.temperature, "alpha": base.alpha,
                   "seed": args.seed, "repeats": args.repeats, "prompt": args.prompt, "image": args.image},
        "results": results,
        "target": {
            "n": 5,
            "speedup_at_least": 3.0,
            "median": at_5["speedup"]["median"] if at_5 else None,
            "met": (at_5["speedup"]["median"] >= 3.0) if at_5 else None,
        },
    }
    if args.profile:
        config = base.replace(num_candidates=max(ns))
        sys.stderr.write(profile_batched(models, args.prompt, image, config, args.seed, args.profile))
        report["profile"] = str(args.profile)
    if args.plot:
        report["plot"] = harness.save_plot(args.plot, lambda axes: _draw(axes, results, model_info))
    print(json.dumps(report, indent=2))
    return 0


def cross_job_main(args: argparse.Namespace, models: Any, model_info: dict[str, Any], env: dict[str, Any],
                   base: ETAConfig, ns: list[int]) -> int:
    counts = [int(j) for j in args.jobs.split(",") if j.strip()]
    n = 5 if args.candidates == "1,3,5,8" else ns[0]
    config = base.replace(num_candidates=n)
    folder = harness.samples_dir(args.samples)
    # Warm-up (allocator, first-call paths), not timed.
    align_jobs(models.vlm, models.reward, models.clip, cross_job_jobs(folder, 2, args.seed),
               config=config.replace(max_new_tokens=min(8, args.max_new_tokens)))
    results = measure_cross_job(models, counts, config, repeats=args.repeats, seed=args.seed, folder=folder)
    at_8 = next((r for r in results if r["jobs"] == 8), None)
    report: dict[str, Any] = {
        "benchmark": "cross_job_alignment_together_vs_one_after_another",
        "definition": "aligned jobs per second: J jobs aligned by one align_jobs call (J x N rows per decoding "
                      "step, one reward and one CLIP forward per sentence round) against the same J jobs aligned "
                      "one after another; throughput_ratio = one-after-another seconds / together seconds, per "
                      "repeat; min/median/max over repeats; every repeat compares both sides' answers (they "
                      "must be identical in float32 on the CPU; elsewhere the agreement is reported)",
        "models": model_info,
        "environment": {**env, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "config": {"num_candidates": n, "max_new_tokens": args.max_new_tokens,
                   "max_sentence_tokens": args.max_sentence_tokens, "top_k": base.top_k,
                   "temperature": base.temperature, "seed": args.seed, "repeats": args.repeats,
                   "prompts": list(CROSS_JOB_PROMPTS), "images": list(CROSS_JOB_IMAGES)},
        "results": results,
        "target": {"jobs": 8, "throughput_ratio_at_least": 3.0,
                   "median": at_8["throughput_ratio"]["median"] if at_8 else None,
                   "met": (at_8["throughput_ratio"]["median"] >= 3.0) if at_8 else None,
                   "kv_peak_over_floor_at_most": 1.5,
                   "kv_peak_over_floor": at_8["kv_peak_over_floor"] if at_8 else None},
    }
    if args.profile:
        profiler = cProfile.Profile()
        jobs = cross_job_jobs(folder, max(counts), args.seed)
        profiler.enable()
        align_jobs(models.vlm, models.reward, models.clip, jobs, config=config)
        profiler.disable()
        args.profile.parent.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(args.profile))
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        sys.stderr.write(text.getvalue())
        report["profile"] = str(args.profile)
    print(json.dumps(report, indent=2))
    return 0


def _draw(axes: Any, results: list[dict[str, Any]], model_info: dict[str, Any]) -> None:
    ns = [r["n"] for r in results]
    for key, label, marker in (("batched_tokens_per_s", "batched (library)", "o"),
                               ("sequential_tokens_per_s", "sequential baseline", "s")):
        median = [r[key]["median"] for r in results]
        low = [r[key]["median"] - r[key]["min"] for r in results]
        high = [r[key]["max"] - r[key]["median"] for r in results]
        axes.errorbar(ns, median, yerr=[low, high], marker=marker, capsize=3, label=label)
    for r in results:
        axes.annotate(f"{r['speedup']['median']:.1f}x", (r["n"], r["batched_tokens_per_s"]["median"]),
                      textcoords="offset points", xytext=(0, 8), ha="center")
    axes.set_xticks(ns)
    axes.set_xlabel("candidates per sentence (N)")
    axes.set_ylabel("candidate tokens / s")
    axes.set_title(f"Deep alignment, {model_info['shape']} shape on {model_info['device']} ({model_info['dtype']})")
    axes.legend()


if __name__ == "__main__":
    sys.exit(main())
