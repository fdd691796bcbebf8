"""download stage: img2dataset (Ray distributor) with our guarded fetcher against a loopback HTTP server; failure
reasons counted exactly; transient failures retried per sample (never a success), across reruns up to the
limit; reruns are no-ops and a killed shard is redone on resume; S3 output through the moto server."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import layout, storage
from pipelines.engines import EngineConfig
from pipelines.funnel import StageCounts
from pipelines.stages import download
from pipelines.stages.html_images import make_uid
from tests.loopback_http import QuietHandler, serving


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _bomb_png(side: int) -> bytes:
    """A valid, tiny PNG declaring side*side pixels (a decompression bomb for the decoder)."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


BOMB = _bomb_png(6000)  # 36 M pixels: over DownloadConfig.max_image_pixels
IMAGES = {f"/img/{i}.jpg": _jpeg((40 * i, 200 - 30 * i, 90), (24 + 8 * i, 20 + 4 * i)) for i in range(4)}
REQUESTS: collections.Counter = collections.Counter()  # path -> GETs received (the server's request log)
FLAKY_FAILURES = 1  # /img/flaky.jpg answers 503 this many times, then the image


class _Handler(QuietHandler):
    def do_GET(self) -> None:
        REQUESTS[self.path] += 1
        if self.path == "/img/flaky.jpg":
            if REQUESTS[self.path] <= FLAKY_FAILURES:
                self.reply(503, b"try later", "text/plain")
            else:
                self.reply(200, IMAGES["/img/1.jpg"], "image/jpeg")
        elif self.path in IMAGES or self.path == "/img/noai.jpg":
            body = IMAGES.get(self.path, IMAGES["/img/0.jpg"])
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            if self.path == "/img/noai.jpg":
                self.send_header("X-Robots-Tag", "noai, noimageai")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/img/page.jpg":  # not an image at all
            self.reply(200, b"<html><body>sorry</body></html>", "text/html")
        elif self.path == "/img/bomb.png":
            self.reply(200, BOMB, "image/png")
        elif self.path == "/img/busy.jpg":
            self.reply(503, b"busy", "text/plain")
        elif self.path == "/img/slow.jpg":
            time.sleep(8)  # longer than the download timeout
            self.reply(200, IMAGES["/img/0.jpg"], "image/jpeg")
        else:
            self.reply(404, b"not found", "text/plain")


@pytest.fixture(scope="module")
def image_server():
    with serving(_Handler) as srv:
        yield f"http://127.0.0.1:{srv.server_address[1]}"


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket is closed


EXPECTED_DROPS = {"http_404": 1, "opt_out": 1, "decode_error": 1, "too_many_pixels": 1, "http_5xx": 1,
                  "timeout": 1, "connection_error": 1}
TRANSIENT_PATHS = ("/img/busy.jpg", "/img/slow.jpg")


def config(base: str, closed: int, **kw) -> download.DownloadConfig:
    """The test server and the closed port are loopback: only reachable through the allow-list."""
    allow = [base.removeprefix("http://"), f"127.0.0.1:{closed}"]
    return download.DownloadConfig(**{"distributor": "ray", "number_sample_per_shard": 4, "thread_count": 8,
                                      "timeout": 3, "sample_retries": 1, "retry_backoff": 0.0,
                                      "allow_private": allow, **kw})


def write_candidates(base: str, uri: str, closed: int) -> dict[str, str]:
    """Two candidate parts (as extract writes them) and their commit marker; returns {uid: path} of the
    candidates that must download."""
    good = list(IMAGES)
    bad = ["/img/missing.jpg", "/img/noai.jpg", "/img/page.jpg", "/img/busy.jpg", "/img/slow.jpg", "/img/bomb.png"]
    urls = [base + p for p in good + bad] + [f"http://127.0.0.1:{closed}/img/x.jpg"]
    rows = [{"uid": make_uid(u, f"caption {i}"), "url": u, "caption": f"caption {i}",
             "page_url": base + "/page.html", "source": "test.warc.gz"} for i, u in enumerate(urls)]
    half = len(rows) // 2
    for i, chunk in enumerate((rows[:half], rows[half:])):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(chunk), buf)
        storage.write_bytes(storage.join(uri, f"part-{i:05d}.parquet"), buf.getvalue())
    layout.commit(uri, StageCounts("extract", input=len(rows), output=len(rows)))
    return {r["uid"]: r["url"][len(base):] for r in rows[: len(good)]}


