"""dedupe (Spark): exact (normalized URL, SHA-256 of bytes) then perceptual (zoomed pHashes + fine checks).

CONTRACT (build.py calls it):
    run(spark, cfg: DedupeConfig, filtered_uri: str, out_uri: str) -> StageCounts
Input: the kept rows of every `filtered_uri/*.parquet`, read with pyarrow through pipelines.storage (Spark never
touches object storage), and their images in the download tars the rows name. Output: `out_uri/keep.parquet`
(survivors, every filter column), `out_uri/dropped.parquet` (uid, reason, dup_of), `out_uri/fingerprints.parquet`
(the survivors' perceptual fingerprints, which the decontam stage reuses), then `layout.commit`.

Survivor of a group of duplicates: largest width*height, then smallest uid (deterministic whatever the order).
Near duplicates are found without comparing all pairs. Every image has a fingerprint per zoom (its centred crops
at 1.0, 1.05, 1.10, 1.15: pipelines.stages.fingerprints), so a copy cropped by a few percent per side matches
the original's zoomed view. The 64 pHash bits are cut into d+1 bands; by the pigeonhole principle two hashes
within Hamming distance d agree on at least one whole band, so a self-join on (band index, band value), between
one image's full view and the other's views, yields every candidate pair. A candidate is a near duplicate when,
at that pair of views, the 64-bit pHashes are within d bits, the 256-bit pHashes within `fine_max_distance`
and the 8x8 RGB thumbnails within `thumb_max_diff` on average: pHash is computed on grayscale at low
resolution, and simple synthetic scenes (a small red vs a small blue circle, a small star vs a small cross on
gray) are within d bits of each other.

Measured on the synthetic web's ground truth (data/synthweb/v1, 6,206 filtered samples, truth.jsonl), defaults:
exact duplicates 196/196 removed; planted near duplicates 191/195 (98%: JPEG re-quality, resizes and 2-6% crops;
the 4 missed are 12-42 bits apart at every zoom); 2 pairs of different scenes merged. The previous rule (64-bit
pHash within 6 bits + 4x4 colour grid within 16, full view only) found 159/195 (crops: 25/57) and merged 165
samples of different scenes (small objects and glyphs). tests/test_pipelines_dedupe.py measures random scenes.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import layout, storage
from pipelines.funnel import StageCounts
from pipelines.stages.fingerprints import DEFAULT_ZOOMS, FINGERPRINT_SCHEMA, THUMB, fingerprint_rows, match_rows
from pipelines.urls import normalize_url

log = logging.getLogger(__name__)

DROPPED_SCHEMA = pa.schema([("uid", pa.string()), ("reason", pa.string()), ("dup_of", pa.string())])


@dataclass
class DedupeConfig:
    enabled: bool = True
    """false: every filter survivor passes through (no exact or near dedupe, no fingerprints published; decontam
    computes the ones it needs). For ablations such as benchmarks/curation_pays_off.py's no_dedupe row."""
    phash_max_distance: int = 6
    """Candidates: two views whose 64-bit pHashes differ in at most this many bits (also the band count - 1)."""
    fine_max_distance: int = 40
    """Near duplicates: the candidate views' 256-bit pHashes differ in at most this many bits..."""
    thumb_max_diff: float = 4.0
    """...and their 8x8 RGB thumbnails differ by at most this much per channel value on average (0-255)."""
    zooms: list[float] = field(default_factory=lambda: list(DEFAULT_ZOOMS))
    """Views fingerprinted per image: centred crops keeping 1/zoom of each side (1.0 = the whole image, always
    first): a copy cropped by up to ~(1 - 1/max zoom) per side still matches."""

    def __post_init__(self) -> None:
        if not 0 <= self.phash_max_distance < 32:
            raise ValueError(f"pipeline.dedupe.phash_max_distance: {self.phash_max_distance} must be in [0, 32)")
        if not 0 <= self.fine_max_distance <= 256:
            raise ValueError(f"pipeline.dedupe.fine_max_distance: {self.fine_max_distance} must be in [0, 256]")
        if not 0 <= self.thumb_max_diff <= 255:
            raise ValueError(f"pipeline.dedupe.thumb_max_diff: {self.thumb_max_diff} must be in [0, 255]")
        if not self.zooms or self.zooms[0] != 1.0 or any(not 1.0 <= z < 2.0 for z in self.zooms):
            raise ValueError(f"pipeline.dedupe.zooms: {self.zooms} must start with 1.0, each in [1, 2)")


