"""SSRF guard: which addresses a URL may make us connect to.

A crawler fetches URLs chosen by whoever wrote the web pages. Without this guard, <img src="http://
169.254.169.254/latest/meta-data/iam/security-credentials/"> reads the cloud credentials of the worker, and
http://10.0.0.5:8265/ submits jobs to a cluster. So, before any connection (and again on every redirect hop):

1. The URL's host is parsed strictly. A host whose last label is numeric is an IPv4 literal; it must be the
   canonical dotted quad. Forms that libc's inet_aton and browsers accept but no honest page needs
   (2130706433, 0x7f000001, 0177.0.0.1, 127.1) are refused as they are, before any resolution.
2. The host is resolved with socket.getaddrinfo, and EVERY address it returns must be globally routable
   unicast: not loopback, private (RFC 1918, ULA), link-local (169.254/16 with the metadata service,
   fe80::/10), shared (100.64/10), multicast, reserved, unspecified, documentation or benchmark ranges. IPv6
   forms that carry an IPv4 address (::ffff:a.b.c.d, ::a.b.c.d, 6to4, Teredo, NAT64 64:ff9b::/96) are judged
   by the IPv4 address they carry.
3. The caller connects to one of the checked addresses itself (pipelines.fetch.client), so a DNS answer that
   changes between the check and the connection (DNS rebinding) cannot redirect it.

The allow-list exempts exact "host:port" authorities, as written in the URL, from rule 2 (the demo's own
127.0.0.1 server). It is matched before resolution on the literal host, so 2130706433:18431 or
localhost:18431 do not match an entry 127.0.0.1:18431. Default: nothing is exempt.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipelines.fetch.errors import BAD_URL, DNS_ERROR, SSRF_BLOCKED, FetchError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_PORTS = {"http": 80, "https": 443}
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_CANONICAL_V4 = re.compile(r"^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$")
_HOST_CHARS = re.compile(r"^[a-z0-9._-]+$")
_ALLOW_ENTRY = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s/:@\[\]]+):\d{1,5}$")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


@dataclass(frozen=True)
class Endpoint:
    """Where a URL points: scheme, host as written (lower case, IPv6 without brackets) and port."""

    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.authority}"


def parse_endpoint(url: str) -> Endpoint:
    """The endpoint of an http(s) URL; FetchError(bad_url) or (ssrf_blocked) for what must not be fetched."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port that is not a number, a broken IPv6 literal
        raise FetchError(BAD_URL, f"{url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise FetchError(BAD_URL, f"{url!r}: only http and https are fetched")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise FetchError(BAD_URL, f"{url!r}: no host")
    if parts.username is not None or parts.password is not None:
        # user:pass@host is how parsers are confused about which host is meant; no image needs it.
        raise FetchError(BAD_URL, f"{url!r}: credentials in the URL")
    if ":" not in host:
        host = _check_name(url, host)
    else:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise FetchError(BAD_URL, f"{url!r}: bad IPv6 literal {host!r}") from None
    return Endpoint(scheme, host, port if port is not None else DEFAULT_PORTS[scheme])


def _check_name(url: str, host: str) -> str:
    try:
        host = host.encode("idna").decode("ascii").lower()  # internationalised names -> punycode
    except UnicodeError:
        raise FetchError(BAD_URL, f"{url!r}: host {host!r} is not a valid name") from None
    if not _HOST_CHARS.match(host):
        raise FetchError(BAD_URL, f"{url!r}: host {host!r} has characters no DNS name has")
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]) and not _CANONICAL_V4.match(host):
        # What the WHATWG URL parser and inet_aton read as an IPv4 address, written in decimal, octal, hex or
        # with fewer than four parts: refused as it is (an obfuscated address is a probe, not an image).
        raise FetchError(SSRF_BLOCKED, f"{url!r}: non-canonical IPv4 literal {host!r}")
    return host


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms that carry one."""
    if ip.version == 4:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if int(ip) >> 32 == 0:  # ::a.b.c.d (deprecated IPv4-compatible) and ::/128, ::1 themselves
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden_class(ip: IPAddress) -> str | None:
    """Why `ip` must not be connected to ("loopback", "private", ...), or None for global unicast."""
    if ip.version == 6 and (ip.is_loopback or ip.is_unspecified):  # ::1 and :: before the ::a.b.c.d reading
        return "loopback" if ip.is_loopback else "unspecified"
    inner = embedded_ipv4(ip)
    if inner is not None:
        why = forbidden_class(inner)
        if ip.version == 6 and int(ip) >> 32 == 0 and why is None:
            return "ipv4_compatible"  # ::8.8.8.8 is no address anyone routes to
        return f"{why} (as {inner})" if why else None
    for attr in ("is_loopback", "is_unspecified", "is_link_local", "is_multicast", "is_reserved", "is_private"):
        if getattr(ip, attr):
            return attr[3:]
    if not ip.is_global:
        return "not_global"  # 100.64/10 (shared), 192.0.0/24 and other special-purpose ranges
    return None


def check_address(ip: IPAddress, endpoint: Endpoint, url: str) -> None:
    why = forbidden_class(ip)
    if why:
        raise FetchError(SSRF_BLOCKED, f"{url!r}: {endpoint.host} is {ip} ({why})")


class Resolver:
    """getaddrinfo with a small time-bounded cache per (host, port); thread-safe.

    The cache only saves look-ups: the connection always goes to an address that was checked, whatever DNS
    says later. Failures are remembered for `negative_ttl` seconds (0: not at all), so a dead domain with a
    thousand images costs the resolver a handful of queries, not a thousand (img2dataset #360: resolvers
    overloaded by crawlers answer "temporary failure" to everyone)."""

    def __init__(self, ttl: float, getaddrinfo: Callable = socket.getaddrinfo, negative_ttl: float = 0.0) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._getaddrinfo = getaddrinfo
        self._cache: dict[tuple[str, int], tuple[float, list[IPAddress] | FetchError]] = {}
        self._lock = threading.Lock()

    def forget_failures(self) -> None:
        """Drop remembered failures (a new shard or retry round asks again)."""
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if not isinstance(v[1], FetchError)}

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get((host, port))
        if hit:
            failed = isinstance(hit[1], FetchError)
            if now - hit[0] < (self.negative_ttl if failed else self.ttl):
                if failed:
                    raise FetchError(hit[1].reason, hit[1].detail)  # type: ignore[union-attr]
                return hit[1]  # type: ignore[return-value]
        try:
            addrs = self._lookup(host, port)
        except FetchError as exc:
            if self.negative_ttl > 0:
                with self._lock:
                    self._cache[(host, port)] = (now, exc)
            raise
        with self._lock:
            self._cache[(host, port)] = (now, addrs)
        return addrs

    def _lookup(self, host: str, port: int) -> list[IPAddress]:
        try:
            infos = self._getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise FetchError(DNS_ERROR, f"{host}: {exc.strerror or exc}") from None
        except (UnicodeError, OSError) as exc:
            raise FetchError(DNS_ERROR, f"{host}: {exc}") from None
        addrs: list[IPAddress] = []
        for family, _, _, _, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])  # drop an IPv6 zone id
            if ip not in addrs:
                addrs.append(ip)
        if not addrs:
            raise FetchError(DNS_ERROR, f"{host}: no IPv4 or IPv6 address")
        return addrs


class AddressPolicy:
    """Decides which addresses an endpoint may be fetched from: checked, resolved, ready to pin."""

    def __init__(self, allow: Iterable[str], resolver: Resolver) -> None:
        self.allow = frozenset(normalize_allow_entry(a) for a in allow)
        self.resolver = resolver

    def addresses(self, endpoint: Endpoint, url: str) -> list[IPAddress]:
        """The addresses to connect to (all of them checked); FetchError if none may be used."""
        literal = _ip_literal(endpoint.host)
        addrs = [literal] if literal is not None else self.resolver.resolve(endpoint.host, endpoint.port)
        if endpoint.authority in self.allow:
            return addrs
        for ip in addrs:
            # Every answer, not just the first: a name answering a public and a private address is a rebinding
            # setup, and the socket library would happily try the private one next.
            check_address(ip, endpoint, url)
        return addrs


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def normalize_allow_entry(entry: str) -> str:
    """"Host:port" as Endpoint.authority writes it; ValueError naming the entry when it is not one."""
    if not _ALLOW_ENTRY.match(entry.strip()):
        raise ValueError(f"allow-list entry {entry!r}: must be host:port (no scheme, no path; IPv6 in brackets)")
    try:
        ep = parse_endpoint(f"http://{entry.strip()}/")
    except FetchError as exc:
        raise ValueError(f"allow-list entry {entry!r}: {exc.detail}") from None
    return ep.authority
