"""dedupe (Spark): exact (normalized URL, SHA-256 of bytes) and perceptual (64-bit pHash, Hamming distance).

CONTRACT (owned by the curation helper; build.py calls it):
    run(spark, cfg: DedupeConfig, filtered_uri: str, out_uri: str) -> StageCounts
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DedupeConfig:
    phash_max_distance: int = 6
    """Two images whose 64-bit pHashes differ in at most this many bits are near duplicates."""
