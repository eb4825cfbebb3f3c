"""Outbound HTTP to addresses a tenant chose (batch callbacks), without letting a tenant reach inside.

A tenant-supplied URL is refused when its host resolves to an address that is not globally routable unicast.
The judgement follows the IANA special-purpose address registries (IPv4 and IPv6): `ipaddress`'s
`is_global` first, then what it misses (blocks assigned after the Python release, and its exceptions), then a
structural rule for IPv6: unicast outside the global unicast space `2000::/3` is never routable (this catches
site-local `fec0::/10`, the IPv4-compatible `::a.b.c.d` and every future assignment outside `2000::/3`).
Special-purpose blocks are refused whole, their anycast exceptions included (PCP, TURN, AS112, AMT: protocol
services, never a webhook receiver). The forms that stand for an IPv4 host (mapped `::ffff:a.b.c.d`, NAT64
`64:ff9b::/96`) are judged by that IPv4 address; the tunnels whose reach depends on relays (6to4 `2002::/16`,
Teredo `2001::/32`) are refused whole. An operator may allow listed networks (a receiver on the private
network, or 127.0.0.1 in tests).

Every address the name resolves to must pass, and the connection then goes to the address that was
checked (the HTTP `Host` header and the TLS server name stay the URL's host), so a DNS answer that changes
between the check and the connection (rebinding) cannot redirect it. Redirects are never followed: a 3xx
is an answer like any other non-2xx. Each attempt has one deadline covering connect, send and the answer.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

MAX_URL_CHARS = 2000
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Answers read from a receiver: status line and headers only; the body is never needed.
_MAX_ANSWER_BYTES = 64 * 1024


class OutboundRefused(Exception):
    """The URL may not be called. `code` is stable (`callback_url_invalid`, `callback_url_forbidden`,
    `callback_url_unresolvable`); the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the operating system's resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


_resolver: Resolver = system_resolver


def set_resolver(resolver: Resolver | None) -> Resolver:
    """Replace the resolver of this process (tests point names at chosen addresses); returns the previous one.
    None restores the system resolver."""
    global _resolver
    previous, _resolver = _resolver, resolver or system_resolver
    return previous


def resolve(host: str, port: int) -> list[str]:
    return _resolver(host, port)


def parse_networks(text: str | Iterable[str] | None) -> tuple[IPNetwork, ...]:
    """`10.0.0.0/8, 127.0.0.1` (comma or space separated) as networks. Raises ValueError naming a bad entry."""
    if text is None:
        return ()
    entries = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"not an IP network: {entry!r}") from exc
    return tuple(networks)


# Not globally routable, though `ipaddress.is_global` says otherwise on some supported Python release (the
# registries grew after it, or it keeps the registry's anycast exceptions). From the IANA IPv4 and IPv6
# special-purpose address registries; the IPv6 blocks outside 2000::/3 need no entry (see `_category`).
_NOT_ROUTABLE: tuple[tuple[IPNetwork, str], ...] = tuple((ipaddress.ip_network(block), name) for block, name in (
    ("192.0.0.0/24", "IETF protocol assignments"),  # with the PCP (.9) and TURN (.10) anycast addresses
    ("192.31.196.0/24", "AS112 anycast"),
    ("192.52.193.0/24", "AMT relay anycast"),
    ("192.88.99.0/24", "6to4 relay anycast (deprecated)"),
    ("192.175.48.0/24", "AS112 anycast"),
    ("2001::/23", "IETF protocol assignments"),  # Teredo, benchmarking, ORCHID, AMT, AS112-v6, anycast
    ("2002::/16", "6to4"),
    ("2620:4f:8000::/48", "AS112 anycast"),
    ("3fff::/20", "documentation"),
))
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


