"""The synthetic web server: each planted behaviour as a downloader sees it over real HTTP on 127.0.0.1."""

from __future__ import annotations

import io
import json
import socket
import struct
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import imagehash
import pytest
from PIL import Image

from synthweb.config import WebConfig
from synthweb.corpus import ensure_corpus
from synthweb.server import serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A small corpus with every fault frequent, served on a free port; yields (base_url, truth rows by kind)."""
    cfg = WebConfig(dir=str(tmp_path_factory.mktemp("web")), port=_free_port(), sites=2, pages=12,
                    images_per_page=10, dead_link=0.06, server_error=0.06, slow=0.05, non_image=0.06,
                    truncated=0.06, tiny=0.06, extreme_aspect=0.06, exact_dup=0.08, near_dup=0.08, noai=0.06,
                    slow_seconds=3.0)
    corpus = ensure_corpus(cfg)
    rows = [json.loads(x) for x in Path(corpus.truth_path).read_text(encoding="utf-8").splitlines()]
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        for k in r["planted"] or ["clean"]:
            by_kind.setdefault(k, []).append(r)
    with serve(cfg) as base:
        yield base, by_kind, {r["url"]: r for r in rows}


def get(url: str, timeout: float = 10.0, method: str = "GET"):
    """(status, headers, body) without raising on HTTP errors."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_clean_images_and_pages(served):
    base, by_kind, _ = served
    assert base.startswith("http://127.0.0.1:")
    for r in by_kind["clean"][:10]:
        status, headers, body = get(r["url"])
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and "X-Robots-Tag" not in headers
        img = Image.open(io.BytesIO(body))
        img.load()
        assert img.size == (r["width"], r["height"])
    page = by_kind["clean"][0]["page_url"]
    status, headers, body = get(page)
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"<img" in body
    status, headers, _ = get(by_kind["clean"][0]["url"], method="HEAD")
    assert status == 200 and int(headers["Content-Length"]) > 0
    # Relative src attributes resolve against the page to URLs the server answers.
    rel = next(r for r in by_kind["clean"] if not r["src"].startswith("http"))
    assert get(urljoin(rel["page_url"], rel["src"]))[0] == 200


def test_dead_links_and_server_errors(served):
    base, by_kind, _ = served
    for r in by_kind["dead_link"]:
        assert get(r["url"])[0] == 404
    assert {get(r["url"])[0] for r in by_kind["server_error"]} <= {500, 503}
    assert get(base + "/no/such/path.jpg")[0] == 404


def test_noai_non_image_tiny_and_extreme(served):
    _, by_kind, _ = served
    for r in by_kind["noai"]:
        status, headers, _ = get(r["url"])
        assert status == 200 and headers["X-Robots-Tag"] in ("noai", "noimageai", "noai, noimageai")
    for r in by_kind["non_image"]:
        status, headers, body = get(r["url"])
        assert status == 200 and headers["Content-Type"].startswith("text/html") and r["url"].endswith(".jpg")
        assert r["spec"] is None and body.lstrip().startswith(b"<!DOCTYPE html>")
    for kind, size in (("tiny", {(12, 12)}), ("extreme_aspect", {(600, 40), (40, 600)})):
        for r in by_kind[kind]:
            assert Image.open(io.BytesIO(get(r["url"])[2])).size in size


def test_truncated_jpeg_fails_a_full_decode(served):
    _, by_kind, _ = served
    for r in by_kind["truncated"]:
        status, headers, body = get(r["url"])
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        img = Image.open(io.BytesIO(body))  # the header is intact...
        with pytest.raises(OSError):
            img.load()  # ...the pixels are not


def test_decompression_bomb_is_small_but_declares_a_huge_image(served):
    _, by_kind, _ = served
    (r,) = by_kind["decompression_bomb"]
    status, headers, body = get(r["url"])
    assert status == 200 and headers["Content-Type"] == "image/png" and len(body) < 400_000
    assert body[:8] == b"\x89PNG\r\n\x1a\n" and body[12:16] == b"IHDR"
    assert struct.unpack(">II", body[16:24]) == (40000, 40000) == (r["width"], r["height"])
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(body))


def test_duplicates(served):
    _, by_kind, _ = served
    for r in by_kind["exact_dup"]:
        assert get(r["url"])[2] == get(r["dup_of"])[2]
    for r in by_kind["near_dup"]:
        a, b = get(r["url"])[2], get(r["dup_of"])[2]
        assert a != b
        ha = imagehash.phash(Image.open(io.BytesIO(a)))
        hb = imagehash.phash(Image.open(io.BytesIO(b)))
        assert ha - hb <= 12, (r["url"], ha - hb)