def check_outputs(out: str, good: dict[str, str], counts: StageCounts, attempts: int = 2) -> dict[str, bytes]:
    assert counts.to_json() == {"stage": "download", "input": 11, "output": 4, "dropped": dict(sorted(EXPECTED_DROPS.items()))}
    assert layout.committed(out).to_json() == counts.to_json()
    seen = {}
    tars = sorted(u for u in storage.listdir(out) if u.endswith(".tar"))
    assert len(tars) == 4  # 5 + 6 candidates, 4 per shard: shards 00000, 00001 (file 0), 00002, 00003 (file 1)
    for uri in tars:
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(uri))) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                img = members[name[:-5] + ".jpg"]
                assert meta["status"] == "success" and meta["sha256"] == hashlib.sha256(img).hexdigest()
                # skip_reencode: the stored bytes are exactly what the server sent
                assert img == IMAGES[good[meta["uid"]]]
                assert meta["width"] == Image.open(io.BytesIO(img)).width
                seen[meta["uid"]] = img
    assert set(seen) == set(good)
    # Every row, success or not, has its reason and attempts in the shard parquet (the lineage of a drop).
    rows = [r for u in storage.listdir(out) if u.endswith(".parquet") for r in pq.read_table(
        io.BytesIO(storage.read_bytes(u))).to_pylist()]
    assert len(rows) == 11
    for r in rows:
        assert r["reason"] == (None if r["status"] == "success" else download.classify_error(r["status"], r["error_message"]))
        transient = r["reason"] in ("http_5xx", "timeout", "connection_error")
        assert r["attempts"] == (attempts if transient else 1), r
    summary = storage.read_json(storage.join(out, "_stats", "summary.json"))
    assert summary["samples"] == 11 and summary["by_reason"]["success"] == 4
    return {u: storage.read_bytes(u) for u in storage.listdir(out) if u.rsplit("/", 1)[1][:1].isdigit()}


def test_download_ray_local_resume(ray_local, image_server, tmp_path):
    cands, out = str(tmp_path / "candidates"), str(tmp_path / "download")
    closed = _closed_port()
    cfg = config(image_server, closed)
    good = write_candidates(image_server, cands, closed)
    REQUESTS.clear()
    counts = download.run(cfg, EngineConfig(), cands, out)
    files = check_outputs(out, good, counts)
    # One attempt for every URL, two (sample_retries=1) for the transient failures only.
    assert all(REQUESTS[p] == 1 for p in list(IMAGES) + ["/img/missing.jpg", "/img/noai.jpg", "/img/bomb.png"])
    assert all(REQUESTS[p] == 2 for p in TRANSIENT_PATHS)

    # A rerun of a committed stage is a no-op.
    marker = storage.join(out, layout.COMMIT_MARKER)
    mtime = os.path.getmtime(marker)
    assert download.run(cfg, EngineConfig(), cands, out).to_json() == counts.to_json()
    assert os.path.getmtime(marker) == mtime

    # Simulate a kill in the middle of shard 00000 (no stats file, half a tar, no commit): resume redoes it only.
    os.remove(marker)
    os.remove(os.path.join(out, "00000_stats.json"))
    with open(os.path.join(out, "00000.tar"), "r+b") as f:
        f.truncate(1000)
    untouched = os.path.getmtime(os.path.join(out, "00002.tar"))
    again = download.run(cfg, EngineConfig(), cands, out)
    assert os.path.getmtime(os.path.join(out, "00002.tar")) == untouched
    check_outputs(out, good, again)
    assert again.to_json() == counts.to_json()
    assert set(files) <= set(storage.listdir(out))
    assert all(REQUESTS[p] == 2 for p in TRANSIENT_PATHS)  # at the limit already: not retried again


def test_download_ray_s3(ray_local, image_server, s3_bucket):
    cands, out = f"{s3_bucket}/ds/v1/_work/candidates", f"{s3_bucket}/ds/v1/_work/download"
    closed = _closed_port()
    good = write_candidates(image_server, cands, closed)
    counts = download.run(config(image_server, closed), EngineConfig(), cands, out)
    check_outputs(out, good, counts)


