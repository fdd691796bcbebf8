"""filter (Ray, one task per download shard): decode, measure and judge every downloaded sample.

CONTRACT (build.py calls it; Ray is already initialised by the caller):
    run(cfg: FilterConfig, download_uri: str, out_uri: str) -> StageCounts
Reads img2dataset's `<shard>.parquet` (status == "success" rows) and `<shard>.tar` (original bytes) and publishes
`out_uri/<shard>.parquet` (FILTERED_SCHEMA): one row per successful download with its fingerprints (sha256,
pHash, colour signature), file size and format, the image's data offset in the tar (for the shard stage's ranged
reads), language, `keep`, the drop `reason` and its `detail` (the numbers behind the verdict: "20x20: shorter
side 20 < min_side 32"). Checks run cheapest first: file size,
header pixel count, full decode, resolution, aspect ratio, then the caption rules (ftfy-repaired text).

With cfg.keep_rejected, every dropped sample also goes to `out_uri/rejected/<shard>.tar` (WebDataset: the image
bytes as downloaded under their own extension, `<uid>.txt` the caption, `<uid>.json` with reason and detail),
published BEFORE the shard's parquet: a shard whose parquet exists is done, so it is skipped on rerun (its
counts are re-read from it), then `layout.commit(out_uri, counts)`. Inspect rejected samples with e.g.
    tar -xOf <version>/_work/filtered/rejected/00000.tar --wildcards '*.json'
or one sample's whole story with `python -m pipelines.explain <uid> --config ...`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import re
import tarfile
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import layout, storage
from pipelines.funnel import StageCounts
from pipelines.stages.captions import DEFAULT_UNINFORMATIVE, judge_caption, normalize_caption
from pipelines.stages.images import inspect_image, sha256_hex, sniff_extension
from pipelines.stages.members import read_members_at
from pipelines.storage import ray_task_options

log = logging.getLogger(__name__)

FILTERED_SCHEMA = pa.schema([
    ("uid", pa.string()), ("key", pa.string()), ("src_tar", pa.string()), ("url", pa.string()),
    ("page_url", pa.string()), ("source", pa.string()), ("caption", pa.string()), ("width", pa.int64()),
    ("height", pa.int64()), ("sha256", pa.string()), ("phash", pa.string()), ("colour_sig", pa.string()),
    ("lang", pa.string()), ("lang_score", pa.float64()), ("keep", pa.bool_()), ("reason", pa.string()),
    ("detail", pa.string()), ("bytes", pa.int64()), ("format", pa.string()), ("offset", pa.int64()),
])
REJECTED_DIR = "rejected"
# Fixed member mtime (2020-01-01): a rejected tar rewritten after a crash has the same bytes.
_TAR_MTIME = 1577836800


@dataclass
class FilterConfig:
    min_side: int = 32
    """Images whose shorter side is below this many pixels are dropped (too_small)."""
    max_aspect_ratio: float = 3.0
    """Images longer than this ratio in either direction are dropped (aspect_ratio)."""
    max_pixels: int = 4096 * 4096
    """Images whose header declares more pixels than this are dropped before decoding (too_many_pixels)."""
    min_bytes: int = 0
    """Image files smaller than this many bytes are dropped before parsing (too_few_bytes); 0: no minimum."""
    max_bytes: int = 20_000_000
    """Image files larger than this many bytes are dropped before parsing (too_many_bytes); 0: no maximum."""
    min_words: int = 2
    """Captions with fewer words are dropped (too_short)."""
    max_chars: int = 300
    """Captions longer than this many characters are dropped (too_long)."""
    uninformative_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_UNINFORMATIVE))
    """Regexes (Python `re`, searched in the normalised caption) marking alt texts that say nothing (uninformative)."""
    languages: list[str] = field(default_factory=lambda: ["en"])
    """Languages to keep (ISO 639-1 codes, each also in language_candidates)."""
    language_candidates: list[str] = field(default_factory=lambda: ["en", "fr", "de", "es", "it", "pt", "nl"])
    """langid is restricted to these languages: fewer candidates, fewer absurd guesses on short alt texts."""
    language_min_confidence: float = 0.95
    """A caption is dropped for its language only if langid's probability of the foreign language is at least this."""
    language_min_words: int = 4
    """...and only if it has at least this many words (below, langid mislabels clean English ~1-5% of the time)."""
    keep_rejected: bool = False
    """Also write every dropped sample (image, caption, reason and detail) to <filter work dir>/rejected/<shard>.tar."""

    def __post_init__(self) -> None:
        missing = [lang for lang in self.languages if lang not in self.language_candidates]
        if missing:
            raise ValueError(f"pipeline.filter.languages: {missing} not in language_candidates {self.language_candidates}")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"pipeline.filter.max_aspect_ratio: {self.max_aspect_ratio} must be >= 1")
        if self.min_bytes < 0 or self.max_bytes < 0 or (self.max_bytes and self.max_bytes < self.min_bytes):
            raise ValueError(f"pipeline.filter.max_bytes: need 0 <= min_bytes ({self.min_bytes}) <= max_bytes "
                             f"({self.max_bytes}), or max_bytes 0 for no maximum")


