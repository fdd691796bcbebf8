"""download (img2dataset): candidate rows -> img2dataset WebDataset shards with per-shard stats.

CONTRACT (owned by the extract/download helper; build.py calls it):
    run(cfg: DownloadConfig, engine: EngineConfig, candidates_uri: str, out_uri: str) -> StageCounts
- Calls img2dataset.download on candidates_uri's parquet parts, output_format webdataset, resize_mode "no" and
  skip_reencode (original bytes kept: the filter stage must see truncated files as they are), compute_hash sha256,
  save_additional_columns [uid, page_url, source], incremental_mode "incremental" (a rerun resumes),
  X-Robots-Tag opt-outs honoured (img2dataset's disallowed_header_directives).
- img2dataset's own shard layout stays as is in out_uri: {00000}.tar, {00000}.parquet, {00000}_stats.json.
- Then layout.commit(out_uri, counts): input = candidates, output = successes, dropped by error kind
  (http_404, http_5xx, timeout, opt_out, decode_error, ...).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DownloadConfig:
    processes_count: int = 2
    thread_count: int = 16
    timeout: int = 4
    """Seconds per request."""
    retries: int = 0
    number_sample_per_shard: int = 1000
    user_agent_token: str = "witforge"
