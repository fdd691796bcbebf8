"""caption_dedupe stage (Spark + datasketch MinHash LSH): planted caption near duplicates found, distinct and
hard-negative captions kept; recall per kind of edit and the false-removal rate are measured and printed."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import layout
from pipelines.stages import caption_dedupe as cd
from pipelines.stages.curation import read_dropped
from pipelines.stages.filter import FILTERED_SCHEMA

ADJ = ("red", "blue", "green", "old", "vintage", "modern", "wooden", "small", "large", "rustic", "bright", "dark",
       "golden", "silver", "tiny", "antique", "handmade", "colourful", "minimalist", "cozy", "elegant", "crème",
       "striped", "floral", "weathered")
NOUN = ("chair", "table", "lamp", "bicycle", "teapot", "guitar", "sofa", "clock", "vase", "mirror", "backpack",
        "camera", "kettle", "notebook", "umbrella", "bookshelf", "lantern", "basket", "café sign", "typewriter",
        "sailboat", "armchair", "piano", "windmill", "lighthouse")
PLACE = ("in a sunny garden", "on a wooden floor", "next to a window", "at the beach", "in a busy street",
         "on a white background", "in a living room", "under a tree", "by the lake", "in the snow",
         "at a flea market", "in a kitchen", "on a rooftop", "in the mountains", "near the old harbour")
EXTRA = ("", "", "with a cat", "at sunset", "for sale", "close up", "in winter", "with flowers", "from above",
         "in black and white")
KINDS = ("format", "encoding", "typo", "word_drop")


def _content(rng: random.Random) -> tuple:
    """What a caption says: (adjectives, object, place, extra). Two originals always differ in one of these."""
    adjs = tuple(rng.sample(ADJ, rng.choice((1, 2))))
    return adjs, rng.choice(NOUN), rng.choice(PLACE), rng.choice(EXTRA)


ARTICLES = ("a", "the", "one", "a photo of a", "an image of a")


def _caption(content: tuple, article: str) -> str:
    adjs, noun, place, extra = content
    return " ".join(w for w in (article, *adjs, noun, place, extra) if w)


def _variant(rng: random.Random, text: str, kind: str) -> str:
    """A near duplicate of `text` as the web makes them."""
    if kind == "format":  # case, punctuation, whitespace
        out = text.upper() if rng.random() < 0.3 else text.title()
        return "  " + out.replace(" ", rng.choice(("  ", " - ", ", "))) + rng.choice(("!", ".", "...", " |"))
    if kind == "encoding":  # mojibake of the UTF-8 bytes read as cp1252, or HTML entities
        if any(ord(c) > 127 for c in text) and rng.random() < 0.7:
            return text.encode("utf-8").decode("cp1252", errors="replace")
        return text.replace(" ", "&nbsp;", 1).replace("é", "&eacute;") + " &amp; more"
    if kind == "typo":  # one character substituted, deleted or two swapped, inside a word
        i = rng.choice([k for k in range(1, len(text) - 1) if text[k].isalpha() and text[k + 1].isalpha()])
        op = rng.choice(("sub", "del", "swap"))
        if op == "sub":
            return text[:i] + rng.choice("aeiourstln".replace(text[i], "")) + text[i + 1:]
        if op == "del":
            return text[:i] + text[i + 1:]
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    words = text.split()  # word_drop: one short function word removed
    small = [k for k, w in enumerate(words) if w in ("a", "an", "the", "of", "in", "on", "at", "by")]
    k = rng.choice(small or [0])
    return " ".join(words[:k] + words[k + 1:])


def _hard_negative(rng: random.Random, content: tuple) -> tuple:
    """Another content one word away (another object or adjective): a DIFFERENT sample."""
    adjs, noun, place, extra = content
    if rng.random() < 0.5:
        return adjs, rng.choice([n for n in NOUN if n != noun]), place, extra
    k = rng.randrange(len(adjs))
    new = rng.choice([a for a in ADJ if a not in adjs])
    return adjs[:k] + (new,) + adjs[k + 1:], noun, place, extra


def _row(i: int, caption: str, side: int) -> dict:
    uid = f"{i:08x}" + "cd" * 8
    return dict(uid=uid, key=f"{i:09d}", src_tar="x.tar", url=f"http://h.invalid/{uid}.jpg", page_url="",
                source="t", caption=caption, width=side, height=side, sha256=uid, phash="0" * 16,
                colour_sig="00" * 48, lang="en", lang_score=1.0, keep=True, reason=None)


def _write_input(folder, rows: list[dict]) -> str:
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=FILTERED_SCHEMA), folder / "keep.parquet")
    return str(folder)


def test_caption_key_and_shingles():
    assert cd.caption_key("  A RED  Chair,\tin the GARDEN!! ") == "a red chair in the garden"
    assert cd.caption_key("cafÃ© &amp; cr\u00e8me") == cd.caption_key("Café & crème") == "café crème"
    assert cd.caption_key("--- !!! ---") == ""
    assert cd.shingles("abcdef", "char", 5) == {"abcde", "bcdef"} and cd.shingles("abc", "char", 5) == {"abc"}
    assert cd.shingles("a b c", "word", 2) == {"a b", "b c"}
    b, r = cd.lsh_bands(cd.CaptionDedupeConfig())
    assert b * r <= 128 and b > 1


def test_measured_recall_and_false_removals(tmp_path, spark):
    """Distinct captions, near-duplicate variants of some (4 kinds of edit), hard negatives one word apart."""
    rng = random.Random(11)
    rows, origin, kind_of = [], {}, {}
    contents: list[tuple] = []
    while len(contents) < 500:
        c = _content(rng)
        if c not in contents:
            contents.append(c)
    used = set(contents)
    for k, content in enumerate(contents):
        article = rng.choice(ARTICLES)
        text = _caption(content, article)
        rows.append(_row(len(rows), text, rng.choice((96, 128, 160))))
        origin[rows[-1]["uid"]] = f"o{k}"
        if k < 240:  # 60 near duplicates of each kind
            kind = KINDS[k % 4]
            rows.append(_row(len(rows), _variant(rng, text, kind), rng.choice((96, 128, 160))))
            origin[rows[-1]["uid"]], kind_of[rows[-1]["uid"]] = f"o{k}", kind
        elif k < 400:  # a hard negative: its own origin, one content word away, worded the same way
            neg = _hard_negative(rng, content)
            if neg not in used:
                used.add(neg)
                rows.append(_row(len(rows), _caption(neg, article), 128))
                origin[rows[-1]["uid"]] = f"n{k}"
    out = tmp_path / "out"
    counts = cd.run(spark, cd.CaptionDedupeConfig(), _write_input(tmp_path / "in", rows), str(out))
    dropped = read_dropped(str(out)).to_pylist()
    kept = {r["uid"] for r in pq.read_table(out / "keep.parquet").to_pylist()}
    by_uid = {r["uid"]: r for r in rows}
    false = [d for d in dropped if origin[d["uid"]] != origin[d["dup_of"]]]
    recall = {}
    for kind in KINDS:
        planted = [u for u, k in kind_of.items() if k == kind]
        found = [u for u in planted
                 if not {u, next(v for v in origin if origin[v] == origin[u] and v not in kind_of)} <= kept]
        recall[kind] = len(found) / len(planted)
    total = sum(recall.values()) / len(KINDS)
    distinct = len(set(origin.values()))
    print(f"caption near-duplicate recall {total:.3f} by kind {recall}; false removals {len(false)} of "
          f"{distinct} distinct captions ({len(false) / distinct:.2%})")
    for d in false:
        print("  false:", by_uid[d["uid"]]["caption"], "|", by_uid[d["dup_of"]]["caption"], round(d["score"], 3))
    assert counts.input == len(rows) and counts.output == len(kept) and counts.dropped == {cd.REASON: len(dropped)}
    assert total >= 0.95 and min(recall.values()) >= 0.8
    assert len(false) / distinct <= 0.01


def test_survivor_is_the_larger_image_and_lineage_is_recorded(tmp_path, spark):
    rows = [_row(0, "a vintage wooden chair in a sunny garden", 96),
            _row(1, "A Vintage Wooden Chair, in a sunny garden!", 160),  # the largest image: the survivor
            _row(2, "a vintage wooden chair in a suny garden", 128),
            _row(3, "a modern teapot on a white background", 96),
            _row(4, "!!!", 96)]  # nothing left after normalisation: never grouped
    out = tmp_path / "out"
    counts = cd.run(spark, cd.CaptionDedupeConfig(), _write_input(tmp_path / "in", rows), str(out))
    dropped = {d["uid"]: d for d in read_dropped(str(out)).to_pylist()}
    survivor = rows[1]["uid"]
    assert set(dropped) == {rows[0]["uid"], rows[2]["uid"]}
    assert all(d["dup_of"] == survivor and d["reason"] == cd.REASON for d in dropped.values())
    assert dropped[rows[0]["uid"]]["score"] == 1.0 and 0.8 <= dropped[rows[2]["uid"]]["score"] < 1.0
    keep = pq.read_table(out / "keep.parquet")
    assert keep.column("uid").to_pylist() == sorted([survivor, rows[3]["uid"], rows[4]["uid"]])
    assert keep.schema == FILTERED_SCHEMA  # every filter column travels on
    report = json.loads((out / "report.json").read_text())
    assert report["largest_groups"][0]["size"] == 3 and report["largest_groups"][0]["kept"] == survivor
    assert layout.committed(str(out)).to_json() == counts.to_json() == {
        "stage": "caption_dedupe", "input": 5, "output": 3, "dropped": {"caption_duplicate": 2}}


def test_disabled_passes_through(tmp_path):
    rows = [_row(0, "a red chair", 96), _row(1, "a red chair", 96)]
    out = tmp_path / "out"
    counts = cd.run(None, cd.CaptionDedupeConfig(enabled=False), _write_input(tmp_path / "in", rows), str(out))
    assert (counts.input, counts.output, counts.dropped) == (2, 2, {})
    assert "enabled is false" in json.loads((out / "report.json").read_text())["skipped"]


@pytest.mark.parametrize("bad", [{"threshold": 0}, {"threshold": 1.5}, {"ngram": 0}, {"num_perm": 8}])
def test_bad_config_names_the_field(bad):
    with pytest.raises(ValueError, match=f"pipeline.caption_dedupe.{next(iter(bad))}"):
        cd.CaptionDedupeConfig(**bad)