def test_slow_images_outlast_a_short_timeout(served):
    _, by_kind, _ = served
    r = by_kind["slow"][0]
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        get(r["url"], timeout=0.3)
    status, headers, _ = get(r["url"], timeout=30)
    assert status == 200 and headers["Content-Type"] == "image/jpeg"


def test_port_in_use_names_web_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        cfg = WebConfig(dir=str(tmp_path), port=s.getsockname()[1], sites=1, pages=2, images_per_page=3,
                        decompression_bomb=0)
        with pytest.raises(OSError, match="web.port"), serve(cfg):
            pass


def test_shutdown_frees_the_port(tmp_path):
    cfg = WebConfig(dir=str(tmp_path), port=_free_port(), sites=1, pages=2, images_per_page=3,
                    decompression_bomb=0)
    for _ in range(2):  # a second server on the same port starts once the first has stopped
        with serve(cfg) as base:
            assert get(base + "/site-00/page-00000.html")[0] == 200


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # surface the 3xx itself


def get_no_redirect(url: str):
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """A corpus where SSRF probes and robots-disallowed paths are frequent, served with a request log."""
    cfg = WebConfig(dir=str(tmp_path_factory.mktemp("probes")), port=_free_port(), sites=2, pages=10,
                    images_per_page=10, ssrf=0.3, robots_disallowed=0.2, decompression_bomb=0)
    corpus = ensure_corpus(cfg)
    rows = [json.loads(x) for x in Path(corpus.truth_path).read_text(encoding="utf-8").splitlines()]
    log: list = []
    with serve(cfg, request_log=log) as base:
        yield base, rows, log


def test_robots_txt_and_request_log(probes):
    from pipelines.fetch.robots import parse_robots

    base, rows, log = probes
    status, headers, body = get(base + "/robots.txt")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    rules = parse_robots(body.decode(), "witforge")
    for r in rows:
        for path in r["never_requested"]:
            if "robots_disallowed" in r["planted"]:
                assert not rules.allowed(path), path
    assert log[-1]["path"] == "/robots.txt" and log[-1]["status"] == 200 and log[-1]["host"] == base[7:]
    n = len(log)
    get(base + "/no/such.jpg")
    assert len(log) == n + 1 and log[-1]["path"] == "/no/such.jpg" and log[-1]["status"] == 404


def test_ssrf_probes_lead_back_to_a_real_image(probes):
    base, rows, _ = probes
    ssrf = [r for r in rows if "ssrf" in r["planted"]]
    assert {r["ssrf_target"] for r in ssrf} == {"loopback", "link_local"}
    for r in ssrf:
        if r["form"].startswith("redirect_"):
            assert r["url"].startswith(base + "/")  # the allowed server answers...
            status, headers, _ = get_no_redirect(r["url"])
            location = headers["Location"]
            assert status == 302 and not location.startswith(base) and location.endswith(r["never_requested"][0])
            served = base + r["never_requested"][0]  # ...with a redirect to loopback under another spelling
        elif r["ssrf_target"] == "link_local":
            assert r["url"].startswith(("http://169.254.169.254/", "http://[::ffff:a9fe:a9fe]/"))
            assert r["never_requested"] == [] and r["src"] == r["url"]
            continue  # never fetched: that address is not ours to contact
        else:
            assert not r["url"].startswith(base) and r["src"] == r["url"]
            assert r["url"].endswith(r["never_requested"][0])
            served = base + r["never_requested"][0]
        status, headers, body = get(served)  # fetched here through the allowed spelling only
        assert status == 200 and Image.open(io.BytesIO(body)).size == (r["width"], r["height"])


def test_robots_disallowed_paths(probes):
    base, rows, _ = probes
    planted = [r for r in rows if "robots_disallowed" in r["planted"]]
    assert {r["form"] for r in planted} == {"direct", "redirect"}
    for r in planted:
        (private,) = r["never_requested"]
        assert "/private/" in private
        if r["form"] == "redirect":
            status, headers, _ = get_no_redirect(r["url"])
            assert status == 302 and headers["Location"] == base + private and "/private/" not in r["url"]
        else:
            assert r["url"] == base + private
        assert get(base + private)[0] == 200
