"""The offline procedural evaluation datasets, rendered from synthweb.scenes with a fixed seed.

Each dataset has a name, a version (bump it whenever what it renders or asks changes: results are keyed by
it), class names, a prompt ensemble per class in the web's alt-text wording, and its chance level. Samples are
drawn from a generator seeded by (seed, name, version), so they never coincide with the corpus' scenes, and
the same seed gives the same pixels. `heldout_combo` draws only colour/shape pairs that the corpus never
shows; `shape_new_background` only backgrounds the corpus never shows; `shape_sketch` outlines instead of
solid shapes; `colour_blur` blurred images. `retrieval` pairs corpus-like scenes with clean captions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from evaluation.render import Sample
from evaluation.vocabulary import INVISIBLE, NUMBER_WORDS, POSITION_PHRASES, caption, glyph_phrase, objects_phrase
from synthweb.scenes import (BACKGROUNDS, COLOURS, COUNTS, DIGITS, EVAL_BACKGROUNDS, HELD_OUT_COMBOS, LETTERS,
                             POSITIONS, SHAPES, SIZES, SceneSpec, sample_spec)

Draw = Callable[[int, random.Random], SceneSpec]
DETERMINISTIC_DEGRADATIONS = ("", "blur", "rotate")  # scenes' "noise" degradation is unseeded


@dataclass(frozen=True)
class ClassificationDataset:
    name: str
    version: str
    description: str
    classes: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]
    """Per class, the prompt ensemble whose normalised text embeddings are averaged."""
    draw: Draw = field(repr=False)
    """(class index, rng) -> the scene of one sample of that class."""
    present: tuple[int, ...] = ()
    """Classes that have images (empty = all); the others are distractors only."""
    degrade: str = ""
    kind: str = "zeroshot"

    def __post_init__(self) -> None:
        assert len(self.prompts) == len(self.classes), self.name
        assert self.degrade in DETERMINISTIC_DEGRADATIONS, self.degrade

    def image_classes(self) -> tuple[int, ...]:
        return self.present or tuple(range(len(self.classes)))

    def chance(self) -> float:
        return 1.0 / len(self.classes)

    def samples(self, per_class: int, seed: int) -> list[Sample]:
        rng = random.Random(f"{seed}/{self.name}/{self.version}")
        return [Sample(self.draw(label, rng), rng.getrandbits(31), label=label, degrade=self.degrade)
                for label in self.image_classes() for _ in range(per_class)]


@dataclass(frozen=True)
class RetrievalDataset:
    name: str
    version: str
    description: str
    kind: str = "retrieval"

    def samples(self, n: int, seed: int) -> list[Sample]:
        """`n` held-out scenes with distinct clean captions (duplicate captions would make R@k ambiguous)."""
        rng = random.Random(f"{seed}/{self.name}/{self.version}")
        out: list[Sample] = []
        seen: set[str] = set()
        for _ in range(n * 50):
            spec = sample_spec(rng)
            text = caption(spec)
            if text not in seen:
                seen.add(text)
                out.append(Sample(spec, rng.getrandbits(31), text=text))
                if len(out) == n:
                    return out
        raise ValueError(f"{self.name}: could not draw {n} scenes with distinct captions")


# ---- drawing helpers -------------------------------------------------------------------------------------

def _background(colour: str, rng: random.Random) -> str:
    return rng.choice([b for b in BACKGROUNDS if colour not in INVISIBLE.get(b, set())])


def _colour(shape: str, rng: random.Random) -> str:
    return rng.choice([c for c in COLOURS if (c, shape) not in HELD_OUT_COMBOS])


def _shape(colour: str, rng: random.Random) -> str:
    return rng.choice([s for s in SHAPES if (colour, s) not in HELD_OUT_COMBOS])


def _single(shape: str, colour: str, rng: random.Random, **kw) -> SceneSpec:
    base = {"kind": "objects", "shape": shape, "colour": colour, "count": 1, "size": rng.choice(SIZES),
            "position": rng.choice(POSITIONS), "background": _background(colour, rng)}
    base.update(kw)
    return SceneSpec(**base)


def _draw_shape(label: int, rng: random.Random, **kw) -> SceneSpec:
    shape = SHAPES[label]
    return _single(shape, _colour(shape, rng), rng, **kw)


def _draw_colour(label: int, rng: random.Random) -> SceneSpec:
    colour = list(COLOURS)[label]
    return _single(_shape(colour, rng), colour, rng)


def _draw_count(label: int, rng: random.Random) -> SceneSpec:
    shape = rng.choice(SHAPES)
    # Every count small and centred (as the corpus draws several objects) so size cannot give the count away.
    return _single(shape, _colour(shape, rng), rng, count=COUNTS[label], size="small", position="center")


def _draw_glyph(glyphs: tuple[str, ...]) -> Draw:
    def draw(label: int, rng: random.Random) -> SceneSpec:
        background = rng.choice(list(BACKGROUNDS))
        colour = rng.choice([c for c in COLOURS if c not in INVISIBLE[background]])
        return SceneSpec(kind="glyph", glyph=glyphs[label], colour=colour, background=background,
                         size=rng.choice(SIZES), position="center")
    return draw


COMBOS = tuple((c, s) for c in COLOURS for s in SHAPES)


def _draw_combo(label: int, rng: random.Random) -> SceneSpec:
    colour, shape = COMBOS[label]
    return _single(shape, colour, rng)


def _per_shape(fmt: Callable[[str, str], str], classes: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """A prompt per shape for each class: the ensemble averages the shape out of the class embedding."""
    return tuple(tuple(fmt(c, s) for s in SHAPES) for c in classes)


def _glyph_prompts(glyphs: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple((glyph_phrase(g),) + tuple(f"{glyph_phrase(g)} on a {b} background" for b in BACKGROUNDS)
                 for g in glyphs)


_SHAPE_PROMPTS = tuple((objects_phrase(s, 1), objects_phrase(s, 1, size="small"), objects_phrase(s, 1, size="large"),
                        f"{objects_phrase(s, 1)} in the center", f"{objects_phrase(s, 1)} on a gray background")
                       for s in SHAPES)
_COLOURS = tuple(COLOURS)
_COUNT_NAMES = tuple(NUMBER_WORDS[n] for n in COUNTS)

_ALL = [
    ClassificationDataset("shape", "1", "which of 6 shapes (one object)", SHAPES, _SHAPE_PROMPTS, _draw_shape),
    ClassificationDataset("colour", "1", "which of 8 colours (one object)", _COLOURS,
                          _per_shape(lambda c, s: objects_phrase(s, 1, colour=c), _COLOURS), _draw_colour),
    ClassificationDataset("count", "1", "how many objects (1-4)", _COUNT_NAMES,
                          tuple(tuple(objects_phrase(s, n) for s in SHAPES) for n in COUNTS), _draw_count),
    ClassificationDataset("position", "1", "where a single small object is (5-way)", POSITIONS,
                          _per_shape(lambda p, s: f"{objects_phrase(s, 1)} {POSITION_PHRASES[p]}", POSITIONS),
                          lambda i, rng: _draw_shape(rng.randrange(len(SHAPES)), rng, position=POSITIONS[i],
                                                     size="small")),
    ClassificationDataset("size", "1", "small or large (one object)", SIZES,
                          _per_shape(lambda z, s: objects_phrase(s, 1, size=z), SIZES),
                          lambda i, rng: _draw_shape(rng.randrange(len(SHAPES)), rng, size=SIZES[i])),
    ClassificationDataset("digit", "1", "which digit (10-way)", DIGITS, _glyph_prompts(DIGITS), _draw_glyph(DIGITS)),
    ClassificationDataset("letter", "1", "which letter (23-way)", LETTERS, _glyph_prompts(LETTERS),
                          _draw_glyph(LETTERS)),
    ClassificationDataset(
        "heldout_combo", "1", "colour+shape among all 48 pairs; images only of pairs the corpus never shows",
        tuple(f"{c} {s}" for c, s in COMBOS),
        tuple((objects_phrase(s, 1, colour=c), objects_phrase(s, 1, colour=c, size="small"),
               objects_phrase(s, 1, colour=c, size="large"), f"{objects_phrase(s, 1, colour=c)} on a gray background")
              for c, s in COMBOS),
        _draw_combo, present=tuple(i for i, combo in enumerate(COMBOS) if combo in HELD_OUT_COMBOS)),
    ClassificationDataset("shape_new_background", "1", "shape on backgrounds the corpus never shows", SHAPES,
                          _SHAPE_PROMPTS,
                          lambda i, rng: _draw_shape(i, rng, background=rng.choice(EVAL_BACKGROUNDS))),
    ClassificationDataset("shape_sketch", "1", "shape drawn as an outline (sketch style)", SHAPES, _SHAPE_PROMPTS,
                          lambda i, rng: _draw_shape(i, rng, style="outline")),
    ClassificationDataset("colour_blur", "1", "colour of a blurred object", _COLOURS,
                          _per_shape(lambda c, s: objects_phrase(s, 1, colour=c), _COLOURS), _draw_colour,
                          degrade="blur"),
]
RETRIEVAL = RetrievalDataset("retrieval", "1", "image<->caption retrieval on held-out scenes with clean captions")
DATASETS: dict[str, ClassificationDataset | RetrievalDataset] = {d.name: d for d in _ALL} | {RETRIEVAL.name: RETRIEVAL}


def get_dataset(name: str) -> ClassificationDataset | RetrievalDataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown evaluation dataset {name!r} (known: {', '.join(DATASETS)})") from None
