"""Batch-completion callbacks: a JSON summary POSTed to the batch's `callback_url`, signed with HMAC-SHA256.

Headers:

    ETA-Event-Id:   <batch id>            (the same on every retry: receivers deduplicate on it)
    ETA-Timestamp:  <unix seconds>
    ETA-Signature:  v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

A receiver recomputes the signature over the raw body with the shared secret (`ETA_CALLBACK_SECRET`, by
default `SECRET_KEY`), compares in constant time, and refuses timestamps older than a few minutes
(`verify_signature` does all three).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from eta.settings import Settings
from eta.store import repository as repo
from eta.store.models import Batch

logger = logging.getLogger(__name__)

SIGNATURE_VERSION = "v1"
# Used only outside production when neither ETA_CALLBACK_SECRET nor SECRET_KEY is set.
_DEVELOPMENT_SECRET = "eta-development-callback-secret"  # noqa: S105 - a documented development default


class CallbackError(Exception):
    """The receiver did not accept the callback. `retryable`: worth trying again later."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Callback:
    url: str
    body: bytes


def callback_secret(settings: Settings) -> str:
    secret = settings.eta_callback_secret or settings.secret_key
    if secret:
        return secret
    if settings.eta_env == "production":
        raise RuntimeError("set ETA_CALLBACK_SECRET or SECRET_KEY to sign batch callbacks")
    logger.warning("signing batch callbacks with the development secret (set ETA_CALLBACK_SECRET)")
    return _DEVELOPMENT_SECRET


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(secret: str, *, timestamp: str, body: bytes, signature: str, tolerance_s: float = 300,
                     now: float | None = None) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - stamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, stamp, body), signature)


def batch_summary(session: Session, batch_id: uuid.UUID) -> Callback | None:
    """The callback of a completed batch, or None when there is nothing (left) to send."""
    batch = session.scalar(sa.select(Batch).where(Batch.id == batch_id))
    if batch is None or not batch.callback_url or batch.callback_sent_at is not None or not batch.status.is_terminal:
        return None
    counts = repo.count_jobs_by_status(session=session, tenant_id=batch.tenant_id, batch_id=batch.id)
    summary: dict[str, Any] = {
        "type": "batch.completed",
        "batch": {
            "id": str(batch.id),
            "status": str(batch.status),
            "total": sum(counts.values()),
            "counts": {str(status): n for status, n in counts.items() if n},
            "created_at": batch.created_at.isoformat(),
            "finished_at": batch.finished_at.isoformat() if batch.finished_at else None,
            "results_path": f"/v1/batches/{batch.id}/results",
        },
    }
    body = json.dumps(summary, sort_keys=True, separators=(",", ":")).encode()
    return Callback(url=batch.callback_url, body=body)


def post_callback(callback: Callback, *, batch_id: uuid.UUID, secret: str, timeout_s: float) -> int:
    """POST the signed summary. Returns the HTTP status (2xx).

    Raises:
        CallbackError: the receiver answered non-2xx or could not be reached; `retryable` for network
            errors, 5xx, 408 and 429.
    """
    if not callback.url.lower().startswith(("http://", "https://")):
        raise CallbackError(f"callback URL scheme not allowed: {callback.url!r}", retryable=False)
    timestamp = int(time.time())
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        callback.url,
        data=callback.body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "eta-service-callback/1",
            "ETA-Event-Id": str(batch_id),
            "ETA-Timestamp": str(timestamp),
            "ETA-Signature": sign(secret, timestamp, callback.body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - scheme checked
            return int(response.status)
    except urllib.error.HTTPError as exc:
        retryable = exc.code >= 500 or exc.code in (408, 429)
        raise CallbackError(f"the receiver answered {exc.code}", retryable=retryable) from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise CallbackError(f"the receiver is unreachable: {exc}", retryable=True) from exc
