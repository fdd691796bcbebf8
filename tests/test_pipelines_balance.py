"""balance stage: the metadata, Aho-Corasick matching against a brute-force loop, MetaCLIP's balancing (statistics,
ANY-entry semantics, determinism across reruns and partitionings), and the Spark stage end to end on a small
synthetic web read from WAT files (extract -> balance), including its lineage for pipelines.explain."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipelines import layout, storage
from pipelines.config import ConfigError, build_dataclass
from pipelines.funnel import StageCounts
from pipelines.metadata import BIGRAM, TITLE, UNIGRAM, VOCAB, Matcher, MetadataConfig, build_entries, spaced
from pipelines.stages import balance, extract
from pipelines.stages.balance import BalanceConfig, is_kept

REPO = Path(__file__).resolve().parent.parent
DEMO_VOCAB = str(REPO / "configs" / "synthweb_vocab.txt")


def brute_force(text: str, entries: list[str], match_case: bool = False) -> tuple[int, ...]:
    s = spaced(text, match_case)
    return tuple(i for i, e in enumerate(entries) if spaced(e, match_case) in s)


def test_matching_equals_brute_force_on_random_data():
    rng = random.Random(7)
    words = ["a", "ab", "b", "ba", "abc", "c", "ca", "bab"]
    puncts = [",", ".", "!", "(", ")", "?", ":"]

    def phrase(n: int) -> str:
        out = []
        for _ in range(n):
            w = rng.choice(words + puncts if out else words)
            out.append(w.upper() if rng.random() < 0.2 else w)
        return rng.choice([" ", "  ", "\t"]).join(out)

    for match_case in (False, True):
        entries, keys = [], set()
        for _ in range(60):
            e = phrase(rng.randint(1, 3))
            if spaced(e, match_case) not in keys:  # the metadata is deduplicated on this form
                keys.add(spaced(e, match_case))
                entries.append(e)
        matcher = Matcher(entries, match_case)
        texts = [phrase(rng.randint(0, 14)) for _ in range(3000)]
        hits = 0
        for text in texts:
            assert matcher.match(text) == brute_force(text, entries, match_case), text
            hits += bool(matcher.match(text))
        assert hits > 1000  # the random data exercises matching, not just misses


def test_matching_is_whole_word_and_case_folded():
    m = Matcher(["red", "red circle", "circle", "st. louis", "t-shirt"])
    assert m.match("A RED Circle, bored") == (0, 1, 2)
    assert m.match("two red circles") == (0,)  # plural is another word: list it in the vocabulary
    assert m.match("Views of St.Louis") == (3,)  # punctuation is set apart on both sides
    assert m.match("a t-shirt") == (4,)
    assert Matcher(["Red"], match_case=True).match("red Red") == (0,)
    assert Matcher([]).match("anything") == ()


def test_build_entries(tmp_path):
    (tmp_path / "vocab.txt").write_text("# comment\nRobin\n\nblue  jay\nrobin\n...\n")
    (tmp_path / "titles.txt").write_text("Blue jay\nBald eagle\n")
    text = " ".join(["the bald eagle flies over the river."] * 40 + ["a robin sings in the garden"] * 5
                    + ["eagle", "river bank", "the the the"] * 3)
    (tmp_path / "domain.txt").write_text(text)
    cfg = MetadataConfig(vocab=[str(tmp_path / "vocab.txt")], titles=[str(tmp_path / "titles.txt")],
                         ngram_text=[str(tmp_path / "domain.txt")], min_unigram_count=40, min_bigram_count=30,
                         min_bigram_pmi=1.0)
    entries = build_entries(cfg)
    got = [(e.source, e.text) for e in entries]
    # Vocabulary first (deduplicated case-insensitively, punctuation-only lines skipped), then new titles, then
    # frequent unigrams by count (no stopwords), then high-PMI bigrams.
    assert got[:3] == [(VOCAB, "Robin"), (VOCAB, "blue jay"), (TITLE, "Bald eagle")]
    unigrams = [t for s, t in got if s == UNIGRAM]
    bigrams = [t for s, t in got if s == BIGRAM]
    assert unigrams == ["eagle", "river", "bald", "flies"]  # "the" and "over" are function words
    assert bigrams == ["eagle flies"]  # "flies over" holds a function word
    assert "bald eagle" not in bigrams  # already a title
    loose = build_entries(MetadataConfig(ngram_text=[str(tmp_path / "domain.txt")], min_unigram_count=40,
                                         drop_stopwords=False))
    assert loose[0].text == "the"


def _pairs() -> tuple[list[str], list[tuple[int, ...]], dict[int, int]]:
    """5000 pairs matching only A, 1000 matching A and B, 1500 only B, 300 only C."""
    groups = [((0,), 5000), ((0, 1), 1000), ((1,), 1500), ((2,), 300)]
    uids, matched = [], []
    for entries, n in groups:
        for _ in range(n):
            uids.append(f"{len(uids):024x}")
            matched.append(entries)
    counts = {0: 6000, 1: 2500, 2: 300}
    return uids, matched, counts


def test_balancing_statistics():
    t, names = 500, ["A", "B", "C"]
    uids, matched, counts = _pairs()
    kept = [is_kept(u, m, names, counts, t, seed=0) for u, m in zip(uids, matched)]
    selected = {0: 0, 1: 0, 2: 0}
    for u, m in zip(uids, matched):
        out: list[int] = []
        is_kept(u, m, names, counts, t, seed=0, selected_out=out)
        for i in out:
            selected[i] += 1

    def within(observed: int, n: int, p: float, sds: float = 6.0) -> bool:
        return abs(observed - n * p) <= sds * math.sqrt(n * p * (1 - p))

    # An entry over t is selected about t times (p = t/count per pair), whatever else its pairs match.
    assert within(selected[0], 6000, t / 6000) and within(selected[1], 2500, t / 2500)
    assert selected[2] == 300  # under t: every pair
    only_a, a_and_b = sum(kept[:5000]), sum(kept[5000:6000])
    assert within(only_a, 5000, t / 6000)
    # ANY semantics with independent draws: P(keep) = 1 - (1 - pA)(1 - pB).
    assert within(a_and_b, 1000, 1 - (1 - t / 6000) * (1 - t / 2500))
    assert all(kept[7500:])  # entry C (300 <= t) keeps all its pairs
    # Deterministic: the same decisions again; another seed, another sample of about the same size.
    assert kept == [is_kept(u, m, names, counts, t, seed=0) for u, m in zip(uids, matched)]
    other = [is_kept(u, m, names, counts, t, seed=1) for u, m in zip(uids, matched)]
    assert other != kept and abs(sum(other) - sum(kept)) < 150


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="pipeline.balance.t"):
        build_dataclass(BalanceConfig, {"t": 0}, "pipeline.balance")
    with pytest.raises(ConfigError, match="no vocab, titles or ngram_text"):
        build_dataclass(BalanceConfig, {"enabled": True}, "pipeline.balance")
    with pytest.raises(ConfigError, match=r"pipeline.balance.metadata.vocab\[0\]: .*nope.txt"):
        build_dataclass(BalanceConfig, {"enabled": True, "metadata": {"vocab": [str(tmp_path / "nope.txt")]}},
                        "pipeline.balance")
    with pytest.raises(ConfigError, match="unknown field pipeline.balance.metadata.vocabulary"):
        build_dataclass(BalanceConfig, {"metadata": {"vocabulary": []}}, "pipeline.balance")
    # Off, nothing is checked: a config may carry a balance section for later.
    assert not build_dataclass(BalanceConfig, {"metadata": {"vocab": ["nope.txt"]}}, "pipeline.balance").enabled


def test_example_configs_overlap_the_synthetic_web():
    """configs/birds.yaml's balance section is valid and its metadata matches synthetic alt texts."""
    from synthweb.alt_text import clean_caption
    from synthweb.scenes import sample_spec

    raw = yaml.safe_load((REPO / "configs" / "birds.yaml").read_text())
    section = raw["pipeline"]["balance"]
    section["metadata"] = {k: [str(REPO / p) for p in v] if isinstance(v, list) else v
                           for k, v in section["metadata"].items()}
    cfg = build_dataclass(BalanceConfig, section, "pipeline.balance")
    rng = random.Random(0)
    captions = [clean_caption(sample_spec(rng), rng) for _ in range(400)]
    for metadata in (cfg.metadata, MetadataConfig(vocab=[DEMO_VOCAB])):
        matcher = Matcher([e.text for e in build_entries(metadata)])
        assert sum(bool(matcher.match(c)) for c in captions) > 300


