"""Per-sample retry of transient failures, and the `reason` / `attempts` columns of every shard parquet.

img2dataset's incremental mode resumes whole shards: a finished shard is never looked at again, so a sample
that timed out or met a 503 stays failed forever (img2dataset #333, #452). After img2dataset has run, the
download stage runs rounds of `retry_round` over its shards (pipelines.stages.download.run):

- A round refetches, once, the rows of a shard whose failure is TRANSIENT (timeout, 5xx, 429, DNS,
  connection, robots.txt unreachable) and whose `attempts` is below the limit. Successes and permanent
  failures (404, opt-out, robots-disallowed, SSRF, bombs, decode errors) are never refetched.
- The refetch IS img2dataset: the rows go through the same Downloader (our fetcher, img2dataset's resizer,
  hashing and writer) as a one-off shard in `_retry/<shard>/`, whose rows and tar members are then merged
  back under their original keys. So a retried sample is byte-for-byte what a first-time success would be.
- Publishing: the tar first (the old successes + the new ones), then the parquet (new statuses, attempts).
  A kill between the two leaves tar members the parquet does not call successes: readers only take
  members of success rows, and the next round rebuilds the tar from the parquet's successes, so nothing
  is duplicated. A rerun of the stage continues from the `attempts` column: it never exceeds the limit.
- Every shard parquet gets `reason` (null on success) and `attempts` columns, even with nothing to retry:
  the lineage of a dropped sample is its uid and its reason in that file.
"""

from __future__ import annotations

import collections
import copy
import io
import json
import logging
import os
import tarfile
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.fetch.errors import TRANSIENT, classify
from pipelines.fetch.stats import DownloadStats
from pipelines.fetch.tarmerge import member_key, rebuild

log = logging.getLogger(__name__)

REASON, ATTEMPTS = "reason", "attempts"


def _read_table(uri: str) -> pa.Table:
    with storage.open_uri(uri) as f:
        return pq.read_table(f)


def _retryable(row: dict, max_attempts: int) -> bool:
    reason = classify(row["status"], row["error_message"])
    return reason in TRANSIENT and (row.get(ATTEMPTS) or 1) < max_attempts


def retry_round(downloader, out_uri: str, shard: str, max_attempts: int) -> dict[str, Any]:
    """One round on one shard: refetch its retryable rows once, publish, count.

    With downloader=None nothing is fetched: a shard with nothing to retry gets its reason/attempts columns
    (the driver does this for every shard, cheaply, before any Ray task), and a shard with retryable rows is
    left as it is for a round with a downloader to publish once.

    Returns {"shard", "retried" (rows refetched now), "pending" (rows retryable after this round), "stats"
    (DownloadStats JSON of the shard's rows), "other_messages" (the commonest unclassified error messages)}."""
    parquet_uri = storage.join(out_uri, f"{shard}.parquet")
    table = _read_table(parquet_uri)
    rows = table.to_pylist()
    for r in rows:
        r[ATTEMPTS] = r.get(ATTEMPTS) or 1
    todo = [i for i, r in enumerate(rows) if _retryable(r, max_attempts)]
    changed = REASON not in table.column_names or ATTEMPTS not in table.column_names
    retried = 0
    if todo and downloader is not None:
        _refetch(downloader, out_uri, shard, table, rows, todo)
        changed, retried = True, len(todo)
    for r in rows:
        r[REASON] = classify(r["status"], r["error_message"])
    pending = sum(_retryable(r, max_attempts) for r in rows)
    if changed and not (downloader is None and pending):
        schema = table.schema
        for name, typ in ((REASON, pa.string()), (ATTEMPTS, pa.int32())):
            if name not in schema.names:
                schema = schema.append(pa.field(name, typ))
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), sink)
        storage.write_bytes(parquet_uri, sink.getvalue())
    stats = DownloadStats()
    others: collections.Counter = collections.Counter()
    for r in rows:
        stats.add(r["url"], r[REASON], r[ATTEMPTS])
        if r[REASON] == "other":
            others[str(r["error_message"])] += 1
    return {"shard": shard, "retried": retried, "pending": pending, "stats": stats.to_json(),
            "other_messages": dict(others.most_common(10))}


def _refetch(downloader, out_uri: str, shard: str, table: pa.Table, rows: list[dict], todo: list[int]) -> None:
    """Run rows[todo] through img2dataset as a one-off shard, then merge the results into this shard."""
    retry_dir = storage.join(out_uri, "_retry", shard)
    storage.remove(retry_dir, recursive=True)  # leftovers of a killed round
    sink = io.BytesIO()
    subset = table.select(downloader.column_list).take(pa.array(todo))
    with pa.ipc.new_file(sink, subset.schema) as writer:
        writer.write_table(subset)
    feather = storage.join(retry_dir, "input.feather")
    storage.write_bytes(feather, sink.getvalue())  # also creates the folder the writer opens files in
    d = copy.copy(downloader)
    d.output_folder = retry_dir
    d.download_shard((0, feather))  # img2dataset deletes its input file when the shard is done
    mini = _read_table(storage.join(retry_dir, f"{0:0{d.oom_shard_count}d}.parquet")).to_pylist()
    renamed: dict[str, str] = {}
    old_success = {rows[i]["key"] for i in range(len(rows)) if rows[i]["status"] == "success"}
    for m in mini:
        i = todo[int(m["key"])]  # the one-off shard's key is the row's index in `todo` (shard id 0)
        new_key = rows[i]["key"]
        renamed[m["key"]] = new_key
        rows[i] = {**rows[i], **m, "key": new_key, ATTEMPTS: rows[i][ATTEMPTS] + 1}
    # Always rebuilt, even without a new success: it also drops members a killed earlier round left behind.
    _merge_tar(storage.join(out_uri, f"{shard}.tar"),
               storage.join(retry_dir, f"{0:0{d.oom_shard_count}d}.tar"), old_success, renamed)
    storage.remove(retry_dir, recursive=True)
    log.info("shard %s: retried %d samples, %d succeeded", shard, len(todo),
             sum(m["status"] == "success" for m in mini))


def _merge_tar(tar_uri: str, mini_uri: str, keep: set[str], renamed: dict[str, str]) -> None:
    """Publish tar_uri = its members of keys in `keep` + the mini tar's members under their renamed keys."""
    added: list[tuple[tarfile.TarInfo, bytes]] = []
    with storage.open_uri(mini_uri) as f, tarfile.open(fileobj=f, mode="r|*") as mini:
        for info in mini:
            if not info.isfile():
                continue
            extracted = mini.extractfile(info)
            data = extracted.read() if extracted is not None else b""
            old = member_key(info.name)
            new = renamed[old]
            info.name = new + info.name[len(old):]
            if info.name.endswith(".json"):  # the sample's metadata names its key too
                meta = json.loads(data)
                meta["key"] = new
                data = json.dumps(meta, indent=4).encode()  # img2dataset's own formatting
                info.size = len(data)
            added.append((info, data))
    with storage.local_scratch("witforge-retry-") as tmp:
        local = os.path.join(tmp, "shard.tar")
        with storage.open_uri(tar_uri) as src, open(local, "w+b") as out:
            rebuild(src, out, keep, added)  # drops members a killed earlier round left behind, too
        storage.put_file(local, tar_uri)
