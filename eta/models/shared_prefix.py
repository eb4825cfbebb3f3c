"""One copy of each job's prompt cache shared by its N candidate rows (shared-prefix, or "cascade", attention).

Best-of-N decodes N rows that all continue the same prefix (the prompt and the answer so far). Copying that prefix
into every row makes the KV cache of alignment N times the prompt's, and every decoding step reads it N times.
Here each job's prefix is held once, as a (jobs, kv heads, width, head_dim) tensor per layer (left-padded to the
longest prefix of the pack), and the batch cache (`PackedRows.cache`) holds only what the rows append: the
sentence being sampled. A row's attention over [its job's prefix ; its own suffix] is computed as two attentions
merged by their log-sum-exp:

    out = (exp(lse_p - lse) * out_p + exp(lse_s - lse) * out_s),   lse = logaddexp(lse_p, lse_s)

which is the softmax over the concatenated keys, up to float summation order. The prefix part runs once per job
with its N rows' queries stacked (one matrix product per kv head instead of N matrix-vector products), the
suffix part per row.

The function is registered with transformers' `AttentionInterface` under `ATTENTION_NAME` and switched on for the
decoder's configs only for the duration of a packed forward (`active`): the model's own attention modules project,
rotate and cache the keys as usual and then call it. With a custom implementation transformers builds no mask,
so the masks come from here: padding of the prefix, and causal order plus the right-padding of the suffix.

It applies to decoders whose every layer is plain full self-attention over the cache; sliding-window layers
(Gemma 3) mask by absolute column and cross-attention layers (Mllama) hold image keys: those architectures keep
the copied layout (`applies`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface

from eta.models.kv_cache import GrowingLayer, PackedRows, growing_cache

ATTENTION_NAME = "eta_shared_prefix"


@dataclass
class SharedPrefix:
    """The prefixes of one pack: per layer (jobs, kv heads, width, head_dim) keys and values, left-padded.

    Attributes:
        layers: per decoder layer, the (keys, values) pair.
        mask: (jobs, width) bool, True at a job's real prefix positions.
        rows_per_job: candidate rows of each job; rows of job k are k*n .. k*n+n-1.
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor
    rows_per_job: int

    @property
    def jobs(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


@dataclass
class _Active:
    prefix: SharedPrefix
    suffix_mask: torch.Tensor  # (rows, suffix columns) bool, the new columns included
    # The masks of the fused kernel (`_bias`), built by the first layer of a forward and reused by the others.
    biases: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


_ACTIVE: contextvars.ContextVar[_Active | None] = contextvars.ContextVar("eta_shared_prefix", default=None)


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor, scaling: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of (B, Hkv, M, d) queries over (B, Hkv, S, d) keys with an `allowed` mask broadcastable to
    (B, Hkv, M, S), in float32. Returns (output (B, Hkv, M, d), log-sum-exp (B, Hkv, M, 1))."""
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    # A query with no allowed key (a padded suffix column alone) gets weight 0 here, not NaN.
    weights = torch.exp(scores - lse.masked_fill(torch.isinf(lse), 0.0))
    return torch.matmul(weights, value.float()), lse


# PyTorch's fused CPU attention (one pass over the keys, online softmax), which also returns the log-sum-exp.
_fused_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default


def _attend_fused(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: tuple[torch.Tensor, torch.Tensor],
                  scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`_attend` through the fused CPU kernel. `bias` is `_bias(allowed)`: the additive float32 mask and where a
    query has no allowed key (output 0, as `_attend`'s, and log-sum-exp -inf)."""
    additive, empty = bias
    out, lse = _fused_cpu(query.float(), key.float(), value.float(), attn_mask=additive, scale=scaling)
    return out, lse.unsqueeze(-1).masked_fill(empty, float("-inf"))


def _bias(allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused kernel's form of an `allowed` mask: 0 where allowed, -inf elsewhere (float32), and which queries
    have no allowed key at all."""
    additive = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
    return additive.masked_fill_(~allowed, float("-inf")), ~allowed.any(dim=-1, keepdim=True)


def shared_prefix_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: `query` (rows, H, T, d) are the new tokens' queries, `key` and
    `value` (rows, Hkv, S, d) what the batch cache returned (the rows' suffixes, the new tokens last). Returns the
    output as (rows, T, H, d)."""
    state = _ACTIVE.get()
    if state is None:
        raise RuntimeError("shared-prefix attention called outside a shared-prefix forward")
    layer = getattr(module, "layer_idx", None)
    if layer is None:
        raise RuntimeError(f"{type(module).__name__} has no layer_idx: shared-prefix attention cannot find its prefix")
    prefix_keys, prefix_values = state.prefix.layers[layer]
    rows, heads, t, d = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    jobs, n = state.prefix.jobs, state.prefix.rows_per_job
    if rows != jobs * n:
        raise RuntimeError(f"{rows} rows for {jobs} jobs of {n} rows")
    scale = scaling if scaling is not None else d ** -0.5

    fused = query.device.type == "cpu"
    # Prefix: the N rows of a job (and the query heads sharing a kv head) stacked as one query matrix per kv head.
    q = query.reshape(jobs, n, kv_heads, groups, t, d).permute(0, 2, 1, 3, 4, 5).reshape(jobs, kv_heads, -1, d)
    allowed_p = state.prefix.mask[:, None, None, :]
    if fused:
        bias_p = state.biases.get("prefix")
        if bias_p is None:
            bias_p = state.biases["prefix"] = _bias(allowed_p)
        out_p, lse_p = _attend_fused(q, prefix_keys, prefix_values, bias_p, scale)
    else:
        out_p, lse_p = _attend(q, prefix_keys, prefix_values, allowed_p, scale)
    out_p = out_p.reshape(jobs, kv_heads, n, groups, t, d).permute(0, 2, 1, 3, 4, 5).reshape(rows, heads, t, d)
    lse_p = lse_p.reshape(jobs, kv_heads, n, groups, t, 1).permute(0, 2, 1, 3, 4, 5).reshape(rows, heads, t, 1)

    # Suffix: each row its own keys, causal over the new columns, right-padding of the first feed masked.
    s = key.shape[2]
    qs = query.reshape(rows, kv_heads, groups * t, d)
    suffix_key = ("suffix", s, t, groups)
    bias_s = state.biases.get(suffix_key) if fused else None
    if bias_s is None:
        columns = torch.arange(s, device=query.device)
        causal = columns[None, :] <= (s - t + torch.arange(t, device=query.device))[:, None]  # (t, s)
        allowed_s = (state.suffix_mask[:, None, None, :] & causal[None, None, :, :])  # (rows, 1, t, s)
        if groups > 1:  # the query heads of a kv head are stacked: (rows, kv heads, groups * t, d)
            allowed_s = allowed_s[:, :, None].expand(rows, 1, groups, t, s).reshape(rows, 1, groups * t, s)
        if fused:
            bias_s = state.biases[suffix_key] = _bias(allowed_s)
    if bias_s is not None:
        out_s, lse_s = _attend_fused(qs, key, value, bias_s, scale)
    else:
        out_s, lse_s = _attend(qs, key, value, allowed_s, scale)
    out_s = out_s.reshape(rows, heads, t, d)
    lse_s = lse_s.reshape(rows, heads, t, 1)

    lse = torch.logaddexp(lse_p, lse_s)
    out = torch.exp(lse_p - lse) * out_p + torch.exp(lse_s - lse) * out_s
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, shared_prefix_attention)


def applies(model: Any, packing: str) -> bool:
    """Whether a model's packed decoding can use the shared prefix: plain full-attention layers only (`packing`
    "all"; see eta.safety.alignment.pack_groups) and decoder attention modules that know their layer."""
    return packing == "all" and bool(_decoder_configs(model))


def _decoder_configs(model: Any) -> list[Any]:
    """The configs the decoder's self-attention modules read `_attn_implementation` from (found once per model: a
    walk over every module on every decoding step would cost more than the step's attention on small models)."""
    cached = getattr(model, "_eta_decoder_configs", None)
    if cached is not None:
        return list(cached)
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    found: dict[int, Any] = {}
    for module in model.modules():
        own = getattr(module, "config", None)
        if own is text and hasattr(module, "layer_idx") and hasattr(module, "q_proj"):
            found[id(own)] = own
    with contextlib.suppress(AttributeError, TypeError):
        model._eta_decoder_configs = tuple(found.values())
    return list(found.values())


@contextlib.contextmanager
def active(model: Any, prefix: SharedPrefix, suffix_mask: torch.Tensor) -> Iterator[None]:
    """Within the block, the decoder's attention is the shared-prefix attention over `prefix`."""
    configs = _decoder_configs(model)
    saved = [c._attn_implementation for c in configs]
    token = _ACTIVE.set(_Active(prefix, suffix_mask))
    try:
        for c in configs:
            c._attn_implementation_internal = ATTENTION_NAME
        yield
    finally:
        for c, value in zip(configs, saved, strict=True):
            c._attn_implementation_internal = value
        _ACTIVE.reset(token)


class PrefixStore:
    """Every aligning job's prefix, once, for the whole of `align_jobs`: per layer a (jobs, kv heads, capacity,
    head_dim) buffer; job k's real positions are columns [start[k], end[k]) (left-padded to a common start at
    first, then each job appends its chosen sentence at its own end). A round's `SharedPrefix` is a view of the
    first `jobs` rows and `width` columns; a job that finishes is compacted away in place, so the store never
    holds two copies of a prefix.
    """

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], start: list[int], end: list[int]) -> None:
        self.layers = layers
        self.start = start
        self.end = end
        self.slots: list[Any] = []  # the job key of each row

    @classmethod
    def create(cls, keys: list[Any], prefixes: list[Any], *, extra: int) -> PrefixStore:
        """A store of `prefixes` (`RowPrefix`es without cross-attention layers) with room for `extra` columns."""
        width = max(p.length for p in prefixes)
        capacity = width + max(extra, 1)
        jobs = len(prefixes)
        layers = []
        for index, first in enumerate(prefixes[0].layers):
            if first is None or index in prefixes[0].cross:
                raise ValueError("a shared prefix needs plain self-attention layers")
            k0, v0 = first
            keys_buf = k0.new_zeros((jobs, k0.shape[1], capacity, k0.shape[-1]))
            values_buf = v0.new_zeros((jobs, v0.shape[1], capacity, v0.shape[-1]))
            for row, prefix in enumerate(prefixes):
                k, v = prefix.layers[index]
                keys_buf[row, :, width - k.shape[-2]:width] = k[0]
                values_buf[row, :, width - v.shape[-2]:width] = v[0]
            layers.append((keys_buf, values_buf))
        store = cls(layers, [width - p.length for p in prefixes], [width] * jobs)
        store.slots = list(keys)
        return store

    @property
    def capacity(self) -> int:
        return int(self.layers[0][0].shape[2])

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)

    def bytes_per_position(self) -> int:
        """KV bytes of one position of one row, all layers."""
        return sum(k[0, :, 0].numel() * k.element_size() + v[0, :, 0].numel() * v.element_size()
                   for k, v in self.layers)

    def length(self, key: Any) -> int:
        row = self.slots.index(key)
        return self.end[row] - self.start[row]

    def keep_only(self, keys: list[Any]) -> None:
        """Keep the jobs `keys` (a subsequence of the stored order) in rows 0..len-1, moved in place."""
        rows = [self.slots.index(key) for key in keys]
        if rows != sorted(rows):
            raise ValueError("jobs leave a prefix store but never change order")
        for new, old in enumerate(rows):
            if new != old:
                for k, v in self.layers:
                    k[new].copy_(k[old])
                    v[new].copy_(v[old])
        self.start = [self.start[r] for r in rows]
        self.end = [self.end[r] for r in rows]
        self.slots = list(keys)

    def shared(self, rows_per_job: int) -> SharedPrefix:
        """The current jobs' prefixes as one pack's `SharedPrefix` (views, nothing copied)."""
        jobs = len(self.slots)
        width = max(self.end)
        layers = [(k[:jobs, :, :width], v[:jobs, :, :width]) for k, v in self.layers]
        columns = torch.arange(width, device=layers[0][0].device)
        start = torch.tensor(self.start, device=columns.device)
        end = torch.tensor(self.end, device=columns.device)
        mask = (columns[None, :] >= start[:, None]) & (columns[None, :] < end[:, None])
        return SharedPrefix(layers, mask, rows_per_job)

    def append(self, key: Any, suffix: Any, row: int, spans: list[tuple[int, int]]) -> None:
        """Append the columns `spans` of batch-cache row `row` (the chosen candidate) to job `key`'s prefix."""
        slot = self.slots.index(key)
        count = sum(e - s for s, e in spans)
        if self.end[slot] + count > self.capacity:
            self._grow(self.end[slot] + count)
        at = self.end[slot]
        for (k, v), layer in zip(self.layers, suffix.layers, strict=True):
            write = at
            for s, e in spans:
                k[slot, :, write:write + e - s] = layer.keys[row, :, s:e]
                v[slot, :, write:write + e - s] = layer.values[row, :, s:e]
                write += e - s
        self.end[slot] = at + count

    def _grow(self, needed: int) -> None:
        capacity = needed + max(64, needed // 4)
        grown = []
        for k, v in self.layers:
            nk = k.new_zeros((k.shape[0], k.shape[1], capacity, k.shape[3]))
            nv = v.new_zeros((v.shape[0], v.shape[1], capacity, v.shape[3]))
            nk[:, :, :k.shape[2]] = k
            nv[:, :, :v.shape[2]] = v
            grown.append((nk, nv))
        self.layers = grown


def pack_suffix(config: Any, store: PrefixStore, rows_per_job: int, offsets: list[int], *, headroom: int
                ) -> PackedRows:
    """The batch cache of one round over `store`'s jobs: `rows_per_job` rows each, holding only the columns the
    rows will append (`headroom` of them, allocated here, never grown), and the shared prefixes beside it."""
    shared = store.shared(rows_per_job)
    cache = growing_cache(config)
    if not cache.layers:
        cache.layers = [GrowingLayer() for _ in store.layers]
    rows = len(store.slots) * rows_per_job
    for layer, (k, v) in zip(cache.layers, store.layers, strict=True):
        assert isinstance(layer, GrowingLayer)  # noqa: S101 - growing_cache builds only these
        layer.device = k.device
        layer.is_initialized = True
        layer._key_buffer = k.new_zeros((rows, k.shape[1], max(headroom, 1), k.shape[3]))
        layer._value_buffer = v.new_zeros((rows, v.shape[1], max(headroom, 1), v.shape[3]))
        layer._length = 0
        layer._expose()
    device = store.layers[0][0].device
    lengths = torch.tensor([e - s for s, e in zip(store.start, store.end, strict=True) for _ in range(rows_per_job)],
                           dtype=torch.long, device=device)
    row_offsets = torch.tensor([o for o in offsets for _ in range(rows_per_job)], dtype=torch.long, device=device)
    mask = torch.zeros((rows, 0), dtype=torch.bool, device=device)
    return PackedRows(cache, 0, mask, lengths, row_offsets, shared=shared)


def suffix_nbytes(packed: PackedRows) -> int:
    """Allocated bytes of a pack's batch cache (the rows' own columns)."""
    total = 0
    for layer in packed.cache.layers:
        for buffer in (getattr(layer, "_key_buffer", None), getattr(layer, "_value_buffer", None)):
            if buffer is not None:
                total += buffer.numel() * buffer.element_size()
    return total