def band_slices(max_distance: int) -> list[tuple[int, int]]:
    """(start bit, width) of max_distance+1 contiguous bands covering all 64 bits."""
    n = max_distance + 1
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    starts = [sum(widths[:i]) for i in range(n)]
    return list(zip(starts, widths))


def band_keys(phash: str, max_distance: int) -> list[str]:
    value = int(phash, 16)
    return [f"{i}:{(value >> (64 - s - w)) & ((1 << w) - 1)}" for i, (s, w) in enumerate(band_slices(max_distance))]


def read_kept(filtered_uri: str) -> pa.Table:
    parts = [u for u in storage.listdir(filtered_uri) if u.endswith(".parquet")]
    if not parts:
        raise FileNotFoundError(f"{filtered_uri}: no filtered parquet files to dedupe")
    tables = []
    for uri in parts:
        with storage.open_uri(uri) as f:
            t = pq.read_table(f)
        if "keep" not in t.column_names or "uid" not in t.column_names:
            raise ValueError(f"{uri}: not a filter-stage parquet (no keep/uid columns)")
        tables.append(t.filter(t.column("keep")))
    # Permissive: shards filtered before a column was added (a resumed older build) read as nulls there.
    return pa.concat_tables(tables, promote_options="permissive")


def _safe_norm(url: str) -> str:
    try:
        return normalize_url(url)
    except ValueError:  # downloaded, so http(s); keep the raw URL rather than fail the stage
        return url.strip()


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _exact(spark, rows, column: str) -> dict[str, str]:
    """{uid: survivor uid} for every non-survivor of a group sharing `column`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df = spark.createDataFrame([(r["uid"], r[column], r["area"]) for r in rows], "uid string, k string, area long")
    w = Window.partitionBy("k").orderBy(F.col("area").desc(), F.col("uid").asc())
    ranked = df.select("uid", F.row_number().over(w).alias("rank"), F.first("uid").over(w).alias("dup_of"))
    return {r["uid"]: r["dup_of"] for r in ranked.where("rank > 1").collect()}


def _band_frame(spark, fps: list[dict], max_distance: int):
    """One row per (uid, view, band) of fingerprints (pipelines.stages.fingerprints rows)."""
    from pyspark.sql import functions as F

    df = spark.createDataFrame(match_rows(fps, max_distance), "uid string, z double, hi long, lo long, "
                                                              "fine array<long>, th array<int>, bands array<string>")
    return df.select("uid", "z", "hi", "lo", "fine", "th", F.explode("bands").alias("band"))


def near_matches(spark, fps: list[dict], cfg: DedupeConfig, others: list[dict] | None = None) -> list[tuple]:
    """(uid, uid, 64-bit pHash distance at the closest matching views) of near-duplicate fingerprints.

    Without `others`: pairs within `fps` (first uid < second uid). With `others` (fingerprints of the same kind,
    e.g. the evaluation images the decontam stage checks): pairs (uid in fps, uid in others).
    One side of a pair is always a full view (zoom 1.0): a copy's full view against the other image's views.
    """
    from pyspark.sql import functions as F

    if not fps or (others is not None and not others):
        return []
    a = _band_frame(spark, fps, cfg.phash_max_distance).alias("a")
    b = (a if others is None else _band_frame(spark, others, cfg.phash_max_distance)).alias("b")
    on = (F.col("a.band") == F.col("b.band")) & ((F.col("a.z") == 1.0) | (F.col("b.z") == 1.0))
    if others is None:
        on = on & (F.col("a.uid") < F.col("b.uid"))
    n_thumb = 3 * THUMB * THUMB
    cand = (a.join(b, on)
            .select(F.col("a.uid").alias("u1"), F.col("b.uid").alias("u2"),
                    F.expr("bit_count(a.hi ^ b.hi) + bit_count(a.lo ^ b.lo)").alias("dist"),
                    F.expr("aggregate(zip_with(a.fine, b.fine, (x, y) -> bit_count(x ^ y)), 0, (s, v) -> s + v)")
                    .alias("fine"),
                    F.expr(f"aggregate(zip_with(a.th, b.th, (x, y) -> abs(x - y)), 0, (s, v) -> s + v) / {n_thumb}")
                    .alias("thumb"))
            .where((F.col("dist") <= cfg.phash_max_distance) & (F.col("fine") <= cfg.fine_max_distance)
                   & (F.col("thumb") <= cfg.thumb_max_diff))
            .groupBy("u1", "u2").agg(F.min("dist").alias("dist")))
    return sorted((r["u1"], r["u2"], int(r["dist"])) for r in cand.collect())


def near_pairs(spark, fps: list[dict], cfg: DedupeConfig) -> list[tuple[str, str]]:
    """Pairs (uid, uid) of near-duplicate images, via the banded self-join."""
    return [(u1, u2) for u1, u2, _ in near_matches(spark, fps, cfg)]


def better_image_key(row: dict) -> tuple:
    """Sort key putting the copy to keep first: largest width*height, then smallest uid (order-independent)."""
    return -int(row["width"]) * int(row["height"]), row["uid"]


def publish_parquet(uri: str, table: pa.Table) -> None:
    """Publish a table as one Parquet object, atomically (pipelines.storage)."""
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(uri, sink.getvalue())


def run(spark, cfg: DedupeConfig, filtered_uri: str, out_uri: str) -> StageCounts:
    kept = read_kept(filtered_uri)
    if not cfg.enabled:
        log.warning("stage dedupe skipped: pipeline.dedupe.enabled is false")
        publish_parquet(storage.join(out_uri, "keep.parquet"), kept.sort_by([("uid", "ascending")]))
        publish_parquet(storage.join(out_uri, "dropped.parquet"), pa.Table.from_pylist([], schema=DROPPED_SCHEMA))
        return layout.commit(out_uri, StageCounts("dedupe", input=kept.num_rows, output=kept.num_rows))
    rows = kept.to_pylist()
    for r in rows:
        r["area"] = int(r["width"]) * int(r["height"])
        r["norm_url"] = _safe_norm(r["url"])
    if len({r["uid"] for r in rows}) != len(rows):
        raise ValueError(f"{filtered_uri}: duplicate uids among kept rows (the extract stage's uids must be unique)")
    counts = StageCounts("dedupe", input=len(rows))
    dropped: list[dict] = []
    remaining = rows
    for column, reason in (("norm_url", "exact_url"), ("sha256", "exact_sha256")):
        dups = _exact(spark, remaining, column) if remaining else {}
        dropped += [{"uid": u, "reason": reason, "dup_of": d} for u, d in sorted(dups.items())]
        remaining = [r for r in remaining if r["uid"] not in dups]
    fps = fingerprint_rows(spark, remaining, cfg.zooms)
    if missing := len(remaining) - len({f["uid"] for f in fps}):
        log.warning("dedupe: %d images could not be read again for fingerprints: exact checks only", missing)
    uf = UnionFind()
    for u1, u2 in near_pairs(spark, fps, cfg):
        uf.union(u1, u2)
    groups: dict[str, list[dict]] = {}
    for r in remaining:
        groups.setdefault(uf.find(r["uid"]), []).append(r)
    survivors = []
    for members in groups.values():
        members.sort(key=better_image_key)
        survivors.append(members[0])
        dropped += [{"uid": r["uid"], "reason": "near_duplicate", "dup_of": members[0]["uid"]} for r in members[1:]]
    for d in dropped:
        counts.drop(d["reason"])
    counts.output = len(survivors)
    keep_uids = {r["uid"] for r in survivors}
    keep_table = kept.filter(pa.array([u in keep_uids for u in kept.column("uid").to_pylist()]))
    keep_table = keep_table.sort_by([("uid", "ascending")])
    publish_parquet(storage.join(out_uri, "keep.parquet"), keep_table)
    dropped.sort(key=lambda d: d["uid"])
    publish_parquet(storage.join(out_uri, "dropped.parquet"), pa.Table.from_pylist(dropped, schema=DROPPED_SCHEMA))
    publish_parquet(storage.join(out_uri, "fingerprints.parquet"),
                    pa.Table.from_pylist(sorted((f for f in fps if f["uid"] in keep_uids),
                                                key=lambda f: (f["uid"], f["zoom"])), schema=FINGERPRINT_SCHEMA))
    return layout.commit(out_uri, counts)


def read_keep(dedupe_uri: str) -> pa.Table:
    """The survivors table of a committed dedupe stage, or of a curation stage after it (what shard reads)."""
    uri = storage.join(dedupe_uri, "keep.parquet")
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri} does not exist: run the stage that writes it (dedupe or a later one) first")
    with storage.open_uri(uri) as f:
        return pq.read_table(f)

