"""Who a request acts as (`Principal`, its role's grants) and the per-process cache of keys looked up lately.

Below `api.auth` (which authenticates requests) and `api.state` (which holds each app's cache), so that those
two do not import each other.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

# What each role may do. Admin may do everything.
SUBMIT, READ, REVIEW, MANAGE = "submit", "read", "review", "manage"
_ROLE_GRANTS = {
    "submit": {SUBMIT, READ},
    "review": {READ, REVIEW},
    "admin": {SUBMIT, READ, REVIEW, MANAGE},
}


@dataclass(frozen=True)
class Principal:
    key_id: uuid.UUID
    tenant_id: uuid.UUID
    role: str
    prefix: str

    def can(self, permission: str) -> bool:
        return permission in _ROLE_GRANTS.get(self.role, set())


class KeyCache:
    """Keys a process looked up lately, by the hash of their token: a poll then pays no key lookup.

    Used for GET and HEAD requests only, for `ttl_s` seconds: a revoked key can read for that long and can
    never write again (every other request looks its key up). Only keys found live are kept, so an unknown
    key is looked up (and counted as a failure) every time.
    """

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Principal, float]] = {}

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            self._entries.pop(digest, None)
            return None
        return entry[0]

    def put(self, digest: str, principal: Principal) -> None:
        if not self.ttl_s:
            return
        now = time.monotonic()
        if len(self._entries) >= self.max_entries:
            self._entries = {d: e for d, e in self._entries.items() if e[1] >= now}
            if len(self._entries) >= self.max_entries:
                return
        self._entries[digest] = (principal, now + self.ttl_s)
