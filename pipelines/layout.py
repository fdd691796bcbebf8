"""Where each stage of a dataset build keeps its committed output, under the version prefix.

    <root>/<dataset>/<version>/
        _work/candidates/part-*.parquet + _COMMITTED.json     extract (Spark)
        _work/download/  img2dataset's shards + _COMMITTED.json download (img2dataset)
        _work/filtered/<download shard>.parquet + _COMMITTED.json  filter (Ray, one task per shard)
        _work/dedupe/keep.parquet, dropped.parquet + _COMMITTED.json  dedupe (Spark)
        shards/000000.{tar,parquet}, funnel.json, config.yaml, manifest.json (last)
A stage whose `_COMMITTED.json` exists is done: a rerun reads its counts and skips it.
"""

from __future__ import annotations

from pipelines import storage
from pipelines.funnel import StageCounts

COMMIT_MARKER = "_COMMITTED.json"


def version_uri(root: str, dataset: str, version: str) -> str:
    return storage.join(root, dataset, version)


def work_uri(version: str, stage: str) -> str:
    return storage.join(version, "_work", stage)


def committed(stage_uri: str) -> StageCounts | None:
    marker = storage.join(stage_uri, COMMIT_MARKER)
    if not storage.exists(marker):
        return None
    return StageCounts.from_json(storage.read_json(marker))


def commit(stage_uri: str, counts: StageCounts) -> StageCounts:
    """Mark a stage done; written after every output of the stage is published."""
    storage.write_json(storage.join(stage_uri, COMMIT_MARKER), counts.check().to_json())
    return counts
