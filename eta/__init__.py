"""ETA: Evaluating Then Aligning, inference-time safety for vision-language models."""

from __future__ import annotations

__version__ = "0.1.0"