def _ipv4_host(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 host an IPv6 address stands for: IPv4-mapped, or NAT64 through the well-known prefix."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _category(ip: IPAddress) -> str | None:
    """Why `ip` is not a globally routable unicast address, or None when it is."""
    checks = (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
              ("multicast", ip.is_multicast), ("private", ip.is_private))
    for name, hit in checks:
        if hit:
            return name
    for network, name in _NOT_ROUTABLE:
        if ip.version == network.version and ip in network:
            return name
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST_V6:
        return "reserved (outside the IPv6 global unicast space 2000::/3)"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-public"
    return None


def address_refusal(address: str, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why a connection to `address` is refused, or None when it may be made."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    host = _ipv4_host(ip)
    allowed = tuple(allowed)
    if any(ip in net for net in allowed) or (host is not None and any(host in net for net in allowed)):
        return None
    category = _category(host if host is not None else ip)
    return None if category is None else f"{address} is not globally routable ({category})"


@dataclass(frozen=True)
class Target:
    """A URL checked for calling: connect to `address`, speak HTTP(S) to `host`."""

    url: str
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line
    address: str


def check_url(url: object, *, field: str = "callback_url") -> tuple[str, str, int, str]:
    """Syntax only: an absolute http(s) URL without credentials. Returns (scheme, host, port, path).

    `field` names the URL in codes and messages (`callback_url`, `image_url`).

    Raises:
        OutboundRefused: `<field>_invalid`.
    """
    def bad(why: str) -> OutboundRefused:
        return OutboundRefused(f"{field}_invalid", f"{field} {why}")

    if not isinstance(url, str):
        raise bad("must be a string")
    if len(url) > MAX_URL_CHARS:
        raise bad(f"has {len(url)} characters; the limit is {MAX_URL_CHARS}")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise bad("must be printable ASCII without spaces (percent-encode the rest, punycode the host)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise bad("must be an absolute http or https URL")
    if not parts.hostname:
        raise bad("has no host")
    if parts.username is not None or parts.password is not None:
        raise bad("must not carry credentials")
    if port == 0:
        raise bad("has port 0")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path


def check_target(url: object, *, allowed: Iterable[IPNetwork] = (), field: str = "callback_url") -> Target:
    """Check the URL, resolve its host once, and check every address it resolves to.

    Raises:
        OutboundRefused: the URL is malformed (`callback_url_invalid`), its host does not resolve
            (`callback_url_unresolvable`) or resolves to an address that is not allowed (`callback_url_forbidden`).
    """
    scheme, host, port, path = check_url(url, field=field)
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError, ValueError) as exc:
        raise OutboundRefused(f"{field}_unresolvable",
                              f"{field} host {host!r} does not resolve: {exc}") from exc
    if not addresses:
        raise OutboundRefused(f"{field}_unresolvable", f"{field} host {host!r} does not resolve")
    allowed = tuple(allowed)
    for address in addresses:
        if (why := address_refusal(address, allowed)) is not None:
            raise OutboundRefused(
                f"{field}_forbidden",
                f"{field} host {host!r} resolves to a non-public address: {why}; outbound calls go "
                "to globally routable addresses only, unless the operator allows the network "
                "(ETA_OUTBOUND_ALLOWED_NETWORKS)")
    return Target(url=str(url), scheme=scheme, host=host, port=port, path=path, address=addresses[0])


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._address = target.address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        # Certificate and SNI are the URL's host, though the socket goes to the checked address.
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def cut_at_deadline(connection: http.client.HTTPConnection, seconds: float) -> tuple[threading.Event, threading.Timer]:
    """Shut the connection's socket down `seconds` from now, whatever the reads in progress: a peer that sends a
    byte at a time beats every per-read timeout. Returns the event set when it fired and the timer (cancel it)."""
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        sock = connection.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    return expired, timer


def pinned_connection(target: Target, *, timeout_s: float,
                      tls: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    """An HTTP(S) connection to the checked address of `target` (Host header and TLS name: its host)."""
    if target.scheme == "https":
        return _PinnedHTTPSConnection(target, timeout_s, tls or ssl.create_default_context())
    return _PinnedHTTPConnection(target, timeout_s)


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    location: str | None


def post(target: Target, body: bytes, headers: Mapping[str, str], *, timeout_s: float,
         tls: ssl.SSLContext | None = None) -> Answer:
    """POST `body` to the checked target; one deadline of `timeout_s` for the whole attempt.

    Redirects are not followed (the answer is returned as is). Raises OSError (including TimeoutError)
    or http.client.HTTPException when the receiver cannot be reached or answers garbage.
    """
    connection: http.client.HTTPConnection
    if target.scheme == "https":
        connection = _PinnedHTTPSConnection(target, timeout_s, tls or ssl.create_default_context())
    else:
        connection = _PinnedHTTPConnection(target, timeout_s)
    # A receiver dribbling its answer a byte at a time would beat every per-read timeout.
    expired, timer = cut_at_deadline(connection, timeout_s)
    try:
        connection.request("POST", target.path, body=body, headers=dict(headers))
        response = connection.getresponse()
        response.read(_MAX_ANSWER_BYTES)
        return Answer(response.status, response.reason, response.getheader("Location"))
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            raise TimeoutError(f"no complete answer within {timeout_s:g} s") from exc
        raise
    finally:
        timer.cancel()
        connection.close()
