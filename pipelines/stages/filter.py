"""filter (Ray, one task per download shard): decode, measure and judge every downloaded sample.

CONTRACT (owned by the curation helper; build.py calls it):
    run(cfg: FilterConfig, download_uri: str, out_uri: str) -> StageCounts
See pipelines/layout.py for where outputs go.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FilterConfig:
    min_side: int = 32
    """Images whose shorter side is below this many pixels are dropped (too_small)."""
    max_aspect_ratio: float = 3.0
    """Images longer than this ratio in either direction are dropped (aspect_ratio)."""
