"""The CLIP text tower runs only the positions up to the longest text's end, with the embeddings of the whole
77-position forward (open_clip's own `encode_text` is the oracle)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.models


def test_short_texts_embed_as_the_whole_context_does(tiny_models):
    clip = tiny_models.clip
    texts = ["A cat.", "It shows a poster with large red letters and a crowd in front of it, at night.", ""]
    tokens = clip.tokenizer(texts, context_length=clip.context_length).to(clip.device)
    assert int((tokens != 0).sum(dim=1).max()) < tokens.shape[1]  # the padding is really cut
    with torch.inference_mode():
        expected = clip.model.encode_text(tokens, normalize=True).float()
        got = clip.embed_texts(texts)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # A longer neighbour in the batch changes nothing for a short text.
    with torch.inference_mode():
        alone = clip.embed_texts(texts[:1])
    torch.testing.assert_close(alone[0], expected[0], atol=1e-5, rtol=1e-5)
