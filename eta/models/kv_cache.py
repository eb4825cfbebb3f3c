"""A KV cache that appends into spare capacity instead of concatenating on every decoding step.

transformers' `DynamicLayer` grows by `torch.cat` on every step: each new token copies the whole cache of
every layer into a freshly allocated tensor. With N candidate rows over a prefix of ~600 image + prompt
tokens that copy dominates a CPU decoding step (and on the CPU every fresh multi-megabyte allocation also
page-faults). `GrowingLayer` keeps a buffer with headroom, writes new positions in place and hands the
attention a view of the filled part; when full it grows by half, so appends cost O(1) amortised.

Every layer is a `GrowingLayer`, sliding-window layers included (see `growing_cache`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

logger = logging.getLogger(__name__)

# Headroom added when a buffer is (re)allocated: at least this many positions, or half the length.
_MIN_HEADROOM = 128


class GrowingLayer(DynamicLayer):
    """`DynamicLayer` semantics (crop, batch repeat/select, reorder) over a preallocated, growing buffer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._key_buffer = self._value_buffer = None
        self._length = 0
        self.keys = key_states[..., :0, :]
        self.values = value_states[..., :0, :]
        self.is_initialized = True

    def _expose(self) -> None:
        if self._key_buffer is None or self._value_buffer is None:
            raise RuntimeError("GrowingLayer has no buffer yet")
        self.keys = self._key_buffer[:, :, : self._length]
        self.values = self._value_buffer[:, :, : self._length]

    def _reserve(self, length: int, key_states: torch.Tensor, value_states: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Make room for `length` positions, keeping what is there. Returns the (key, value) buffers."""
        buffer = self._key_buffer
        if (buffer is not None and self._value_buffer is not None and buffer.shape[0] == key_states.shape[0]
                and buffer.shape[-2] >= length):
            return buffer, self._value_buffer
        capacity = length + max(_MIN_HEADROOM, length // 2)
        batch, heads, _, head_dim = key_states.shape
        keys = key_states.new_empty((batch, heads, capacity, head_dim))
        values = value_states.new_empty((batch, value_states.shape[1], capacity, value_states.shape[-1]))
        if buffer is not None and self._value_buffer is not None and self._length:
            keys[:, :, : self._length] = buffer[:, :, : self._length]
            values[:, :, : self._length] = self._value_buffer[:, :, : self._length]
        self._key_buffer, self._value_buffer = keys, values
        return keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        keys, values = self._reserve(end, key_states, value_states)
        keys[:, :, self._length: end] = key_states
        values[:, :, self._length: end] = value_states
        self._length = end
        self.keys, self.values = keys[:, :, :end], values[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._length if self.is_initialized else 0

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        self._length = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove == 0 or not self.is_initialized or self._key_buffer is None:
            return
        self._length = max(0, self._length + tokens_to_remove)
        self._expose()

    def _rebuild(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self._key_buffer, self._value_buffer = keys, values
        self._expose()

    def _filled_copy(self, buffer: torch.Tensor, rows: torch.Tensor | None, repeats: int) -> torch.Tensor:
        """A new buffer of the same capacity holding the filled positions of `rows` (all rows when None), each
        repeated `repeats` times. Only the filled part is copied: the headroom is allocated, never touched."""
        filled = buffer[:, :, : self._length] if rows is None else buffer[rows, :, : self._length]
        batch, heads, _, head_dim = filled.shape
        out = buffer.new_empty((batch * repeats, heads, buffer.shape[2], head_dim))
        out.view(batch, repeats, heads, -1, head_dim)[:, :, :, : self._length] = filled.unsqueeze(1)
        return out

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._length > 0 and self._key_buffer is not None and self._value_buffer is not None:
            self._rebuild(self._filled_copy(self._key_buffer, None, repeats),
                          self._filled_copy(self._value_buffer, None, repeats))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._length > 0 and self._key_buffer is not None and self._value_buffer is not None:
            rows = indices.to(self._key_buffer.device)
            self._rebuild(self._filled_copy(self._key_buffer, rows, 1), self._filled_copy(self._value_buffer, rows, 1))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self._length > 0 and self._key_buffer is not None and self._value_buffer is not None:
            index = beam_idx.to(self._key_buffer.device)
            self._rebuild(self._key_buffer.index_select(0, index), self._value_buffer.index_select(0, index))

    def offload(self) -> None:
        if self._key_buffer is not None and self._value_buffer is not None:
            self._rebuild(self._key_buffer.to("cpu", non_blocking=True),
                          self._value_buffer.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        if self._key_buffer is not None and self._value_buffer is not None and self._key_buffer.device != self.device:
            self._rebuild(self._key_buffer.to(self.device, non_blocking=True),
                          self._value_buffer.to(self.device, non_blocking=True))


def cross_attention_layers(config: Any) -> frozenset[int]:
    """Indices of the decoder's cross-attention layers (Mllama): their cache holds the image's keys and values,
    written once by the prompt, not one entry per text position."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return frozenset(getattr(text, "cross_attention_layers", None) or ())


def has_sliding_layers(config: Any) -> bool:
    """Whether some decoder layers attend over a sliding window (Gemma 3, Qwen with `use_sliding_window`)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return "sliding_attention" in (getattr(text, "layer_types", None) or ())


def growing_cache(config: Any) -> DynamicCache:
    """A `DynamicCache` for `config` whose every layer is a `GrowingLayer` keeping all positions.

    Sliding-window layers too: transformers builds the attention mask of a sliding layer from the config's layer
    types, not from the cache, so a full record gives the same attention while letting a row be cropped back and
    re-packed (`DynamicSlidingWindowLayer` drops what left the window for good). A cross-attention layer's
    `GrowingLayer` holds the image's keys and values; `crop_cache` and `RowPrefix` leave those whole.
    """
    cache = DynamicCache(config=config)
    if cache.layers:
        cache.layers = [GrowingLayer() for _ in cache.layers]
    else:
        cache.layer_class_to_replicate = GrowingLayer
    return cache


def crop_cache(cache: Any, length: int, *, cross: frozenset[int] = frozenset()) -> None:
    """Shorten a cache to its first `length` positions (a negative crop works across transformers versions); the
    cross-attention layers `cross` keep the image's keys and values whole."""
    positional = [i for i in range(len(cache.layers)) if i not in cross]
    current = cache.layers[positional[0]].get_seq_length() if positional else cache.get_seq_length()
    excess = current - length
    if excess < 0:
        raise ValueError(f"cannot crop a cache of {current} positions to {length}")
    if not excess:
        return
    if not cross:
        cache.crop(-excess)
        return
    for index in positional:
        cache.layers[index].crop(-excess)


# ------------------------------------------------------------------------------------ packed rows across jobs
# Cross-job decoding runs rows of several sequences (different jobs, different prefix lengths) through one
# forward. Each sequence's cached prefix is kept per layer as a (1, heads, length, head_dim) tensor (often a view
# into the batch it was computed in); `pack_rows` copies them, left-padded to a common width and repeated once
# per row, into one `GrowingLayer` batch. An attention mask hides the padding and per-row position ids keep every
# row's positions its own, so a row computes what it would alone (up to float summation order).
#
# What the model needs beyond tokens and a cache travels with the prefix, taken from the model's own input
# preparation when the prompt ran: the position offset of text after the prompt (Qwen2/2.5/3-VL number image
# tokens on a 3-D grid, so the next text position is not the token count: the rope delta of `get_rope_index`),
# the cross-attention layers' image keys and values (Mllama; whole, never cut to text positions) and the per-token
# inputs each new token repeats from the prompt's last one (Mllama's cross-attention mask row).


class RowPrefix:
    """The cached keys and values of one sequence: per layer a (1, heads, length, head_dim) pair of tensors, None
    for a cross-attention layer without an image.

    Attributes:
        cross: indices of cross-attention layers (their tensors are image keys/values, not positions).
        offset: the position id of the next token minus `length` (0 unless the model numbers image tokens on a grid).
        extras: model inputs of shape (1, 1, ...) that every new token repeats (Mllama's `cross_attention_mask`).
    """

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor] | None], *, cross: frozenset[int] = frozenset(),
                 offset: int = 0, extras: dict[str, torch.Tensor] | None = None) -> None:
        self.layers = layers
        self.cross = cross
        self.offset = offset
        self.extras = extras or {}

    @property
    def length(self) -> int:
        for index, layer in enumerate(self.layers):
            if index not in self.cross and layer is not None:
                return int(layer[0].shape[-2])
        return 0

    def crop(self, length: int) -> RowPrefix:
        """The first `length` positions (views, nothing copied)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a prefix of {self.length} positions to {length}")
        layers = [layer if (i in self.cross or layer is None) else (layer[0][:, :, :length], layer[1][:, :, :length])
                  for i, layer in enumerate(self.layers)]
        return RowPrefix(layers, cross=self.cross, offset=self.offset, extras=self.extras)

    @classmethod
    def from_cache(cls, cache: Any, row: int, spans: list[tuple[int, int]], *, cross: frozenset[int] = frozenset(),
                   offset: int = 0, extras: dict[str, torch.Tensor] | None = None) -> RowPrefix:
        """Row `row` of `cache` at the column spans `[start, end)`, in order. One span is a view; several are
        concatenated (a copy). Cross-attention layers `cross` are taken whole."""
        layers: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for index, layer in enumerate(cache.layers):
            keys, values = layer.keys, layer.values
            if keys is None or values is None or not layer.is_initialized or keys.numel() == 0:
                if index not in cross:
                    raise ValueError(f"cache layer {index} holds nothing")
                layers.append(None)
            elif index in cross:
                layers.append((keys[row:row + 1], values[row:row + 1]))
            elif len(spans) == 1:
                start, end = spans[0]
                layers.append((keys[row:row + 1, :, start:end], values[row:row + 1, :, start:end]))
            else:
                layers.append((torch.cat([keys[row:row + 1, :, s:e] for s, e in spans], dim=2),
                               torch.cat([values[row:row + 1, :, s:e] for s, e in spans], dim=2)))
        return cls(layers, cross=cross, offset=offset, extras=extras)


class PackedRows:
    """Rows of several sequences in one left-padded `GrowingLayer` cache, with their attention mask.

    Attributes:
        cache: the batch cache (rows in the order given to `pack_rows`).
        width: columns the packed prefixes take (the longest prefix); new tokens go after it.
        mask: (rows, columns) bool, True where a row has a real token; grows with `append_mask`.
        lengths: each row's real tokens so far.
        offsets: each row's position offset (its next position id is `lengths + offsets`).
        extras: per-token model inputs, one (rows, 1, ...) tensor per name, repeated for each new column.
        shared: None, or the prefixes held once per job (see eta.models.shared_prefix).
    """

    def __init__(self, cache: DynamicCache, width: int, mask: torch.Tensor, lengths: torch.Tensor,
                 offsets: torch.Tensor | None = None, extras: dict[str, torch.Tensor] | None = None,
                 shared: Any = None) -> None:
        self.cache = cache
        self.width = width
        self.mask = mask
        self.lengths = lengths
        self.offsets = offsets if offsets is not None else torch.zeros_like(lengths)
        self.extras = extras or {}
        # The jobs' prefixes held once (eta.models.shared_prefix.SharedPrefix): then `cache` and `mask` hold only
        # the columns the rows append, and `width` is 0.
        self.shared = shared

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def feed(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask and position ids for a forward of `real.shape[1]` new columns; `real` (rows, T) bool says which
        new columns hold real tokens (False: right padding of a shorter row). Returns (attention mask over the
        cache and the new columns, position ids (rows, T)); the mask and lengths are updated for the next call."""
        offsets = torch.cumsum(real.long(), dim=1) - real.long()
        positions = (self.lengths + self.offsets).unsqueeze(1) + offsets
        self.mask = torch.cat([self.mask, real.to(self.mask.device)], dim=1)
        self.lengths = self.lengths + real.long().sum(dim=1)
        return self.mask, positions

    def inputs_for(self, columns: int) -> dict[str, torch.Tensor]:
        """The per-token model inputs for `columns` new columns."""
        return {name: value.expand(-1, columns, *value.shape[2:]) for name, value in self.extras.items()}


