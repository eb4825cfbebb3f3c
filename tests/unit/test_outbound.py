"""Which addresses an outbound call (a batch callback) may reach, and how URLs are checked."""

from __future__ import annotations

import ipaddress

import pytest

from eta import outbound
from eta.outbound import OutboundRefused, address_refusal, check_target, check_url, parse_networks


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "0.0.0.0", "10.0.0.1", "172.16.5.4", "192.168.0.1", "169.254.169.254",  # noqa: S104
    "100.64.0.1", "224.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "240.0.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",  # IPv4-mapped
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2001:db8::1",  # documentation
    "fe80::1%eth0",  # with a zone
])
def test_internal_addresses_are_refused(address):
    assert address_refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                     "64:ff9b::808:808", "2a00:1450:4001:82a::200e", "1.1.1.1", "223.255.255.1"])
def test_public_addresses_pass(address):
    assert address_refusal(address) is None


# The IANA IPv4 and IPv6 Special-Purpose Address Registries (as of 2025), block -> name. Written out here
# as the oracle, independent of the code under test and of the Python release's `ipaddress` tables.
IANA_IPV4_SPECIAL = {
    "0.0.0.0/8": "This network", "0.0.0.0/32": "This host on this network", "10.0.0.0/8": "Private-Use",
    "100.64.0.0/10": "Shared Address Space", "127.0.0.0/8": "Loopback", "169.254.0.0/16": "Link Local",
    "172.16.0.0/12": "Private-Use", "192.0.0.0/24": "IETF Protocol Assignments",
    "192.0.0.0/29": "IPv4 Service Continuity Prefix", "192.0.0.8/32": "IPv4 dummy address",
    "192.0.0.9/32": "Port Control Protocol Anycast", "192.0.0.10/32": "Traversal Using Relays around NAT Anycast",
    "192.0.0.170/32": "NAT64/DNS64 Discovery", "192.0.0.171/32": "NAT64/DNS64 Discovery",
    "192.0.2.0/24": "Documentation (TEST-NET-1)", "192.31.196.0/24": "AS112-v4",
    "192.52.193.0/24": "AMT", "192.88.99.0/24": "Deprecated (6to4 Relay Anycast)",
    "192.168.0.0/16": "Private-Use", "192.175.48.0/24": "Direct Delegation AS112 Service",
    "198.18.0.0/15": "Benchmarking", "198.51.100.0/24": "Documentation (TEST-NET-2)",
    "203.0.113.0/24": "Documentation (TEST-NET-3)", "240.0.0.0/4": "Reserved",
    "255.255.255.255/32": "Limited Broadcast",
}
IANA_IPV6_SPECIAL = {
    "::1/128": "Loopback Address", "::/128": "Unspecified Address", "::ffff:0:0/96": "IPv4-mapped Address",
    "64:ff9b::/96": "IPv4-IPv6 Translat.", "64:ff9b:1::/48": "IPv4-IPv6 Translat.",
    "100::/64": "Discard-Only Address Block", "100:0:0:1::/64": "Dummy IPv6 Prefix",
    "2001::/23": "IETF Protocol Assignments", "2001::/32": "TEREDO",
    "2001:1::1/128": "Port Control Protocol Anycast", "2001:1::2/128": "Traversal Using Relays around NAT Anycast",
    "2001:1::3/128": "DNS-SD Service Registration Protocol Anycast", "2001:2::/48": "Benchmarking",
    "2001:3::/32": "AMT", "2001:4:112::/48": "AS112-v6", "2001:10::/28": "Deprecated (previously ORCHID)",
    "2001:20::/28": "ORCHIDv2", "2001:30::/28": "Drone Remote ID Protocol Entity Tags (DETs) Prefix",
    "2001:db8::/32": "Documentation", "2002::/16": "6to4", "2620:4f:8000::/48": "Direct Delegation AS112 Service",
    "3fff::/20": "Documentation", "5f00::/16": "Segment Routing (SRv6) SIDs", "fc00::/7": "Unique-Local",
    "fe80::/10": "Link-Local Unicast",
}
# Not in the special-purpose registries, and not routable unicast either: multicast (the multicast address
# registries), IPv6 site-local (deprecated, RFC 3879) and the IPv4-compatible IPv6 addresses (RFC 4291).
OTHER_NON_ROUTABLE = {"224.0.0.0/4": "IPv4 multicast", "ff00::/8": "IPv6 multicast", "fec0::/10": "Site-local",
                      "::/96": "IPv4-compatible IPv6"}
# Blocks whose addresses stand for an IPv4 host, judged by that host (the connection reaches it).
JUDGED_BY_THEIR_IPV4 = {"::ffff:0:0/96", "64:ff9b::/96"}


