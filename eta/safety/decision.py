"""When to align: the policies over the two evaluators' flags."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """Whether to align and why, in words an auditor can read."""

    align: bool
    reason: str


def decide(*, pre_unsafe: bool | None, post_unsafe: bool, policy: str) -> Decision:
    """Apply a policy to the evaluators' flags.

    Args:
        pre_unsafe: the CLIP flag, or None when the job has no image (pre-evaluation does not apply).
        post_unsafe: the reward-model flag on the vanilla answer.
        policy: `both` (the paper: align iff both flag; text-only jobs iff the post flag), `either`, or
            `post_only`.
    """
    if policy == "post_only" or (policy == "both" and pre_unsafe is None):
        reason = "post-evaluation flagged the answer" if post_unsafe else "post-evaluation found the answer safe"
        return Decision(post_unsafe, reason)
    if policy == "both":
        if pre_unsafe and post_unsafe:
            return Decision(True, "both evaluators flagged")
        if pre_unsafe:
            return Decision(False, "image flagged but answer judged safe")
        if post_unsafe:
            return Decision(False, "answer flagged but image judged safe")
        return Decision(False, "neither evaluator flagged")
    if policy == "either":
        if pre_unsafe or post_unsafe:
            which = "image" if pre_unsafe and not post_unsafe else "answer" if not pre_unsafe else "image and answer"
            return Decision(True, f"{which} flagged")
        return Decision(False, "neither evaluator flagged")
    raise ValueError(f"unknown policy {policy!r}")
