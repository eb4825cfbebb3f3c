"""Sentence-end detection on decoded text."""

from __future__ import annotations

SENTENCE_TERMINATORS = (".", "!", "?", "\n")


def ends_sentence(text: str) -> bool:
    """True when decoded text ends a sentence: its last non-blank character is `.`, `!` or `?`, or it holds a
    newline after some content. Judged on text, so it works for any tokenizer (a terminator may be its own
    token, merged with a space, or with a quote)."""
    stripped = text.rstrip(" \t")
    if not stripped.strip():
        return False
    if "\n" in stripped.lstrip("\n"):
        return True
    return stripped.endswith(SENTENCE_TERMINATORS[:3])
