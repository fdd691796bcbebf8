"""extract (Spark): WARC files of HTML pages -> candidate (uid, url, caption, page_url, source) rows in Parquet.

CONTRACT (owned by the extract/download helper; build.py calls it):
    run(spark, cfg: ExtractConfig, warc_uris: list[str], out_uri: str) -> StageCounts
- Reads each WARC (local or s3://, gzip'd or not) with warcio inside Spark tasks (one task per WARC file, files
  opened through pipelines.storage/fsspec: no Hadoop S3A). Every `response` record with an HTML content type is
  parsed (pipelines.stages.html_images); every <img> is counted and either kept or dropped with a reason:
  data_uri, bad_url (empty src, not http(s), unparsable), no_alt (alt missing or shorter than min_alt_chars).
- url = the src resolved against WARC-Target-URI (or <base href>) and normalised (pipelines.urls.normalize_url);
  caption = alt with whitespace collapsed; uid = sha256(url + "\\t" + caption) hex, first 24 chars.
- The same uid (same url and alt on several pages, or twice on one page) is kept once, across files: the
  occurrence with the smallest (page_url, WARC index, record number, position in page) wins, so the output does
  not depend on task scheduling. The others are dropped as duplicate_candidate.
- Publishes out_uri/part-<WARC index, 5 digits>.parquet (columns uid, url, caption, page_url, source; all
  strings; a file with no candidates still gets an empty part) atomically via pipelines.storage, then
  layout.commit(out_uri, counts). The output is deterministic, so a rerun after a kill simply republishes it.
- counts: input = <img> elements seen, output = rows written, dropped by reason.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any, Iterator

from pipelines import layout, storage
from pipelines.funnel import StageCounts

log = logging.getLogger(__name__)

COLUMNS = ("uid", "url", "caption", "page_url", "source")
DUPLICATE = "duplicate_candidate"
_HTML_TYPES = ("text/html", "application/xhtml+xml")
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
    """HTML payloads longer than this are cut to this many bytes before parsing (guards against huge pages)."""

    def __post_init__(self) -> None:
        if self.min_alt_chars < 1:
            raise ValueError(f"pipeline.extract.min_alt_chars: {self.min_alt_chars} must be >= 1")
        if self.max_page_bytes < 1024:
            raise ValueError(f"pipeline.extract.max_page_bytes: {self.max_page_bytes} must be >= 1024")


def part_uri(out_uri: str, warc_index: int) -> str:
    return storage.join(out_uri, f"part-{warc_index:05d}.parquet")


def _charset(content_type: str) -> str:
    for piece in content_type.split(";")[1:]:
        key, _, value = piece.strip().partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"\'')
    return "utf-8"


def _decode(payload: bytes, content_type: str) -> str:
    try:
        return payload.decode(_charset(content_type), errors="replace")
    except LookupError:  # an unknown charset name in the header
        return payload.decode("utf-8", errors="replace")


def parse_warc(warc_index: int, warc_uri: str, cfg: ExtractConfig, env: dict[str, str]) -> Iterator[tuple]:
    """Runs in a Spark task. Yields ("stats", warc_index, {reason: n, "_imgs": n}) once, after
    ("row", uid, sort_key, warc_index, row_tuple) for each kept <img>."""
    from warcio.archiveiterator import ArchiveIterator

    from pipelines.stages import html_images

    apply_env(env)
    stats: dict[str, int] = {"_imgs": 0, "_pages": 0}
    try:
        with storage.open_uri(warc_uri, "rb") as f:
            for rec_no, record in enumerate(ArchiveIterator(f)):
                if record.rec_type != "response" or record.http_headers is None:
                    continue
                ctype = record.http_headers.get_header("Content-Type") or ""
                if ctype.split(";")[0].strip().lower() not in _HTML_TYPES:
                    continue
                page_url = record.rec_headers.get_header("WARC-Target-URI") or ""
                html = _decode(record.content_stream().read(cfg.max_page_bytes), ctype)
                stats["_pages"] += 1
                imgs, base = html_images.find_images(html, page_url)
                for pos, img in enumerate(imgs):
                    stats["_imgs"] += 1
                    cand, reason = html_images.classify(img, base, cfg.min_alt_chars)
                    if cand is None:
                        stats[reason] = stats.get(reason, 0) + 1
                        continue
                    row = (cand.uid, cand.url, cand.caption, page_url, warc_uri)
                    yield ("row", cand.uid, (page_url, warc_index, rec_no, pos), warc_index, row)
    except Exception as exc:  # name the file: a Spark traceback alone would not say which WARC was bad
        raise RuntimeError(f"extract: failed reading WARC {warc_uri}: {type(exc).__name__}: {exc}") from exc
    yield ("stats", warc_index, stats)


def _parquet_bytes(rows: list[tuple]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {name: [r[i] for r in rows] for i, name in enumerate(COLUMNS)}
    table = pa.table(cols, schema=pa.schema([(c, pa.string()) for c in COLUMNS]))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _publish_part(out_uri: str, warc_index: int, rows: Iterator[Any], env: dict[str, str]) -> Iterator[tuple[int, int]]:
    apply_env(env)
    ordered = sorted((r for _, r in rows), key=lambda kr: kr[0])  # by sort key: same file, same bytes
    storage.write_bytes(part_uri(out_uri, warc_index), _parquet_bytes([row for _, row in ordered]))
    yield warc_index, len(ordered)


def run(spark, cfg: ExtractConfig, warc_uris: list[str], out_uri: str) -> StageCounts:
    if not warc_uris:
        raise ValueError("extract: no WARC files given")
    for uri in warc_uris:
        if not storage.exists(uri):
            raise FileNotFoundError(f"extract: WARC file {uri} does not exist")
    n = len(warc_uris)
    sc = spark.sparkContext
    env = storage.storage_env()
    from pyspark import StorageLevel

    parsed = (sc.parallelize(list(enumerate(warc_uris)), n)
              .flatMap(lambda iw: parse_warc(iw[0], iw[1], cfg, env))
              .persist(StorageLevel.MEMORY_AND_DISK))  # parsed once, used for stats and rows
    try:
        stats = parsed.filter(lambda t: t[0] == "stats").map(lambda t: (t[1], t[2])).collect()
        # Cross-file dedupe on uid: keep the occurrence with the smallest sort key.
        kept = (parsed.filter(lambda t: t[0] == "row")
                .map(lambda t: (t[1], (t[2], t[3], t[4])))
                .reduceByKey(lambda a, b: a if a[0] <= b[0] else b)
                .map(lambda kv: (kv[1][1], (kv[1][0], kv[1][2]))))
        # One partition per WARC index (partitionBy with the identity), so part-<i> holds file i's survivors;
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
    log.info("extract: %d WARC files, %d pages, %d <img>, %d candidates", n,
             sum(st["_pages"] for _, st in stats), counts.input, counts.output)
    return layout.commit(out_uri, counts)
