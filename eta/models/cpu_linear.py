"""CPU only: compute large linear layers of a few-row batch as `W @ x.T` instead of `x @ W.T`.

Deep alignment decodes N candidate rows per step, so every linear layer of the VLM multiplies a (N, in)
activation by its weight. On the CPU `nn.Linear` hands that to the BLAS as `x @ W.T`, and MKL's small-M
sgemm for that layout is far from bandwidth-bound on some CPUs. Measured on the project's AMD EPYC (MKL
2024.2, one thread), all linear layers of one decoding step of the `small` benchmark model:

    rows            1        3        5        8
    x @ W.T      15.4 ms  45.2 ms  30.1 ms  29.9 ms
    W @ x.T      17.0 ms  15.4 ms  18.5 ms  27.3 ms

The same product in the other layout reads each weight once at close to memory speed. This module swaps
`forward` of plain `nn.Linear` modules whose weight is large enough to be memory-bound, for 2..16 rows
only: one row and long inputs (prefill, scoring) keep `F.linear`. The result is the same product up to
float summation order.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

logger = logging.getLogger(__name__)

# Rows of activation for which the transposed layout is used.
MIN_ROWS, MAX_ROWS = 2, 16
# Weights smaller than this stay in cache; the layout does not matter for them.
MIN_WEIGHT_ELEMENTS = 1 << 18


def _few_rows_forward(module: torch.nn.Linear) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        features = x.shape[-1]
        rows = x.numel() // features if features else 0
        if not MIN_ROWS <= rows <= MAX_ROWS:
            return F.linear(x, module.weight, module.bias)
        out = (module.weight @ x.reshape(rows, features).T).T.contiguous()
        if module.bias is not None:
            out = out + module.bias
        return out.reshape(*x.shape[:-1], module.weight.shape[0])

    return forward


def route_few_row_linears(model: torch.nn.Module) -> int:
    """Give the large plain `nn.Linear` layers of a CPU model the few-row layout. Returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.numel() >= MIN_WEIGHT_ELEMENTS:
            module.forward = _few_rows_forward(module)  # type: ignore[method-assign]
            count += 1
    if count:
        logger.info("few-row linear layout on %d CPU linear layers", count)
    return count
