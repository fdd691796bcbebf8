"""What the curation stages after dedupe share: their input, their outputs and how they commit.

decontam, caption_dedupe, semdedup and clip_filter each read the survivors of the stage before them
(`<in_uri>/keep.parquet`, every filter column), drop some rows with a reason, and publish, in this order:

    <out_uri>/keep.parquet      the survivors, same columns (a stage may add some, e.g. clip_score), sorted by uid
    <out_uri>/dropped.parquet   uid, reason, dup_of (the sample or evaluation image it duplicates, or null),
                                score (the similarity or score that decided it, or null): what a lineage tool
                                shows for "why is this sample not in the dataset"
    <out_uri>/report.json       what the stage measured (thresholds, distributions, overlaps), or why it was skipped
    <out_uri>/_COMMITTED.json   layout.commit, last: the counts, balanced by StageCounts.check()

A rerun finds the commit marker and skips the stage (build.py's _stage); a crash before it republishes the same
bytes (every stage is deterministic). A stage that is disabled, or that has no model yet, still publishes its
input unchanged, so the chain and the funnel keep one shape whatever is switched on; report.json says why.
The shard stage reads keep.parquet of whichever stage runs last.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import layout, storage
from pipelines.funnel import StageCounts
from pipelines.stages.dedupe import publish_parquet, read_keep

log = logging.getLogger(__name__)

DROPPED_SCHEMA = pa.schema([("uid", pa.string()), ("reason", pa.string()), ("dup_of", pa.string()),
                            ("score", pa.float64())])


def read_survivors(in_uri: str) -> pa.Table:
    """The previous stage's survivors; uids must be unique (every stage after extract relies on it)."""
    table = read_keep(in_uri)
    if pc.count_distinct(table.column("uid")).as_py() != table.num_rows:
        raise ValueError(f"{storage.join(in_uri, 'keep.parquet')}: duplicate uids")
    return table


def finish(stage: str, out_uri: str, table: pa.Table, dropped: list[dict], report: dict) -> StageCounts:
    """Publish keep/dropped/report for `table` minus the `dropped` uids, then commit the stage."""
    drop_uids = [d["uid"] for d in dropped]
    if len(set(drop_uids)) != len(drop_uids):
        raise AssertionError(f"stage {stage}: a uid is dropped twice")
    mask = pc.is_in(table.column("uid"), value_set=pa.array(drop_uids, pa.string()))
    if (pc.sum(mask.cast(pa.int64())).as_py() or 0) != len(drop_uids):
        unknown = sorted(set(drop_uids) - set(table.column("uid").to_pylist()))
        raise AssertionError(f"stage {stage}: drops uids that are not in its input: {unknown[:5]}")
    keep = table.filter(pc.invert(mask)).sort_by([("uid", "ascending")])
    counts = StageCounts(stage, input=table.num_rows, output=keep.num_rows)
    for d in dropped:
        counts.drop(d["reason"])
    counts.check()  # before anything is published: a stage that loses rows must not leave outputs behind
    rows = sorted(({"uid": d["uid"], "reason": d["reason"], "dup_of": d.get("dup_of"),
                    "score": None if d.get("score") is None else float(d["score"])} for d in dropped),
                  key=lambda d: d["uid"])
    publish_parquet(storage.join(out_uri, "keep.parquet"), keep)
    publish_parquet(storage.join(out_uri, "dropped.parquet"), pa.Table.from_pylist(rows, schema=DROPPED_SCHEMA))
    storage.write_json(storage.join(out_uri, "report.json"), {"stage": stage, **report, "counts": counts.to_json()})
    return layout.commit(out_uri, counts)


def skip(stage: str, in_uri: str, out_uri: str, why: str) -> StageCounts:
    """Pass the input through unchanged, saying why in the log and in report.json."""
    log.warning("stage %s skipped: %s", stage, why)
    return finish(stage, out_uri, read_survivors(in_uri), [], {"skipped": why})


def read_dropped(stage_uri: str) -> pa.Table:
    """dropped.parquet of a committed curation stage (for lineage tools and tests)."""
    import pyarrow.parquet as pq

    with storage.open_uri(storage.join(stage_uri, "dropped.parquet")) as f:
        return pq.read_table(f)
