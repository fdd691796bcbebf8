"""Alt texts of the synthetic web and the hand-built decompression-bomb PNG."""

from __future__ import annotations

import io
import random
import re

from PIL import Image

from synthweb import alt_text
from synthweb.images import bomb_png
from synthweb.scenes import COLOURS, SHAPES, SceneSpec, sample_spec


def test_clean_captions_use_the_scene_vocabulary():
    rng = random.Random(0)
    for _ in range(500):
        spec = sample_spec(rng)
        cap = alt_text.clean_caption(spec, rng, "site-01")
        low = cap.lower()
        if spec.kind == "glyph":
            assert re.search(rf"(^|\s){re.escape(spec.glyph)}(\s|$)", cap), cap  # case kept: "K", never "k"
        elif spec.count == 1:
            assert re.search(rf"\b{spec.shape}\b", low), cap
        else:
            assert alt_text.plural(spec.shape) in low, cap
            assert alt_text.COUNT_WORDS[spec.count] in low or str(spec.count) in low, cap
        if spec.position != "center" and spec.count == 1 and spec.kind == "objects":
            wrong = [p for k, p in alt_text.POSITION_PHRASES.items() if k != spec.position]
            assert not any(p in low for p in wrong), cap
    assert alt_text.plural("star") == "stars" and alt_text.plural("cross") == "crosses"


def test_caption_forms_cover_glyph_phrases_and_noise():
    rng = random.Random(1)
    seven = SceneSpec(kind="glyph", glyph="7", colour="orange", size="large")
    kay = SceneSpec(kind="glyph", glyph="K", colour="blue", size="small", background="beige")
    caps = [alt_text.clean_caption(s, rng) for s in (seven, kay) for _ in range(300)]
    low = [c.lower() for c in caps]
    assert any("the number 7" in c for c in low) and any("the letter k" in c for c in low)
    assert any("big orange 7" in c for c in low)
    assert any("on a beige background" in c for c in low)
    assert any("stock photo" in c for c in low) and any(c[:1].isupper() for c in caps)
    assert sum("orange" in c for c in low[:300]) > 255  # colour is named in most captions


def test_uninformative_and_non_english_captions():
    rng = random.Random(2)
    spec = SceneSpec(shape="star", colour="red", count=2, size="small")
    words = set(COLOURS) | set(SHAPES)
    for _ in range(100):
        bad = alt_text.uninformative_caption(rng)
        assert not any(w in bad.lower().split() for w in words), bad
    langs = {}
    for _ in range(200):
        lang, text = alt_text.non_english_caption(spec, rng)
        langs.setdefault(lang, set()).add(text)
        assert "red" not in text and "stars" not in text
    assert set(langs) == {"fr", "de", "es"}
    assert any("deux étoiles rouges" in t for t in langs["fr"])
    assert any("zwei rote Sterne" in t for t in langs["de"])
    assert any("dos estrellas rojas" in t for t in langs["es"])


def test_bomb_png_is_a_valid_png_of_the_declared_size():
    small = Image.open(io.BytesIO(bomb_png(800)))
    small.load()  # a real, decodable PNG, not just a header
    assert small.size == (800, 800) and small.mode == "1" and small.getextrema() == (0, 0)
    big = bomb_png(40000)
    assert len(big) < 400_000  # 1.6 gigapixels declared in a few hundred KB
