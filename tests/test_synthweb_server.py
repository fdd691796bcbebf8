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
    _, by_kind, rows = served
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
        with pytest.raises(OSError, match="web.port"):
            with serve(cfg):
                pass


def test_shutdown_frees_the_port(tmp_path):
    cfg = WebConfig(dir=str(tmp_path), port=_free_port(), sites=1, pages=2, images_per_page=3,
                    decompression_bomb=0)
    for _ in range(2):  # a second server on the same port starts once the first has stopped
        with serve(cfg) as base:
            assert get(base + "/site-00/page-00000.html")[0] == 200
