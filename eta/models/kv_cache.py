"""A KV cache that appends into spare capacity instead of concatenating on every decoding step.

transformers' `DynamicLayer` grows by `torch.cat` on every step: each new token copies the whole cache of
every layer into a freshly allocated tensor. With N candidate rows over a prefix of ~600 image + prompt
tokens that copy dominates a CPU decoding step (and on the CPU every fresh multi-megabyte allocation also
page-faults). `GrowingLayer` keeps a buffer with headroom, writes new positions in place and hands the
attention a view of the filled part; when full it grows by half, so appends cost O(1) amortised.

Only plain full-attention layers are swapped; sliding-window or other special layers of a model stay as
transformers built them.
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


def growing_cache(config: Any) -> DynamicCache:
    """A `DynamicCache` for `config` whose plain full-attention layers are `GrowingLayer`s."""
    cache = DynamicCache(config=config)
    if cache.layers:
        cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    elif cache.layer_class_to_replicate is DynamicLayer:
        cache.layer_class_to_replicate = GrowingLayer
    return cache


def crop_cache(cache: Any, length: int) -> None:
    """Shorten a cache to its first `length` positions (a negative crop works across transformers versions)."""
    excess = cache.get_seq_length() - length
    if excess < 0:
        raise ValueError(f"cannot crop a cache of {cache.get_seq_length()} positions to {length}")
    if excess:
        cache.crop(-excess)
