"""extract stage: WARC (warcio) -> candidate parquet parts, on local files and on S3 (moto server), via Spark."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipelines import layout, storage
from pipelines.stages import extract
from pipelines.stages.html_images import classify, find_images, make_uid

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
# Same red circle with the same alt as on page A (a duplicate across files), plus a <base href>.
PAGE_B = """<html><head><base href="http://example.com/img/"></head><body>
<img src="red-circle.jpg" alt="a red circle"><img src='new.jpg' alt='a new one'>
<img src="new.jpg" alt="a new one">"""


def write_warc(path: str, pages: list[tuple[str, str, str]]) -> None:
    """pages: (target URI, content type, body). Also writes a request record and a non-HTML response."""
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


def read_parts(out_uri: str) -> dict[str, list[dict]]:
    parts = {}
    for uri in storage.listdir(out_uri):
        if uri.endswith(".parquet"):
            with storage.open_uri(uri) as f:
                parts[uri.rsplit("/", 1)[1]] = pq.read_table(f).to_pylist()
    return parts


def check_output(out_uri: str, warc_uris: list[str]) -> None:
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
    assert {r["source"] for r in a} == {warc_uris[0]} and {r["source"] for r in b} == {warc_uris[1]}
    counts = layout.committed(out_uri)
    assert counts is not None
    assert counts.to_json() == {"stage": "extract", "input": 11, "output": 4, "dropped": {
        "bad_url": 2, "data_uri": 1, "duplicate_candidate": 2, "no_alt": 2}}


def test_extract_local(spark, warcs, tmp_path):
    out = str(tmp_path / "candidates")
    counts = extract.run(spark, extract.ExtractConfig(), warcs, out)
    assert counts.output == 4
    check_output(out, warcs)
    # A rerun (e.g. after a kill before the commit) republishes identical parts.
    before = {u: storage.read_bytes(u) for u in storage.listdir(out)}
    extract.run(spark, extract.ExtractConfig(), warcs, out)
    assert {u: storage.read_bytes(u) for u in storage.listdir(out)} == before


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
    assert got[1] == (None, "bad_url")
    assert got[2][0].url == "https://cdn.example.test/q.jpg?a=1&b=2"
