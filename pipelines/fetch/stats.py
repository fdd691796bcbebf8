"""Download statistics by failure reason and by host, written beside the shards.

    <download work dir>/_stats/summary.json    reasons, attempts, retries, the hosts with most failures
    <download work dir>/_stats/by_host.parquet  host, reason, count (every host; "success" is a reason here)

In a sub-folder because img2dataset, when it resumes, reads every top-level *.json of its output folder as
a shard's stats file.
"""

from __future__ import annotations

import collections
import io
from typing import Any
from urllib.parse import urlsplit

from pipelines import storage

SUCCESS = "success"
TOP_HOSTS = 50


def host_of(url: str | None) -> str:
    """host[:port] of a URL, for grouping ("?" when it has none)."""
    try:
        parts = urlsplit(url or "")
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "?"


class DownloadStats:
    """Counters that add up across shards; JSON-able so Ray tasks can return them."""

    def __init__(self) -> None:
        self.by_reason: collections.Counter = collections.Counter()
        self.by_host: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.attempts: collections.Counter = collections.Counter()
        self.recovered = 0
        """Samples that failed transiently and then succeeded on a retry."""

    def add(self, url: str | None, reason: str | None, attempts: int) -> None:
        label = reason or SUCCESS
        self.by_reason[label] += 1
        self.by_host[host_of(url)][label] += 1
        self.attempts[str(attempts)] += 1
        if reason is None and attempts > 1:
            self.recovered += 1

    def merge(self, other: DownloadStats) -> None:
        self.by_reason.update(other.by_reason)
        for host, counts in other.by_host.items():
            self.by_host[host].update(counts)
        self.attempts.update(other.attempts)
        self.recovered += other.recovered

    def to_json(self) -> dict[str, Any]:
        return {"by_reason": dict(self.by_reason), "by_host": {h: dict(c) for h, c in self.by_host.items()},
                "attempts": dict(self.attempts), "recovered": self.recovered}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DownloadStats:
        s = cls()
        s.by_reason.update(d["by_reason"])
        for host, counts in d["by_host"].items():
            s.by_host[host].update(counts)
        s.attempts.update(d["attempts"])
        s.recovered = d["recovered"]
        return s

    def summary(self) -> dict[str, Any]:
        def failures(counts: collections.Counter) -> int:
            return sum(n for r, n in counts.items() if r != SUCCESS)

        worst = sorted(self.by_host.items(), key=lambda kv: (-failures(kv[1]), kv[0]))[:TOP_HOSTS]
        return {
            "samples": sum(self.by_reason.values()),
            "by_reason": dict(sorted(self.by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
            "attempts": dict(sorted(self.attempts.items(), key=lambda kv: int(kv[0]))),
            "recovered_by_retry": self.recovered,
            "hosts": len(self.by_host),
            "hosts_most_failures": [{"host": h, "failures": failures(c), **dict(sorted(c.items()))}
                                    for h, c in worst if failures(c)],
        }


def write_report(out_uri: str, stats: DownloadStats) -> str:
    """Publish _stats/by_host.parquet then _stats/summary.json; returns the summary's URI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"host": h, "reason": r, "count": n} for h, c in sorted(stats.by_host.items()) for r, n in sorted(c.items())]
    table = pa.Table.from_pylist(rows, schema=pa.schema([("host", pa.string()), ("reason", pa.string()),
                                                         ("count", pa.int64())]))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(storage.join(out_uri, "_stats", "by_host.parquet"), sink.getvalue())
    uri = storage.join(out_uri, "_stats", "summary.json")
    storage.write_json(uri, stats.summary())
    return uri
