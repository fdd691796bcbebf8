"""extract stage: WARC and WAT (warcio) -> candidate parquet parts, on local files and on S3 (moto server), via
Spark; URL normalisation and drop reasons; the synthetic web's WAT converter against its WARCs."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipelines import layout, storage
from pipelines.stages import extract, records
from pipelines.stages.html_images import ImgTag, classify, find_images, language_hint, make_uid, parse_html
from pipelines.urls import MALFORMED, TOO_LONG, UNSUPPORTED_SCHEME, UrlError, normalize_url
from synthweb.wat import write_wat

PAGE_A = """<html><head><title>a</title></head><body>
<img src="/img/red-circle.jpg" alt="a  red
 circle">
<img src="img/blue.jpg" alt="">
<img src="http://cdn.example.org/x.jpg">
<img src="data:image/png;base64,iVBORw0KGgo=" alt="inline pixel">
<img src="ftp://files.example.org/y.jpg" alt="ftp image">
<img src="HTTP://Example.COM:80/img/green.jpg#frag" alt="green square"/>
<img alt="no src at all">
<p>broken <b>markup <img src="/img/star.jpg" alt="a star" <div>
</body>"""
# Same red circle with the same alt as on page A (a duplicate across files), plus a <base href> and a language
# declared both ways (a WAT keeps only the <meta> one; both say English).
PAGE_B = """<html lang="en-US"><head><meta http-equiv="Content-Language" content="en-GB">
<base href="http://example.com/img/"></head><body>
<img src="red-circle.jpg" alt="a red circle"><img src='new.jpg' alt='a new one'>
<img src="new.jpg" alt="a new one">"""
EXPECTED_DROPS = {"data_uri": 1, "duplicate_candidate": 2, "missing_src": 1, "no_alt": 2, "unsupported_scheme": 1}


def write_warc(path: str, pages: list[tuple[str, str, str]]) -> None:
    """pages: (target URI, content type, body). Also writes a request record before each response."""
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for uri, ctype, body in pages:
            w.write_record(w.create_warc_record(uri, "request", payload=io.BytesIO(b"GET / HTTP/1.0\r\n\r\n")))
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.0")
            w.write_record(w.create_warc_record(uri, "response", payload=io.BytesIO(body.encode("utf-8")),
                                                http_headers=headers))


@pytest.fixture()
def warcs(tmp_path) -> list[str]:
    a, b = str(tmp_path / "a.warc.gz"), str(tmp_path / "b.warc.gz")
    write_warc(a, [("http://example.com/site-00/page.html", "text/html; charset=utf-8", PAGE_A),
                   ("http://example.com/data.json", "application/json", '{"img": "<img src=x alt=y>"}')])
    write_warc(b, [("http://example.com/site-01/index.html", "text/html", PAGE_B)])
    return [a, b]


@pytest.fixture()
def wats(warcs, tmp_path) -> list[str]:
    out = []
    for i, path in enumerate(warcs):
        out.append(str(tmp_path / f"{i}.warc.wat.gz"))
        write_wat(path, out[-1])
    return out


def read_parts(out_uri: str) -> dict[str, list[dict]]:
    parts = {}
    for uri in storage.listdir(out_uri):
        if uri.endswith(".parquet"):
            with storage.open_uri(uri) as f:
                parts[uri.rsplit("/", 1)[1]] = pq.read_table(f).to_pylist()
    return parts


def check_output(out_uri: str, uris: list[str], expected_input: int = 11) -> None:
    parts = read_parts(out_uri)
    assert sorted(parts) == ["part-00000.parquet", "part-00001.parquet"]
    a, b = parts["part-00000.parquet"], parts["part-00001.parquet"]
    assert [(r["url"], r["caption"]) for r in a] == [
        ("http://example.com/img/red-circle.jpg", "a red circle"),
        ("http://example.com/img/green.jpg", "green square"),
        ("http://example.com/img/star.jpg", "a star"),
    ]
    # The red circle on page B is a duplicate of page A's ("...site-00..." < "...site-01..." as page_url).
    assert [(r["url"], r["caption"]) for r in b] == [("http://example.com/img/new.jpg", "a new one")]
    for r in a + b:
        assert r["uid"] == make_uid(r["url"], r["caption"])
    assert {r["page_url"] for r in a} == {"http://example.com/site-00/page.html"}
    assert {r["source"] for r in a} == {uris[0]} and {r["source"] for r in b} == {uris[1]}
    assert {r["page_lang"] for r in a} == {""} and {r["page_lang"] for r in b} == {"en"}
    counts = layout.committed(out_uri)
    assert counts is not None
    drops = dict(EXPECTED_DROPS)
    if expected_input == 10:  # a WAT has no IMG@/src link for an <img> without a src attribute
        del drops["missing_src"]
    assert counts.to_json() == {"stage": "extract", "input": expected_input, "output": 4, "dropped": drops}


def test_extract_local(spark, warcs, tmp_path):
    out = str(tmp_path / "candidates")
    counts = extract.run(spark, extract.ExtractConfig(), warcs, out)
    assert counts.output == 4
    check_output(out, warcs)
    # A rerun (e.g. after a kill before the commit) republishes identical parts (the marker holds a time).
    before = {u: storage.read_bytes(u) for u in storage.listdir(out) if u.endswith(".parquet")}
    extract.run(spark, extract.ExtractConfig(), warcs, out)
    assert {u: storage.read_bytes(u) for u in storage.listdir(out) if u.endswith(".parquet")} == before


def test_extract_wat_gives_the_warc_candidates(spark, warcs, wats, tmp_path):
    out_warc, out_wat = str(tmp_path / "from-warc"), str(tmp_path / "from-wat")
    extract.run(spark, extract.ExtractConfig(), warcs, out_warc)
    extract.run(spark, extract.ExtractConfig(), wats, out_wat)
    check_output(out_wat, wats, expected_input=10)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "source"} for r in rows]
    warc_parts, wat_parts = read_parts(out_warc), read_parts(out_wat)
    assert {k: strip(v) for k, v in wat_parts.items()} == {k: strip(v) for k, v in warc_parts.items()}


def test_extract_s3(spark, warcs, s3_bucket):
    uris = []
    for i, path in enumerate(warcs):
        uri = f"{s3_bucket}/crawl/{i}.warc.gz"
        storage.put_file(path, uri)
        uris.append(uri)
    out = f"{s3_bucket}/ds/v1/_work/candidates"
    extract.run(spark, extract.ExtractConfig(), uris, out)
    check_output(out, uris)


def test_extract_missing_warc_named(spark, tmp_path):
    missing = str(tmp_path / "nope.warc.gz")
    with pytest.raises(FileNotFoundError, match="nope.warc.gz"):
        extract.run(spark, extract.ExtractConfig(), [missing], str(tmp_path / "out"))


def test_extract_corrupt_warc_named(spark, tmp_path):
    bad = tmp_path / "bad.warc.gz"
    bad.write_bytes(b"<html>not a WARC file</html>\n")
    with pytest.raises(Exception, match="bad.warc.gz"):
        extract.run(spark, extract.ExtractConfig(), [str(bad)], str(tmp_path / "out"))
    assert layout.committed(str(tmp_path / "out")) is None


def test_classify_rules():
    page = "https://h.example.test/dir/p.html"
    imgs, base = find_images('<img src="../i.png" alt=" x "><IMG SRC="javascript:alert(1)" ALT="y">'
                             '<img src="//cdn.example.test/q.jpg?b=2&a=1" alt="xyz">', page)
    assert base == page
    got = [classify(i, base, min_alt_chars=2) for i in imgs]
    assert got[0] == (None, "no_alt")  # "x" is shorter than 2 chars
    assert got[1] == (None, "unsupported_scheme")
    assert got[2][0].url == "https://cdn.example.test/q.jpg?a=1&b=2"


@pytest.mark.parametrize("src, reason", [
    ("https:///no-host.jpg", MALFORMED),
    ("http://exa mple.com/x.jpg", MALFORMED),
    ("http://[::1/x.jpg", MALFORMED),
    ("http://example.com:99999/x.jpg", MALFORMED),
    ("http://example.com:port/x.jpg", MALFORMED),
    ("http://999.1.1.1/x.jpg", MALFORMED),
    ("http://ex_ample..com/x.jpg", MALFORMED),
    ("ftp://example.com/x.jpg", UNSUPPORTED_SCHEME),
    ("javascript:void(0)", UNSUPPORTED_SCHEME),
    ("mailto:someone@example.com", UNSUPPORTED_SCHEME),
    ("blob:https://example.com/5c1f", UNSUPPORTED_SCHEME),
    ("http://example.com/" + "a" * 3000, TOO_LONG),
])
def test_malformed_urls_counted_by_reason(src, reason):
    cand, got = classify(ImgTag(src=src, alt="a caption"), "http://example.com/page.html")
    assert (cand, got) == (None, reason)
    with pytest.raises(UrlError) as exc:
        normalize_url(src)
    assert exc.value.reason == reason and isinstance(exc.value, ValueError)


def test_data_uri_and_missing_src():
    base = "http://example.com/p.html"
    assert classify(ImgTag(src="  DATA:image/gif;base64,R0lG", alt="x"), base) == (None, "data_uri")
    assert classify(ImgTag(src=None, alt="x"), base) == (None, "missing_src")
    assert classify(ImgTag(src=" \t", alt="x"), base) == (None, "missing_src")
    # A relative src with no page URL to resolve it against cannot be fetched.
    assert classify(ImgTag(src="img/x.jpg", alt="x"), "") == (None, "malformed_url")


@pytest.mark.parametrize("url, expected", [
    ("HTTP://Example.COM:80/a/b.jpg#frag", "http://example.com/a/b.jpg"),
    ("https://example.com:443", "https://example.com/"),
    ("http://example.com:8080/x.jpg?", "http://example.com:8080/x.jpg"),
    ("http://user:pw@example.com/x.jpg", "http://example.com/x.jpg"),
    ("http://ex\nample.com/a\tb.jpg", "http://example.com/ab.jpg"),  # browsers drop tabs and newlines
    ("http://example.com/a b/ü.jpg", "http://example.com/a%20b/%C3%BC.jpg"),
    ("http://example.com/a%20b.jpg", "http://example.com/a%20b.jpg"),  # existing escapes are kept
    ("http://bücher.example/x.jpg", "http://xn--bcher-kva.example/x.jpg"),
    ("http://[2001:DB8::1]:8080/x.jpg", "http://[2001:db8::1]:8080/x.jpg"),
    ("http://Example.com./X.JPG", "http://example.com/X.JPG"),
])
def test_normalize_url(url, expected):
    assert normalize_url(url) == expected
    assert normalize_url(expected) == expected  # idempotent


def test_language_hints():
    assert language_hint(None, "", "en-US") == "en"
    assert language_hint("EN_gb, fr") == "en"
    assert language_hint("x-default", "*", "de") == "de"
    assert language_hint("") == ""
    page = parse_html('<html lang="fr"><meta name="language" content="de">', "http://e.com/", "es")
    assert page.lang == "fr"
    assert parse_html('<meta name="Language" content="de">', "http://e.com/", "es").lang == "de"
    assert parse_html("<p>nothing</p>", "http://e.com/", "es").lang == "es"


def test_wat_layout(warcs, wats):
    """The converter writes Common Crawl's layout: warcinfo, then one JSON metadata record per source record."""
    with open(wats[0], "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    with open(warcs[0], "rb") as f:
        source = [(r.rec_type, r.rec_headers.get_header("WARC-Record-ID")) for r in ArchiveIterator(f)]
    with open(wats[0], "rb") as f:
        recs = [(r.rec_type, dict(r.rec_headers.headers), r.content_stream().read()) for r in ArchiveIterator(f)]
    assert recs[0][0] == "warcinfo"
    assert [h["WARC-Refers-To"] for _, h, _ in recs[1:]] == [rid for _, rid in source]
    assert {t for t, _, _ in recs[1:]} == {"metadata"}
    assert {h["Content-Type"] for _, h, _ in recs[1:]} == {"application/json"}
    payloads = [json.loads(body) for _, _, body in recs[1:]]
    html = payloads[1]["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]["HTML-Metadata"]
    imgs = [link for link in html["Links"] if link["path"] == "IMG@/src"]
    assert imgs[0] == {"path": "IMG@/src", "url": "/img/red-circle.jpg", "alt": "a  red\n circle"}
    assert "alt" not in imgs[2]  # the tag had none
    assert payloads[1]["Container"]["Gzip-Metadata"]["Header-Length"] == "10"
    assert payloads[1]["Envelope"]["WARC-Header-Metadata"]["WARC-Type"] == "response"
    # The JSON page of the second response is not HTML: no HTML-Metadata, so no page for extract.
    assert "HTML-Metadata" not in payloads[3]["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]


def test_wat_of_the_synthetic_web(tmp_path):
    """Every page of a small synthetic corpus reads the same from its WARC and from its WAT (except <html lang>,
    which WAT files do not keep), and the WAT bytes are a function of the WARC bytes."""
    from synthweb.config import WebConfig
    from synthweb.corpus import ensure_corpus
    from synthweb.wat import ensure_wats

    corpus = ensure_corpus(WebConfig(dir=str(tmp_path / "web"), sites=2, pages=12, images_per_page=6,
                                     pages_per_warc=5))
    paths = ensure_wats(corpus)
    assert len(paths) == len(corpus.warc_paths) == 3

    def pages(path: str) -> list[tuple]:
        out = []
        with open(path, "rb") as f:
            for record in ArchiveIterator(f):
                found = records.read_page(record, 5_000_000)
                if found:
                    url, page = found
                    out.append((url, page.base, [classify(i, page.base) for i in page.imgs]))
        return out

    for warc, wat in zip(corpus.warc_paths, paths):
        assert pages(warc) == pages(wat) and len(pages(wat)) > 0
    before = Path(paths[0]).read_bytes()
    (tmp_path / "again").mkdir()
    write_wat(corpus.warc_paths[0], str(tmp_path / "again" / "00000.warc.wat.gz"))
    assert (tmp_path / "again" / "00000.warc.wat.gz").read_bytes() == before
    assert gzip.decompress(before).startswith(b"WARC/1.0")


def test_bad_wat_record_is_skipped_not_fatal(tmp_path):
    path = str(tmp_path / "bad.wat.gz")
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for body in (b"{not json", b'{"Envelope": 3}', b'{"Container": {}}'):
            w.write_record(w.create_warc_record("http://e.com/", "metadata", payload=io.BytesIO(body),
                                                length=len(body), warc_content_type="application/json"))
    with open(path, "rb") as f:
        for record in ArchiveIterator(f):
            with pytest.raises(records.BadWatRecord):
                records.read_page(record, 5_000_000)
    stats = list(extract.parse_file(0, path, extract.ExtractConfig(), {}))
    assert stats == [("stats", 0, {"_imgs": 0, "_pages": 0, "_bad_wat_records": 3})]
