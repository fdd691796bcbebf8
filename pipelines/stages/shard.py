"""shard (Ray): the kept samples -> final WebDataset tars + per-shard Parquet, published atomically.

CONTRACT (owned by the curation helper; build.py calls it):
    run(cfg: ShardConfig, dedupe_uri: str, download_uri: str, version_uri: str) -> tuple[list[ShardInfo], StageCounts]
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ShardConfig:
    samples_per_shard: int = 1000
    shuffle_seed: int = 0
    """Seed of the deterministic global shuffle applied before sharding."""
