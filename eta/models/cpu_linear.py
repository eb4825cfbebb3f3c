"""CPU only: the large linear layers of a model through oneDNN, with each weight packed once.

`nn.Linear` on the CPU hands its product to MKL's sgemm, which re-lays the weight out on every call and, on the
project's AMD EPYC (Zen 4), runs far from the chip's speed for the few-row products of decoding: best-of-N decodes
N candidate rows per step (J x N across jobs), vanilla generation one. oneDNN's inner-product primitive reads a
weight packed once into its blocked layout (`torch.ops.mkldnn._reorder_linear_weight`). Measured on that machine
(one thread, CPU time, all linear layers of one decoding step of the `small` benchmark VLM, 8 layers and its
32k-vocabulary head, weights streamed from memory):

    rows                        1        5       40
    MKL, x @ W.T (nn.Linear)  15.3 ms  26.6 ms  54.2 ms
    MKL, W @ x.T               15.9 ms  17.9 ms  69.8 ms     (this module's previous few-row layout)
    oneDNN, packed weight      13.6 ms  10.1 ms  36.3 ms

and 10-20% less than MKL for long inputs (prefill, reward scoring, 64 to 1,800 rows). A row's result does not
depend on how many rows share the call (oneDNN's blocking is along the weight, not the rows), so J jobs decoded
together get each job's products bit for bit as decoding it alone does; against MKL the products differ only in
float summation order.

The packed copy is a second copy of the weight, made the first time a layer runs (so layers that never run on the
CPU cost nothing) and remade if the weight changes in place. A model packs at most `PACKED_BUDGET_BYTES`; layers
beyond it, and everything where oneDNN is missing, keep MKL (with the transposed layout for 2-16 rows, which
reads each weight once at close to memory speed there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

logger = logging.getLogger(__name__)

# Rows of activation for which the transposed MKL layout is used where a layer is not packed.
MIN_ROWS, MAX_ROWS = 2, 16
# Weights smaller than this stay in cache; the layout does not matter for them.
MIN_WEIGHT_ELEMENTS = 1 << 18
# Packed copies one model may hold (a second copy of its routed weights); layers beyond it keep MKL.
PACKED_BUDGET_BYTES = 8 << 30


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's packed linear (`mkldnn` ops)."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class _Budget:
    """Bytes of packed copies a model may still make."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def take(self, nbytes: int) -> bool:
        if nbytes > self.left:
            return False
        self.left -= nbytes
        return True


def _identity(weight: torch.Tensor) -> tuple[int, int]:
    """What changes when a weight is replaced or written in place (inference tensors track no version)."""
    try:
        version = weight._version
    except RuntimeError:
        version = -1
    return weight.data_ptr(), version


def _mkl_forward(module: torch.nn.Linear, x: torch.Tensor, rows: int) -> torch.Tensor:
    """`F.linear`, as `W @ x.T` for 2-16 rows."""
    if not MIN_ROWS <= rows <= MAX_ROWS:
        return F.linear(x, module.weight, module.bias)
    features = x.shape[-1]
    out = (module.weight @ x.reshape(rows, features).T).T.contiguous()
    if module.bias is not None:
        out = out + module.bias
    return out.reshape(*x.shape[:-1], module.weight.shape[0])


def _routed_forward(module: torch.nn.Linear, budget: _Budget | None) -> Callable[[torch.Tensor], torch.Tensor]:
    packed: dict[str, Any] = {"for": None, "weight": None, "bytes": 0}

    def packed_weight(budget: _Budget) -> torch.Tensor | None:
        weight = module.weight
        identity = _identity(weight)
        if packed["for"] != identity:  # first use, or the weight was replaced or written: (re)pack
            budget.left += packed["bytes"]
            packed.update(weight=None, bytes=0)
            nbytes = weight.numel() * weight.element_size()
            if budget.take(nbytes):
                with torch.no_grad():
                    packed["weight"] = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
                packed["bytes"] = nbytes
            packed["for"] = identity
        return packed["weight"]

    def forward(x: torch.Tensor) -> torch.Tensor:
        weight = module.weight
        features = x.shape[-1]
        rows = x.numel() // features if features else 0
        if (budget is None or rows == 0 or x.dtype != torch.float32 or weight.dtype != torch.float32
                or x.device.type != "cpu" or weight.device.type != "cpu"
                or (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))):
            return _mkl_forward(module, x, rows)
        packed_w = packed_weight(budget)
        if packed_w is None:
            return _mkl_forward(module, x, rows)
        bias = module.bias
        out = torch.ops.mkldnn._linear_pointwise(x.reshape(rows, features).contiguous(), packed_w,
                                                 None if bias is None else bias.detach(), "none", [], "")
        return out.reshape(*x.shape[:-1], weight.shape[0])

    return forward


def route_cpu_linears(model: torch.nn.Module, *, budget_bytes: int | None = None) -> int:
    """Route the large plain `nn.Linear` layers of a CPU model through oneDNN with packed weights (MKL's few-row
    layout where oneDNN is missing). Returns how many layers were routed."""
    budget = _Budget(PACKED_BUDGET_BYTES if budget_bytes is None else budget_bytes) if onednn_available() else None
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.numel() >= MIN_WEIGHT_ELEMENTS:
            module.forward = _routed_forward(module, budget)  # type: ignore[method-assign,assignment]
            count += 1
    if count:
        logger.info("%d CPU linear layers through %s", count, "oneDNN (packed weights)" if budget else "MKL")
    return count
