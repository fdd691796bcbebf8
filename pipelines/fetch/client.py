"""The guarded HTTP client: every hop checked (address, robots.txt), connection pinned, time and size capped.

    fetcher = Fetcher(policy)           # one per worker process (pipelines.fetch.i2d.fetcher_for)
    data = fetcher.fetch_image(url)     # bytes, or FetchError(reason, detail)

Per hop (the URL, then each redirect's Location, at most policy.max_redirects of them):
  parse strictly -> resolve and check every address (netguard) -> robots.txt of that origin allows the path
  -> wait for the origin's Crawl-delay turn (one image request per Crawl-delay seconds per process)
  -> connect to a checked address (never a fresh DNS answer), Host header and TLS SNI from the URL.
Then, before reading the body: X-Robots-Tag opt-outs, the status, the declared Content-Length. While reading:
the byte cap, and the pixel cap from the header in the first bytes (decompression bombs stop there).
Time: connect_timeout per connection attempt, read_timeout per socket read, total_timeout for one image
(all its hops and reads; a robots.txt fetch has its own, once per origin); a server dripping a byte per
second is cut at the total.
"""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urljoin

from pipelines.fetch import errors as E
from pipelines.fetch.errors import FetchError
from pipelines.fetch.limits import HEADER_PREFIX_BYTES, check_pixels
from pipelines.fetch.netguard import AddressPolicy, Endpoint, IPAddress, Resolver, parse_endpoint
from pipelines.fetch.robots import MAX_ROBOTS_BYTES, RobotsCache, path_and_query

REDIRECTS = frozenset({301, 302, 303, 307, 308})
NEGATIVE_DNS_TTL = 30.0  # seconds a failed look-up is remembered (until the next shard or retry round)
CHUNK = 64 * 1024
# Characters kept as they are in a request target; anything else (spaces, non-ASCII) is percent-encoded,
# as a browser would, instead of failing in http.client.
_SAFE_TARGET = "/?&=%:@!$'()*+,;~-._"


@dataclass(frozen=True)
class FetchPolicy:
    """Everything the client enforces; built from pipeline.download (DownloadConfig.fetch_policy)."""

    user_agent: str
    token: str
    """Our robots.txt / X-Robots-Tag product token (lower case)."""
    connect_timeout: float
    read_timeout: float
    total_timeout: float
    max_bytes: int
    max_pixels: int
    max_redirects: int
    allow: tuple[str, ...]
    disallowed_directives: tuple[str, ...]
    robots_ttl: float
    dns_ttl: float
    max_host_connections: int
    max_crawl_delay: float
    """An origin whose robots.txt Crawl-delay is at most this is paced to it; over it, its images are skipped."""


def opted_out(values: list[str], token: str, directives: frozenset[str]) -> bool:
    """X-Robots-Tag values opting out: "noai, noimageai" (all agents) or "<token>: noai" (scoped to us)."""
    for value in values:
        scope, sep, rest = value.partition(":")
        if sep and scope.strip().lower() != token:
            continue  # scoped to another agent, or a directive with a value (unavailable_after: <date>)
        names = (rest if sep else value).split(",")
        if any(n.strip().lower() in directives for n in names):
            return True
    return False


class _Reader(io.RawIOBase):
    """What http.client reads the response from: the socket, with the deadline re-armed on every read."""

    def __init__(self, sock: _DeadlineSocket) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        return self._sock.recv_into(b)

    def close(self) -> None:
        if not self.closed:
            self._sock.reader_closed()
        super().close()


class _DeadlineSocket:
    """A connected socket whose every read and write gets min(read_timeout, time left until the deadline).

    Like socket.socket, it stays open while a reader made by makefile() is open: http.client "closes" the
    connection as soon as it has the headers of a `Connection: close` response, then reads the body."""

    def __init__(self, sock: socket.socket, deadline: float, read_timeout: float) -> None:
        self._sock, self._deadline, self._read_timeout = sock, deadline, read_timeout
        self._readers = 0
        self._closing = False

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("total time cap reached")
        self._sock.settimeout(min(self._read_timeout, left))

    def sendall(self, data: bytes) -> None:
        self._arm()
        self._sock.sendall(data)

    def recv_into(self, buf, nbytes: int = 0) -> int:
        self._arm()
        return self._sock.recv_into(buf, nbytes)

    def makefile(self, mode: str = "rb", buffering: int | None = None) -> io.BufferedReader:
        self._readers += 1
        return io.BufferedReader(_Reader(self), CHUNK)

    def reader_closed(self) -> None:
        self._readers -= 1
        if self._closing and self._readers <= 0:
            self._sock.close()

    def close(self) -> None:
        self._closing = True
        if self._readers <= 0:
            self._sock.close()


