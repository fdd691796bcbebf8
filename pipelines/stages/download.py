"""download (img2dataset): candidate rows -> img2dataset WebDataset shards, and funnel counts by failure kind.

CONTRACT (owned by the extract/download helper; build.py calls it):
    run(cfg: DownloadConfig, engine: EngineConfig, candidates_uri: str, out_uri: str) -> StageCounts
- Calls img2dataset.download on candidates_uri's part-*.parquet (input_format parquet, url/caption columns,
  save_additional_columns uid/page_url/source), output_format webdataset, resize_mode "no" + skip_reencode
  (a JPEG's original bytes are kept, so the filter stage sees a truncated-but-decodable file as it is; other
  formats are re-encoded to JPEG by img2dataset), compute_hash sha256, incremental_mode "incremental",
  X-Robots-Tag opt-outs honoured (disallowed_header_directives). Local or s3:// (fsspec, FSSPEC_S3_ENDPOINT_URL).
- Distributed with img2dataset's Ray distributor by default (the project's rule: image stages run on Ray; one
  Ray task per shard, 1 CPU each, so `processes_count` only applies to the multiprocessing/pyspark distributors).
- Resuming: img2dataset writes <shard>_stats.json after a shard's tar and parquet are closed, and a rerun in
  incremental mode skips shards that have one. A killed run is rerun from scratch per unfinished shard.
  After img2dataset returns, every expected shard must have its stats file (else: an error, rerun to resume),
  and the per-shard rows must account for every candidate; only then layout.commit(out_uri, counts).
- counts: input = candidates, output = status "success" rows, dropped by failure kind (classify_error):
  http_404, http_4xx, http_5xx, timeout, opt_out, decode_error, connection_error, other.

What the filter stage can rely on, in out_uri (img2dataset's own layout, shard ids 00000, 00001, ...):
- <shard>.tar: WebDataset samples keyed by img2dataset's key (shard id + row index, digits only), for
  successes only: <key>.jpg (bytes as downloaded), <key>.txt (caption), <key>.json (the parquet row below,
  minus nothing).
- <shard>.parquet: one row per candidate of the shard, successes and failures, columns:
  key, status ("success" | "failed_to_download" | "failed_to_resize"), error_message (null on success),
  uid, url, caption, page_url, source (strings, from extract), sha256 (hex of the downloaded bytes, success
  only), width, height, original_width, original_height (ints, success only; equal pairs as resize_mode is
  "no"), exif (JSON string or null).
- <shard>_stats.json (img2dataset's per-shard summary), _COMMITTED.json (our StageCounts), and possibly a
  leftover _tmp/ folder on S3 (img2dataset only removes it on local filesystems): readers list shards by the
  regex ^\\d+\\.tar$, never by globbing everything.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Iterator, Literal

from pipelines import layout, storage
from pipelines.engines import EngineConfig, init_ray
from pipelines.funnel import StageCounts
from pipelines.storage import storage_env

log = logging.getLogger(__name__)

SHARD_RE = re.compile(r"^(\d+)\.parquet$")
# img2dataset pulls in albumentations, which otherwise phones home for a version check and warns about it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


@dataclass
class DownloadConfig:
    distributor: Literal["ray", "multiprocessing", "pyspark"] = "ray"
    """How img2dataset spreads shards: ray (one task per shard on the Ray of pipeline.engine), multiprocessing
    (a local process pool of processes_count), pyspark (the active Spark session)."""
    processes_count: int = 2
    """Worker processes for the multiprocessing/pyspark distributors (Ray schedules by its own CPU count)."""
    thread_count: int = 16
    """Download threads per shard."""
    timeout: int = 4
    """Seconds per request."""
    retries: int = 0
    """Extra attempts for a failed request."""
    number_sample_per_shard: int = 1000
    """Candidates per img2dataset shard (its unit of work and of resumption)."""
    user_agent_token: str = "witforge"
    """Our token in the User-Agent; X-Robots-Tag directives addressed to it (or to all) are honoured."""
    disallowed_header_directives: list[str] = field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"])
    """X-Robots-Tag directives that opt an image out (dropped as opt_out)."""
    max_shard_retry: int = 1
    """Times img2dataset's multiprocessing/pyspark distributors retry a failed shard within one run."""
    max_image_pixels: int = 25_000_000
    """OpenCV refuses to decode images declaring more pixels (decompression bombs: decode_error), before
    allocating them; set as OPENCV_IO_MAX_IMAGE_PIXELS for the Ray/multiprocessing workers, which import cv2."""

    def __post_init__(self) -> None:
        for name in ("processes_count", "thread_count", "timeout", "number_sample_per_shard", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"pipeline.download.{name}: {getattr(self, name)} must be >= 1")
        if self.retries < 0 or self.max_shard_retry < 0:
            raise ValueError("pipeline.download.retries and max_shard_retry must be >= 0")
        if not self.user_agent_token.strip():
            raise ValueError("pipeline.download.user_agent_token must not be empty")


