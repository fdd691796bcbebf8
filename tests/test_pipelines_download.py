"""download stage: img2dataset (Ray distributor) against a loopback HTTP server; failure kinds counted exactly;
reruns are no-ops and a killed shard is redone on resume; S3 output through the moto server."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import socketserver
import tarfile
import threading
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


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path in IMAGES or self.path == "/img/noai.jpg":
            body = IMAGES.get(self.path, IMAGES["/img/0.jpg"])
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            if self.path == "/img/noai.jpg":
                self.send_header("X-Robots-Tag", "noai, noimageai")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/img/page.jpg":  # not an image at all
            self._reply(200, b"<html><body>sorry</body></html>", "text/html")
        elif self.path == "/img/bomb.png":
            self._reply(200, BOMB, "image/png")
        elif self.path == "/img/busy.jpg":
            self._reply(503, b"busy", "text/plain")
        elif self.path == "/img/slow.jpg":
            time.sleep(8)  # longer than the download timeout
            self._reply(200, IMAGES["/img/0.jpg"], "image/jpeg")
        else:
            self._reply(404, b"not found", "text/plain")

    def _reply(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout case)
            pass

    def log_message(self, *args) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


@pytest.fixture(scope="module")
def image_server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket is closed


EXPECTED_DROPS = {"http_404": 1, "opt_out": 1, "decode_error": 2, "http_5xx": 1, "timeout": 1,
                  "connection_error": 1}


def write_candidates(base: str, uri: str) -> dict[str, str]:
    """Two candidate parts (as extract writes them) and their commit marker; returns {uid: path} of the
    candidates that must download."""
    good = list(IMAGES)
    bad = ["/img/missing.jpg", "/img/noai.jpg", "/img/page.jpg", "/img/busy.jpg", "/img/slow.jpg", "/img/bomb.png"]
    urls = [base + p for p in good + bad] + [f"http://127.0.0.1:{_closed_port()}/img/x.jpg"]
    rows = [{"uid": make_uid(u, f"caption {i}"), "url": u, "caption": f"caption {i}",
             "page_url": base + "/page.html", "source": "test.warc.gz"} for i, u in enumerate(urls)]
    half = len(rows) // 2
    for i, chunk in enumerate((rows[:half], rows[half:])):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(chunk), buf)
        storage.write_bytes(storage.join(uri, f"part-{i:05d}.parquet"), buf.getvalue())
    layout.commit(uri, StageCounts("extract", input=len(rows), output=len(rows)))
    return {r["uid"]: r["url"][len(base):] for r in rows[: len(good)]}


def check_outputs(out: str, good: dict[str, str], counts: StageCounts) -> dict[str, bytes]:
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
    return {u: storage.read_bytes(u) for u in storage.listdir(out) if not u.endswith(layout.COMMIT_MARKER)}


CFG = download.DownloadConfig(distributor="ray", number_sample_per_shard=4, thread_count=8, timeout=3)


def test_download_ray_local_resume(ray_local, image_server, tmp_path):
    cands, out = str(tmp_path / "candidates"), str(tmp_path / "download")
    good = write_candidates(image_server, cands)
    counts = download.run(CFG, EngineConfig(), cands, out)
    files = check_outputs(out, good, counts)

    # A rerun of a committed stage is a no-op.
    marker = storage.join(out, layout.COMMIT_MARKER)
    mtime = os.path.getmtime(marker)
    assert download.run(CFG, EngineConfig(), cands, out).to_json() == counts.to_json()
    assert os.path.getmtime(marker) == mtime

    # Simulate a kill in the middle of shard 00000 (no stats file, half a tar, no commit): resume redoes it only.
    os.remove(marker)
    os.remove(os.path.join(out, "00000_stats.json"))
    with open(os.path.join(out, "00000.tar"), "r+b") as f:
        f.truncate(1000)
    untouched = os.path.getmtime(os.path.join(out, "00002.tar"))
    again = download.run(CFG, EngineConfig(), cands, out)
    assert os.path.getmtime(os.path.join(out, "00002.tar")) == untouched
    check_outputs(out, good, again)
    assert again.to_json() == counts.to_json()
    assert set(files) <= set(storage.listdir(out))


def test_download_ray_s3(ray_local, image_server, s3_bucket):
    cands, out = f"{s3_bucket}/ds/v1/_work/candidates", f"{s3_bucket}/ds/v1/_work/download"
    good = write_candidates(image_server, cands)
    counts = download.run(CFG, EngineConfig(), cands, out)
    check_outputs(out, good, counts)


def test_download_requires_committed_candidates(tmp_path):
    with pytest.raises(FileNotFoundError, match="candidates"):
        download.run(CFG, EngineConfig(), str(tmp_path / "candidates"), str(tmp_path / "download"))


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
    ("failed_to_download", "hash mismatch", "other"),
])
def test_classify_error(status, message, reason):
    assert download.classify_error(status, message) == reason
