from __future__ import annotations

import pytest

from eta.safety.decision import decide
from eta.safety.text import ends_sentence


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It is a lake.", True),
        ("Really?", True),
        ("Stop!", True),
        ("It is a lake. ", True),  # the terminator merged with a following space
        ("A list\n", True),
        ("line one\nline", True),
        ('He said "no."', False),  # ends with a quote: the sentence goes on to the closing mark
        ("It is a", False),
        ("", False),
        ("\n", False),  # a newline before any content does not end a sentence
        ("   ", False),
    ],
)
def test_ends_sentence_on_text(text, expected):
    assert ends_sentence(text) is expected


@pytest.mark.parametrize(
    ("pre", "post", "policy", "align"),
    [
        (True, True, "both", True),
        (True, False, "both", False),
        (False, True, "both", False),  # the paper's rule: a benign image lets the answer through
        (False, False, "both", False),
        (None, True, "both", True),  # text-only: post-evaluation alone decides
        (None, False, "both", False),
        (True, False, "either", True),
        (False, True, "either", True),
        (False, False, "either", False),
        (None, True, "either", True),
        (True, False, "post_only", False),
        (False, True, "post_only", True),
    ],
)
def test_decision_policies(pre, post, policy, align):
    decision = decide(pre_unsafe=pre, post_unsafe=post, policy=policy)
    assert decision.align is align
    assert decision.reason


def test_unknown_policy_is_an_error():
    with pytest.raises(ValueError, match="unknown policy"):
        decide(pre_unsafe=True, post_unsafe=True, policy="never")