def _shard_names(download_uri: str) -> list[str]:
    """img2dataset shard ids ("00000"...) that have both a tar and a parquet."""
    names = {posixpath.basename(u) for u in storage.listdir(download_uri)}
    # Digits only: img2dataset may leave other entries (a _tmp/ folder on S3) beside its shards.
    shards = sorted(n[:-4] for n in names if re.fullmatch(r"\d+\.tar", n) and n[:-4] + ".parquet" in names)
    if not shards:
        raise FileNotFoundError(f"{download_uri}: no img2dataset shards (<n>.tar + <n>.parquet) to filter")
    return shards


def counts_of(table: pa.Table) -> StageCounts:
    """Funnel counts of one filtered parquet (also how a skipped shard's counts are recovered)."""
    counts = StageCounts("filter", input=table.num_rows)
    for keep, reason in zip(table.column("keep").to_pylist(), table.column("reason").to_pylist()):
        if keep:
            counts.output += 1
        else:
            counts.drop(reason)
    return counts


def filter_shard(cfg_dict: dict, download_uri: str, shard: str, out_uri: str) -> dict:
    """Filter one download shard and publish its parquet; returns its counts as JSON."""
    cfg = FilterConfig(**cfg_dict)
    target = storage.join(out_uri, f"{shard}.parquet")
    if storage.exists(target):
        with storage.open_uri(target) as f:
            return counts_of(pq.read_table(f)).to_json()
    src_parquet = storage.join(download_uri, f"{shard}.parquet")
    with storage.open_uri(src_parquet) as f:
        table = pq.read_table(f)
    required = {"key", "url", "caption", "status", "uid", "page_url", "source"}
    if missing := required - set(table.column_names):
        raise ValueError(f"{src_parquet}: missing columns {sorted(missing)} (img2dataset output with "
                         f"save_additional_columns [uid, page_url, source] expected)")
    rows = [r for r in table.to_pylist() if r["status"] == "success"]
    tar_uri = storage.join(download_uri, f"{shard}.tar")
    found = read_members_at(tar_uri, {r["key"] for r in rows})
    images = {key: data for key, (data, _) in found.items()}
    out = [judge_row(cfg, r, images.get(r["key"]), tar_uri) for r in sorted(rows, key=lambda r: r["key"])]
    for row in out:  # where the image's bytes start in src_tar: the shard stage reads them with one ranged read
        row["offset"] = found[row["key"]][1] if row["key"] in found else None
    result = pa.Table.from_pylist(out, schema=FILTERED_SCHEMA)
    if cfg.keep_rejected:  # before the parquet: the parquet's existence is what marks the shard done
        write_rejected(storage.join(out_uri, REJECTED_DIR, f"{shard}.tar"), [r for r in out if not r["keep"]], images)
    sink = io.BytesIO()
    pq.write_table(result, sink)
    storage.write_bytes(target, sink.getvalue())
    return counts_of(result).to_json()


