"""Test data for the filter/dedupe/shard tests: REAL img2dataset output downloaded from a loopback HTTP server.

The server serves synthetic scenes plus planted bad cases (truncated JPEG, tiny, extreme aspect, oversized,
exact duplicate bytes, same URL with reordered query, re-encoded/resized near duplicate, bad captions).
`download_fixture()` builds it once per test session (img2dataset takes seconds) and returns a `Planted` with
the folder and which uid is which.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from synthweb.scenes import SceneSpec, render

# Filter settings the tests use: max_pixels low enough that the planted 700x700 image trips it.
TEST_MAX_PIXELS = 400_000

CLEAN = [  # (name, spec, size, caption): distinct scenes with clean English captions
    ("red_circle", SceneSpec(shape="circle", colour="red"), (96, 96), "a large red circle on a gray background"),
    ("blue_square", SceneSpec(shape="square", colour="blue", position="left", background="beige"), (96, 96),
     "a blue square on the left"),
    ("green_star", SceneSpec(shape="star", colour="green", background="light blue"), (96, 96), "green star"),
    ("yellow_cross", SceneSpec(shape="cross", colour="yellow", background="dark"), (128, 96),
     "a yellow cross on a dark background"),
    ("purple_triangle", SceneSpec(shape="triangle", colour="purple", position="top"), (96, 128),
     "purple triangle at the top"),
    ("orange_diamonds", SceneSpec(shape="diamond", colour="orange", count=3, size="small", background="dark"),
     (96, 96), "three orange diamonds"),
    ("digit_7", SceneSpec(kind="glyph", glyph="7", colour="black", background="beige"), (96, 96), "the number 7"),
    ("letter_a", SceneSpec(kind="glyph", glyph="A", colour="white", background="dark"), (96, 96),
     "the letter A in white"),
    # The pHash trap: same layout and background, only the colour differs.
    ("small_red_circle", SceneSpec(shape="circle", colour="red", size="small"), (96, 96), "a small red circle"),
    ("small_blue_circle", SceneSpec(shape="circle", colour="blue", size="small"), (96, 96), "a small blue circle"),
    ("png_star", SceneSpec(shape="star", colour="white", background="gray"), (96, 96), "a white star, from a PNG"),
]
CAPTION_CASES = {  # name -> (caption, expected reason); images are clean distinct scenes
    "uninformative": ("IMG_2041.JPG", "uninformative"),
    "too_short": ("circle", "too_short"),
    "too_long": ("a red square " * 30, "too_long"),
    "language": ("drei blaue Sterne auf einem beigen Hintergrund", "language"),
    "language_fr": ("un cercle rouge sur un fond gris clair", "language"),
}
IMAGE_CASES = {  # name -> expected reason
    "truncated": "corrupt_image", "tiny": "too_small", "aspect": "aspect_ratio", "huge": "too_many_pixels",
}


def jpeg(img: Image.Image, quality: int = 92) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


@dataclass
class Planted:
    download_uri: str
    uid: dict[str, str] = field(default_factory=dict)  # case name -> uid
    expected_filter: dict[str, str | None] = field(default_factory=dict)  # uid -> expected reason (None: kept)

    def name(self, uid: str) -> str:
        return {v: k for k, v in self.uid.items()}[uid]


def _uid(i: int) -> str:
    return f"{i:08x}" + "ab" * 8


def _images() -> dict[str, tuple[bytes, str]]:
    """path -> (bytes, content type); also returns the captions via the module tables."""
    files: dict[str, tuple[bytes, str]] = {}
    for name, spec, size, _ in CLEAN:
        img = render(spec, size, seed=1)
        if name == "png_star":
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            files[f"/img/{name}.png"] = (buf.getvalue(), "image/png")
        else:
            files[f"/img/{name}.jpg"] = (jpeg(img), "image/jpeg")
    shapes = ["circle", "square", "triangle", "star", "cross"]
    for k, name in enumerate(CAPTION_CASES):
        spec = SceneSpec(shape=shapes[k % 5], colour="purple", background="light blue", count=2, size="small")
        files[f"/img/{name}.jpg"] = (jpeg(render(spec, (96, 96), seed=k)), "image/jpeg")
    full = jpeg(render(SceneSpec(shape="square", colour="orange"), (200, 200), seed=3))
    files["/img/truncated.jpg"] = (full[: len(full) * 6 // 10], "image/jpeg")
    files["/img/truncated_whole.jpg"] = (full, "image/jpeg")
    files["/img/tiny.jpg"] = (jpeg(render(SceneSpec(), (20, 20))), "image/jpeg")
    files["/img/aspect.jpg"] = (jpeg(render(SceneSpec(shape="star"), (400, 60))), "image/jpeg")
    files["/img/huge.jpg"] = (jpeg(render(SceneSpec(shape="diamond", colour="green"), (700, 700))), "image/jpeg")
    # Near duplicate of green_star: upscaled 4/3 and re-encoded at quality 60 (bigger, so it is the survivor).
    files["/img/green_star_big.jpg"] = (jpeg(render(CLEAN[2][1], (96, 96), seed=1).resize((128, 128)), 60),
                                        "image/jpeg")
    return files


def _handler(files: dict[str, tuple[bytes, str]]):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = urlsplit(self.path).path
            if path not in files:
                self.send_error(404)
                return
            data, ctype = files[path]
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    return Handler


def build_download(folder: str) -> Planted:
    import img2dataset

    files = _images()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    planted = Planted(download_uri=os.path.join(folder, "download"))
    rows = []

    def add(name: str, path: str, caption: str, expected: str | None) -> None:
        uid = _uid(len(rows))
        planted.uid[name], planted.expected_filter[uid] = uid, expected
        rows.append({"uid": uid, "url": base + path, "caption": caption, "page_url": f"{base}/page/{len(rows)}.html",
                     "source": "synthetic-web:test"})

    for name, _, _, caption in CLEAN:
        add(name, f"/img/{name}.{'png' if name == 'png_star' else 'jpg'}", caption, None)
    for name, (caption, reason) in CAPTION_CASES.items():
        add(name, f"/img/{name}.jpg", caption, reason)
    for name, reason in IMAGE_CASES.items():
        add(name, f"/img/{name}.jpg", "an orange square on a gray background", reason)
    # img2dataset decodes with OpenCV even with skip_reencode, and OpenCV refuses truncated JPEGs, so the
    # served truncated file never reaches a tar ("failed_to_resize"). The filter must still catch one that
    # does (a downloader run with disable_all_reencoding): truncate this one inside the tar after the download.
    planted.expected_filter.pop(planted.uid["truncated"])
    add("truncated_in_tar", "/img/truncated_whole.jpg", "an orange square on a gray background", "corrupt_image")
    add("exact_copy", "/img/red_circle.jpg?copy=1", "a red circle, copied", None)  # same bytes, other URL
    add("url_dup", "/img/blue_square.jpg?b=2&a=1", "blue square again", None)
    rows[1]["url"] = base + "/img/blue_square.jpg?a=1&b=2"  # same URL as url_dup once normalised
    add("near_dup", "/img/green_star_big.jpg", "a big green star", None)
    rows.append({"uid": _uid(len(rows)), "url": base + "/img/missing.jpg", "caption": "a missing image",
                 "page_url": base, "source": "synthetic-web:test"})  # a failed download
    candidates = os.path.join(folder, "candidates.parquet")
    pq.write_table(pa.Table.from_pylist(rows), candidates)
    try:
        img2dataset.download(
            url_list=candidates, input_format="parquet", url_col="url", caption_col="caption",
            output_folder=planted.download_uri, output_format="webdataset", resize_mode="no", skip_reencode=True,
            compute_hash="sha256", save_additional_columns=["uid", "page_url", "source"], processes_count=1,
            thread_count=8, enable_wandb=False, number_sample_per_shard=16, timeout=5, retries=0,
        )
    finally:
        server.shutdown()
        server.server_close()
    _truncate_in_tar(planted.download_uri, planted.uid["truncated_in_tar"])
    return planted


def _truncate_in_tar(download: str, uid: str) -> None:
    """Rewrite the tar holding `uid` with that sample's JPEG cut to 60% of its bytes."""
    for name in sorted(os.listdir(download)):
        if not name.endswith(".parquet"):
            continue
        table = pq.read_table(os.path.join(download, name)).to_pylist()
        keys = [r["key"] for r in table if r["uid"] == uid and r["status"] == "success"]
        if not keys:
            continue
        tar_path = os.path.join(download, name.replace(".parquet", ".tar"))
        with tarfile.open(tar_path) as tar:
            members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
        with tarfile.open(tar_path, "w") as tar:
            for m, data in members:
                if m.name == f"{keys[0]}.jpg":
                    data = data[: len(data) * 6 // 10]
                    m.size = len(data)
                tar.addfile(m, io.BytesIO(data) if data is not None else None)
        return
    raise AssertionError(f"{uid} was not downloaded: cannot plant a truncated JPEG")


_CACHE: dict = {}


def download_fixture() -> Planted:
    """Build the download output once per process (shared by the filter, dedupe and shard test modules)."""
    if "local" not in _CACHE:
        folder = tempfile.mkdtemp(prefix="witforge-curation-")
        atexit.register(shutil.rmtree, folder, True)
        _CACHE["local"] = build_download(folder)
    return _CACHE["local"]


def filter_test_config():
    from pipelines.stages.filter import FilterConfig

    return FilterConfig(max_pixels=TEST_MAX_PIXELS)


def filtered_fixture() -> str:
    """The filter stage run once on the download fixture (Ray must be initialised: use the ray_local fixture)."""
    from pipelines.stages import filter as filter_stage

    planted = download_fixture()
    if "filtered" not in _CACHE:
        out = os.path.join(os.path.dirname(planted.download_uri), "filtered")
        filter_stage.run(filter_test_config(), planted.download_uri, out)
        _CACHE["filtered"] = out
    return _CACHE["filtered"]


def deduped_fixture(spark) -> str:
    """The dedupe stage run once on filtered_fixture() (needs ray_local and spark)."""
    from pipelines.stages import dedupe

    filtered = filtered_fixture()
    if "dedupe" not in _CACHE:
        out = os.path.join(os.path.dirname(filtered), "dedupe")
        dedupe.run(spark, dedupe.DedupeConfig(), filtered, out)
        _CACHE["dedupe"] = out
    return _CACHE["dedupe"]
