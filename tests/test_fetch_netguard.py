"""SSRF guard (pipelines.fetch.netguard): URL host spellings, address classes, resolution, the allow-list.

Pure functions and a fake resolver: nothing here opens a connection."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from pipelines.fetch.errors import FetchError
from pipelines.fetch.netguard import AddressPolicy, Resolver, forbidden_class, normalize_allow_entry, parse_endpoint


@pytest.mark.parametrize("url", [
    "http://2130706433/", "http://2130706433:8080/x.jpg", "http://0x7f000001/", "http://0x7f.0.0.1/",
    "http://0177.0.0.1/", "http://0177.00.00.01:18431/a.jpg", "http://127.1/", "http://127.0.1/",
    "http://017700000001/", "http://0/", "http://3232235521/", "http://0xA9FEA9FE/latest/meta-data/",
    "http://169.254.43518/", "http://www.example.123/",
])
def test_non_canonical_ipv4_spellings_are_refused_before_resolution(url):
    with pytest.raises(FetchError) as exc:
        parse_endpoint(url)
    assert exc.value.reason == "ssrf_blocked" and "non-canonical IPv4" in str(exc.value)


@pytest.mark.parametrize("url,reason", [
    ("ftp://example.com/x.jpg", "bad_url"), ("file:///etc/passwd", "bad_url"), ("gopher://x/", "bad_url"),
    ("http:///x.jpg", "bad_url"), ("http://user:pw@example.com/x.jpg", "bad_url"),
    ("http://example.com:99999/x.jpg", "bad_url"), ("http://[::1/x.jpg", "bad_url"),
    ("http://exa mple.com/x.jpg", "bad_url"),
])
def test_urls_that_are_not_fetchable(url, reason):
    with pytest.raises(FetchError) as exc:
        parse_endpoint(url)
    assert exc.value.reason == reason


def test_endpoints():
    ep = parse_endpoint("HTTPS://Example.COM./a/b.jpg?x=1")
    assert (ep.scheme, ep.host, ep.port, ep.authority) == ("https", "example.com", 443, "example.com:443")
    ep = parse_endpoint("http://[::FFFF:127.0.0.1]:18431/x")
    assert ep.host == "::ffff:127.0.0.1" and ep.authority == "[::ffff:127.0.0.1]:18431"
    assert parse_endpoint("http://bücher.example/x").host == "xn--bcher-kva.example"
    assert parse_endpoint("http://127.0.0.1:18431/x").authority == "127.0.0.1:18431"


@pytest.mark.parametrize("addr,why", [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("10.1.2.3", "private"), ("172.16.0.1", "private"),
    ("172.31.255.255", "private"), ("192.168.1.1", "private"), ("169.254.169.254", "link_local"),
    ("100.64.0.1", "not_global"), ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"), ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
    ("192.0.2.1", "private"), ("198.18.0.1", "private"), ("::1", "loopback"), ("::", "unspecified"),
    ("fe80::1", "link_local"), ("fc00::1", "private"), ("fd12:3456::1", "private"), ("ff02::1", "multicast"),
    ("2001:db8::1", "private"),
    # IPv6 spellings of IPv4 addresses are judged by the IPv4 address.
    ("::ffff:127.0.0.1", "loopback (as 127.0.0.1)"), ("::ffff:a9fe:a9fe", "link_local (as 169.254.169.254)"),
    ("::ffff:10.0.0.1", "private (as 10.0.0.1)"), ("::127.0.0.1", "loopback (as 127.0.0.1)"),
    ("::8.8.8.8", "ipv4_compatible"), ("2002:7f00:1::", "loopback (as 127.0.0.1)"),
    ("2002:a9fe:a9fe::1", "link_local (as 169.254.169.254)"), ("64:ff9b::a9fe:a9fe", "link_local (as 169.254.169.254)"),
    ("64:ff9b::7f00:1", "loopback (as 127.0.0.1)"),
])
def test_forbidden_addresses(addr, why):
    assert forbidden_class(ipaddress.ip_address(addr)) == why


@pytest.mark.parametrize("addr", ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8",
                                  "64:ff9b::808:808"])
def test_global_addresses(addr):
    assert forbidden_class(ipaddress.ip_address(addr)) is None


def fake_dns(table: dict[str, list[str]], calls: list | None = None):
    def getaddrinfo(host, port, type=0, proto=0):
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port) if ":" not in a else (a, port, 0, 0)) for a in table[host]]
    return getaddrinfo


def test_names_are_judged_by_every_address_they_resolve_to():
    dns = fake_dns({"public.test": ["93.184.216.34"], "evil.test": ["10.0.0.5"],
                    "rebind.test": ["93.184.216.34", "169.254.169.254"], "six.test": ["::ffff:127.0.0.1"],
                    "localhost": ["127.0.0.1", "::1"]})
    policy = AddressPolicy([], Resolver(60, dns))
    ep = parse_endpoint("http://public.test/x.jpg")
    assert policy.addresses(ep, "u") == [ipaddress.ip_address("93.184.216.34")]
    for host in ("evil.test", "rebind.test", "six.test", "localhost"):
        with pytest.raises(FetchError) as exc:
            policy.addresses(parse_endpoint(f"http://{host}/x.jpg"), "u")
        assert exc.value.reason == "ssrf_blocked", host
    for literal in ("http://169.254.169.254/latest/", "http://[::1]/", "http://[::ffff:a9fe:a9fe]/"):
        with pytest.raises(FetchError, match="ssrf_blocked"):
            policy.addresses(parse_endpoint(literal), literal)
    with pytest.raises(FetchError) as exc:
        policy.addresses(parse_endpoint("http://nxdomain.test/"), "u")
    assert exc.value.reason == "dns_error" and exc.value.transient


def test_allow_list_matches_the_literal_authority_only():
    dns = fake_dns({"localhost": ["127.0.0.1"]})
    policy = AddressPolicy(["127.0.0.1:18431"], Resolver(60, dns))
    assert [str(a) for a in policy.addresses(parse_endpoint("http://127.0.0.1:18431/x"), "u")] == ["127.0.0.1"]
    for url in ("http://127.0.0.1:18432/x", "http://localhost:18431/x", "http://[::ffff:127.0.0.1]:18431/x",
                "http://127.0.0.1/x"):
        with pytest.raises(FetchError, match="ssrf_blocked"):
            policy.addresses(parse_endpoint(url), url)
    for url in ("http://2130706433:18431/x", "http://127.1:18431/x"):
        with pytest.raises(FetchError, match="ssrf_blocked"):
            parse_endpoint(url)


@pytest.mark.parametrize("entry", ["127.0.0.1", "2130706433:80", "http://127.0.0.1:1", "a b:1"])
def test_bad_allow_entries_name_themselves(entry):
    with pytest.raises(ValueError, match="allow-list entry"):
        normalize_allow_entry(entry)


def test_resolver_caches_successes_only():
    calls: list = []
    r = Resolver(60, fake_dns({"a.test": ["93.184.216.34"]}, calls))
    r.resolve("a.test", 80)
    r.resolve("a.test", 80)
    for _ in range(2):
        with pytest.raises(FetchError):
            r.resolve("b.test", 80)
    assert calls == ["a.test", "b.test", "b.test"]
    assert Resolver(0, fake_dns({"a.test": ["93.184.216.34"]}, calls)).resolve("a.test", 80)


def test_resolver_remembers_failures_briefly():
    calls: list = []
    r = Resolver(60, fake_dns({}, calls), negative_ttl=60)
    for _ in range(3):
        with pytest.raises(FetchError, match="dns_error"):
            r.resolve("dead.test", 80)
    assert calls == ["dead.test"]
    r.forget_failures()
    with pytest.raises(FetchError):
        r.resolve("dead.test", 80)
    assert calls == ["dead.test", "dead.test"]
