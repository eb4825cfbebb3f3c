"""Batch-completion callbacks: a JSON summary POSTed to the batch's `callback_url`, signed per tenant.

Headers:

    ETA-Event-Id:   <batch id>            (the same on every retry: receivers deduplicate on it)
    ETA-Timestamp:  <unix seconds>
    ETA-Signature:  v1=<hex HMAC-SHA256(secret, "<timestamp>.<event id>." + body)>[,v1=<...>]

Each tenant has its own secret (shown to its admins at `GET /v1/tenant/callback-secret`). For a while after
a rotation the header carries two signatures, one per secret, so a receiver may switch at any time in the
overlap window. A receiver recomputes the signature over the raw body, the timestamp and the event id with its
secret, compares in constant time, and refuses timestamps older than a few minutes (`verify_signature` does
all of it).

The URL was checked at submission; it is checked again here, at send time, and the connection goes to the
address that was checked (`eta.outbound`). A redirect is never followed: it fails the callback for good.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from eta.outbound import OutboundRefused, check_target, parse_networks, post
from eta.settings import Settings
from eta.store import repository as repo
from eta.store.repository.tenants import callback_secrets

logger = logging.getLogger(__name__)

SIGNATURE_VERSION = "v1"


class CallbackError(Exception):
    """The receiver did not accept the callback. `retryable`: worth trying again later."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Callback:
    url: str
    body: bytes
    event_id: str
    secrets: tuple[str, ...]


def sign(secret: str, timestamp: int, event_id: str, body: bytes) -> str:
    message = f"{timestamp}.{event_id}.".encode() + body
    return f"{SIGNATURE_VERSION}={hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()}"


def signature_header(secrets: Sequence[str], timestamp: int, event_id: str, body: bytes) -> str:
    return ",".join(sign(secret, timestamp, event_id, body) for secret in secrets)


def verify_signature(secret: str, *, timestamp: str, event_id: str, body: bytes, signature: str,
                     tolerance_s: float = 300, now: float | None = None) -> bool:
    """What a receiver does: one of the header's signatures matches, and the timestamp is recent."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - stamp) > tolerance_s:
        return False
    expected = sign(secret, stamp, event_id, body)
    return any(hmac.compare_digest(expected, part.strip()) for part in signature.split(","))


def batch_summary(session: Session, batch_id: uuid.UUID) -> Callback | None:
    """The callback of a completed batch, or None when there is nothing (left) to send."""
    batch = repo.get_batch_any_tenant(session=session, batch_id=batch_id)
    if batch is None or not batch.callback_url or batch.callback_sent_at is not None or not batch.status.is_terminal:
        return None
    tenant = repo.get_tenant(session=session, tenant_id=batch.tenant_id)
    signing = tuple(callback_secrets(tenant)) if tenant is not None else ()
    if not signing:
        raise CallbackError(f"tenant {batch.tenant_id} has no callback secret", retryable=False)
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
    return Callback(url=batch.callback_url, body=body, event_id=str(batch.id), secrets=signing)


def post_callback(callback: Callback, *, settings: Settings) -> int:
    """Check the target again, then POST the signed summary to the checked address. Returns the 2xx status.

    Raises:
        CallbackError: refused target, redirect or another non-2xx answer, or unreachable receiver;
            `retryable` for network errors, an unresolvable host, 5xx, 408 and 429.
    """
    try:
        target = check_target(callback.url, allowed=parse_networks(settings.workers.callback_allowed_networks))
    except OutboundRefused as exc:
        raise CallbackError(str(exc), retryable=exc.code == "callback_url_unresolvable") from exc
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "eta-service-callback/1",
        "ETA-Event-Id": callback.event_id,
        "ETA-Timestamp": str(timestamp),
        "ETA-Signature": signature_header(callback.secrets, timestamp, callback.event_id, callback.body),
    }
    try:
        answer = post(target, callback.body, headers, timeout_s=settings.workers.callback_timeout_s)
    except (OSError, http.client.HTTPException) as exc:
        raise CallbackError(f"the receiver is unreachable: {exc}", retryable=True) from exc
    if 200 <= answer.status < 300:
        return answer.status
    if 300 <= answer.status < 400:
        raise CallbackError(f"the receiver answered {answer.status} (redirect to {answer.location!r} not followed)",
                            retryable=False)
    retryable = answer.status >= 500 or answer.status in (408, 429)
    raise CallbackError(f"the receiver answered {answer.status}", retryable=retryable)
