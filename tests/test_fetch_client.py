"""The guarded client (pipelines.fetch.client) against a loopback server that logs every request: redirects
re-checked hop by hop, connections pinned to the checked address, robots.txt before any image request,
X-Robots-Tag, time, byte and pixel caps.

Every connection goes through a tripwire that fails the test if anything but 127.0.0.1 is dialled, so a
broken guard shows up as a failure here, never as traffic to a private or metadata address."""

from __future__ import annotations

import io
import socket
import time

import pytest
from PIL import Image

from pipelines.fetch.client import Fetcher, FetchPolicy, opted_out
from pipelines.fetch.errors import FetchError
from synthweb.images import bomb_png
from tests.loopback_http import QuietHandler, serving


def _jpeg(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buf, "JPEG")
    return buf.getvalue()


JPEG = _jpeg()
BOMB = bomb_png(40000)  # 1.6 gigapixels declared in ~200 KB
ROBOTS = b"User-agent: witforge\nDisallow: /private/\n\nUser-agent: *\nDisallow: /\n"


class _Handler(QuietHandler):
    log: list
    port: int

    def do_GET(self) -> None:
        self.log.append((self.path, self.headers.get("Host"), self.headers.get("User-Agent")))
        p = self.path
        moved = {"/redirect-ok": "/img.jpg", "/redirect-private": "/private/x.jpg",
                 "/redirect-localhost": f"http://localhost:{self.port}/img.jpg",
                 "/redirect-decimal": f"http://2130706433:{self.port}/img.jpg",
                 "/redirect-metadata": "http://169.254.169.254/latest/meta-data/",
                 "/redirect-loop": "/redirect-loop", "/redirect-ftp": "ftp://example.com/x.jpg"}
        if p in moved:
            self.reply(302, b"", "text/html", {"Location": moved[p]})
        elif p == "/robots.txt":
            self.reply(200, ROBOTS, "text/plain")
        elif p in ("/img.jpg", "/private/x.jpg", "/caf%C3%A9.jpg"):
            self.reply(200, JPEG, "image/jpeg")
        elif p.startswith("/noai"):
            tag = {"/noai.jpg": "noai", "/noai-other.jpg": "otherbot: noai", "/noai-ours.jpg": "witforge: noimageai",
                   "/noai-date.jpg": "unavailable_after: 25 Jun 2010 15:00:00 PST"}[p]
            self.reply(200, JPEG, "image/jpeg", {"X-Robots-Tag": tag})
        elif p == "/big-declared.jpg":
            self.reply(200, b"x" * 300_000, "image/jpeg")
        elif p == "/big-undeclared.jpg":  # HTTP/1.0, no Content-Length: the body ends when the server closes
            self.reply(200, b"x" * 300_000, "image/jpeg", length=False)
        elif p == "/bomb.png":
            self.reply(200, BOMB, "image/png")
        elif p == "/drip.jpg":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
        elif p == "/slow.jpg":
            time.sleep(2)
            self.reply(200, JPEG, "image/jpeg")
        elif p == "/busy.jpg":
            self.reply(503, b"busy", "text/plain")
        else:
            self.reply(404, b"not found", "text/plain")


@pytest.fixture(scope="module")
def server():
    log: list = []
    handler = type("H", (_Handler,), {"log": log})
    with serving(handler) as srv:
        handler.port = srv.server_address[1]
        yield f"127.0.0.1:{handler.port}", log


class Tripwire:
    """create_connection that only dials 127.0.0.1 and records what it dialled."""

    def __init__(self) -> None:
        self.dialled: list[tuple[str, int]] = []

    def __call__(self, address, timeout=None, source_address=None):
        assert address[0] == "127.0.0.1", f"the guard let a connection to {address} through"
        self.dialled.append(address)
        return socket.create_connection(address, timeout)


def policy(authority: str, **kw) -> FetchPolicy:
    base = {"user_agent": "Mozilla/5.0 (compatible; witforge/1.0; test)", "token": "witforge",
            "connect_timeout": 2.0, "read_timeout": 1.0, "total_timeout": 5.0, "max_bytes": 100_000,
            "max_pixels": 25_000_000, "max_redirects": 3, "allow": (authority,),
            "disallowed_directives": ("noai", "noimageai"), "robots_ttl": 3600.0, "dns_ttl": 60.0,
            "max_host_connections": 8, "max_crawl_delay": 10.0}
    return FetchPolicy(**{**base, **kw})


