"""Images by reference: fetching a tenant's `image_url` through the outbound policy of `eta.outbound`.

Each hop's host is resolved once and every address it resolves to must be globally routable (or in the
operator's allowed networks); the connection then goes to the checked address. `https` is required unless the
address is in an allowed network. A redirect is followed at most `max_redirects` times, each target checked
like the first (so a public URL that redirects to loopback is refused). One deadline covers an attempt, its
redirects and the whole body, however slowly a server dribbles it; the body may not exceed `max_bytes`. The
declared content type is not trusted: the bytes are decoded by `eta.images.decode_image`, which reads the
format from the bytes themselves, under the same bounds as uploads.

Transient failures (timeouts, connection errors, 408/429/5xx answers) are retried with exponential backoff and
jitter; a refused address, a 4xx answer or a body over the limit is final at once.
"""

from __future__ import annotations

import http.client
import logging
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urljoin

from eta.outbound import (
    IPNetwork,
    OutboundRefused,
    Target,
    address_refusal,
    check_target,
    cut_at_deadline,
    parse_networks,
    pinned_connection,
)
from eta.settings import Settings

logger = logging.getLogger(__name__)

K = TypeVar("K")

FIELD = "image_url"
IMAGE_FETCH_FAILED = "image_fetch_failed"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchPolicy:
    """How an image URL may be fetched (the operator's settings)."""

    # Networks reachable although not public, and where plain http is accepted.
    allowed: tuple[IPNetwork, ...] = ()
    # The largest body accepted (the upload limit, ETA_MAX_IMAGE_BYTES).
    max_bytes: int = 20 * 1024 * 1024
    # The deadline of one attempt: connections, redirects and the whole body.
    timeout_s: float = 10.0
    attempts: int = 3
    max_redirects: int = 3
    # First backoff between attempts (doubled each time, with up to 50 % jitter).
    backoff_s: float = 0.5

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        workers = settings.workers
        return cls(allowed=parse_networks(workers.callback_allowed_networks),
                   max_bytes=settings.limits.max_image_bytes, timeout_s=workers.image_fetch_timeout_s,
                   attempts=workers.image_fetch_attempts, max_redirects=workers.image_fetch_max_redirects)


class FetchFailed(Exception):
    """The image could not be fetched. `transient`: another attempt may succeed."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def check_image_url(url: object, *, allowed: Iterable[IPNetwork] = ()) -> Target:
    """Check an image URL as a submission does: syntax, every resolved address, https outside allowed networks.

    Raises:
        OutboundRefused: `image_url_invalid`, `image_url_unresolvable` or `image_url_forbidden`, with the reason.
    """
    allowed = tuple(allowed)
    target = check_target(url, allowed=allowed, field=FIELD)
    if target.scheme != "https" and address_refusal(target.address, ()) is None:
        # A public address over plain http: anyone on the path could swap the image that gets judged.
        raise OutboundRefused(f"{FIELD}_forbidden", f"{FIELD} must be https (plain http only to the operator's "
                                                    "allowed networks, ETA_OUTBOUND_ALLOWED_NETWORKS)")
    return target


def _get(target: Target, *, deadline: float, max_bytes: int) -> tuple[int, str | None, bytes]:
    """GET the target before `deadline` (monotonic): (status, Location, body). Raises FetchFailed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchFailed("no complete answer within the time limit", transient=True)
    connection = pinned_connection(target, timeout_s=remaining)
    expired, timer = cut_at_deadline(connection, remaining)
    try:
        connection.request("GET", target.path, headers={"Accept": "image/*", "User-Agent": "eta-service"})
        response = connection.getresponse()
        if response.status != 200:
            return response.status, response.getheader("Location"), b""
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise FetchFailed(f"the server announced {int(declared)} bytes; the limit is {max_bytes}",
                              transient=False)
        chunks, size = [], 0
        while chunk := response.read(_READ_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise FetchFailed(f"the body exceeds {max_bytes} bytes", transient=False)
            chunks.append(chunk)
        if expired.is_set():
            raise FetchFailed("no complete answer within the time limit", transient=True)
        return response.status, None, b"".join(chunks)
    except (OSError, http.client.HTTPException) as exc:
        # The socket's own timeout is the same deadline as the cutter's: whichever fires first, the attempt ran
        # out of its time (on a loaded machine the socket's often wins).
        if expired.is_set() or isinstance(exc, TimeoutError):
            raise FetchFailed("no complete answer within the time limit", transient=True) from exc
        raise FetchFailed(f"the server could not be read: {type(exc).__name__}: {exc}", transient=True) from exc
    finally:
        timer.cancel()
        connection.close()


def fetch_once(url: str, policy: FetchPolicy) -> bytes:
    """One attempt: the URL and up to `max_redirects` redirects, each target checked. Raises FetchFailed."""
    deadline = time.monotonic() + policy.timeout_s
    for hop in range(policy.max_redirects + 1):
        try:
            target = check_image_url(url, allowed=policy.allowed)
        except OutboundRefused as exc:
            where = "" if hop == 0 else f" (redirected to {url.split('?', 1)[0][:200]})"
            raise FetchFailed(f"{exc}{where}", transient=exc.code.endswith("_unresolvable")) from exc
        status, location, body = _get(target, deadline=deadline, max_bytes=policy.max_bytes)
        if status == 200:
            return body
        if status in _REDIRECTS and location:
            if hop == policy.max_redirects:
                raise FetchFailed(f"more than {policy.max_redirects} redirects", transient=False)
            url = urljoin(url, location)
            continue
        raise FetchFailed(f"the server answered HTTP {status}", transient=status in _TRANSIENT_STATUSES)
    raise FetchFailed(f"more than {policy.max_redirects} redirects", transient=False)  # pragma: no cover


def fetch_image_bytes(url: str, policy: FetchPolicy, *, sleep: Callable[[float], None] = time.sleep) -> bytes:
    """The bytes at `url`, retrying transient failures with backoff. Raises FetchFailed (the last failure, with
    the number of attempts made)."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return fetch_once(url, policy)
        except FetchFailed as exc:
            if not exc.transient or attempt == policy.attempts:
                tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                raise FetchFailed(f"{exc}{tries}", transient=exc.transient) from exc
            delay = policy.backoff_s * 2 ** (attempt - 1)
            logger.info("image fetch attempt %d failed (%s); retrying in %.2f s", attempt, exc, delay)
            sleep(delay * (1 + random.random() / 2))  # noqa: S311 - jitter, not a secret
    raise AssertionError("unreachable")  # pragma: no cover


def fetch_many(urls: dict[K, str], policy: FetchPolicy, *, concurrency: int) -> dict[K, bytes | FetchFailed]:
    """Fetch several URLs at once (`concurrency` at a time; one fetch per distinct URL): each key's bytes, or
    why it failed. A slow server holds one thread, never the others' results."""
    distinct = list(dict.fromkeys(urls.values()))
    outcomes: dict[str, bytes | FetchFailed] = {}

    def one(url: str) -> tuple[str, bytes | FetchFailed]:
        try:
            return url, fetch_image_bytes(url, policy)
        except FetchFailed as exc:
            return url, exc

    if len(distinct) == 1:
        outcomes.update([one(distinct[0])])
    else:
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(distinct))),
                                thread_name_prefix="image-fetch") as pool:
            outcomes.update(pool.map(one, distinct))
    return {key: outcomes[url] for key, url in urls.items()}