_HTTP = re.compile(r"HTTP Error (\d{3})")
_CONNECTION = ("urlopen error", "connection", "remote end closed", "incompleteread", "incomplete read",
               "name or service not known", "no route to host", "errno", "ssl", "badstatusline")


def classify_error(status: str | None, message: str | None) -> str:
    """The funnel reason for one failed img2dataset row."""
    msg = message or ""
    low = msg.lower()
    if status == "failed_to_resize":  # the resizer decodes every image: not an image, truncated, too big...
        return "decode_error"
    if "x-robots-tag" in low:
        return "opt_out"
    m = _HTTP.search(msg)
    if m:
        code = int(m.group(1))
        return "http_404" if code == 404 else "http_5xx" if code >= 500 else "http_4xx" if code >= 400 else "other"
    if "timed out" in low or "timeout" in low:
        return "timeout"
    if any(k in low for k in _CONNECTION):
        return "connection_error"
    return "other"


def _candidate_parts(candidates_uri: str) -> list[tuple[str, int]]:
    import pyarrow.parquet as pq

    parts = [u for u in storage.listdir(candidates_uri) if u.endswith(".parquet")]
    if layout.committed(candidates_uri) is None:
        raise FileNotFoundError(f"download: candidates at {candidates_uri} are not committed (run extract first)")
    out = []
    for uri in parts:
        with storage.open_uri(uri) as f:
            out.append((uri, pq.ParquetFile(f).metadata.num_rows))
    return out


_PROGRESS = re.compile(r"\d+it \[|it/s\]|s/it\]")  # tqdm's progress bars


@contextlib.contextmanager
def _output_to_log(what: str) -> Iterator[None]:
    """img2dataset prints banners, per-shard speed lines (stdout) and tqdm bars (stderr), from its own and its
    child processes: capture both at the file-descriptor level (children inherit it) and log them instead:
    DEBUG for stdout and progress bars, WARNING for anything else on stderr (tracebacks of failed shards)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, dup in saved.items():
                os.dup2(dup, fd)
                os.close(dup)
            for f, is_err in ((out, False), (err, True)):
                f.seek(0)
                for line in f.read().decode("utf-8", errors="replace").replace("\r", "\n").splitlines():
                    if line.strip():
                        noisy = not is_err or _PROGRESS.search(line)
                        log.log(logging.DEBUG if noisy else logging.WARNING, "%s: %s", what, line.rstrip())


@contextlib.contextmanager
def _ray_task_env(env: dict[str, str]) -> Iterator[None]:
    """Ray workers inherit the environment Ray was started with, which may predate the object-store
    variables (endpoint, credentials): give img2dataset's per-shard Ray task this driver's values."""
    import ray
    from img2dataset import distributor as i2d_dist

    original = i2d_dist.ray_download
    job_env = dict((ray.get_runtime_context().runtime_env or {}).get("env_vars") or {})
    i2d_dist.ray_download = original.options(runtime_env={"env_vars": {**job_env, **env}})
    try:
        yield
    finally:
        i2d_dist.ray_download = original


@contextlib.contextmanager
def _keep_sigint() -> Iterator[None]:
    """img2dataset.download installs a SIGINT handler that exits with status 0; restore ours afterwards."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)


