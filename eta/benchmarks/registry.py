"""Every benchmark `eta eval --benchmark` reads, declared once: the safety benchmarks (judged, the unsafe-rate
table) and the general-ability ones (scored by their own metric, the ability table)."""

from __future__ import annotations

from collections.abc import Callable

from eta.benchmarks import BenchmarkItem
from eta.benchmarks.ability import ABILITY_READERS
from eta.benchmarks.readers import SAFETY_READERS

READERS: dict[str, Callable[..., list[BenchmarkItem]]] = {**SAFETY_READERS, **ABILITY_READERS}
ABILITY_BENCHMARKS = frozenset(ABILITY_READERS)


def is_ability_benchmark(name: str) -> bool:
    """True for a general-ability benchmark (no judge; scored against its ground truth)."""
    return name in ABILITY_BENCHMARKS
