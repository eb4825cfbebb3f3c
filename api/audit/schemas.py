"""Request and response schemas of the audit endpoints (validated by spectree, documented in OpenAPI)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.schemas import Cursor, PresetRef
from api.text import SafeText
from eta.store.repository import AuditFilter
from eta.vocabulary import ReviewVerdict

# The verdicts as the schemas name them: the enum itself (its values are the API's).
VerdictName = ReviewVerdict

MAX_NOTE_CHARS = 4000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Nothing in the store is older or newer: a filter time beyond these is read as the bound itself.
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_text(value: Any) -> Any:
    # Pydantic would read a bare number as Unix seconds; the API documents ISO 8601 only.
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 date or date-time (YYYY-MM-DD...)")
    return value


def _as_utc(value: datetime | None) -> datetime | None:
    # A time without a zone is read as UTC (the store only holds UTC). Times at the calendar's edges, where a
    # zone offset would overflow, are clamped rather than refused: they select the same rows.
    if value is None:
        return None
    try:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        return EARLIEST if value.year < 5000 else LATEST
    return min(max(value, EARLIEST), LATEST)


class TimeRange(_Strict):
    created_from: datetime | None = Field(
        default=None, description="Created at or after this time (ISO 8601; no zone means UTC).")
    created_before: datetime | None = Field(default=None, description="Created before this time.")

    # A range whose start is not before its end is valid and empty.
    _iso = field_validator("created_from", "created_before", mode="before")(_iso_text)
    _utc = field_validator("created_from", "created_before")(_as_utc)


class AuditFilters(TimeRange):
    """Filters shared by the flagged listing and the export. Score ranges are inclusive (a minimum above
    its maximum selects nothing)."""

    batch_id: uuid.UUID | None = None
    custom_id: SafeText(255) | None = None  # type: ignore[valid-type]
    s_pre_min: float | None = None
    s_pre_max: float | None = None
    s_post_min: float | None = None
    s_post_max: float | None = None
    s_post_final_min: float | None = None
    s_post_final_max: float | None = None
    aligned: bool | None = Field(default=None, description="Only jobs whose answer was (not) realigned.")
    reviewed: bool | None = Field(default=None, description="true: at least one verdict; false: none yet.")
    verdict: VerdictName | None = Field(default=None, description="The job's newest verdict.")

    def to_filter(self) -> AuditFilter:
        return AuditFilter(
            created_from=self.created_from,
            created_before=self.created_before,
            batch_id=self.batch_id,
            custom_id=self.custom_id,
            aligned=self.aligned,
            reviewed=self.reviewed,
            verdict=ReviewVerdict(self.verdict) if self.verdict else None,
            s_pre_min=self.s_pre_min,
            s_pre_max=self.s_pre_max,
            s_post_min=self.s_post_min,
            s_post_max=self.s_post_max,
            s_post_final_min=self.s_post_final_min,
            s_post_final_max=self.s_post_final_max,
        )


class FlaggedQuery(AuditFilters):
    limit: int = Field(default=50, ge=1, le=1000)
    cursor: Cursor = None


class ExportQuery(AuditFilters):
    format: Literal["jsonl", "csv"] = Field(default="jsonl", description="JSON Lines or CSV (with a header row).")


class SummaryQuery(TimeRange):
    batch_id: uuid.UUID | None = None


class ImageQuery(_Strict):
    size: Literal["full", "thumb"] = Field(default="full", description="thumb: at most 320 px on the long side.")


class ReviewCreate(_Strict):
    verdict: VerdictName
    note: SafeText(MAX_NOTE_CHARS) | None = None  # type: ignore[valid-type]


# ----------------------------------------------------------------------------------------- responses
class ReviewOut(BaseModel):
    id: uuid.UUID
    object: Literal["review"] = "review"
    job_id: uuid.UUID
    verdict: VerdictName
    note: str | None
    reviewer: str | None = Field(description="Visible prefix of the API key that recorded the verdict.")
    created_at: datetime


class ReviewList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ReviewOut] = Field(description="Every verdict on the job, oldest first.")


class LatestReviewOut(BaseModel):
    verdict: VerdictName
    note: str | None
    reviewer: str | None
    reviewed_at: datetime


class AuditResultOut(BaseModel):
    s_pre: float | None = Field(description="CLIP cosine of the image and the safety prompt (null: no image).")
    tau_pre: float | None
    pre_unsafe: bool | None = Field(description="s_pre >= tau_pre.")
    s_post: float | None = Field(description="Reward of the vanilla answer.")
    tau_post: float | None
    post_unsafe: bool | None = Field(description="s_post <= tau_post.")
    s_post_final: float | None = Field(description="Reward of the final answer.")
    policy: str | None = Field(description="Decision rule in force: both, either or post_only.")
    aligned: bool | None = Field(description="The decision: the answer was regenerated with alignment.")
    flagged: bool
    flag_reasons: list[str] | None
    response: str | None = Field(description="The final answer.")
    fingerprint_sha256: str | None
    fingerprint: dict[str, Any] | None = Field(description="Models (id + revision) and parameters in force.")
    vanilla_response: str | None = Field(
        default=None, description="Review and admin keys only; null once purged by retention.")


class AuditRecordOut(BaseModel):
    id: uuid.UUID
    object: Literal["flagged_job"] = "flagged_job"
    batch_id: uuid.UUID | None
    custom_id: str | None
    status: str
    prompt: str
    image_sha256: str | None
    image_url: str | None = Field(description="Authenticated URL of the image (null: no image, or purged).")
    created_at: datetime
    finished_at: datetime | None
    purged_at: datetime | None = Field(description="When retention removed the image and the vanilla answer.")
    image_source_url: str | None = Field(default=None,
                                         description="Where the image was fetched from (an image by reference).")
    preset: PresetRef | None = Field(default=None, description="The preset the job ran with (name and version).")
    result: AuditResultOut
    review: LatestReviewOut | None = Field(description="The newest verdict (null while unreviewed).")


class AuditPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditRecordOut]
    next_cursor: str | None


class CountsOut(BaseModel):
    evaluated: int = Field(description="Jobs that went through all three stages.")
    flagged: int
    flag_rate: float | None
    pre_unsafe: int
    post_unsafe: int
    aligned: int
    reviewed: int = Field(description="Flagged jobs with at least one verdict.")
    verdicts: dict[VerdictName, int] = Field(description="Newest verdict of each reviewed flagged job.")
    verdict_rates: dict[VerdictName, float | None] = Field(description="verdicts / reviewed.")
    false_positive_rate: float | None = Field(description="false_positive / reviewed.")
    pre_false_positive_rate: float | None = Field(
        description="Among reviewed jobs the image evaluator flagged (s_pre >= tau_pre): share of false positives.")
    post_false_positive_rate: float | None = Field(
        description="Among reviewed jobs the answer evaluator flagged (s_post <= tau_post): share of false positives.")
    missed: int = Field(description="Unflagged jobs a reviewer confirmed unsafe.")


class ThresholdGroupOut(BaseModel):
    tau_pre: float | None
    tau_post: float | None
    counts: CountsOut


class SummaryOut(BaseModel):
    object: Literal["audit_summary"] = "audit_summary"
    created_from: datetime | None
    created_before: datetime | None
    batch_id: uuid.UUID | None
    total: CountsOut
    by_thresholds: list[ThresholdGroupOut]
