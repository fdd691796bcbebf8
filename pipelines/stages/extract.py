"""extract (Spark): WARC files of HTML pages -> candidate (uid, url, caption, page_url, source) rows in Parquet.

CONTRACT (owned by the extract/download helper; build.py calls it):
    run(spark, cfg: ExtractConfig, warc_uris: list[str], out_uri: str) -> StageCounts
- Reads each WARC (local or s3://, gzip'd) with warcio inside Spark tasks (one task per WARC file, files opened
  through pipelines.storage/fsspec: no Hadoop S3A). Emits one row per <img src alt> with an absolute http(s) URL.
- uid = sha256(url + "\\t" + caption) hex, first 24 chars (deterministic; dot-free hex, see schema.UID_RE).
- Publishes out_uri/part-00000.parquet ... atomically via pipelines.storage, then layout.commit(out_uri, counts).
- counts: input = <img> elements seen, output = rows written, dropped by reason (e.g. no_alt, bad_url, data_uri).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExtractConfig:
    min_alt_chars: int = 1
    """Alt texts shorter than this are dropped at extraction (caption rules proper live in the filter stage)."""
