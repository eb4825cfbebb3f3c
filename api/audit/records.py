"""Audit records: one document per flagged job, the same in the paged listing and in the JSONL export,
and a flat CSV form of it. Both exports are generators of byte chunks, so a response streams them.

Every record is built from one flat row (the columns of `repo.EXPORT_COLUMNS`): the listing flattens its
ORM rows into that shape first, so the listing and the export cannot drift apart.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from enum import Enum
from typing import Any

from eta.csvsafe import defuse
from eta.store.repository import EXPORT_COLUMNS, AuditSummary, FlaggedJob, ReviewEntry, SummaryCounts

logger = logging.getLogger(__name__)

# Bytes gathered before a chunk is handed to the server: large enough to keep per-chunk overhead small,
# small enough that memory does not depend on the number of rows.
CHUNK_BYTES = 64 * 1024

# CSV columns: every export column but the fingerprint document (its sha256 stays; JSONL has the document).
CSV_COLUMNS = [name for name in EXPORT_COLUMNS if name != "fingerprint"]


def flat_row(item: FlaggedJob, *, with_vanilla: bool) -> dict[str, Any]:
    """A listed job in the flat shape that `repo.stream_flagged_rows` yields."""
    job, result, review = item.job, item.result, item.latest_review
    row: dict[str, Any] = {
        "id": job.id,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "batch_id": job.batch_id,
        "custom_id": job.custom_id,
        "status": job.status,
        "prompt": job.prompt,
        "image_sha256": job.image_sha256,
        "s_pre": result.s_pre,
        "tau_pre": result.tau_pre,
        "pre_unsafe": result.pre_unsafe,
        "s_post": result.s_post,
        "tau_post": result.tau_post,
        "post_unsafe": result.post_unsafe,
        "s_post_final": result.s_post_final,
        "policy": result.policy,
        "aligned": result.aligned,
        "flag_reasons": result.flag_reasons,
        "response": result.response,
        "fingerprint_sha256": result.fingerprint_sha256,
        "fingerprint": result.fingerprint,
        "purged_at": job.purged_at,
        "preset_name": job.preset_name,
        "preset_version": job.preset_version,
        "image_source_url": job.image_url,
        "review_verdict": review.verdict if review is not None else None,
        "review_note": review.note if review is not None else None,
        "reviewed_at": review.created_at if review is not None else None,
        "reviewer": item.reviewer_prefix,
    }
    if with_vanilla:
        row["vanilla_response"] = result.vanilla_response
    return row


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if value is not None and not isinstance(value, str | int | float | bool | list | dict):
        return str(value)  # UUIDs
    return value


# Column kinds of a flat row, so each value is converted by the one rule that fits it (exports convert
# millions of cells: no per-cell type tests).
_ID_COLUMNS = ("id", "batch_id")
_TIME_COLUMNS = ("created_at", "finished_at", "purged_at", "reviewed_at")
_ENUM_COLUMNS = ("status", "review_verdict")
_BOOL_COLUMNS = ("pre_unsafe", "post_unsafe", "aligned")
# Free text that came from a client or a model: defused against spreadsheet formulas in CSV.
_TEXT_COLUMNS = ("custom_id", "prompt", "response", "review_note", "vanilla_response", "image_source_url")


def plain_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The flat row with JSON-ready values (ids and times as strings, enums as their values)."""
    p = dict(row)
    for name in _ID_COLUMNS:
        if p[name] is not None:
            p[name] = str(p[name])
    for name in _TIME_COLUMNS:
        if p[name] is not None:
            p[name] = p[name].isoformat()
    for name in _ENUM_COLUMNS:
        if p[name] is not None:
            p[name] = p[name].value
    return p


def image_url(row: Mapping[str, Any]) -> str | None:
    if row["image_sha256"] is None or row["purged_at"] is not None:
        return None
    return f"/v1/jobs/{row['id']}/image"


def record_doc(row: Mapping[str, Any], *, with_vanilla: bool) -> dict[str, Any]:
    """The audit record of one flagged job (`AuditRecordOut`), JSON-ready."""
    p = plain_row(row)
    result = {
        "s_pre": p["s_pre"],
        "tau_pre": p["tau_pre"],
        "pre_unsafe": p["pre_unsafe"],
        "s_post": p["s_post"],
        "tau_post": p["tau_post"],
        "post_unsafe": p["post_unsafe"],
        "s_post_final": p["s_post_final"],
        "policy": p["policy"],
        "aligned": p["aligned"],
        "flagged": True,
        "flag_reasons": p["flag_reasons"],
        "response": p["response"],
        "fingerprint_sha256": p["fingerprint_sha256"],
        "fingerprint": p.get("fingerprint"),
    }
    if with_vanilla:
        result["vanilla_response"] = p.get("vanilla_response")
    review = None
    if p["review_verdict"] is not None:
        review = {"verdict": p["review_verdict"], "note": p["review_note"], "reviewer": p["reviewer"],
                  "reviewed_at": p["reviewed_at"]}
    return {
        "id": p["id"],
        "object": "flagged_job",
        "batch_id": p["batch_id"],
        "custom_id": p["custom_id"],
        "status": p["status"],
        "prompt": p["prompt"],
        "image_sha256": p["image_sha256"],
        "image_url": image_url(p),
        "created_at": p["created_at"],
        "finished_at": p["finished_at"],
        "purged_at": p["purged_at"],
        "image_source_url": p["image_source_url"],
        "preset": ({"name": p["preset_name"], "version": p["preset_version"]}
                   if p["preset_name"] is not None else None),
        "result": result,
        "review": review,
    }


