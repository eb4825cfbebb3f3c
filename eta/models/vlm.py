"""Vision-language model adapter: chat-template prompts, batched greedy generation, KV-cache primitives.

The architectures of the support matrix (`eta.models.architectures`: LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision,
Qwen2/2.5/3-VL, Llama-3.2-Vision, Gemma 3, InternVL3) load here through `AutoModelForImageTextToText` +
`AutoProcessor` (LLaVA-1.5 is the default); any other is refused at load. Deep alignment packs the prompt caches
of several jobs into one batch (`prompt_caches`, `forward_rows`); what the model needs besides tokens (its
positions, its cross-attention cache and mask) comes from the model's own methods and travels with each prefix.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from eta.config import ModelSpec
from eta.models.architectures import architecture_of
from eta.models.common import describe, resolve_device, resolve_dtype
from eta.models.cpu_linear import route_cpu_linears
from eta.models.kv_cache import (
    PackedRows,
    RowPrefix,
    crop_cache,
    cross_attention_layers,
    growing_cache,
    has_sliding_layers,
)
from eta.models.profiles import PromptProfile, choose_profile
from eta.models.shared_prefix import active as shared_prefix_active
from eta.models.shared_prefix import applies as shared_prefix_applies

logger = logging.getLogger(__name__)

# Tokens of prompt context used to detokenize a continuation (keeps SentencePiece's leading spaces right).
_DETOK_CONTEXT = 6


@dataclass
class PromptCache:
    """A prompt's token ids (image tokens expanded, no padding) and the KV cache of all but its last token."""

    token_ids: list[int]
    prefix: RowPrefix


@dataclass
class Generated:
    """One generated answer: its text and the new token ids (EOS and padding removed)."""

    text: str
    token_ids: list[int]
    # The prompt's KV cache from this generation, when asked for (`keep_prompt_cache`): deep alignment starts
    # from it instead of running the vision tower and the prompt again.
    prompt: PromptCache | None = None


