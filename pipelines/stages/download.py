"""download (img2dataset + our guarded fetcher): candidate rows -> img2dataset WebDataset shards, funnel counts
by failure reason, statistics by reason and by host.

CONTRACT (owned by the extract/download helper; build.py calls it):
    run(cfg: DownloadConfig, engine: EngineConfig, candidates_uri: str, out_uri: str) -> StageCounts
- Calls img2dataset.download on candidates_uri's part-*.parquet (input_format parquet, url/caption columns,
  save_additional_columns uid/page_url/source), output_format webdataset, resize_mode "no" + skip_reencode
  (a JPEG's original bytes are kept; other formats are re-encoded to JPEG by img2dataset), compute_hash
  sha256, incremental_mode "incremental". Local or s3:// (fsspec, FSSPEC_S3_ENDPOINT_URL).
- Every URL is fetched by pipelines.fetch.client through img2dataset's own Downloader (pipelines.fetch.i2d):
  SSRF guard on every redirect hop with the connection pinned to the checked address (allow-list:
  `allow_private`), robots.txt per origin for `user_agent_token` before any image request, X-Robots-Tag
  opt-outs before the body, robots.txt Crawl-delay (paced per process up to `max_crawl_delay`, skipped
  above), connect/read/total time caps, byte cap, pixel cap from the header.
- Distributed with img2dataset's Ray distributor by default (the project's rule: image stages run on Ray; one
  Ray task per shard, 1 CPU each, so `processes_count` only applies to the multiprocessing/pyspark distributors).
- Resuming: img2dataset writes <shard>_stats.json after a shard's tar and parquet are closed, and a rerun in
  incremental mode skips shards that have one. A killed run is rerun from scratch per unfinished shard.
  After img2dataset returns, every expected shard must have its stats file (else: an error, rerun to resume).
- Then rounds of per-sample retries (pipelines.fetch.retry): transient failures only (timeout, 5xx, 429, DNS,
  connection, robots.txt unreachable), at most `sample_retries` more attempts per sample across rounds AND
  reruns (the `attempts` column remembers), never a success; `retry_backoff` * 2^(n-1) seconds before round n.
- Finally the per-shard rows must account for every candidate; statistics go to _stats/; then
  layout.commit(out_uri, counts).
- counts: input = candidates, output = status "success" rows, dropped by reason (pipelines.fetch.errors):
  ssrf_blocked, robots_disallowed, robots_unreachable, crawl_delay, opt_out, too_large, too_many_pixels,
  timeout, dns_error, connection_error, bad_url, redirect_error, http_404, http_429, http_4xx, http_5xx,
  decode_error, other.

What the filter stage can rely on, in out_uri (img2dataset's own layout, shard ids 00000, 00001, ...):
- <shard>.tar: WebDataset samples keyed by img2dataset's key (shard id + row index, digits only), for
  successes only: <key>.jpg (bytes as downloaded), <key>.txt (caption), <key>.json (the parquet row below,
  without reason and attempts).
- <shard>.parquet: one row per candidate of the shard, successes and failures, columns:
  key, status ("success" | "failed_to_download" | "failed_to_resize"), error_message (null on success),
  reason (the drop reason, null on success), attempts (fetch attempts made, int),
  uid, url, caption, page_url, source (strings, from extract), sha256 (hex of the downloaded bytes, success
  only), width, height, original_width, original_height (ints, success only; equal pairs as resize_mode is
  "no"), exif (JSON string or null).
- <shard>_stats.json (img2dataset's summary of its first pass over the shard, before retries),
  _stats/summary.json and _stats/by_host.parquet (pipelines.fetch.stats: final, after retries),
  _COMMITTED.json (our StageCounts), and possibly leftover _tmp/ or _retry/ folders on S3: readers list
  shards by the regex ^\\d+\\.tar$, never by globbing everything.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from pipelines import layout, storage
from pipelines.engines import EngineConfig, init_ray
from pipelines.fetch.client import FetchPolicy
from pipelines.fetch.errors import classify
from pipelines.fetch.netguard import normalize_allow_entry
from pipelines.funnel import StageCounts
from pipelines.storage import storage_env

log = logging.getLogger(__name__)

SHARD_RE = re.compile(r"^(\d+)\.parquet$")
# img2dataset pulls in albumentations, which otherwise phones home for a version check and warns about it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


DEFAULT_USER_AGENT = "Mozilla/5.0 (compatible; witforge/1.0; image-text dataset builder)"


@dataclass
class DownloadConfig:
    distributor: Literal["ray", "multiprocessing", "pyspark"] = "ray"
    """How img2dataset spreads shards: ray (one task per shard on the Ray of pipeline.engine), multiprocessing
    (a local process pool of processes_count), pyspark (the active Spark session)."""
    processes_count: int = 2
    """Worker processes for the multiprocessing/pyspark distributors (Ray schedules by its own CPU count)."""
    thread_count: int = 16
    """Download threads per shard."""
    timeout: float = 4
    """Read timeout: seconds one socket read may wait (status line, headers, each body chunk)."""
    connect_timeout: float = 5.0
    """Seconds one TCP (and TLS) connection attempt may take."""
    total_timeout: float = 30.0
    """Seconds one image may take in all: redirect hops and every read (a server dripping bytes slowly enough
    to dodge the read timeout is cut here). A robots.txt fetch has the same caps of its own."""
    retries: int = 0
    """Immediate extra attempts, within the same request, for a transient failure (timeout, 5xx, DNS...)."""
    sample_retries: int = 2
    """Extra attempts per sample for transient failures, in retry rounds after img2dataset's pass; counted
    across reruns of the stage (the `attempts` column), never applied to successes."""
    retry_backoff: float = 2.0
    """Seconds before the second retry round (doubling after); the first round starts right after the pass."""
    number_sample_per_shard: int = 1000
    """Candidates per img2dataset shard (its unit of work and of resumption)."""
    user_agent_token: str = "witforge"
    """Our product token: robots.txt groups and X-Robots-Tag directives addressed to it (or to all) apply."""
    user_agent: str = DEFAULT_USER_AGENT
    """The User-Agent header of every request; must contain user_agent_token. Name a page or address where
    site owners can reach you, e.g. "Mozilla/5.0 (compatible; witforge/1.0; +https://example.org/bot)"."""
    disallowed_header_directives: list[str] = field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"])
    """X-Robots-Tag directives that opt an image out (dropped as opt_out, the body never read)."""
    allow_private: list[str] = field(default_factory=list)
    """"host:port" authorities, exactly as URLs write them, exempt from the SSRF address check (e.g. the demo's
    own "127.0.0.1:18431"). Default: none; loopback, private, link-local... addresses are refused."""
    max_redirects: int = 5
    """Redirect hops followed per URL (each one re-checked: address, robots.txt)."""
    max_image_bytes: int = 16 * 1024 * 1024
    """Bytes per image (declared Content-Length or received): more is dropped as too_large."""
    max_image_pixels: int = 25_000_000
    """Images whose header declares more pixels are dropped as too_many_pixels before anything decodes them;
    also OpenCV's own cap (OPENCV_IO_MAX_IMAGE_PIXELS) in the workers, for formats Pillow cannot parse."""
    max_host_connections: int = 16
    """Concurrent connections to one host from one worker process."""
    max_crawl_delay: float = 10.0
    """robots.txt Crawl-delay honoured up to this many seconds: an origin asking for it gets one image request
    per Crawl-delay from each download process (redirect hops included; robots.txt itself is not paced). An
    origin asking for more is skipped (reason crawl_delay, no image requested). 0 skips every origin that sets
    a Crawl-delay."""
    robots_cache_seconds: float = 86400.0
    """How long a worker reuses a robots.txt (RFC 9309: at most 24 hours)."""
    dns_cache_seconds: float = 300.0
    """How long a worker reuses a DNS answer (the connection always goes to the address that was checked)."""
    max_shard_retry: int = 1
    """Times img2dataset's multiprocessing/pyspark distributors retry a failed shard within one run."""

    def __post_init__(self) -> None:
        for name in ("processes_count", "thread_count", "number_sample_per_shard", "max_image_pixels",
                     "max_image_bytes", "max_host_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"pipeline.download.{name}: {getattr(self, name)} must be >= 1")
        for name in ("timeout", "connect_timeout", "total_timeout", "robots_cache_seconds", "dns_cache_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"pipeline.download.{name}: {getattr(self, name)} must be > 0 seconds")
        for name in ("retries", "sample_retries", "max_shard_retry", "max_redirects", "retry_backoff",
                     "max_crawl_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"pipeline.download.{name}: {getattr(self, name)} must be >= 0")
        if self.robots_cache_seconds > 86400:
            raise ValueError(f"pipeline.download.robots_cache_seconds: {self.robots_cache_seconds} is over "
                             "86400 (RFC 9309: a robots.txt is not reused for more than 24 hours)")
        token = self.user_agent_token.strip().lower()
        if not re.fullmatch(r"[a-z_-]+", token):
            raise ValueError(f"pipeline.download.user_agent_token: {self.user_agent_token!r} must be letters, "
                             "'-' or '_' (an RFC 9309 product token)")
        if token not in self.user_agent.lower():
            raise ValueError(f"pipeline.download.user_agent: {self.user_agent!r} must contain user_agent_token "
                             f"{self.user_agent_token!r}, so site owners can tell which robots.txt group applies")
        for i, entry in enumerate(self.allow_private):
            try:
                normalize_allow_entry(str(entry))
            except ValueError as exc:
                raise ValueError(f"pipeline.download.allow_private[{i}]: {exc}") from None

    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(
            user_agent=self.user_agent, token=self.user_agent_token.strip().lower(),
            connect_timeout=float(self.connect_timeout), read_timeout=float(self.timeout),
            total_timeout=float(self.total_timeout), max_bytes=self.max_image_bytes,
            max_pixels=self.max_image_pixels, max_redirects=self.max_redirects,
            allow=tuple(str(a) for a in self.allow_private),
            disallowed_directives=tuple(self.disallowed_header_directives),
            robots_ttl=float(self.robots_cache_seconds), dns_ttl=float(self.dns_cache_seconds),
            max_host_connections=self.max_host_connections, max_crawl_delay=float(self.max_crawl_delay))


def classify_error(status: str | None, message: str | None) -> str:
    """The funnel reason for one failed img2dataset row (see pipelines.fetch.errors.classify)."""
    return classify(status, message) or "other"


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


def _stats_files(out_uri: str) -> tuple[list[str], set[int]]:
    """Shard ids with a parquet ("00000"...), and shard numbers with img2dataset's stats file."""
    shards: list[str] = []
    stats: set[int] = set()
    for uri in storage.listdir(out_uri):
        name = uri.rsplit("/", 1)[1]
        m = SHARD_RE.match(name)
        if m:
            shards.append(m.group(1))
        elif name.endswith("_stats.json") and name.split("_")[0].isdigit():
            stats.add(int(name.split("_")[0]))
    return sorted(shards), stats


def _retry_rounds(cfg: DownloadConfig, downloader, out_uri: str, shards: list[str], env: dict[str, str]):
    """Finish every shard (reason/attempts columns), then rounds of per-sample retries until no shard has a
    retryable sample; returns the last result of every shard (pipelines.fetch.retry.retry_round)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.fetch.retry import retry_round

    max_attempts = 1 + cfg.sample_retries
    if cfg.distributor == "ray":
        import ray

        job_env = dict((ray.get_runtime_context().runtime_env or {}).get("env_vars") or {})
        task = ray.remote(retry_round).options(num_cpus=1, runtime_env={"env_vars": {**job_env, **env}})

        def run_round(todo: list[str]) -> list[dict]:
            return ray.get([task.remote(downloader, out_uri, shard, max_attempts) for shard in todo])
    else:
        def run_round(todo: list[str]) -> list[dict]:  # the driver: retries are few, shards one at a time
            with _output_to_log("img2dataset retry"):
                return [retry_round(downloader, out_uri, shard, max_attempts) for shard in todo]

    # Shards with nothing to retry are finished here, a parquet read and write each (threads: I/O bound):
    # no Ray task for them, so a run without transient failures costs img2dataset's time and little more.
    with ThreadPoolExecutor(max_workers=min(8, len(shards) or 1)) as pool:
        final = {r["shard"]: r for r in pool.map(lambda s: retry_round(None, out_uri, s, max_attempts), shards)}
    todo, n = [s for s, r in final.items() if r["pending"]], 0
    while todo:
        if n:
            time.sleep(cfg.retry_backoff * 2 ** (n - 1))
        results = run_round(todo)
        log.info("download: retry round %d: %d transient failures refetched in %d shards", n + 1,
                 sum(r["retried"] for r in results), len(todo))
        final.update({r["shard"]: r for r in results})
        todo = [r["shard"] for r in results if r["pending"]]
        n += 1
    storage.remove(storage.join(out_uri, "_retry"), recursive=True)
    return final


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

        from pipelines.fetch.i2d import use_safe_downloader
        from pipelines.fetch.stats import DownloadStats, write_report

        # Workers started from now on (multiprocessing spawns, Ray tasks via _ray_task_env) get these.
        os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(cfg.max_image_pixels)
        env = {**storage_env(), "OPENCV_IO_MAX_IMAGE_PIXELS": str(cfg.max_image_pixels)}
        ray_env = contextlib.nullcontext()
        if cfg.distributor == "ray":
            init_ray(engine)
            ray_env = _ray_task_env(env)
        t0 = time.monotonic()
        with ray_env, _output_to_log("img2dataset"), _keep_sigint(), \
                use_safe_downloader(cfg.fetch_policy()) as built:
            img2dataset.download(
                url_list=candidates_uri, input_format="parquet", url_col="url", caption_col="caption",
                save_additional_columns=["uid", "page_url", "source"], output_format="webdataset",
                output_folder=out_uri, resize_mode="no", skip_reencode=True, compute_hash="sha256",
                incremental_mode="incremental", number_sample_per_shard=cfg.number_sample_per_shard,
                processes_count=cfg.processes_count, thread_count=cfg.thread_count, timeout=cfg.timeout,
                retries=cfg.retries, user_agent_token=cfg.user_agent_token,
                disallowed_header_directives=list(cfg.disallowed_header_directives),
                distributor=cfg.distributor, max_shard_retry=cfg.max_shard_retry, enable_wandb=False)
        shards, stats_done = _stats_files(out_uri)
        missing = sorted(set(range(expected)) - stats_done)
        if missing:
            raise RuntimeError(f"download: {len(missing)} of {expected} img2dataset shards did not finish in "
                               f"{out_uri} (first: {missing[0]:05d}); rerun to resume them")
        t1 = time.monotonic()
        results = _retry_rounds(cfg, built[0], out_uri, shards, env)
        log.info("download: img2dataset pass %.1fs, retry rounds and finishing %.1fs", t1 - t0, time.monotonic() - t1)
        stats = DownloadStats()
        others: dict[str, int] = {}
        for r in results.values():
            stats.merge(DownloadStats.from_json(r["stats"]))
            for msg, n in r["other_messages"].items():
                others[msg] = others.get(msg, 0) + n
        for reason, n in stats.by_reason.items():
            if reason == "success":
                counts.output += n
            else:
                counts.drop(reason, n)
        if others:
            log.warning("download: %d failures of unclassified kind: %s", sum(others.values()), others)
        log.info("download: statistics by reason and host in %s", write_report(out_uri, stats))
    log.info("download: %d candidates, %d downloaded, dropped %s", counts.input, counts.output, counts.dropped)
    return layout.commit(out_uri, counts)  # check(): every candidate must be accounted for