def judge_row(cfg: FilterConfig, r: dict, data: bytes | None, tar_uri: str) -> dict:
    """One FILTERED_SCHEMA row for one successful download (`data`: its bytes, None if the tar lacks them)."""
    caption = normalize_caption(r["caption"] or "")
    row = dict(uid=r["uid"], key=r["key"], src_tar=tar_uri, url=r["url"], page_url=r["page_url"] or "",
               source=r["source"] or "", caption=caption, width=None, height=None, sha256=None, phash=None,
               colour_sig=None, lang=None, lang_score=None, keep=False, reason=None, detail=None, bytes=None,
               format=None, offset=None)
    if data is None:  # the parquet says success but the tar lacks the image: say so, never guess
        row.update(reason="missing_member", detail=f"no image member for key {r['key']} in {tar_uri}")
        return row
    verdict = inspect_image(data, max_pixels=cfg.max_pixels, min_side=cfg.min_side,
                            max_aspect_ratio=cfg.max_aspect_ratio, min_bytes=cfg.min_bytes, max_bytes=cfg.max_bytes)
    lang_reason, lang, prob, lang_detail = judge_caption(
        caption, min_words=cfg.min_words, max_chars=cfg.max_chars, uninformative=cfg.uninformative_patterns,
        candidates=cfg.language_candidates, keep_languages=cfg.languages,
        language_min_words=cfg.language_min_words, language_min_confidence=cfg.language_min_confidence)
    # Image problems first: they are what the caption describes.
    reason, detail = (verdict.reason, verdict.detail) if verdict.reason else (lang_reason, lang_detail)
    row.update(width=verdict.width or None, height=verdict.height or None, sha256=sha256_hex(data),
               phash=verdict.phash or None, colour_sig=verdict.colour_sig or None, lang=lang, lang_score=prob,
               keep=reason is None, reason=reason, detail=detail or None, bytes=len(data),
               format=verdict.format or None)
    return row


def write_rejected(uri: str, rows: list[dict], images: dict[str, bytes]) -> None:
    """Publish the dropped rows of one shard as a WebDataset tar: <uid>.<image ext>, <uid>.txt, <uid>.json."""
    with storage.local_scratch("witforge-rejected-") as tmp:
        local = os.path.join(tmp, "rejected.tar")
        with tarfile.open(local, "w", format=tarfile.USTAR_FORMAT) as tar:
            for r in sorted(rows, key=lambda r: r["uid"]):
                data = images.get(r["key"])
                meta = {k: r[k] for k in ("uid", "reason", "detail", "url", "page_url", "source", "src_tar", "key",
                                          "width", "height", "bytes", "format", "lang", "lang_score")}
                members = {"txt": r["caption"].encode(), "json": json.dumps(meta, sort_keys=True).encode()}
                if data is not None:
                    members[sniff_extension(data)] = data
                for ext in sorted(members):  # a sample's members together, as WebDataset readers expect
                    info = tarfile.TarInfo(f"{r['uid']}.{ext}")
                    info.size, info.mtime, info.mode = len(members[ext]), _TAR_MTIME, 0o444
                    tar.addfile(info, io.BytesIO(members[ext]))
        storage.put_file(local, uri)


def run(cfg: FilterConfig, download_uri: str, out_uri: str) -> StageCounts:
    import ray

    shards = _shard_names(download_uri)
    task = ray.remote(filter_shard).options(**ray_task_options())
    refs = [task.remote(asdict(cfg), download_uri, shard, out_uri) for shard in shards]
    total = StageCounts("filter")
    for shard, counts in zip(shards, ray.get(refs)):
        c = StageCounts.from_json(counts)
        log.info("filter shard %s: %d in, %d kept", shard, c.input, c.output)
        total.input += c.input
        total.output += c.output
        for reason, n in c.dropped.items():
            total.drop(reason, n)
    return layout.commit(out_uri, total)
