"""balance (Spark): WIT/MetaCLIP curation of the candidates: match every alt text against the metadata, drop
pairs matching nothing, and cap each metadata entry at about t pairs.

CONTRACT (build.py calls it between extract and download):
    run(spark, cfg: BalanceConfig, in_uri: str, out_uri: str) -> StageCounts
- Input: the committed extract output, in_uri/part-*.parquet (uid and caption columns, any others
  carried along), read through pipelines.storage inside Spark tasks (Spark never touches object storage).
- The metadata (pipelines.metadata.build_entries(cfg.metadata)) is built once on the driver.
- Pass 1, counting: one Spark task per part, a mapPartitions that builds the Aho-Corasick automaton once per
  partition and counts, per entry, the pairs whose caption contains it; the per-entry totals are a DataFrame
  groupBy.
- Pass 2, selecting (MetaCLIP's balancing, Algorithm 1 of its paper): entry e selects each of its pairs with
  probability p(e) = min(1, t / count(e)), independently of the other entries; a pair is kept if ANY of its
  entries selects it. The draw is u(seed, uid, entry) < p(e), u a 64-bit hash of its arguments mapped to
  [0, 1), not a stateful RNG: the same pair gets the same decision on every partitioning and every rerun.
  Pairs matching no entry are dropped as no_metadata_match; pairs none of whose entries selected them as
  balanced_out.
- Publishes, each object atomically via pipelines.storage:
    out_uri/candidates/part-<same name as the input part>.parquet  kept rows, input schema and order, then
        out_uri/candidates/_COMMITTED.json: a committed candidate set, what download reads
        (candidates_uri(out_uri)); its own folder, because img2dataset reads every parquet of the folder
    out_uri/dropped.parquet            uid, reason, detail, entries (the entries it matched): every drop, where
        pipelines.explain looks (written per part by the tasks, then streamed into one file by the driver)
    out_uri/report/metadata.tsv        index, source, entry: the metadata this version was curated with
    out_uri/report/entry_counts.parquet  entry, source, matched (before), selected, kept (after), p_select
    out_uri/report/summary.json        t, seed, totals, head entries, metadata digest (what funnel.json cites)
  then layout.commit(out_uri, counts) last. A committed stage is returned as it is; an uncommitted one is
  recomputed from scratch, and as everything is deterministic the republished objects are identical.
- counts: input = candidate rows, output = kept rows, dropped {no_metadata_match, balanced_out}.

MetaCLIP balances last, after download, filtering and dedupe, because those lose pairs; balancing the
candidates instead (what this stage does, before download) saves fetching what would be thrown away, at the
price of ending somewhat under t per entry: raise t by the expected download/filter loss.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import layout, storage
from pipelines.funnel import StageCounts
from pipelines.metadata import Entry, Matcher, MetadataConfig, build_entries
from pipelines.stages.extract import apply_env

log = logging.getLogger(__name__)

NO_MATCH = "no_metadata_match"
BALANCED_OUT = "balanced_out"
DROPPED_SCHEMA = pa.schema([("uid", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
                            ("entries", pa.list_(pa.string()))])
CANDIDATES = "candidates"
_DROP_PARTS = "dropped-parts"  # per-task drop files, merged into dropped.parquet and removed
COUNTS_SCHEMA = pa.schema([("entry", pa.string()), ("source", pa.string()), ("matched", pa.int64()),
                           ("selected", pa.int64()), ("kept", pa.int64()), ("p_select", pa.float64())])
_HEAD = 20  # entries listed in summary.json


@dataclass
class BalanceConfig:
    enabled: bool = False
    """Run the stage (between extract and download). Off: every candidate goes to download."""
    t: int = 20_000
    """Pairs per metadata entry, at most about (MetaCLIP: 20,000 for 400M pairs from 500k entries). An entry
    matched by c > t pairs keeps each with probability t/c; rarer entries keep all theirs."""
    seed: int = 0
    """Seed of the selection draws: another seed, another (equally balanced) sample."""
    match_case: bool = False
    """Match case-sensitively, as MetaCLIP does; off: alt texts and entries are lower-cased first (web alt
    texts capitalise at random)."""
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    """Where the metadata entries come from (pipelines/metadata.py)."""

    def __post_init__(self) -> None:
        if self.t < 1:
            raise ValueError(f"pipeline.balance.t: {self.t} must be >= 1")
        if self.enabled:
            if not self.metadata.sources():
                raise ValueError("pipeline.balance.metadata: balancing is enabled but no vocab, titles or "
                                 "ngram_text files are listed")
            self.metadata.check_files("pipeline.balance.metadata")


def draw(seed: int, uid: str, entry: str) -> float:
    """A uniform number in [0, 1) that depends on (seed, uid, entry) alone. Keyed on the entry's text, not its
    index, so adding entries to the metadata never changes the draws of the others."""
    digest = hashlib.blake2b(f"{seed}\x1f{uid}\x1f{entry}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / 2.0**53  # 53 bits: exact as a float, always < 1


def p_select(count: int, t: int) -> float:
    return 1.0 if count <= t else t / count


def is_kept(uid: str, matched: tuple[int, ...], entries: list[str], counts: dict[int, int], t: int, seed: int,
            selected_out: list[int] | None = None) -> bool:
    """MetaCLIP's balance_sampling for one pair: kept if any matched entry selects it. Every entry is drawn
    (no early exit) when `selected_out` is given, so per-entry 'selected' counts are exact."""
    kept = False
    for i in matched:
        if draw(seed, uid, entries[i]) < p_select(counts[i], t):
            kept = True
            if selected_out is None:
                return True
            selected_out.append(i)
    return kept


def input_parts(in_uri: str) -> list[str]:
    if layout.committed(in_uri) is None:
        raise FileNotFoundError(f"balance: candidates at {in_uri} are not committed (run extract first)")
    parts = [u for u in storage.listdir(in_uri) if u.rsplit("/", 1)[1].endswith(".parquet")]
    if not parts:
        raise FileNotFoundError(f"balance: no candidate parts under {in_uri}")
    return parts


def _read(uri: str, columns: list[str] | None = None) -> pa.Table:
    with storage.open_uri(uri) as f:
        return pq.read_table(f, columns=columns)


def _publish(uri: str, table: pa.Table) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(uri, sink.getvalue())


def _count_partition(items: Iterator[tuple[int, str]], entries: list[str], match_case: bool,
                     env: dict[str, str]) -> Iterator[tuple[int, int]]:
    """Pass 1 (a Spark task): (entry index, pairs of this partition matching it)."""
    apply_env(env)  # the driver's object-store settings (executors may predate them)
    matcher = Matcher(entries, match_case)  # once per partition, whatever the number of parts in it
    counts: Counter = Counter()
    for _, uri in items:
        for caption in _read(uri, ["caption"]).column("caption").to_pylist():
            counts.update(matcher.match(caption or ""))
    yield from counts.items()


def _select_partition(items: Iterator[tuple[int, str]], entries: list[str], counts: dict[int, int], cfg: BalanceConfig,
                      out_uri: str, env: dict[str, str]) -> Iterator[tuple[tuple[str, int], tuple[int, ...]]]:
    """Pass 2 (a Spark task): publish the kept rows and the drops of each part; yield (("part", i), (rows,
    kept, no match, balanced out)) per part and (("entry", e), (selected, kept)) per matched entry."""
    apply_env(env)
    matcher = Matcher(entries, cfg.match_case)
    for part_index, uri in items:
        table = _read(uri)
        uids, captions = table.column("uid").to_pylist(), table.column("caption").to_pylist()
        mask, dropped = [], []
        entry_stats: dict[int, list[int]] = {}
        for uid, caption in zip(uids, captions):
            matched = matcher.match(caption or "")
            selected: list[int] = []
            kept = bool(matched) and is_kept(uid, matched, entries, counts, cfg.t, cfg.seed, selected)
            mask.append(kept)
            for i in matched:
                s = entry_stats.setdefault(i, [0, 0])
                s[0] += i in selected
                s[1] += kept
            if not kept:
                dropped.append({"uid": uid, "reason": BALANCED_OUT if matched else NO_MATCH,
                                "detail": _detail(matched, entries, counts, cfg.t),
                                "entries": [entries[i] for i in matched]})
        name = uri.rsplit("/", 1)[1]
        _publish(storage.join(candidates_uri(out_uri), name), table.filter(pa.array(mask, type=pa.bool_())))
        _publish(storage.join(out_uri, _DROP_PARTS, name), pa.Table.from_pylist(dropped, schema=DROPPED_SCHEMA))
        no_match = sum(d["reason"] == NO_MATCH for d in dropped)
        yield ("part", part_index), (len(uids), sum(mask), no_match, len(dropped) - no_match)
        for i, (sel, kept_n) in entry_stats.items():
            yield ("entry", i), (sel, kept_n)


def _detail(matched: tuple[int, ...], entries: list[str], counts: dict[int, int], t: int) -> str:
    if not matched:
        return "the alt text contains no metadata entry"
    shown = ", ".join(f"{entries[i]!r} ({counts[i]} pairs, p={p_select(counts[i], t):.3g})" for i in matched[:8])
    more = f" and {len(matched) - 8} more" if len(matched) > 8 else ""
    return f"not selected by any of its entries at t={t}: {shown}{more}"


def candidates_uri(out_uri: str) -> str:
    """The committed candidate set a balance stage leaves for download."""
    return storage.join(out_uri, CANDIDATES)


def _merge_dropped(out_uri: str, names: list[str]) -> None:
    """Stream the per-part drop files into out_uri/dropped.parquet (one part in memory at a time), then remove
    them: one file is what pipelines.explain reads, and the driver never holds all drops at once."""
    with storage.local_scratch("witforge-balance-") as tmp:
        local = f"{tmp}/dropped.parquet"
        with pq.ParquetWriter(local, DROPPED_SCHEMA) as writer:
            for name in names:
                writer.write_table(_read(storage.join(out_uri, _DROP_PARTS, name)))
        storage.put_file(local, storage.join(out_uri, "dropped.parquet"))
    storage.remove(storage.join(out_uri, _DROP_PARTS), recursive=True)


def _add(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(x + y for x, y in zip(a, b))


def count_entries(spark, parts: list[str], entries: list[str], match_case: bool) -> dict[int, int]:
    """Pass 1: {entry index: pairs matching it} over all parts (entries matching nothing are absent)."""
    from pyspark.sql import functions as F

    sc = spark.sparkContext
    bc, env = sc.broadcast(entries), storage.storage_env()
    partial = (sc.parallelize(list(enumerate(parts)), len(parts))
               .mapPartitions(lambda it: _count_partition(it, bc.value, match_case, env)))
    df = spark.createDataFrame(partial, "entry int, n long")
    return {r["entry"]: r["matched"] for r in df.groupBy("entry").agg(F.sum("n").alias("matched")).collect()}


def _report(entries: list[Entry], matched: dict[int, int], after: dict[int, tuple[int, int]], cfg: BalanceConfig,
            counts: StageCounts, metadata_tsv: bytes, out_uri: str) -> dict:
    rows = [{"entry": e.text, "source": e.source, "matched": matched.get(i, 0),
             "selected": after.get(i, (0, 0))[0], "kept": after.get(i, (0, 0))[1],
             "p_select": p_select(matched.get(i, 0), cfg.t)} for i, e in enumerate(entries)]
    _publish(storage.join(out_uri, "report", "entry_counts.parquet"), pa.Table.from_pylist(rows, schema=COUNTS_SCHEMA))
    head = sorted((r for r in rows if r["matched"]), key=lambda r: (-r["matched"], r["entry"]))[:_HEAD]
    summary = {
        "t": cfg.t, "seed": cfg.seed, "match_case": cfg.match_case,
        "metadata_entries": len(entries),
        "metadata_by_source": dict(sorted(Counter(e.source for e in entries).items())),
        "metadata_sha256": hashlib.sha256(metadata_tsv).hexdigest(),
        "entries_matched": sum(1 for r in rows if r["matched"]),
        "entries_over_t": sum(1 for r in rows if r["matched"] > cfg.t),
        "pairs_in": counts.input, "pairs_matched": counts.input - counts.dropped.get(NO_MATCH, 0),
        "pairs_kept": counts.output,
        "head_entries": [{k: r[k] for k in ("entry", "matched", "selected", "kept")} for r in head],
        "entry_counts": "report/entry_counts.parquet", "metadata": "report/metadata.tsv", "dropped": "dropped.parquet",
    }
    storage.write_json(storage.join(out_uri, "report", "summary.json"), summary)
    return summary


def run(spark, cfg: BalanceConfig, in_uri: str, out_uri: str) -> StageCounts:
    done = layout.committed(out_uri)
    if done is not None:
        log.info("balance: already committed at %s", out_uri)
        return done
    parts = input_parts(in_uri)
    entries = build_entries(cfg.metadata, cfg.match_case)
    if not entries:
        raise ValueError("balance: the metadata has no entries (check pipeline.balance.metadata's files)")
    metadata_tsv = "".join(f"{i}\t{e.source}\t{e.text}\n" for i, e in enumerate(entries)).encode("utf-8")
    storage.write_bytes(storage.join(out_uri, "report", "metadata.tsv"), metadata_tsv)
    texts = [e.text for e in entries]

    matched = count_entries(spark, parts, texts, cfg.match_case)
    sc = spark.sparkContext
    texts_bc, matched_bc, env = sc.broadcast(texts), sc.broadcast(matched), storage.storage_env()
    stats = dict(sc.parallelize(list(enumerate(parts)), len(parts))
                 .mapPartitions(lambda it: _select_partition(it, texts_bc.value, matched_bc.value, cfg, out_uri, env))
                 .reduceByKey(_add)
                 .collect())

    counts = StageCounts("balance")
    for (kind, _), values in sorted(stats.items()):
        if kind == "part":
            rows, kept, no_match, balanced_out = values
            counts.input += rows
            counts.output += kept
            for reason, n in ((NO_MATCH, no_match), (BALANCED_OUT, balanced_out)):
                if n:
                    counts.drop(reason, n)
    after = {i: v for (kind, i), v in stats.items() if kind == "entry"}
    _merge_dropped(out_uri, [uri.rsplit("/", 1)[1] for uri in parts])
    layout.commit(candidates_uri(out_uri), counts)  # download's input is complete
    summary = _report(entries, matched, after, cfg, counts, metadata_tsv, out_uri)
    log.info("balance: %d candidates, %d kept; %d of %d entries matched, %d over t=%d", counts.input, counts.output,
             summary["entries_matched"], len(entries), summary["entries_over_t"], cfg.t)
    return layout.commit(out_uri, counts)


def report(out_uri: str) -> dict:
    """summary.json of a committed balance stage, with the URI of its per-entry counts (for funnel.json)."""
    summary = storage.read_json(storage.join(out_uri, "report", "summary.json"))
    summary["entry_counts"] = storage.join(out_uri, summary["entry_counts"])
    return summary
