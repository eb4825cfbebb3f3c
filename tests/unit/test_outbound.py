"""Which addresses an outbound call (a batch callback) may reach, and how URLs are checked."""

from __future__ import annotations

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


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address):
    assert address_refusal(address) is None


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