class VisionLanguageModel:
    """A chat VLM on one device. Not thread-safe: one per worker process."""

    def __init__(self, model: Any, processor: Any, *, spec: ModelSpec, device: torch.device,
                 dtype: torch.dtype, profile: PromptProfile | None = None) -> None:
        self.model = model
        self.processor = processor
        # Conversation format and image preparation (the paper's for LLaVA-1.5; see eta.models.profiles).
        self.profile = profile or choose_profile(getattr(model, "config", None), spec.profile)
        # Which matrix entry this is (and whether an experiment override let it in): in every fingerprint.
        self.architecture = architecture_of(getattr(model, "config", None), allow_unsupported=spec.allow_unsupported)
        self.tokenizer = processor.tokenizer
        self.spec = spec
        self.loading_info: dict[str, list[str]] | None = None  # set by load()
        self.device = device
        self.dtype = dtype
        self.tokenizer.padding_side = "left"  # generation appends on the right
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos: set[int] = set()
        for source in (getattr(model.generation_config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(int(t) for t in source)
        self.eos_token_ids: frozenset[int] = frozenset(eos)
        # transformers 5.x renamed the forward's `past_key_values` argument to `cache`; accept either.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # Whether the forward can skip the vocabulary projection of positions nobody reads (`logits_to_keep`): a
        # prompt's logits are never read, and only each row's last fed token's are in a packed forward.
        self._keeps_logits = "logits_to_keep" in params
        config = getattr(model, "config", None)
        self.cross_layers: frozenset[int] = cross_attention_layers(config) if config is not None else frozenset()
        # Which sequences may share one packed forward (see `packing`).
        self.packing = ("equal-cross" if self.cross_layers else
                        "equal-pending" if config is not None and has_sliding_layers(config) else "all")
        # Deep alignment holds each job's prefix once for its N rows (eta.models.shared_prefix) where every decoder
        # layer is plain self-attention; `spec.shared_prefix` False (ETA_SHARED_PREFIX=0) keeps the copied layout
        # (N copies), for comparison.
        self.shared_prefix = spec.shared_prefix and shared_prefix_applies(model, self.packing)
        if device.type == "cpu":  # oneDNN with packed weights: see eta.models.cpu_linear
            route_cpu_linears(model)

    @classmethod
    def load(cls, spec: ModelSpec) -> VisionLanguageModel:
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        # Outside the support matrix: refused before any weight is read (UnsupportedArchitecture, one line).
        architecture_of(AutoConfig.from_pretrained(spec.id, revision=spec.revision,
                                                   trust_remote_code=spec.trust_remote_code),
                        allow_unsupported=spec.allow_unsupported)
        device = resolve_device(spec.device)
        dtype = resolve_dtype(spec.dtype, device)
        processor = AutoProcessor.from_pretrained(
            spec.id, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
        loaded_with_info: Any = AutoModelForImageTextToText.from_pretrained(
            spec.id, revision=spec.revision, dtype=dtype, trust_remote_code=spec.trust_remote_code,
            output_loading_info=True,
        )
        model, info = loaded_with_info
        model.to(device)
        model.eval()
        logger.info("loaded VLM %s on %s as %s", spec.id, device, dtype)
        loaded = cls(model, processor, spec=spec, device=device, dtype=dtype)
        # Missing / unexpected / mis-shaped tensors, for `eta models check` (the VLM is not refused on them here:
        # hub checkpoints may carry buffers a newer transformers no longer keeps).
        loaded.loading_info = {key: [str(k) for k in (info.get(key) or [])]
                               for key in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        return loaded

    def describe(self) -> dict[str, Any]:
        return {**describe(self.spec, model=self.model, device=self.device, dtype=self.dtype),
                "profile": self.profile.describe(), "architecture": self.architecture}

    @property
    def period_token_id(self) -> int | None:
        """The id of the token that is "." alone (LLaVA-1.5's 29889): the paper's sentence end."""
        token = self.tokenizer.convert_tokens_to_ids(".")
        return None if token is None or token == self.tokenizer.unk_token_id else int(token)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    # ----------------------------------------------------------------------------------------- prompts
    def chat_prompt(self, prompt: str, *, has_image: bool, assistant_prefix: str | None = None) -> str:
        """One user turn in the profile's conversation format, optionally with the answer prefilled."""
        return self.profile.render(self.processor, prompt, has_image=has_image, assistant_prefix=assistant_prefix)

    def encode(self, texts: Sequence[str], images: Sequence[Image.Image] | None) -> dict[str, torch.Tensor]:
        """Tokenize prompts (left-padded) and preprocess their images, on the model's device. Every prompt holds
        one image (or none, then no prompt does); the images go as one list per prompt, the form every processor
        takes (Mllama's and Gemma 3's need it to pair two images with two prompts)."""
        rgb = [[self.profile.prepare_image(image, self.processor)] for image in images] if images else None
        batch = self.processor(text=list(texts), images=rgb, return_tensors="pt", padding=True)
        out: dict[str, torch.Tensor] = {}
        for key, value in batch.items():
            if not isinstance(value, torch.Tensor):
                continue
            value = value.to(self.device)
            if value.is_floating_point():
                value = value.to(self.dtype)
            out[key] = value
        return out

    # --------------------------------------------------------------------------------------- decoding
    def decode_continuation(self, context_ids: Sequence[int], new_ids: Sequence[int]) -> str:
        """Text that `new_ids` add after `context_ids` (exact for byte-level BPE and SentencePiece alike)."""
        context = list(context_ids)[-_DETOK_CONTEXT:]
        before = self.tokenizer.decode(context, skip_special_tokens=True)
        after = self.tokenizer.decode(context + list(new_ids), skip_special_tokens=True)
        if after.startswith(before):
            return after[len(before):]
        return self.tokenizer.decode(list(new_ids), skip_special_tokens=True)

    def _trim(self, ids: Sequence[int]) -> list[int]:
        out: list[int] = []
        for token in ids:
            if token in self.eos_token_ids:
                break
            out.append(int(token))
        return out

    # ------------------------------------------------------------------------------ vanilla generation
    @torch.inference_mode()
    def generate_greedy(self, prompts: Sequence[str], images: Sequence[Image.Image | None], *,
                        max_new_tokens: int, keep_prompt_cache: bool = False) -> list[Generated]:
        """Greedy answers to user prompts; one `generate` call per group (with image / text-only).

        Args:
            keep_prompt_cache: also return each prompt's KV cache (`Generated.prompt`, views into the batch's
                cache: it stays in memory while any of them is referenced).

        Returns:
            One `Generated` per prompt, in input order.
        """
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        results: list[Generated | None] = [None] * len(prompts)
        with_image = [i for i, image in enumerate(images) if image is not None]
        text_only = [i for i, image in enumerate(images) if image is None]
        for group in (with_image, text_only):
            if not group:
                continue
            texts = [self.chat_prompt(prompts[i], has_image=images[i] is not None) for i in group]
            group_images = [images[i] for i in group if images[i] is not None]
            batch = self.encode(texts, group_images or None)  # type: ignore[arg-type]
            generated = self.model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=sorted(self.eos_token_ids),
                return_dict_in_generate=True,
                # Appends in place instead of concatenating the whole cache on every token (see kv_cache).
                **{self._cache_arg: growing_cache(self.model.config)},
            )
            out = generated.sequences
            cache = getattr(generated, "cache", None)
            if cache is None:
                cache = getattr(generated, "past_key_values", None)
            prompt_len = batch["input_ids"].shape[1]
            offsets = self._position_offsets(batch)[1] if keep_prompt_cache else []
            for row, index in enumerate(group):
                context = batch["input_ids"][row].tolist()
                ids = self._trim(out[row, prompt_len:].tolist())
                results[index] = Generated(self.decode_continuation(context, ids).strip(), ids)
                if keep_prompt_cache and cache is not None:
                    # Left padding: the row's prompt is its last `real` columns of the prompt part.
                    real = int(batch["attention_mask"][row].sum()) if "attention_mask" in batch else prompt_len
                    start = prompt_len - real
                    results[index].prompt = PromptCache(  # type: ignore[union-attr]
                        context[start:], RowPrefix.from_cache(cache, row, [(start, prompt_len - 1)],
                                                              cross=self.cross_layers, offset=offsets[row],
                                                              extras=self._extras(batch, row)))
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------------ step-wise decoding (KV)
    @torch.inference_mode()
    def prefill(self, text: str, image: Image.Image | None) -> tuple[Any, torch.Tensor, list[int]]:
        """Run the prompt once. Returns (KV cache with batch 1, next-token logits (1, V), prompt ids).

        The cache appends in place (`GrowingLayer`) rather than concatenating per step: decoding N candidate
        rows over a long image prompt would otherwise copy the whole cache on every token.
        """
        batch = self.encode([text], [image] if image is not None else None)
        out = self.model(**batch, use_cache=True, **{self._cache_arg: growing_cache(self.model.config)})
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = out.past_key_values
        return cache, out.logits[:, -1, :].float(), batch["input_ids"][0].tolist()

    @torch.inference_mode()
    def step(self, token_ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """Feed one token per row (shape (B,)) into the cache. Returns next-token logits (B, V)."""
        ids = token_ids.view(-1, 1).to(self.device)
        out = self.model(input_ids=ids, use_cache=True, **{self._cache_arg: cache})
        return out.logits[:, -1, :].float()

    @torch.inference_mode()
    def extend(self, token_ids: Sequence[int], cache: Any) -> torch.Tensor:
        """Feed several tokens into a batch-1 cache in one forward. Returns next-token logits (1, V)."""
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, use_cache=True, **{self._cache_arg: cache})
        return out.logits[:, -1, :].float()

    # ------------------------------------------------------------------ many sequences' rows (cross-job)
    def aligned_prompt(self, text: str, image: Image.Image | None, vanilla: PromptCache | None, *,
                       vanilla_text: str | None = None) -> tuple[PromptCache, bool]:
        """The prompt `text` (the vanilla prompt with the answer prefilled) and its KV cache (all but the last
        token), reusing the vanilla prompt's cache where the token ids agree: only the prefilled answer prefix is
        new. Without a usable vanilla cache the prompt (vision tower included) is run once here.

        Returns:
            (the prompt's ids and cache, whether the vanilla cache was reused).
        """
        reused = self.reuse_prompt(text, vanilla, vanilla_text=vanilla_text)
        if reused is not None:
            return reused, True
        return self.prompt_caches([text], [image])[0], False

    def reuse_prompt(self, text: str, vanilla: PromptCache | None, *, vanilla_text: str | None = None
                     ) -> PromptCache | None:
        """`text`'s ids and cache from the vanilla prompt's cache (see `aligned_prompt`), or None when the vanilla
        cache does not cover the image tokens of `text`."""
        if vanilla is not None and vanilla_text is not None:
            # Token ids of both texts without image expansion: the expanded ids differ only inside the shared
            # part, where the processor repeats the image token.
            plain_vanilla = self.tokenizer(vanilla_text)["input_ids"]
            plain_aligned = self.tokenizer(text)["input_ids"]
            common = 0
            limit = min(len(plain_vanilla), len(plain_aligned))
            while common < limit and plain_vanilla[common] == plain_aligned[common]:
                common += 1
            expanded = len(vanilla.token_ids) - (len(plain_vanilla) - common)
            ids = vanilla.token_ids[:expanded] + list(plain_aligned[common:])
            config = self.model.config
            image_tokens = {getattr(config, name, None) for name in ("image_token_id", "image_token_index",
                                                                     "boi_token_index")} - {None}
            images_covered = not image_tokens.intersection(plain_aligned[common:])
            reusable = min(expanded, len(ids) - 1, vanilla.prefix.length)
            if images_covered and common > 0 and reusable > 0:
                return PromptCache(ids, vanilla.prefix.crop(reusable))
        return None

    @torch.inference_mode()
    def prompt_caches(self, texts: Sequence[str], images: Sequence[Image.Image | None]) -> list[PromptCache]:
        """Each prompt's ids and the KV cache of all but its last token: one forward per kind of input (with an
        image, text-only), left-padded, the vision tower batched."""
        results: list[PromptCache | None] = [None] * len(texts)
        for group in ([i for i, im in enumerate(images) if im is not None], [i for i, im in enumerate(images)
                                                                              if im is None]):
            if not group:
                continue
            group_images = [images[i] for i in group if images[i] is not None]
            batch = self.encode([texts[i] for i in group], group_images or None)  # type: ignore[arg-type]
            width = batch["input_ids"].shape[1]
            mask = batch.get("attention_mask")
            positions, offsets = self._position_offsets(batch)
            # Only the cache is kept: the logits of one position instead of the whole prompt's (on a 32k
            # vocabulary the projection of a 600-token prompt costs as much as a tenth of the prompt's layers).
            keep = {"logits_to_keep": 1} if self._keeps_logits else {}
            out = self.model(**batch, position_ids=positions, use_cache=True, **keep,
                             **{self._cache_arg: growing_cache(self.model.config)})
            cache = getattr(out, "cache", None)
            if cache is None:
                cache = out.past_key_values
            for row, index in enumerate(group):
                real = int(mask[row].sum()) if mask is not None else width
                ids = batch["input_ids"][row, width - real:].tolist()
                results[index] = PromptCache(ids, RowPrefix.from_cache(
                    cache, row, [(width - real, width - 1)], cross=self.cross_layers, offset=offsets[row],
                    extras=self._extras(batch, row)))
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def forward_rows(self, token_ids: torch.Tensor, rows: PackedRows, real: torch.Tensor,
                     last: torch.Tensor | None = None) -> torch.Tensor:
        """Feed (R, T) tokens to packed rows (`real` marks the non-padding ones). Returns logits (R, T, V), or
        (R, V) at each row's column `last` ((R,) indices) when given: then only those columns are projected onto
        the vocabulary."""
        mask, positions = rows.feed(real)
        keep: dict[str, Any] = {}
        if last is not None and self._keeps_logits:
            keep = {"logits_to_keep": last.view(-1, 1).to(self.device)}
        if rows.shared is not None:  # the mask covers the rows' own columns; the prefixes' masks travel with them
            with shared_prefix_active(self.model, rows.shared, mask):
                out = self.model(input_ids=token_ids.to(self.device), position_ids=positions, use_cache=True,
                                 **rows.inputs_for(token_ids.shape[1]), **keep, **{self._cache_arg: rows.cache})
        else:
            out = self.model(input_ids=token_ids.to(self.device), attention_mask=mask, position_ids=positions,
                             use_cache=True, **rows.inputs_for(token_ids.shape[1]), **keep,
                             **{self._cache_arg: rows.cache})
        logits = out.logits
        if last is None:
            return logits.float()
        if keep:
            return logits[:, 0].float()
        return logits[torch.arange(logits.shape[0], device=logits.device), last.to(logits.device)].float()

    def decode_continuations(self, contexts: Sequence[Sequence[int]], new_ids: Sequence[Sequence[int]]
                             ) -> list[str]:
        """`decode_continuation(contexts[i], new_ids[i])` for every i, in one tokenizer call."""
        tails = [tuple(list(context)[-_DETOK_CONTEXT:]) for context in contexts]
        distinct = list(dict.fromkeys(tails))
        texts = self._decode_many([list(t) for t in distinct] + [list(t) + list(ids)
                                                                for t, ids in zip(tails, new_ids, strict=True)])
        befores = dict(zip(distinct, texts[:len(distinct)], strict=True))
        out = []
        for tail, after, ids in zip(tails, texts[len(distinct):], new_ids, strict=True):
            before = befores[tail]
            out.append(after[len(before):] if after.startswith(before)
                       else self.tokenizer.decode(list(ids), skip_special_tokens=True))
        return out

    def _decode_many(self, sequences: list[list[int]]) -> list[str]:
        """`tokenizer.decode(ids, skip_special_tokens=True)` of each sequence; one call into a fast tokenizer's
        backend when the wrapper would add nothing (no clean-up of spaces): the wrapper's per-token type checks
        cost more than the decoding when every candidate row is decoded at every step."""
        backend = getattr(self.tokenizer, "_tokenizer", None)
        if backend is not None and not getattr(self.tokenizer, "clean_up_tokenization_spaces", True):
            return list(backend.decode_batch(sequences, skip_special_tokens=True))
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in sequences]

    def crop(self, cache: Any, length: int) -> None:
        """Shorten a cache to its first `length` positions (a negative crop works across transformers versions)."""
        crop_cache(cache, length, cross=self.cross_layers)

    # ------------------------------------------------------------------ the model's own input preparation
    def _position_offsets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        """Position ids of a left-padded prompt batch, as the model numbers them, and per row the offset of the
        next text token's position from the row's token count.

        Models with a `get_rope_index` (Qwen2/2.5/3-VL) number image tokens on a (time, height, width) grid: their
        own method gives the 3-D ids and the rope delta; text after the prompt then sits at `count + delta` on all
        three axes. Every other model numbers real tokens 0, 1, 2, ... after the padding.
        """
        mask = batch.get("attention_mask")
        ids = batch["input_ids"]
        if mask is None:
            mask = torch.ones_like(ids)
        plain = (mask.long().cumsum(-1) - 1).clamp(min=0)
        real = mask.long().sum(-1)
        rope_index = getattr(getattr(self.model, "model", None), "get_rope_index", None)
        if rope_index is None or batch.get("image_grid_thw") is None:
            return plain, [0] * ids.shape[0]
        wanted = inspect.signature(rope_index).parameters
        kwargs = {k: v for k, v in batch.items() if k in wanted and k != "input_ids"}
        positions, _ = rope_index(ids, **kwargs)
        positions = positions.to(ids.device)
        last = positions.masked_fill(~mask.bool().unsqueeze(0), -1).amax(dim=(0, 2))
        return positions, [int(n) for n in (last + 1 - real).tolist()]

    @staticmethod
    def _extras(batch: dict[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
        """Per-token inputs a new token of `row` repeats from the prompt's last token (Mllama's cross-attention
        mask: which images and tiles the text attends to)."""
        mask = batch.get("cross_attention_mask")
        return {} if mask is None else {"cross_attention_mask": mask[row:row + 1, -1:]}