def fetcher(authority: str, dns: dict | None = None, **kw) -> tuple[Fetcher, Tripwire]:
    wire = Tripwire()

    def getaddrinfo(host, port, type=0, proto=0):
        table = {"localhost": ["127.0.0.1"], **(dns or {})}
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]]

    return Fetcher(policy(authority, **kw), getaddrinfo=getaddrinfo, create_connection=wire), wire


def reason(f: Fetcher, url: str) -> str:
    with pytest.raises(FetchError) as exc:
        f.fetch_image(url)
    return exc.value.reason


def paths(log: list) -> list[str]:
    return [p for p, _, _ in log]


def test_image_robots_and_user_agent(server):
    auth, log = server
    f, wire = fetcher(auth)
    assert f.fetch_image(f"http://{auth}/img.jpg") == JPEG
    assert f.fetch_image(f"http://{auth}/redirect-ok") == JPEG
    assert f.fetch_image(f"http://{auth}/café.jpg") == JPEG  # non-ASCII path: percent-encoded, as browsers do
    log_start = len(log)
    assert reason(f, f"http://{auth}/private/x.jpg") == "robots_disallowed"
    assert reason(f, f"http://{auth}/redirect-private") == "robots_disallowed"
    # Zero requests for the disallowed path, directly or through the redirect; robots.txt fetched once.
    assert "/private/x.jpg" not in paths(log)
    assert paths(log)[log_start:] == ["/redirect-private"]
    assert paths(log).count("/robots.txt") == 1
    assert all(ua == "Mozilla/5.0 (compatible; witforge/1.0; test)" for _, _, ua in log)
    assert all(host == auth for _, host, _ in log)
    assert set(wire.dialled) == {("127.0.0.1", int(auth.split(":")[1]))}


def test_every_redirect_hop_is_checked(server):
    auth, log = server
    f, wire = fetcher(auth)
    for path in ("/redirect-localhost", "/redirect-decimal", "/redirect-metadata"):
        before = len(log)
        with pytest.raises(FetchError) as exc:
            f.fetch_image(f"http://{auth}{path}")
        assert exc.value.reason == "ssrf_blocked" and "redirect 1" in exc.value.detail, path
        assert [p for p in paths(log)[before:] if p != "/robots.txt"] == [path]  # the allowed first hop only
    assert all(host == auth for _, host, _ in log)  # never a request with Host: localhost or 2130706433
    assert reason(f, f"http://{auth}/redirect-loop") == "redirect_error"
    assert reason(f, f"http://{auth}/redirect-ftp") == "bad_url"
    assert all(a[0] == "127.0.0.1" for a in wire.dialled)


def test_connection_is_pinned_to_the_checked_address(server):
    auth, log = server
    port = auth.split(":")[1]
    # "pinned.test" exists only in our fake DNS: had http.client resolved the name itself, it would fail.
    f, wire = fetcher(f"pinned.test:{port}", dns={"pinned.test": ["127.0.0.1"]})
    assert f.fetch_image(f"http://pinned.test:{port}/img.jpg") == JPEG
    assert log[-1][1] == f"pinned.test:{port}" and wire.dialled[-1] == ("127.0.0.1", int(port))
    # A name answering a public AND a private address (a rebinding set-up) is refused without dialling.
    f, wire = fetcher(auth, dns={"rebind.test": ["93.184.216.34", "127.0.0.1"]})
    assert reason(f, f"http://rebind.test:{port}/img.jpg") == "ssrf_blocked" and not wire.dialled
    # Not on the allow-list: loopback under any spelling is refused without dialling.
    f, wire = fetcher("127.0.0.1:1")
    for url in (f"http://{auth}/img.jpg", f"http://localhost:{port}/img.jpg", f"http://2130706433:{port}/img.jpg",
                f"http://[::ffff:127.0.0.1]:{port}/img.jpg", f"http://[::1]:{port}/img.jpg",
                "http://169.254.169.254/latest/meta-data/", "http://[::ffff:a9fe:a9fe]/"):
        assert reason(f, url) == "ssrf_blocked", url
    assert not wire.dialled


def test_x_robots_tag(server):
    auth, _ = server
    f, _ = fetcher(auth)
    assert reason(f, f"http://{auth}/noai.jpg") == "opt_out"
    assert reason(f, f"http://{auth}/noai-ours.jpg") == "opt_out"
    assert f.fetch_image(f"http://{auth}/noai-other.jpg") == JPEG
    assert f.fetch_image(f"http://{auth}/noai-date.jpg") == JPEG
    assert opted_out(["NoImageAI"], "witforge", frozenset({"noimageai"}))
    assert not opted_out(["index, follow"], "witforge", frozenset({"noai"}))


