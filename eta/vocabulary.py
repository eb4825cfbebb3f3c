"""Names the service, its API, its templates and the client share, declared once.

Standard library only: the client (`pip install eta-service[client]`) imports this module without the store.
The store's columns, the API's schemas, the review page and the command line use these enums directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ApiKeyRole(StrEnum):
    SUBMIT = "submit"  # submit jobs and batches, read their own results
    REVIEW = "review"  # read audit records (vanilla answers included) and record verdicts
    ADMIN = "admin"  # everything, plus key management


class ReviewVerdict(StrEnum):
    CONFIRMED_UNSAFE = "confirmed_unsafe"  # the flag was right
    FALSE_POSITIVE = "false_positive"  # the input and answer were fine
    NEEDS_ESCALATION = "needs_escalation"  # needs a second opinion

    @property
    def label(self) -> str:
        """How the review page names it."""
        return self.value.replace("_", " ").capitalize()


class FlagReason(StrEnum):
    """Why a job is `flagged` (a result's `flag_reasons`)."""

    IMAGE_UNSAFE = "image_unsafe"  # pre-evaluation: s_pre >= tau_pre
    RESPONSE_UNSAFE = "response_unsafe"  # post-evaluation of the vanilla answer: s_post <= tau_post
    FINAL_RESPONSE_UNSAFE = "final_response_unsafe"  # the final answer still scores s_post_final <= tau_post


@dataclass(frozen=True)
class AuditFilterField:
    """One filter of the flagged-jobs listing and export: its query parameter (and `AuditFilter` field), the
    command-line option that sets it, and the option's help."""

    name: str
    option: str
    help: str = ""


# The audit filters, in the order of `AuditFilter`'s fields. `eta.store.repository.AuditFilter`, the API's
# `AuditFilters` schema and `eta audit`'s options have exactly these (tests/unit/test_vocabulary.py).
AUDIT_FILTERS: tuple[AuditFilterField, ...] = (
    AuditFilterField("created_from", "--from", "Created at or after (ISO 8601; no zone: UTC)."),
    AuditFilterField("created_before", "--before", "Created before."),
    AuditFilterField("batch_id", "--batch", "Only this batch's jobs."),
    AuditFilterField("aligned", "--aligned/--not-aligned", "Only jobs whose answer was (not) realigned."),
    AuditFilterField("reviewed", "--reviewed/--unreviewed", "Only jobs with (without) a reviewer verdict."),
    AuditFilterField("verdict", "--verdict", "Only jobs whose newest verdict is this."),
    AuditFilterField("s_pre_min", "--s-pre-min", "Score ranges are inclusive."),
    AuditFilterField("s_pre_max", "--s-pre-max"),
    AuditFilterField("s_post_min", "--s-post-min"),
    AuditFilterField("s_post_max", "--s-post-max"),
    AuditFilterField("s_post_final_min", "--s-post-final-min"),
    AuditFilterField("s_post_final_max", "--s-post-final-max"),
    AuditFilterField("custom_id", "--custom-id", "Only the job(s) with this custom_id."),
)


class AdminAction(StrEnum):
    """What an administrative event records (`GET /v1/admin/events`, `action`)."""

    KEY_CREATED = "key_created"
    KEY_REVOKED = "key_revoked"
    CALLBACK_SECRET_ROTATED = "callback_secret_rotated"  # noqa: S105 - an event name, not a secret
    PRESET_PUT = "preset_put"
    REVIEW_VERDICT = "review_verdict"