@pytest.mark.parametrize("distributor", ["ray", "multiprocessing"])
def test_retry_recovers_transient_failures_and_never_refetches_successes(ray_local, image_server, tmp_path,
                                                                          distributor):
    """A 503-then-200 URL is recovered by the retry round under its original key; a rerun with a higher
    limit retries the still-failing URL again and nothing else. With multiprocessing, img2dataset's spawned
    processes unpickle our downloader and the retry rounds run in the driver."""
    cands, out = str(tmp_path / "candidates"), str(tmp_path / "download")
    paths = ["/img/0.jpg", "/img/flaky.jpg", "/img/2.jpg", "/img/busy.jpg", "/img/missing.jpg"]
    rows = [{"uid": make_uid(image_server + p, f"c{i}"), "url": image_server + p, "caption": f"c{i}",
             "page_url": image_server + "/page.html", "source": "t"} for i, p in enumerate(paths)]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    storage.write_bytes(storage.join(cands, "part-00000.parquet"), buf.getvalue())
    layout.commit(cands, StageCounts("extract", input=5, output=5))
    REQUESTS.clear()
    counts = download.run(config(image_server, 1, number_sample_per_shard=10, distributor=distributor),
                          EngineConfig(), cands, out)
    assert counts.output == 3 and counts.dropped == {"http_5xx": 1, "http_404": 1}
    assert [REQUESTS[p] for p in paths] == [1, 2, 1, 2, 1]
    table = pq.read_table(os.path.join(out, "00000.parquet")).to_pylist()
    flaky = next(r for r in table if r["url"].endswith("flaky.jpg"))
    assert (flaky["status"], flaky["reason"], flaky["attempts"]) == ("success", None, 2)
    assert flaky["key"] == "000001" and flaky["sha256"] == hashlib.sha256(IMAGES["/img/1.jpg"]).hexdigest()
    with tarfile.open(os.path.join(out, "00000.tar")) as tf:
        names = [m.name for m in tf.getmembers()]
        meta = json.loads(tf.extractfile(f"{flaky['key']}.json").read())
        assert tf.extractfile(f"{flaky['key']}.jpg").read() == IMAGES["/img/1.jpg"]
    assert meta["key"] == flaky["key"] and meta["uid"] == flaky["uid"] and meta["status"] == "success"
    assert len(names) == len(set(names)) == 3 * 3  # jpg, txt, json of the three successes, once each
    assert not os.path.exists(os.path.join(out, "_retry"))
    summary = storage.read_json(os.path.join(out, "_stats", "summary.json"))
    assert summary["recovered_by_retry"] == 1 and summary["attempts"] == {"1": 3, "2": 2}
    host = image_server.removeprefix("http://")
    by_host = pq.read_table(os.path.join(out, "_stats", "by_host.parquet")).to_pylist()
    assert {(r["host"], r["reason"]): r["count"] for r in by_host} == {
        (host, "success"): 3, (host, "http_5xx"): 1, (host, "http_404"): 1}

    # A rerun with a higher limit (the stage not committed): only the transient failure is fetched again.
    os.remove(os.path.join(out, layout.COMMIT_MARKER))
    again = download.run(config(image_server, 1, number_sample_per_shard=10, sample_retries=3,
                                distributor=distributor), EngineConfig(), cands, out)
    assert again.to_json() == counts.to_json()
    assert [REQUESTS[p] for p in paths] == [1, 2, 1, 4, 1]
    busy = next(r for r in pq.read_table(os.path.join(out, "00000.parquet")).to_pylist() if "busy" in r["url"])
    assert busy["attempts"] == 4 and busy["reason"] == "http_5xx"


def test_download_requires_committed_candidates(tmp_path):
    with pytest.raises(FileNotFoundError, match="candidates"):
        download.run(download.DownloadConfig(), EngineConfig(), str(tmp_path / "candidates"), str(tmp_path / "download"))


@pytest.mark.parametrize("status,message,reason", [
    ("failed_to_download", "HTTP Error 404: Not Found", "http_404"),
    ("failed_to_download", "HTTP Error 403: Forbidden", "http_4xx"),
    ("failed_to_download", "HTTP Error 502: Bad Gateway", "http_5xx"),
    ("failed_to_download", "<urlopen error timed out>", "timeout"),
    ("failed_to_download", "The read operation timed out", "timeout"),
    ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", "connection_error"),
    ("failed_to_download", "Remote end closed connection without response", "connection_error"),
    ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive", "opt_out"),
    ("failed_to_resize", "Image decoding error", "decode_error"),
    ("failed_to_download", "<urlopen error [Errno -3] Temporary failure in name resolution>", "dns_error"),
    ("failed_to_download", "ssrf_blocked: 'http://2130706433/': non-canonical IPv4 literal", "ssrf_blocked"),
    ("failed_to_download", "robots_disallowed: 'http://h/p': disallowed by robots.txt", "robots_disallowed"),
    ("failed_to_download", "too_many_pixels: 'http://h/b.png': header declares 40000x40000", "too_many_pixels"),
    ("failed_to_download", "nonsense_reason: x", "other"),
    ("failed_to_download", "hash mismatch", "other"),
])
def test_classify_error(status, message, reason):
    assert download.classify_error(status, message) == reason


@pytest.mark.parametrize("field,value,match", [
    ("allow_private", ["127.0.0.1"], "allow_private\\[0\\]"), ("allow_private", ["http://h:1/"], "allow_private"),
    ("user_agent", "Mozilla/5.0 (compatible; otherbot)", "pipeline.download.user_agent"),
    ("user_agent_token", "wit forge", "user_agent_token"), ("total_timeout", 0, "total_timeout"),
    ("max_image_bytes", 0, "max_image_bytes"), ("sample_retries", -1, "sample_retries"),
    ("robots_cache_seconds", 90000, "robots_cache_seconds"), ("max_crawl_delay", -1, "max_crawl_delay"),
])
def test_bad_config_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        download.DownloadConfig(**{field: value})
