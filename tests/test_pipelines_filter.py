"""filter stage (Ray) on real img2dataset output: every drop reason is hit by its planted case and by no clean one."""

from __future__ import annotations

import os
import random

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import layout
from pipelines.config import ConfigError, build_dataclass
from pipelines.stages import filter as filter_stage
from pipelines.stages.captions import judge_caption, normalize_caption
from pipelines.stages.filter import FilterConfig
from pipelines.stages.images import inspect_image
from synthweb.scenes import BACKGROUNDS, COLOURS, DIGITS, LETTERS, POSITIONS, SHAPES
from tests.pipelines_curation_data import download_fixture, filter_test_config, filtered_fixture, jpeg


@pytest.fixture(scope="module")
def filtered(ray_local) -> str:
    return filtered_fixture()


def _rows(filtered_uri: str) -> dict[str, dict]:
    rows = {}
    for name in sorted(os.listdir(filtered_uri)):
        if name.endswith(".parquet"):
            rows.update({r["uid"]: r for r in pq.read_table(os.path.join(filtered_uri, name)).to_pylist()})
    return rows


def test_each_reason_hit_by_its_planted_case_only(filtered):
    planted = download_fixture()
    rows = _rows(filtered)
    # The served truncated file and the 404 never reached the tars: one row per successful download.
    assert planted.uid["truncated"] not in rows
    assert set(rows) == set(planted.expected_filter)
    got = {planted.name(uid): row["reason"] for uid, row in rows.items()}
    want = {planted.name(uid): reason for uid, reason in planted.expected_filter.items()}
    assert got == want
    for row in rows.values():
        assert row["keep"] == (row["reason"] is None)
        assert row["src_tar"].startswith(planted.download_uri) and row["src_tar"].endswith(".tar")
        if row["keep"]:
            assert len(row["phash"]) == 16 and len(row["sha256"]) == 64 and len(row["colour_sig"]) == 96
            assert row["lang"] == "en" or row["lang_score"] < 0.95
    counts = layout.committed(filtered)
    assert counts is not None and counts.input == len(rows)
    assert counts.output == sum(r["keep"] for r in rows.values())
    assert counts.dropped == {r: list(want.values()).count(r) for r in set(want.values()) if r}


def test_rerun_skips_published_shards(filtered):
    planted = download_fixture()
    parts = sorted(p for p in os.listdir(filtered) if p.endswith(".parquet"))
    assert len(parts) == 2  # two img2dataset shards -> two Ray tasks
    before = {p: os.stat(os.path.join(filtered, p)).st_mtime_ns for p in parts}
    first = layout.committed(filtered)
    counts = filter_stage.run(filter_test_config(), planted.download_uri, filtered)
    assert counts.to_json() == first.to_json()
    assert {p: os.stat(os.path.join(filtered, p)).st_mtime_ns for p in parts} == before


def test_pixel_count_is_checked_from_the_header_before_decoding():
    big = jpeg(Image.new("RGB", (700, 700), (200, 10, 10)))
    cut = big[: len(big) // 3]  # undecodable body, valid header
    assert inspect_image(cut, max_pixels=400_000, min_side=32, max_aspect_ratio=3).reason == "too_many_pixels"
    assert inspect_image(cut, max_pixels=10**6, min_side=32, max_aspect_ratio=3).reason == "corrupt_image"
    assert inspect_image(b"not an image", max_pixels=10**6, min_side=32, max_aspect_ratio=3).reason == "corrupt_image"
    ok = inspect_image(big, max_pixels=10**6, min_side=32, max_aspect_ratio=3)
    assert ok.reason is None and (ok.width, ok.height) == (700, 700)


def test_caption_normalisation():
    assert normalize_caption("  cafe\u0301\u200b  au\tlait\n") == "caf\u00e9 au lait"


def _english(rng: random.Random) -> str:
    num = {1: "one", 2: "two", 3: "three", 4: "four"}
    shape, colour, bg = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(BACKGROUNDS))
    n = rng.choice([1, 2, 3, 4])
    things = shape if n == 1 else shape + ("es" if shape.endswith("s") else "s")
    obj = f"{'a' if n == 1 else num[n]} {rng.choice(['small ', 'large ', '']) if n == 1 else ''}{colour} {things}"
    return rng.choice([f"{colour} {shape}", obj, f"{obj} on a {bg} background", f"{obj} on the {rng.choice(POSITIONS)}",
                       f"the number {rng.choice(DIGITS)}", f"the letter {rng.choice(LETTERS)} in {colour}",
                       f"a photo of {obj} on a {bg} background"])


FOREIGN = [
    "un cercle rouge sur un fond gris", "trois étoiles bleues sur un fond beige", "deux carrés verts à gauche de l'image",
    "une croix jaune au centre de la photo", "le chiffre sept écrit en noir", "une étoile blanche en haut de l'image",
    "ein roter Kreis auf grauem Hintergrund", "drei blaue Sterne auf einem beigen Hintergrund",
    "zwei grüne Quadrate links im Bild", "ein gelbes Kreuz in der Mitte des Fotos",
    "die Zahl sieben in schwarzer Schrift", "ein weißer Stern oben im Bild",
    "un círculo rojo sobre un fondo gris", "tres estrellas azules sobre un fondo beige",
    "dos cuadrados verdes a la izquierda de la imagen", "una cruz amarilla en el centro de la foto",
    "el número siete escrito en negro", "una estrella blanca en la parte superior de la imagen",
]


def test_language_rule_rates():
    """Measured with the defaults (see FilterConfig): English false drops < 1%, foreign sentences >= 80% dropped."""
    cfg = FilterConfig()
    kw = dict(min_words=1, max_chars=10_000, uninformative=[], candidates=cfg.language_candidates,
              keep_languages=cfg.languages, language_min_words=cfg.language_min_words,
              language_min_confidence=cfg.language_min_confidence)
    rng = random.Random(0)
    english = sorted({_english(rng) for _ in range(2000)})
    false_drops = [c for c in english if judge_caption(c, **kw)[0] == "language"]
    foreign_drops = [c for c in FOREIGN if judge_caption(c, **kw)[0] == "language"]
    print(f"english false drops {len(false_drops)}/{len(english)}; foreign dropped {len(foreign_drops)}/{len(FOREIGN)}")
    assert len(english) > 500
    assert len(false_drops) / len(english) < 0.01, false_drops
    assert len(foreign_drops) / len(FOREIGN) >= 0.8, sorted(set(FOREIGN) - set(foreign_drops))


def test_bad_config_names_the_field():
    with pytest.raises(ConfigError, match="pipeline.filter.languages"):
        build_dataclass(FilterConfig, {"languages": ["xx"]}, "pipeline.filter")
    with pytest.raises(ValueError, match="uninformative_patterns"):
        judge_caption("a b c", min_words=1, max_chars=99, uninformative=["(unclosed"], candidates=["en", "fr"],
                      keep_languages=["en"], language_min_words=4, language_min_confidence=0.9)


def test_missing_download_names_the_uri(tmp_path, ray_local):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        filter_stage.run(FilterConfig(), str(tmp_path), str(tmp_path / "out"))