def _read_results(out_uri: str) -> tuple[dict[int, list[dict]], set[int]]:
    import pyarrow.parquet as pq

    rows: dict[int, list[dict]] = {}
    stats: set[int] = set()
    for uri in storage.listdir(out_uri):
        name = uri.rsplit("/", 1)[1]
        m = SHARD_RE.match(name)
        if m:
            with storage.open_uri(uri) as f:
                rows[int(m.group(1))] = pq.read_table(f, columns=["status", "error_message", "uid"]).to_pylist()
        elif name.endswith("_stats.json") and name.split("_")[0].isdigit():
            stats.add(int(name.split("_")[0]))
    return rows, stats


def run(cfg: DownloadConfig, engine: EngineConfig, candidates_uri: str, out_uri: str) -> StageCounts:
    done = layout.committed(out_uri)
    if done is not None:  # also: img2dataset would choke on our marker (it parses every *.json as a shard id)
        log.info("download: already committed at %s", out_uri)
        return done
    parts = _candidate_parts(candidates_uri)
    total = sum(n for _, n in parts)
    expected = sum(math.ceil(n / cfg.number_sample_per_shard) for _, n in parts)
    counts = StageCounts("download", input=total)
    if total:
        import img2dataset

        # Workers started from now on (multiprocessing spawns, Ray tasks via _ray_task_env) get these.
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(cfg.max_image_pixels)
        env = {**storage_env(), "OPENCV_IO_MAX_IMAGE_PIXELS": str(cfg.max_image_pixels)}
        ray_env = contextlib.nullcontext()
        if cfg.distributor == "ray":
            init_ray(engine)
            ray_env = _ray_task_env(env)
        with ray_env, _output_to_log("img2dataset"), _keep_sigint():
            img2dataset.download(
                url_list=candidates_uri, input_format="parquet", url_col="url", caption_col="caption",
                save_additional_columns=["uid", "page_url", "source"], output_format="webdataset",
                output_folder=out_uri, resize_mode="no", skip_reencode=True, compute_hash="sha256",
                incremental_mode="incremental", number_sample_per_shard=cfg.number_sample_per_shard,
                processes_count=cfg.processes_count, thread_count=cfg.thread_count, timeout=cfg.timeout,
                retries=cfg.retries, user_agent_token=cfg.user_agent_token,
                disallowed_header_directives=list(cfg.disallowed_header_directives),
                distributor=cfg.distributor, max_shard_retry=cfg.max_shard_retry, enable_wandb=False)
        rows, stats = _read_results(out_uri)
        missing = sorted(set(range(expected)) - stats)
        if missing:
            raise RuntimeError(f"download: {len(missing)} of {expected} img2dataset shards did not finish in "
                               f"{out_uri} (first: {missing[0]:05d}); rerun to resume them")
        others: dict[str, int] = {}
        for shard_rows in rows.values():
            for r in shard_rows:
                if r["status"] == "success":
                    counts.output += 1
                    continue
                reason = classify_error(r["status"], r["error_message"])
                counts.drop(reason)
                if reason == "other":
                    others[str(r["error_message"])] = others.get(str(r["error_message"]), 0) + 1
        if others:
            log.warning("download: %d failures of unclassified kind: %s", sum(others.values()), others)
    log.info("download: %d candidates, %d downloaded, dropped %s", counts.input, counts.output, counts.dropped)
    return layout.commit(out_uri, counts)  # check(): every candidate must be accounted for