def _chunked(pieces: Iterable[str]) -> Iterator[bytes]:
    buffer: list[str] = []
    size = 0
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        if size >= CHUNK_BYTES:
            yield "".join(buffer).encode()
            buffer.clear()
            size = 0
    if buffer:
        yield "".join(buffer).encode()


def jsonl_chunks(rows: Iterable[Mapping[str, Any]], *, with_vanilla: bool) -> Iterator[bytes]:
    """One audit record per line, UTF-8, in chunks of about `CHUNK_BYTES`."""
    return _chunked(
        json.dumps(record_doc(row, with_vanilla=with_vanilla), ensure_ascii=False, separators=(",", ":")) + "\n"
        for row in rows
    )


def _defused(text: str | None) -> str | None:
    # Spreadsheets run a cell starting with `= + - @` as a formula; prompts and answers are untrusted text.
    return defuse(text)


def _csv_formatter(name: str) -> Callable[[Any], Any]:
    if name in _ID_COLUMNS:
        return lambda value: None if value is None else str(value)
    if name in _TIME_COLUMNS:
        return lambda value: None if value is None else value.isoformat()
    if name in _ENUM_COLUMNS:
        return lambda value: None if value is None else value.value
    if name in _BOOL_COLUMNS:
        return lambda value: None if value is None else ("true" if value else "false")
    if name == "flag_reasons":
        return lambda value: None if value is None else ";".join(value)
    if name in _TEXT_COLUMNS:
        return _defused
    return lambda value: value  # numbers, digests, names the service chose


def csv_chunks(rows: Iterable[Mapping[str, Any]], *, with_vanilla: bool) -> Iterator[bytes]:
    """A header row, then one row per flagged job (RFC 4180, UTF-8), in chunks of about `CHUNK_BYTES`.

    Rows are written by csv.writer into one small reused buffer, so memory stays flat. Booleans are
    `true` / `false`, an absent value an empty cell, `flag_reasons` joined with `;`.
    """
    columns = [*CSV_COLUMNS, "vanilla_response"] if with_vanilla else CSV_COLUMNS
    formatters = [(name, _csv_formatter(name)) for name in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def lines() -> Iterator[str]:
        writer.writerow(columns)
        for row in rows:
            writer.writerow([format_value(row[name]) for name, format_value in formatters])
            # Hand out what the writer buffered and empty the buffer for the next rows.
            if buffer.tell() >= CHUNK_BYTES // 4:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return _chunked(lines())


def counts_doc(counts: SummaryCounts) -> dict[str, Any]:
    """`CountsOut` of a summary."""
    return {
        "evaluated": counts.evaluated,
        "flagged": counts.flagged,
        "flag_rate": counts.flag_rate,
        "pre_unsafe": counts.pre_unsafe,
        "post_unsafe": counts.post_unsafe,
        "aligned": counts.aligned,
        "reviewed": counts.reviewed,
        "verdicts": {verdict.value: n for verdict, n in counts.verdicts.items()},
        "verdict_rates": {verdict.value: rate for verdict, rate in counts.verdict_rates.items()},
        "false_positive_rate": counts.false_positive_rate,
        "pre_false_positive_rate": counts.pre_false_positive_rate,
        "post_false_positive_rate": counts.post_false_positive_rate,
        "missed": counts.missed,
    }


def summary_doc(summary: AuditSummary, *, batch_id: Any = None) -> dict[str, Any]:
    """`SummaryOut`."""
    return {
        "object": "audit_summary",
        "created_from": _plain(summary.created_from),
        "created_before": _plain(summary.created_before),
        "batch_id": _plain(batch_id),
        "total": counts_doc(summary.total),
        "by_thresholds": [
            {"tau_pre": group.tau_pre, "tau_post": group.tau_post, "counts": counts_doc(group.counts)}
            for group in summary.by_thresholds
        ],
    }


def review_doc(entry: ReviewEntry) -> dict[str, Any]:
    """`ReviewOut`."""
    review = entry.review
    return {
        "id": str(review.id),
        "object": "review",
        "job_id": str(review.job_id),
        "verdict": _plain(review.verdict),
        "note": review.note,
        "reviewer": entry.reviewer_prefix,
        "created_at": review.created_at.isoformat(),
    }