def test_caps(server):
    auth, _ = server
    f, _ = fetcher(auth)
    assert reason(f, f"http://{auth}/big-declared.jpg") == "too_large"
    assert reason(f, f"http://{auth}/big-undeclared.jpg") == "too_large"
    f_big, _ = fetcher(auth, max_bytes=1_000_000)
    assert reason(f_big, f"http://{auth}/bomb.png") == "too_many_pixels"
    f_small, _ = fetcher(auth, max_pixels=1000)  # 40x30 = 1200 pixels
    with pytest.raises(FetchError, match="40x30"):
        f_small.fetch_image(f"http://{auth}/img.jpg")
    t0 = time.monotonic()
    assert reason(f, f"http://{auth}/slow.jpg") == "timeout"  # read timeout 1 s < 2 s of silence
    assert time.monotonic() - t0 < 1.9
    f_total, _ = fetcher(auth, total_timeout=1.5)
    t0 = time.monotonic()
    assert reason(f_total, f"http://{auth}/drip.jpg") == "timeout"  # a byte every 0.2 s: only the total cap ends it
    assert time.monotonic() - t0 < 2.5


def test_http_errors_and_transience(server):
    auth, _ = server
    f, _ = fetcher(auth)
    with pytest.raises(FetchError) as exc:
        f.fetch_image(f"http://{auth}/busy.jpg")
    assert exc.value.reason == "http_5xx" and exc.value.transient
    with pytest.raises(FetchError) as exc:
        f.fetch_image(f"http://{auth}/missing.jpg")
    assert exc.value.reason == "http_404" and not exc.value.transient
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    f, _ = fetcher(f"127.0.0.1:{port}")
    with pytest.raises(FetchError) as exc:
        f.fetch_image(f"http://127.0.0.1:{port}/x.jpg")
    assert exc.value.reason == "connection_error" and "robots.txt" in exc.value.detail and exc.value.transient


def _paced_server(delay: str):
    """A host whose robots.txt asks every agent for `delay` seconds between requests; logs (time, path)."""
    log: list = []

    class Paced(QuietHandler):
        def do_GET(self) -> None:
            log.append((time.monotonic(), self.path))
            if self.path == "/robots.txt":
                self.reply(200, f"User-agent: *\nCrawl-delay: {delay}\nDisallow: /private/\n".encode(), "text/plain")
            elif self.path.startswith("/again"):
                self.reply(302, b"", "text/html", {"Location": "/img.jpg"})
            else:
                self.reply(200, JPEG, "image/jpeg")

    return serving(Paced), log


def test_crawl_delay_paces_image_requests_per_origin():
    import concurrent.futures

    ctx, log = _paced_server("0.3")
    with ctx as srv:
        auth = f"127.0.0.1:{srv.server_address[1]}"
        # The pacing wait must not eat the time caps: five images at 0.3 s each outlast total_timeout=1.0.
        f, _ = fetcher(auth, total_timeout=1.0)
        urls = [f"http://{auth}/{i}.jpg" for i in range(4)] + [f"http://{auth}/again-{i}" for i in range(1)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # eight threads ask at once
            bodies = list(pool.map(f.fetch_image, urls))
    assert bodies == [JPEG] * 5
    images = [t for t, p in log if p != "/robots.txt"]
    assert len(images) == 6  # four images, one redirect hop and its target: each hop waits its turn
    gaps = [b - a for a, b in zip(images, images[1:])]
    assert min(gaps) >= 0.3 - 0.02, gaps  # never two requests to the origin within its Crawl-delay


def test_crawl_delay_over_the_cap_skips_the_host_without_image_requests():
    ctx, log = _paced_server("30")
    with ctx as srv:
        auth = f"127.0.0.1:{srv.server_address[1]}"
        f, _ = fetcher(auth, max_crawl_delay=10.0)
        for i in range(3):
            with pytest.raises(FetchError) as exc:
                f.fetch_image(f"http://{auth}/{i}.jpg")
            assert exc.value.reason == "crawl_delay" and not exc.value.transient
            assert "max_crawl_delay=10" in exc.value.detail
        with pytest.raises(FetchError) as exc:  # robots.txt still decides first
            f.fetch_image(f"http://{auth}/private/x.jpg")
        assert exc.value.reason == "robots_disallowed"
    assert [p for _, p in log] == ["/robots.txt"]
