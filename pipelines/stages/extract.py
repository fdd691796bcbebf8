"""extract (Spark): WARC or WAT files -> candidate (uid, url, caption, page_url, source, page_lang) rows in Parquet.

CONTRACT (owned by the extract/download helper; build.py calls it):
    run(spark, cfg: ExtractConfig, warc_uris: list[str], out_uri: str) -> StageCounts
- Reads each file (local or s3://, gzip'd or not; WARC or WAT, as Common Crawl publishes them, decided per
  record by pipelines.stages.records) with warcio inside Spark tasks (one task per file, files opened through
  pipelines.storage/fsspec: no Hadoop S3A). WARC: every `response` record with an HTML content type is parsed
  (pipelines.stages.html_images). WAT: every JSON `metadata` record describing an HTML response contributes
  its Links with path IMG@/src (url, alt). Every image link is counted and either kept or dropped with a reason:
  data_uri, missing_src, malformed_url (no host, bad port or host, unparsable), unsupported_scheme (not
  http/https), too_long (over max_url_chars), no_alt (alt missing or shorter than min_alt_chars). A JSON
  metadata record that is not a WAT envelope is skipped and logged (it holds no countable image).
- url = the src resolved against WARC-Target-URI (or <base href>) and normalised (pipelines.urls.normalize_url);
  caption = alt with whitespace collapsed; uid = sha256(url + "\\t" + caption) hex, first 24 chars;
  page_lang = the page's declared language (primary subtag, "" if none; see html_images.parse_html).
- The same uid (same url and alt on several pages, or twice on one page) is kept once, across files: the
  occurrence with the smallest (page_url, file index, record number, position in page) wins, so the output does
  not depend on task scheduling. The others are dropped as duplicate_candidate.
- Publishes out_uri/part-<file index, 5 digits>.parquet (columns uid, url, caption, page_url, source,
  page_lang; all strings; a file with no candidates still gets an empty part) atomically via pipelines.storage,
  then layout.commit(out_uri, counts). The output is deterministic, so a rerun after a kill simply republishes it.
- counts: input = image links seen, output = rows written, dropped by reason. A row without a usable URL has
  no uid, so it exists only as a count (lineage for those is "how many, and why", not "which").
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipelines import layout, storage
from pipelines.funnel import StageCounts

log = logging.getLogger(__name__)

COLUMNS = ("uid", "url", "caption", "page_url", "source", "page_lang")
DUPLICATE = "duplicate_candidate"


# Object-store settings the driver has; they travel with each task because executors (and Spark's Python
# worker daemon) may have been started before, or on machines without, these variables.
def apply_env(env: dict[str, str]) -> None:
    import os

    os.environ.update(env)


@dataclass
class ExtractConfig:
    min_alt_chars: int = 1
    """Alt texts shorter than this are dropped at extraction (caption rules proper live in the filter stage)."""
    max_page_bytes: int = 5_000_000
    """HTML payloads longer than this are cut to this many bytes before parsing (guards against huge pages);
    a WAT record may be four times as long (it is the page's whole link list as JSON)."""
    max_url_chars: int = 2048
    """Image URLs longer than this (before or after normalisation) are dropped as too_long."""

    def __post_init__(self) -> None:
        if self.min_alt_chars < 1:
            raise ValueError(f"pipeline.extract.min_alt_chars: {self.min_alt_chars} must be >= 1")
        if self.max_page_bytes < 1024:
            raise ValueError(f"pipeline.extract.max_page_bytes: {self.max_page_bytes} must be >= 1024")
        if self.max_url_chars < 16:
            raise ValueError(f"pipeline.extract.max_url_chars: {self.max_url_chars} must be >= 16")


def part_uri(out_uri: str, file_index: int) -> str:
    return storage.join(out_uri, f"part-{file_index:05d}.parquet")


def parse_file(file_index: int, uri: str, cfg: ExtractConfig, env: dict[str, str]) -> Iterator[tuple]:
    """Runs in a Spark task. Yields ("row", uid, sort_key, file_index, row_tuple) for each kept image link, then
    ("stats", file_index, {reason: n, "_imgs": n, "_pages": n, "_bad_wat_records": n}) once."""
    from warcio.archiveiterator import ArchiveIterator

    from pipelines.stages import html_images, records

    apply_env(env)
    stats: dict[str, int] = {"_imgs": 0, "_pages": 0, "_bad_wat_records": 0}
    try:
        with storage.open_uri(uri, "rb") as f:
            for rec_no, record in enumerate(ArchiveIterator(f)):
                try:
                    found = records.read_page(record, cfg.max_page_bytes)
                except records.BadWatRecord as exc:
                    stats["_bad_wat_records"] += 1
                    log.warning("extract: %s record %d: %s", uri, rec_no, exc)
                    continue
                if found is None:
                    continue
                page_url, page = found
                stats["_pages"] += 1
                for pos, img in enumerate(page.imgs):
                    stats["_imgs"] += 1
                    cand, reason = html_images.classify(img, page.base, cfg.min_alt_chars, cfg.max_url_chars)
                    if cand is None:
                        stats[reason] = stats.get(reason, 0) + 1
                        continue
                    row = (cand.uid, cand.url, cand.caption, page_url, uri, page.lang)
                    yield ("row", cand.uid, (page_url, file_index, rec_no, pos), file_index, row)
    except Exception as exc:  # name the file: a Spark traceback alone would not say which file was bad
        raise RuntimeError(f"extract: failed reading {uri}: {type(exc).__name__}: {exc}") from exc
    yield ("stats", file_index, stats)


def _parquet_bytes(rows: list[tuple]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {name: [r[i] for r in rows] for i, name in enumerate(COLUMNS)}
    table = pa.table(cols, schema=pa.schema([(c, pa.string()) for c in COLUMNS]))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _publish_part(out_uri: str, file_index: int, rows: Iterator[Any], env: dict[str, str]) -> Iterator[tuple[int, int]]:
    apply_env(env)
    ordered = sorted((r for _, r in rows), key=lambda kr: kr[0])  # by sort key: same file, same bytes
    storage.write_bytes(part_uri(out_uri, file_index), _parquet_bytes([row for _, row in ordered]))
    yield file_index, len(ordered)


def run(spark, cfg: ExtractConfig, warc_uris: list[str], out_uri: str) -> StageCounts:
    """`warc_uris`: WARC and/or WAT files (each record's format is detected, see the module docstring)."""
    if not warc_uris:
        raise ValueError("extract: no WARC/WAT files given")
    for uri in warc_uris:
        if not storage.exists(uri):
            raise FileNotFoundError(f"extract: WARC/WAT file {uri} does not exist")
    n = len(warc_uris)
    sc = spark.sparkContext
    env = storage.storage_env()
    from pyspark import StorageLevel

    parsed = (sc.parallelize(list(enumerate(warc_uris)), n)
              .flatMap(lambda iw: parse_file(iw[0], iw[1], cfg, env))
              .persist(StorageLevel.MEMORY_AND_DISK))  # parsed once, used for stats and rows
    try:
        stats = parsed.filter(lambda t: t[0] == "stats").map(lambda t: (t[1], t[2])).collect()
        # Cross-file dedupe on uid: keep the occurrence with the smallest sort key.
        kept = (parsed.filter(lambda t: t[0] == "row")
                .map(lambda t: (t[1], (t[2], t[3], t[4])))
                .reduceByKey(lambda a, b: a if a[0] <= b[0] else b)
                .map(lambda kv: (kv[1][1], (kv[1][0], kv[1][2]))))
        # One partition per file index (partitionBy with the identity), so part-<i> holds file i's survivors;
        # empty partitions still publish an (empty) part.
        written = dict(kept.partitionBy(n, lambda i: i)
                       .mapPartitionsWithIndex(lambda i, it: _publish_part(out_uri, i, it, env))
                       .collect())
        rows_seen = parsed.filter(lambda t: t[0] == "row").count()
    finally:
        parsed.unpersist()

    counts = StageCounts("extract")
    for _, st in sorted(stats):
        counts.input += st["_imgs"]
        for reason, k in st.items():
            if not reason.startswith("_"):
                counts.drop(reason, k)
    counts.output = sum(written.values())
    if rows_seen > counts.output:
        counts.drop(DUPLICATE, rows_seen - counts.output)
    bad_wat = sum(st["_bad_wat_records"] for _, st in stats)
    if bad_wat:
        log.warning("extract: %d JSON metadata records were not WAT envelopes and were skipped", bad_wat)
    log.info("extract: %d files, %d pages, %d image links, %d candidates", n,
             sum(st["_pages"] for _, st in stats), counts.input, counts.output)
    return layout.commit(out_uri, counts)