# ---- the Spark stage ------------------------------------------------------------------------------------------

def _read_dir(uri: str) -> dict[str, list[dict]]:
    out = {}
    for part in storage.listdir(uri):
        if part.endswith(".parquet"):
            with storage.open_uri(part) as f:
                out[part.rsplit("/", 1)[1]] = pq.read_table(f).to_pylist()
    return out


@pytest.fixture(scope="module")
def candidates(spark, tmp_path_factory) -> str:
    """Extract output of a small synthetic web, read from its WAT files (3 files -> 3 candidate parts)."""
    from synthweb.config import WebConfig
    from synthweb.corpus import ensure_corpus
    from synthweb.wat import ensure_wats

    tmp = tmp_path_factory.mktemp("balance")
    corpus = ensure_corpus(WebConfig(dir=str(tmp / "web"), sites=3, pages=30, images_per_page=10,
                                     pages_per_warc=10))
    out = str(tmp / "candidates")
    extract.run(spark, extract.ExtractConfig(), ensure_wats(corpus), out)
    return out


def _cfg(t: int = 12, seed: int = 0) -> BalanceConfig:
    return BalanceConfig(enabled=True, t=t, seed=seed, metadata=MetadataConfig(vocab=[DEMO_VOCAB]))


def test_balance_stage_end_to_end(spark, candidates, tmp_path):
    out = str(tmp_path / "balance")
    cfg = _cfg()
    counts = balance.run(spark, cfg, candidates, out)
    rows = [r for part in _read_dir(candidates).values() for r in part]
    assert counts.input == len(rows) == layout.committed(candidates).output
    assert counts.check() and set(counts.dropped) == {"no_metadata_match", "balanced_out"}
    assert layout.committed(out).to_json() == counts.to_json()

    # Kept rows: a committed candidate set of download's layout (same part names, same columns, input order).
    cand_dir = balance.candidates_uri(out)
    assert layout.committed(cand_dir) is not None
    assert sorted(u.rsplit("/", 1)[1] for u in storage.listdir(cand_dir)) == \
        ["_COMMITTED.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    kept_parts = _read_dir(cand_dir)
    for name, part in _read_dir(candidates).items():
        kept_uids = {r["uid"] for r in kept_parts[name]}
        assert kept_parts[name] == [r for r in part if r["uid"] in kept_uids]
    kept = {r["uid"] for part in kept_parts.values() for r in part}

    # Every candidate is either kept or in dropped.parquet with its reason (lineage), never both.
    dropped = _read_dir(out)["dropped.parquet"]
    assert len(kept) + len(dropped) == len(rows) == len(kept | {d["uid"] for d in dropped})
    assert len(kept) == counts.output
    texts = [line.split("\t")[2] for line in storage.read_bytes(f"{out}/report/metadata.tsv").decode().splitlines()]
    matcher = Matcher(texts)
    by_uid = {r["uid"]: matcher.match(r["caption"]) for r in rows}
    for d in dropped:
        assert d["reason"] == ("balanced_out" if by_uid[d["uid"]] else "no_metadata_match")
        assert d["entries"] == [texts[i] for i in by_uid[d["uid"]]] and d["detail"]

    # Per-entry counts before (a brute-force recount) and after balancing.
    ec = {r["entry"]: r for r in _read_dir(f"{out}/report")["entry_counts.parquet"]}
    for i, text in enumerate(texts):
        members = [u for u, m in by_uid.items() if i in m]
        assert ec[text]["matched"] == len(members)
        assert ec[text]["kept"] == sum(u in kept for u in members)
        assert ec[text]["selected"] <= ec[text]["kept"]
        if len(members) <= cfg.t:
            assert ec[text]["kept"] == ec[text]["selected"] == len(members)
    assert any(r["matched"] > cfg.t for r in ec.values())  # t bites on this corpus
    summary = balance.report(out)
    assert summary["pairs_in"] == counts.input and summary["pairs_kept"] == counts.output
    assert summary["entry_counts"] == f"{out}/report/entry_counts.parquet"
    assert summary["entries_over_t"] == sum(r["matched"] > cfg.t for r in ec.values())

    # pipelines.explain reads the drop and its reason from the stage dir.
    from pipelines import explain

    stage = layout.StageDir("balance", out, counts, None)
    verdict = explain.judge_stage(stage, dropped[0]["uid"])
    assert verdict["verdict"] == "dropped" and verdict["reason"] == dropped[0]["reason"]
    assert explain.judge_stage(stage, next(iter(kept)))["verdict"] == "passed"

    # A committed stage is skipped; recomputed from scratch it republishes identical objects.
    before = {u: storage.read_bytes(u) for u in storage.walk_files(out) if not u.endswith("_COMMITTED.json")}
    assert balance.run(spark, cfg, candidates, out).to_json() == counts.to_json()
    storage.remove(f"{out}/_COMMITTED.json")
    balance.run(spark, cfg, candidates, out)
    assert {u: storage.read_bytes(u) for u in storage.walk_files(out) if not u.endswith("_COMMITTED.json")} == before


def test_balance_same_on_any_partitioning(spark, candidates, tmp_path):
    """The draws depend on (seed, uid, entry) only: one part or three, the same pairs are kept."""
    import pyarrow as pa

    one = str(tmp_path / "one-part")
    tables = []
    for uri in storage.listdir(candidates):
        if uri.endswith(".parquet"):
            with storage.open_uri(uri) as f:
                tables.append(pq.read_table(f))
    table = pa.concat_tables(tables)
    balance._publish(f"{one}/part-00000.parquet", table)
    layout.commit(one, StageCounts("extract", input=table.num_rows, output=table.num_rows))

    def kept(src: str, name: str, seed: int = 0) -> set[str]:
        out = str(tmp_path / name)
        balance.run(spark, _cfg(seed=seed), src, out)
        return {r["uid"] for part in _read_dir(balance.candidates_uri(out)).values() for r in part}

    three = kept(candidates, "from-three")
    assert kept(one, "from-one") == three
    assert kept(candidates, "seed-1", seed=1) != three


def test_balance_on_s3(spark, candidates, s3_bucket, tmp_path):
    """Same stage, same result, with input and output in object storage (moto's S3 server)."""
    src = f"{s3_bucket}/ds/v1/_work/candidates"
    for uri in storage.listdir(candidates):
        storage.put_file(uri, f"{src}/{uri.rsplit('/', 1)[1]}")
    local, remote = str(tmp_path / "local"), f"{s3_bucket}/ds/v1/_work/balance"
    assert balance.run(spark, _cfg(), src, remote).to_json() == balance.run(spark, _cfg(), candidates, local).to_json()
    names = sorted(u.rsplit("/", 1)[1] for u in storage.listdir(remote))
    assert names == ["_COMMITTED.json", "candidates", "dropped.parquet", "report"]  # per-part drop files merged
    for rel in ("dropped.parquet", "report/entry_counts.parquet", "candidates/part-00001.parquet"):
        assert storage.read_bytes(f"{remote}/{rel}") == storage.read_bytes(f"{local}/{rel}")
