"""What the ETA benchmarks share: model-shape options, loading, threads, timing and statistics.

Not a benchmark itself. `bench/align.py` and `bench/overhead.py` import it (Python puts the script's folder on
`sys.path`, so `python bench/align.py` finds it from any working directory).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from eta.models import Models

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SHAPE_NAMES = ("tiny", "small", "llava-7b")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--shape, --device, --dtype, --threads, --seed, --models-dir, --in-memory, --samples."""
    group = parser.add_argument_group("models and placement")
    group.add_argument("--shape", choices=SHAPE_NAMES, default="tiny",
                       help="random-weight model shape: tiny (tests), small (tens of millions of parameters, "
                            "LLaVA-1.5 layout), llava-7b (LLaVA-1.5-7B + Llama-3-8B reward + ViT-L-14-336; GPU)")
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    group.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                       help="auto: float32 on CPU, bfloat16 on GPU")
    group.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                       help="torch intra-op threads (default: every core, %(default)s here)")
    group.add_argument("--seed", type=int, default=0, help="seeds the weights and the sampling")
    group.add_argument("--models-dir", type=Path,
                       help="where saved shapes are built and loaded from (default $ETA_DATA_DIR/bench-models/SHAPE)")
    group.add_argument("--in-memory", action="store_true",
                       help="build the models on the device instead of saving and loading them "
                            "(always so for llava-7b, which is too large to save)")
    group.add_argument("--samples", type=Path, default=None,
                       help="folder of the sample images (default $ETA_SAMPLES_DIR or ../shared/samples)")


def set_threads(threads: int) -> dict[str, int]:
    torch.set_num_threads(max(1, threads))
    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_models_for(args: argparse.Namespace) -> tuple[Models, dict[str, Any]]:
    """The three models of `args.shape` on `args.device`, and a description of how they were obtained.

    Saved shapes (tiny, small) are built once into the models folder and loaded through the production
    loaders (`from_pretrained`, `open_clip.create_model_and_transforms`); `llava-7b` or `--in-memory` builds
    them directly on the device.
    """
    from eta.config import ModelsConfig
    from eta.models import load_models
    from eta.models.selection import load_options
    from eta.models.tiny import build_random_models, ensure_tiny_models, get_shape, parameter_counts
    from eta.settings import get_settings

    settings = get_settings()
    shape = get_shape(args.shape)
    start = time.perf_counter()
    if args.in_memory or not shape.saveable:
        models = build_random_models(shape.name, seed=args.seed, device=args.device, dtype=args.dtype)
        # ETA_SHARED_PREFIX=0 keeps the copied layout here too (the loaders read it from the spec).
        models.require("vlm").shared_prefix &= settings.models.shared_prefix
        source = "built in memory on the device"
    else:
        root = args.models_dir or settings.data_dir / "bench-models" / shape.name
        ensure_tiny_models(root, seed=args.seed, shape=shape.name)
        config = ModelsConfig.tiny(str(root)).with_device(args.device, args.dtype)
        models = load_models(config.with_load_options(**load_options(settings)))
        source = f"saved under {root}, loaded with from_pretrained / open_clip"
    vlm = models.require("vlm")
    info = {
        "shape": shape.name,
        "parameters": parameter_counts(shape.name),
        "source": source,
        "device": str(vlm.device),
        "dtype": str(vlm.dtype).removeprefix("torch."),
        "load_seconds": round(time.perf_counter() - start, 2),
    }
    return models, info


def environment(threads: dict[str, int], device: str) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        # Other work on a shared machine skews timings: the 1/5/15-minute load averages when the run began.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """Run `fn` once; returns (its result, wall seconds, CPU seconds of this process), the GPU drained on both
    sides. On a shared machine CPU time is the steadier of the two when torch runs one thread: other work
    delays the run without adding to its CPU time."""
    synchronize(device)
    cpu, start = time.process_time(), time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start, time.process_time() - cpu


def spread(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """min / median / max of repeated measurements."""
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
    }


def samples_dir(override: Path | None) -> Path | None:
    """The sample images folder, or None when there is none (synthetic images are used then)."""
    for candidate in (override, os.environ.get("ETA_SAMPLES_DIR"), REPO.parent / "shared" / "samples"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def load_image(folder: Path | None, name: str, *, seed: int) -> Image.Image:
    """A sample image by name, or a seeded noise image of 640x480 when the samples are not there."""
    if folder is not None and (folder / name).is_file():
        return Image.open(folder / name).convert("RGB")
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (480, 640, 3), dtype=torch.uint8, generator=generator)
    return Image.fromarray(pixels.numpy(), "RGB")


def save_plot(path: Path, draw: Callable[[Any], None]) -> str:
    """Draw on a fresh matplotlib figure (headless) and save it as PNG; returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    draw(axes)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return str(path)


def log_to_stderr(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        quiet_libraries()


def peak_memory_reset(device: torch.device) -> None:
    """Start a new peak: the GPU allocator's counter, or the process's peak resident set (Linux clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None
