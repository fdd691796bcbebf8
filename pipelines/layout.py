"""Where each stage of a dataset build keeps its committed output, under the version prefix.

    <root>/<dataset>/<version>/
        _work/candidates/part-*.parquet + _COMMITTED.json     extract (Spark)
        _work/download/  img2dataset's shards + _COMMITTED.json download (img2dataset)
        _work/filtered/<download shard>.parquet [+ rejected/<shard>.tar] + _COMMITTED.json  filter (Ray)
        _work/dedupe/keep.parquet, dropped.parquet + _COMMITTED.json  dedupe (Spark)
        _work/<stage>/... + _COMMITTED.json                    any later stage (see below)
        _work/shard/NNNNNN.json                                per-shard commit records (shard, Ray)
        shards/000000.{tar,parquet}, funnel.json, config.yaml, manifest.json (last)
A stage whose `_COMMITTED.json` exists is done: a rerun reads its counts and skips it.

The marker holds the stage's StageCounts plus `committed_at` (UTC, microseconds). Stages run one after the
other and a stage commits only after the one before it, so commit time is pipeline order: `committed_stages`
finds every stage under `_work/` in that order without a list of stage names, which is how
`python -m pipelines.explain` picks up stages added later. A stage that drops samples should record them in
`<its work dir>/dropped.parquet` with columns uid, reason and detail (any further columns, such as dedupe's
dup_of, are shown too).
"""

from __future__ import annotations

import datetime as dt
import posixpath
from dataclasses import dataclass

from pipelines import storage
from pipelines.funnel import StageCounts

COMMIT_MARKER = "_COMMITTED.json"
# Per-shard commit records of the shard stage, which has no single marker: the manifest is its commit.
SHARD_RECORDS = "shard"


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
    record = counts.check().to_json()
    record["committed_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    storage.write_json(storage.join(stage_uri, COMMIT_MARKER), record)
    return counts


@dataclass
class StageDir:
    """One stage's work directory under `<version>/_work/`."""

    dir: str  # the directory's name ("filtered")
    uri: str
    counts: StageCounts | None  # None: not committed (the stage was running, or died)
    committed_at: float | None  # POSIX seconds

    @property
    def stage(self) -> str:
        """The stage's own name (from its marker: "filter" for the dir "filtered"), else the dir name."""
        return self.counts.stage if self.counts else self.dir


def _marker_time(marker_uri: str, record: dict) -> float:
    if record.get("committed_at"):
        return dt.datetime.fromisoformat(record["committed_at"]).timestamp()
    # Markers written before committed_at existed: the object's own modification time.
    fs, path = storage.filesystem(marker_uri)
    info = fs.info(path)
    stamp = info.get("LastModified") or info.get("mtime") or info.get("created") or 0
    return stamp.timestamp() if isinstance(stamp, dt.datetime) else float(stamp)


def stage_dirs(version: str) -> list[StageDir]:
    """Every stage work dir under `<version>/_work/` except the shard records: committed ones in commit
    (= pipeline) order, then uncommitted ones by name."""
    done, pending = [], []
    for uri in storage.listdir(storage.join(version, "_work")):
        name = posixpath.basename(uri)
        if name == SHARD_RECORDS:
            continue
        marker = storage.join(uri, COMMIT_MARKER)
        if storage.exists(marker):
            record = storage.read_json(marker)
            done.append(StageDir(name, uri, StageCounts.from_json(record), _marker_time(marker, record)))
        else:
            pending.append(StageDir(name, uri, None, None))
    done.sort(key=lambda s: (s.committed_at, s.dir))
    return done + sorted(pending, key=lambda s: s.dir)