def pack_rows(config: Any, prefixes: list[RowPrefix], repeats: list[int], *, headroom: int = 0) -> PackedRows:
    """One batch cache holding prefix i repeated `repeats[i]` times, left-padded to the longest prefix.

    Args:
        config: the model config (which layers the cache has).
        prefixes: one per sequence; all have the same layers, heads and head size. Sequences whose cross-attention
            layers differ (an image or not, another tile count) cannot share a pack.
        repeats: rows per sequence (its candidates).
        headroom: columns reserved after the prefixes for the tokens the rows will append.
    """
    if len(prefixes) != len(repeats) or not prefixes:
        raise ValueError(f"{len(prefixes)} prefixes but {len(repeats)} repeat counts")
    cache = growing_cache(config)
    layer_count = len(prefixes[0].layers)
    if not cache.layers:
        cache.layers = [GrowingLayer() for _ in range(layer_count)]
    if len(cache.layers) != layer_count:
        raise ValueError(f"a cache of {len(cache.layers)} layers for prefixes of {layer_count}")
    cross = prefixes[0].cross
    width = max(p.length for p in prefixes)
    rows = sum(repeats)
    capacity = width + max(headroom, 1)
    lengths = torch.tensor([p.length for p, n in zip(prefixes, repeats, strict=True) for _ in range(n)],
                           dtype=torch.long)
    offsets = torch.tensor([p.offset for p, n in zip(prefixes, repeats, strict=True) for _ in range(n)],
                           dtype=torch.long)
    mask = torch.arange(width).unsqueeze(0) >= (width - lengths).unsqueeze(1)
    for index, layer in enumerate(cache.layers):
        assert isinstance(layer, GrowingLayer)  # noqa: S101 - growing_cache builds only these
        if index in cross:
            _pack_cross_layer(layer, [p.layers[index] for p in prefixes], repeats, index)
            continue
        first = prefixes[0].layers[index]
        if first is None:
            raise ValueError(f"prefix layer {index} holds nothing")
        sample_k, sample_v = first
        keys = sample_k.new_empty((rows, sample_k.shape[1], capacity, sample_k.shape[-1]))
        values = sample_v.new_empty((rows, sample_v.shape[1], capacity, sample_v.shape[-1]))
        row = 0
        for prefix, n in zip(prefixes, repeats, strict=True):
            pair = prefix.layers[index]
            assert pair is not None  # noqa: S101 - same layers in every prefix
            k, v = pair
            start = width - k.shape[-2]
            # Padding must be finite: masked-out attention weights are exactly 0, and 0 * NaN is NaN.
            keys[row:row + n, :, :start] = 0
            values[row:row + n, :, :start] = 0
            keys[row:row + n, :, start:width] = k
            values[row:row + n, :, start:width] = v
            row += n
        layer.device = keys.device
        layer.is_initialized = True
        layer._key_buffer, layer._value_buffer, layer._length = keys, values, width
        layer._expose()
    first_pair = next(p for p in prefixes[0].layers if p is not None)
    device = first_pair[0].device
    extras: dict[str, torch.Tensor] = {}
    for name in prefixes[0].extras:
        parts = [p.extras[name].expand(n, *p.extras[name].shape[1:]) for p, n in zip(prefixes, repeats, strict=True)]
        if len({part.shape[1:] for part in parts}) != 1:
            raise ValueError(f"sequences with different {name} shapes cannot share a pack")
        extras[name] = torch.cat(parts).to(device)
    if any(set(p.extras) != set(prefixes[0].extras) for p in prefixes):
        raise ValueError("sequences with and without an image's cross-attention cannot share a pack")
    return PackedRows(cache, width, mask.to(device), lengths.to(device), offsets.to(device), extras)


def _pack_cross_layer(layer: GrowingLayer, pairs: list[tuple[torch.Tensor, torch.Tensor] | None], repeats: list[int],
                      index: int) -> None:
    """A cross-attention layer of the pack: each sequence's image keys/values, whole, once per row."""
    if all(pair is None for pair in pairs):
        return  # no image: the model skips the layer, as it does for a text-only prompt
    if any(pair is None for pair in pairs) or len({pair[0].shape for pair in pairs if pair is not None}) != 1:
        raise ValueError(f"cross-attention layer {index}: sequences with different images' shapes cannot share a "
                         "pack")
    keys = torch.cat([pair[0].expand(n, -1, -1, -1) for pair, n in zip(pairs, repeats, strict=True)
                      if pair is not None])
    values = torch.cat([pair[1].expand(n, -1, -1, -1) for pair, n in zip(pairs, repeats, strict=True)
                        if pair is not None])
    layer.device = keys.device
    layer.is_initialized = True
    layer._key_buffer, layer._value_buffer, layer._length = keys.contiguous(), values.contiguous(), keys.shape[-2]
    layer._expose()
