"""Rate limits and quotas: no tenant can hold the API or the shared workers.

- Requests per API key, by role (`ETA_RATE_LIMIT_<ROLE>`), counted after authentication.
- Failed authentications per client address (`ETA_RATE_LIMIT_AUTH_FAILURES`): once over, the address gets
  429 before any key is even looked up (guessing keys stops being cheap). Each process reads an address's
  shared failure counter only while that address failed in this process within the longest window: an
  address that never failed here costs no read, and a guesser spread over several processes gets at most
  one guess per process past the limit before each of them reads the counter too.
- Unfinished jobs per tenant (`ETA_MAX_UNFINISHED_JOBS`): a submission that would go beyond is a 429.

Counters live in Redis when the broker is Redis (every API process shares them), else in this process.
Built on `limits`, the library under Flask-Limiter (same maintainers), used directly because the limit
depends on the key's role, known only after authentication. A counter store that fails lets requests
through (logged): an outage of Redis must not take the API down with it.
"""

from __future__ import annotations

import logging
import math
import time
import uuid

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter
from sqlalchemy.orm import Session

from api.problems import Problem
from eta.settings import Settings
from eta.store import repository as repo

logger = logging.getLogger(__name__)

ROLES = ("submit", "review", "admin")
# Addresses a process remembers as having failed authentication; past this, new ones are not remembered
# until old windows end (their failures are still counted in the shared store).
_MAX_SUSPECTS = 100_000


def _too_many(code: str, detail: str, retry_after: int) -> Problem:
    problem = Problem(429, code, "Too Many Requests", detail, retry_after_s=retry_after)
    problem.headers["Retry-After"] = str(retry_after)
    return problem


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        url = settings.broker.url or ""
        self.uri = url if url.startswith(("redis://", "rediss://")) else "memory://"
        self.namespace = f"{settings.broker.key_prefix}eta-api"
        self.limiter = FixedWindowRateLimiter(storage_from_string(self.uri))
        self.by_role = {role: parse_many(getattr(settings.api, f"rate_limit_{role}")) for role in ROLES}
        self.auth_failures = parse_many(settings.api.rate_limit_auth_failures)
        self._failure_window_s = max(item.get_expiry() for item in self.auth_failures)
        # Addresses that failed authentication in this process -> until when their shared counter is read.
        self._suspects: dict[str, float] = {}

    def _retry_after(self, item: RateLimitItem, *identifiers: str) -> int:
        reset = self.limiter.get_window_stats(item, self.namespace, *identifiers).reset_time
        return max(1, math.ceil(reset - time.time()))

    def _hit(self, items: list[RateLimitItem], *identifiers: str) -> int | None:
        """Count one request against every limit; seconds to wait when one is exceeded, else None."""
        try:
            for item in items:
                if not self.limiter.hit(item, self.namespace, *identifiers):
                    return self._retry_after(item, *identifiers)
        except Exception as exc:  # the counter store is down: let the request through
            logger.warning("rate limits not counted (%s): %s", self.uri.split(":", 1)[0], exc)
        return None

    def check_key(self, key_id: uuid.UUID, role: str) -> None:
        wait = self._hit(self.by_role.get(role, self.by_role["submit"]), "key", str(key_id))
        if wait is not None:
            raise _too_many("rate_limited", f"this key's request limit for role {role!r} is reached; retry in "
                                            f"{wait} s", wait)

    def check_address(self, address: str) -> None:
        """Refuse an address that failed authentication too often lately (before looking at its key)."""
        until = self._suspects.get(address)
        if until is None:
            return
        if until < time.monotonic():
            self._suspects.pop(address, None)
            return
        try:
            for item in self.auth_failures:
                if not self.limiter.test(item, self.namespace, "auth-failures", address):
                    wait = self._retry_after(item, "auth-failures", address)
                    raise _too_many("auth_rate_limited", f"too many failed authentications from this address; "
                                                         f"retry in {wait} s", wait)
        except Problem:
            raise
        except Exception as exc:
            logger.warning("rate limits not checked: %s", exc)

    def failed_authentication(self, address: str) -> None:
        now = time.monotonic()
        if len(self._suspects) >= _MAX_SUSPECTS:  # many failing addresses: forget those whose window ended
            self._suspects = {a: until for a, until in self._suspects.items() if until >= now}
        if len(self._suspects) < _MAX_SUSPECTS or address in self._suspects:
            self._suspects[address] = now + self._failure_window_s
        self._hit(self.auth_failures, "auth-failures", address)


def check_quota(session: Session, *, tenant_id: uuid.UUID, adding: int, settings: Settings) -> None:
    """Refuse a submission that would take the tenant's unfinished jobs beyond its cap (429)."""
    cap = settings.limits.max_unfinished_jobs
    if not cap:
        return
    # Counting stops at the cap: past it every submission is refused whatever the exact number.
    unfinished = repo.count_active_jobs(session=session, tenant_id=tenant_id, cap=cap)
    if unfinished + adding > cap:
        raise _too_many("quota_exceeded",
                        f"{unfinished} unfinished jobs + {adding} submitted would exceed this tenant's cap of {cap} "
                        "(ETA_MAX_UNFINISHED_JOBS); retry when some have finished", 30)