def _samples(block: str) -> list[str]:
    network = ipaddress.ip_network(block)
    first, last = int(network.network_address), int(network.broadcast_address)
    return [str(ipaddress.ip_address(n)) for n in dict.fromkeys((first, (first + last) // 2, last, first + 1))
            if first <= n <= last]


SPECIAL = {**IANA_IPV4_SPECIAL, **IANA_IPV6_SPECIAL, **OTHER_NON_ROUTABLE}


@pytest.mark.parametrize("block", [b for b in SPECIAL if b not in JUDGED_BY_THEIR_IPV4],
                         ids=[f"{b} {n}" for b, n in SPECIAL.items() if b not in JUDGED_BY_THEIR_IPV4])
def test_every_special_purpose_block_is_refused_whole(block):
    # Anycast exceptions that the registry calls globally reachable (PCP, TURN, AS112, AMT) are refused too:
    # they are protocol services, never a webhook receiver.
    for address in _samples(block):
        assert address_refusal(address) is not None, (address, SPECIAL[block])


def _v4_forms(v4: ipaddress.IPv4Address) -> dict[str, str]:
    """The IPv6 forms that carry an IPv4 address."""
    n = int(v4)
    teredo_client = n ^ 0xFFFFFFFF  # Teredo stores the client address inverted, after a port
    return {
        "mapped": str(ipaddress.IPv6Address((0xFFFF << 32) | n)),
        "compatible": str(ipaddress.IPv6Address(n)),
        "nat64": str(ipaddress.IPv6Address((0x64FF9B << 96) | n)),
        "nat64-local": str(ipaddress.IPv6Address((0x64FF9B0001 << 80) | n)),
        "6to4": str(ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | 1)),
        "teredo": str(ipaddress.IPv6Address((0x20010000 << 96) | (0x08080808 << 64) | (0xFFFF << 32) | teredo_client)),
    }


@pytest.mark.parametrize("block", list(IANA_IPV4_SPECIAL) + ["224.0.0.0/4"])
def test_ipv6_forms_of_a_special_ipv4_address_are_refused(block):
    for address in _samples(block):
        for form, v6 in _v4_forms(ipaddress.IPv4Address(address)).items():
            assert address_refusal(v6) is not None, (form, v6, address, SPECIAL[block])


def test_ipv6_forms_of_a_public_ipv4_address_pass_only_where_they_reach_that_host():
    forms = _v4_forms(ipaddress.IPv4Address("8.8.8.8"))
    assert ipaddress.IPv6Address(forms["teredo"]).teredo == (ipaddress.IPv4Address("8.8.8.8"),) * 2
    assert ipaddress.IPv6Address(forms["6to4"]).sixtofour == ipaddress.IPv4Address("8.8.8.8")
    passing = {form for form, v6 in forms.items() if address_refusal(v6) is None}
    # Mapped and NAT64 (well-known prefix) reach 8.8.8.8; the deprecated compatible form, the local-use NAT64
    # prefix and the relayed tunnels (6to4, Teredo) are refused whatever they carry.
    assert passing == {"mapped", "nat64"}


def test_the_callback_addresses_of_the_report_are_refused():
    for address in ("fec0::a9fe:a9fe", "3fff::1", "3fff:fff:ffff::1", "192.0.0.9", "192.0.0.10", "192.0.0.200"):
        assert address_refusal(address) is not None, address
    assert "not globally routable" in (address_refusal("fec0::a9fe:a9fe") or "")


def test_the_operator_allows_listed_networks_only():
    allowed = parse_networks("127.0.0.1/32, 10.20.0.0/16")
    assert address_refusal("127.0.0.1", allowed) is None
    assert address_refusal("::ffff:127.0.0.1", allowed) is None
    assert address_refusal("10.20.3.4", allowed) is None
    assert address_refusal("127.0.0.2", allowed) is not None
    assert address_refusal("10.21.0.1", allowed) is not None
    with pytest.raises(ValueError, match="not an IP network"):
        parse_networks("10.0.0.0/8, intranet")


@pytest.mark.parametrize("url", [
    "ftp://example.com/", "http:///path", "//example.com/", "http://user:pw@example.com/", "http://exa mple.com/",
    "http://example.com:99999/", "http://example.com:0/", "https://ex\u00e4mple.com/", "http://[::1/", 42, None,
    "http://example.com/" + "a" * 2000,
])
def test_malformed_urls_are_refused(url):
    with pytest.raises(OutboundRefused) as refused:
        check_url(url)
    assert refused.value.code == "callback_url_invalid"


def test_every_answer_of_the_resolver_is_checked_and_the_first_is_pinned():
    answers = {"ok.test": ["93.184.216.34", "8.8.8.8"], "mixed.test": ["8.8.8.8", "10.0.0.1"], "none.test": []}

    def resolver(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError("no such name")
        return answers[host]

    previous = outbound.set_resolver(resolver)
    try:
        target = check_target("https://ok.test:8443/hook?x=1")
        assert (target.host, target.port, target.path, target.address) == ("ok.test", 8443, "/hook?x=1",
                                                                             "93.184.216.34")
        for url, code in (("http://mixed.test/", "callback_url_forbidden"),
                          ("http://none.test/", "callback_url_unresolvable"),
                          ("http://missing.test/", "callback_url_unresolvable")):
            with pytest.raises(OutboundRefused) as refused:
                check_target(url)
            assert refused.value.code == code
    finally:
        outbound.set_resolver(previous)