class _Exchange:
    """One request's connection and response; close() also frees the host's connection slot."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                 release: Callable[[], None]) -> None:
        self.conn, self.resp, self._release = conn, resp, release

    def close(self) -> None:
        try:
            self.resp.close()  # the response's reader holds the socket open
            self.conn.close()
        finally:
            self._release()


class Fetcher:
    """Thread-safe; keeps per-process caches (DNS answers, robots.txt rules) across calls and shards."""

    def __init__(self, policy: FetchPolicy, getaddrinfo: Callable = socket.getaddrinfo,
                 create_connection: Callable = socket.create_connection) -> None:
        self.policy = policy
        self.resolver = Resolver(policy.dns_ttl, getaddrinfo, negative_ttl=NEGATIVE_DNS_TTL)
        self.addresses = AddressPolicy(policy.allow, self.resolver)
        self.robots = RobotsCache(policy.token, self._fetch_robots, policy.robots_ttl)
        self._directives = frozenset(d.strip().lower() for d in policy.disallowed_directives)
        self._create_connection = create_connection
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._slots_lock = threading.Lock()
        self._next_turn: dict[str, float] = {}  # origin -> monotonic time its next image request may start
        self._pace_lock = threading.Lock()
        self._tls = ssl.create_default_context()

    # -- public ------------------------------------------------------------------------------------------

    def forget_failures(self) -> None:
        """Ask DNS and robots.txt again for what failed before (called as a shard or retry round starts)."""
        self.resolver.forget_failures()
        self.robots.forget_failures()

    def fetch_image(self, url: str) -> bytes:
        """The body of `url` after every check; FetchError(reason, detail) otherwise."""
        deadline = time.monotonic() + self.policy.total_timeout
        return self._guarded(url, lambda: self._image(url, deadline))

    # -- internals -----------------------------------------------------------------------------------------

    def _guarded(self, url: str, fn: Callable[[], bytes]) -> bytes:
        """Run fn, turning the standard library's exceptions into reasons."""
        try:
            return fn()
        except FetchError:
            raise
        except TimeoutError as exc:
            raise FetchError(E.TIMEOUT, f"{url!r}: {exc or 'timed out'}") from None
        except http.client.InvalidURL as exc:
            raise FetchError(E.BAD_URL, f"{url!r}: {exc}") from None
        except (http.client.HTTPException, ssl.SSLError, OSError) as exc:
            raise FetchError(E.CONNECTION_ERROR, f"{url!r}: {type(exc).__name__}: {exc}") from None

    def _image(self, url: str, deadline: float) -> bytes:
        ex, final_url = self._open(url, deadline, check_robots=True)
        try:
            resp = ex.resp
            if not 200 <= resp.status < 300:
                raise FetchError(E.http_reason(resp.status), f"{final_url!r}: HTTP Error {resp.status}: {resp.reason}")
            if self._directives and opted_out(resp.headers.get_all("X-Robots-Tag") or [], self.policy.token,
                                              self._directives):
                # Decided on the headers: the body is never read (the connection is closed below).
                raise FetchError(E.OPT_OUT, f"{final_url!r}: use of image disallowed by X-Robots-Tag directive")
            declared = resp.getheader("Content-Length")
            if declared and declared.strip().isdigit() and int(declared) > self.policy.max_bytes:
                raise FetchError(E.TOO_LARGE, f"{final_url!r}: Content-Length {declared} is over "
                                              f"pipeline.download.max_image_bytes={self.policy.max_bytes}")
            return self._read_image(resp, final_url)
        finally:
            ex.close()

    def _read_image(self, resp: http.client.HTTPResponse, url: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        header_checked = False
        while True:
            chunk = resp.read(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > self.policy.max_bytes:
                raise FetchError(E.TOO_LARGE, f"{url!r}: more than pipeline.download.max_image_bytes="
                                              f"{self.policy.max_bytes} bytes")
            chunks.append(chunk)
            if not header_checked and size >= min(HEADER_PREFIX_BYTES, CHUNK):
                # One attempt on the first bytes (the header of nearly every image): a bomb stops here.
                header_checked = True
                check_pixels(b"".join(chunks), self.policy.max_pixels, url, final=False)
        data = b"".join(chunks)
        check_pixels(data, self.policy.max_pixels, url, final=True)
        return data

    def _fetch_robots(self, endpoint: Endpoint) -> tuple[int, bytes]:
        url = endpoint.origin + "/robots.txt"
        deadline = time.monotonic() + self.policy.total_timeout

        def load() -> bytes:
            ex, _ = self._open(url, deadline, check_robots=False)
            try:
                status = ex.resp.status
                body = ex.resp.read(MAX_ROBOTS_BYTES) if 200 <= status < 300 else b""
                return status.to_bytes(2, "big") + body
            finally:
                ex.close()

        raw = self._guarded(url, load)
        return int.from_bytes(raw[:2], "big"), raw[2:]

    def _open(self, url: str, deadline: float, check_robots: bool) -> tuple[_Exchange, str]:
        """Follow redirects, checking every hop; the final non-redirect response (caller closes it)."""
        origin_url = url
        for hop in range(self.policy.max_redirects + 1):
            try:
                endpoint = parse_endpoint(url)
                addrs = self.addresses.addresses(endpoint, url)
            except FetchError as exc:
                if hop and exc.reason == E.SSRF_BLOCKED:
                    raise FetchError(E.SSRF_BLOCKED, f"redirect {hop} from {origin_url!r}: {exc.detail}") from None
                raise
            if check_robots:
                rules = self.robots.rules(endpoint)
                if not rules.allowed(path_and_query(url)):
                    via = f" (redirect {hop} from {origin_url!r})" if hop else ""
                    raise FetchError(E.ROBOTS_DISALLOWED, f"{url!r}{via}: disallowed by robots.txt for "
                                                          f"{self.policy.token!r}")
                # Waiting for our turn is the crawler's politeness, not the server's slowness: the time caps
                # start counting when the request may go out.
                deadline += self._pace(endpoint, rules.crawl_delay, url)
            ex = self._request(endpoint, addrs, url, deadline)
            if ex.resp.status not in REDIRECTS:
                return ex, url
            location = ex.resp.getheader("Location")
            ex.close()  # a redirect's body is never read
            if not location or not location.strip():
                raise FetchError(E.REDIRECT_ERROR, f"{url!r}: {ex.resp.status} without a Location")
            url = urljoin(url, location.strip())
        raise FetchError(E.REDIRECT_ERROR, f"{origin_url!r}: more than {self.policy.max_redirects} redirects")

    def _pace(self, endpoint: Endpoint, delay: float | None, url: str) -> float:
        """Sleep until `endpoint`'s origin may get its next image request (Crawl-delay seconds after the one
        before it, in this process); the seconds slept. Over max_crawl_delay: FetchError(crawl_delay)."""
        if not delay or delay <= 0:
            return 0.0
        if delay > self.policy.max_crawl_delay:
            raise FetchError(E.CRAWL_DELAY, f"{url!r}: robots.txt of {endpoint.origin} asks for Crawl-delay "
                                            f"{delay:g} s, over pipeline.download.max_crawl_delay="
                                            f"{self.policy.max_crawl_delay:g}")
        with self._pace_lock:  # turns are handed out in order; the sleeping happens outside the lock
            now = time.monotonic()
            turn = max(now, self._next_turn.get(endpoint.origin, now))
            self._next_turn[endpoint.origin] = turn + delay
        wait = turn - now
        if wait > 0:
            time.sleep(wait)
        return wait

    def _slot(self, endpoint: Endpoint) -> threading.BoundedSemaphore:
        with self._slots_lock:
            slot = self._slots.get(endpoint.authority)
            if slot is None:
                slot = self._slots[endpoint.authority] = threading.BoundedSemaphore(self.policy.max_host_connections)
            return slot

    def _request(self, endpoint: Endpoint, addrs: list[IPAddress], url: str, deadline: float) -> _Exchange:
        slot = self._slot(endpoint)
        if not slot.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise FetchError(E.TIMEOUT, f"{url!r}: no free connection to {endpoint.authority} before the total cap")
        conn: http.client.HTTPConnection | None = None
        try:
            cls = http.client.HTTPSConnection if endpoint.scheme == "https" else http.client.HTTPConnection
            kwargs = {"context": self._tls} if endpoint.scheme == "https" else {}
            conn = cls(endpoint.host, endpoint.port, timeout=self.policy.connect_timeout, **kwargs)
            # http.client connects through this attribute; pinning it is what makes the check above binding.
            conn._create_connection = self._pinned(addrs, deadline)  # type: ignore[attr-defined]
            conn.connect()  # TLS (https) is wrapped with server_hostname = the URL's host
            conn.sock = _DeadlineSocket(conn.sock, deadline, self.policy.read_timeout)
            conn.putrequest("GET", quote(path_and_query(url), safe=_SAFE_TARGET), skip_accept_encoding=True)
            conn.putheader("User-Agent", self.policy.user_agent)
            conn.putheader("Accept", "image/*,*/*;q=0.8")
            conn.putheader("Connection", "close")
            conn.endheaders()
            return _Exchange(conn, conn.getresponse(), slot.release)
        except BaseException:
            if conn is not None:
                conn.close()
            slot.release()
            raise

    def _pinned(self, addrs: list[IPAddress], deadline: float) -> Callable:
        """A create_connection that only ever connects to the checked addresses, in order."""

        def connect(address, timeout=None, source_address=None):  # http.client's call signature
            _, port = address
            last: Exception | None = None
            for ip in addrs:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    return self._create_connection((str(ip), port), min(self.policy.connect_timeout, left))
                except OSError as exc:
                    last = exc
            if last is not None:
                raise last
            raise TimeoutError("total time cap reached before connecting")

        return connect
