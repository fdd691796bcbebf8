"""dedupe (Spark): exact (normalized URL, SHA-256 of bytes) then perceptual (64-bit pHash + colour signature).

CONTRACT (build.py calls it):
    run(spark, cfg: DedupeConfig, filtered_uri: str, out_uri: str) -> StageCounts
Input: the kept rows of every `filtered_uri/*.parquet`, read with pyarrow through pipelines.storage (Spark never
touches object storage). Output: `out_uri/keep.parquet` (survivors, every filter column) and
`out_uri/dropped.parquet` (uid, reason, dup_of), then `layout.commit`.

Survivor of a group of duplicates: largest width*height, then smallest uid (deterministic whatever the order).
Near duplicates are found without comparing all pairs: the 64 pHash bits are cut into d+1 bands, and by the
pigeonhole principle two hashes within Hamming distance d agree on at least one whole band, so a self-join on
(band index, band value) yields every candidate pair. pHash is computed on grayscale, and simple synthetic scenes
(a small red vs a small blue circle on gray) can be within d bits: a pair also needs close colour signatures
(mean RGB of a 4x4 grid, computed by the filter stage). Measured on 300 random scenes (44,850 pairs, 139 distinct
pairs within 10 bits) with the defaults: 0 false pairs; recall 98% on JPEG q50 re-encodes, 100% on 1.5x
upscales, 98% on 2/3 downscales, 42% on 5% crops, 3% on 10% crops (pHash is not crop-robust).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import layout, storage
from pipelines.funnel import StageCounts
from pipelines.stages.images import signature_values
from pipelines.urls import normalize_url

DROPPED_SCHEMA = pa.schema([("uid", pa.string()), ("reason", pa.string()), ("dup_of", pa.string())])


@dataclass
class DedupeConfig:
    phash_max_distance: int = 6
    """Two images whose 64-bit pHashes differ in at most this many bits are near duplicates (if colours agree too)."""
    colour_max_diff: int = 16
    """...and no cell channel of their 4x4 mean-RGB signatures differs by more than this (0-255)."""

    def __post_init__(self) -> None:
        if not 0 <= self.phash_max_distance < 32:
            raise ValueError(f"pipeline.dedupe.phash_max_distance: {self.phash_max_distance} must be in [0, 32)")


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
    return pa.concat_tables(tables)


def _safe_norm(url: str) -> str:
    try:
        return normalize_url(url)
    except ValueError:  # downloaded, so http(s); keep the raw URL rather than fail the stage
        return url.strip()


class _UnionFind:
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


def near_pairs(spark, rows, cfg: DedupeConfig) -> list[tuple[str, str]]:
    """Pairs (uid, uid) within cfg.phash_max_distance bits and cfg.colour_max_diff, via a banded self-join."""
    from pyspark.sql import functions as F

    data = [(r["uid"], int(r["phash"][:8], 16), int(r["phash"][8:], 16), signature_values(r["colour_sig"]),
             band_keys(r["phash"], cfg.phash_max_distance)) for r in rows]
    if not data:
        return []
    df = spark.createDataFrame(data, "uid string, hi long, lo long, sig array<int>, bands array<string>")
    exploded = df.select("uid", "hi", "lo", "sig", F.explode("bands").alias("band"))
    a, b = exploded.alias("a"), exploded.alias("b")
    cand = (a.join(b, (F.col("a.band") == F.col("b.band")) & (F.col("a.uid") < F.col("b.uid")))
            .select(F.col("a.uid").alias("u1"), F.col("b.uid").alias("u2"),
                    F.expr("bit_count(a.hi ^ b.hi) + bit_count(a.lo ^ b.lo)").alias("dist"),
                    F.expr("aggregate(zip_with(a.sig, b.sig, (x, y) -> abs(x - y)), 0, (m, v) -> greatest(m, v))")
                    .alias("cdiff"))
            .where((F.col("dist") <= cfg.phash_max_distance) & (F.col("cdiff") <= cfg.colour_max_diff))
            .select("u1", "u2").distinct())
    return sorted((r["u1"], r["u2"]) for r in cand.collect())


def _publish(uri: str, table: pa.Table) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(uri, sink.getvalue())


def run(spark, cfg: DedupeConfig, filtered_uri: str, out_uri: str) -> StageCounts:
    kept = read_kept(filtered_uri)
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
    uf = _UnionFind()
    for u1, u2 in near_pairs(spark, remaining, cfg):
        uf.union(u1, u2)
    groups: dict[str, list[dict]] = {}
    for r in remaining:
        groups.setdefault(uf.find(r["uid"]), []).append(r)
    survivors = []
    for members in groups.values():
        members.sort(key=lambda r: (-r["area"], r["uid"]))
        survivors.append(members[0])
        dropped += [{"uid": r["uid"], "reason": "near_duplicate", "dup_of": members[0]["uid"]} for r in members[1:]]
    for d in dropped:
        counts.drop(d["reason"])
    counts.output = len(survivors)
    keep_uids = {r["uid"] for r in survivors}
    keep_table = kept.filter(pa.array([u in keep_uids for u in kept.column("uid").to_pylist()]))
    keep_table = keep_table.sort_by([("uid", "ascending")])
    _publish(storage.join(out_uri, "keep.parquet"), keep_table)
    dropped.sort(key=lambda d: d["uid"])
    _publish(storage.join(out_uri, "dropped.parquet"), pa.Table.from_pylist(dropped, schema=DROPPED_SCHEMA))
    return layout.commit(out_uri, counts)


def read_keep(dedupe_uri: str) -> pa.Table:
    """The survivors table of a committed dedupe stage (what shard reads)."""
    uri = storage.join(dedupe_uri, "keep.parquet")
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri} does not exist: run the dedupe stage first")
    with storage.open_uri(uri) as f:
        return pq.read_table(f)

