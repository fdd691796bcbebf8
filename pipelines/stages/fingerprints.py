"""Perceptual fingerprints for near-duplicate matching (dedupe, decontam): pHashes and thumbnails of zoomed views.

Each image gets one fingerprint per zoom z in `zooms` (default 1.0, 1.05, 1.10, 1.15): the central 1/z of the
image (a centred crop), resized by the hashes themselves, holding
    phash   64-bit pHash (imagehash's, via images.phash_hex): the key the banded join matches on
    fine    256-bit pHash (imagehash.phash, hash_size 16: the 16x16 lowest DCT frequencies of a 64x64 view)
    thumb   8x8 RGB thumbnail (box-filtered means, 192 bytes)
Why zooms: a copy cropped by a few percent on each side is, once resized, the original's zoomed view; pHash is
not crop-robust (3% recall on 10% crops at the zoom 1.0 alone), but the copy's full view matches the original's
zoomed view. Why `fine` and `thumb`: small objects on plain backgrounds (a small star vs a small cross, the
letter X vs Y) leave the 64-bit pHash and a 4x4 colour grid within a few bits; a 256-bit pHash sees their shape
and an 8x8 thumbnail their colour layout. Measured on the synthetic web: see pipelines/stages/dedupe.py.

`fingerprint_rows` computes them in Spark tasks, one per download tar, reading the members through
pipelines.storage (as the extract stage reads WARCs: Spark never touches object storage itself).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from PIL import Image

log = logging.getLogger(__name__)
DEFAULT_ZOOMS = (1.0, 1.05, 1.1, 1.15)
THUMB = 8  # thumbnail side
FINE_HASH_SIZE = 16  # 256-bit pHash
FINGERPRINT_SCHEMA = pa.schema([("uid", pa.string()), ("zoom", pa.float64()), ("phash", pa.string()),
                                ("fine", pa.string()), ("thumb", pa.binary())])


def zoomed(img: Image.Image, zoom: float) -> Image.Image:
    """The central 1/zoom of `img` (zoom 1.0: the image itself)."""
    if zoom == 1.0:
        return img
    w, h = img.size
    cw, ch = w / zoom, h / zoom
    return img.crop((round((w - cw) / 2), round((h - ch) / 2), round((w + cw) / 2), round((h + ch) / 2)))


def fingerprint(img: Image.Image, zooms=DEFAULT_ZOOMS) -> list[tuple[float, str, str, bytes]]:
    """(zoom, 64-bit pHash hex, 256-bit pHash hex, 8x8 RGB thumbnail bytes) per zoom."""
    import imagehash

    from pipelines.stages.images import phash_hex

    img = img.convert("RGB")
    out = []
    for z in zooms:
        view = zoomed(img, z)
        fine = imagehash.phash(view, hash_size=FINE_HASH_SIZE).hash.flatten()
        out.append((float(z), phash_hex(view), np.packbits(fine).tobytes().hex(),
                    view.resize((THUMB, THUMB), Image.Resampling.BOX).tobytes()))
    return out


def _fingerprint_tars(items: Iterator[tuple[str, list[tuple[str, str]]]], zooms: tuple, env: dict) -> Iterator:
    """Spark partition function: (tar URI, [(uid, key)]) -> (uid, zoom, phash, fine, thumb) rows."""
    from pipelines.stages.members import read_members

    os.environ.update(env)  # object-store settings of the driver (see pipelines.storage.storage_env)
    for tar_uri, members in items:
        data = read_members(tar_uri, {key for _, key in members})
        for uid, key in members:
            raw = data.get(key)
            if raw is None:
                continue  # the filter decoded it, so the tar changed since: no fingerprint, exact checks only
            try:
                img = Image.open(io.BytesIO(raw))
                img.load()
            except Exception as exc:  # the filter decoded it: a changed tar; no fingerprint, exact checks only
                log.warning("%s: %s cannot be decoded for fingerprints (%s)", tar_uri, uid, exc)
                continue
            for fp in fingerprint(img, zooms):
                yield (uid, *fp)


def fingerprint_rows(spark, rows: list[dict], zooms=DEFAULT_ZOOMS) -> list[dict]:
    """Fingerprints of rows (uid, key, src_tar), one Spark task per tar; rows whose image is gone get none."""
    from pipelines.storage import storage_env

    by_tar: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        by_tar.setdefault(r["src_tar"], []).append((r["uid"], r["key"]))
    if not by_tar:
        return []
    items, env, zs = sorted(by_tar.items()), storage_env(), tuple(zooms)
    rdd = spark.sparkContext.parallelize(items, len(items)).mapPartitions(lambda it: _fingerprint_tars(it, zs, env))
    return [dict(zip(FINGERPRINT_SCHEMA.names, t)) for t in rdd.collect()]


def match_rows(fps: list[dict], max_distance: int) -> list[tuple]:
    """Rows for the banded join: (uid, zoom, hi, lo, fine as 32-bit chunks, thumb values, band keys)."""
    from pipelines.stages.dedupe import band_keys

    out = []
    for f in fps:
        fine = bytes.fromhex(f["fine"])
        out.append((f["uid"], float(f["zoom"]), int(f["phash"][:8], 16), int(f["phash"][8:], 16),
                    [int.from_bytes(fine[i:i + 4], "big") for i in range(0, len(fine), 4)], list(f["thumb"]),
                    band_keys(f["phash"], max_distance)))
    return out


def read_fingerprints(stage_uri: str, uids: set[str], zooms) -> list[dict]:
    """The fingerprints a previous stage published (`<stage_uri>/fingerprints.parquet`) for `uids`, if they were
    computed with the same zooms; [] otherwise (the caller computes what is missing)."""
    import pyarrow.parquet as pq

    from pipelines import storage

    uri = storage.join(stage_uri, "fingerprints.parquet")
    if not storage.exists(uri):
        return []
    with storage.open_uri(uri) as f:
        rows = [r for r in pq.read_table(f).to_pylist() if r["uid"] in uids]
    if {r["zoom"] for r in rows} - {float(z) for z in zooms}:
        return []
    return rows
