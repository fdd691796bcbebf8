"""Scene drawers and prompt ensembles of the procedural datasets.

A drawer maps (class index, rng) to what one image of that class shows. The drawers of the datasets that
existed at version 1 consume the rng exactly as they always did: changing that changes their pixels, which
needs a version bump (tests/test_evaluation_tasks.py pins the pixels of every dataset version).
"""

from __future__ import annotations

import random
from dataclasses import replace
from collections.abc import Callable

from evaluation.procedural.textures import TEXTURES, TexturedSpec
from evaluation.vocabulary import INVISIBLE, NUMBER_WORDS, POSITION_PHRASES, glyph_phrase, objects_phrase
from synthweb.scenes import (BACKGROUNDS, COLOURS, COUNTS, DIGITS, EVAL_BACKGROUNDS, HELD_OUT_COMBOS, LETTERS,
                             POSITIONS, SHAPES, SIZES, SceneSpec)

Prompts = tuple[tuple[str, ...], ...]
COLOUR_NAMES = tuple(COLOURS)
BACKGROUND_NAMES = tuple(BACKGROUNDS)
COUNT_NAMES = tuple(NUMBER_WORDS[n] for n in COUNTS)
GLYPHS = DIGITS + LETTERS
COMBOS = tuple((c, s) for c in COLOURS for s in SHAPES)
COUNT_SHAPES = tuple((n, s) for n in COUNTS for s in SHAPES)
SEEN_COMBOS = tuple(i for i, combo in enumerate(COMBOS) if combo not in HELD_OUT_COMBOS)
HELD_OUT_COMBO_CLASSES = tuple(i for i, combo in enumerate(COMBOS) if combo in HELD_OUT_COMBOS)


# ---- backgrounds and colours -------------------------------------------------------------------------------

def _background(colour: str, rng: random.Random) -> str:
    return rng.choice([b for b in BACKGROUNDS if colour not in INVISIBLE.get(b, set())])


def eval_background(colour: str, rng: random.Random) -> str:
    """A background the corpus never shows; the gradient runs from black to white, so it hides neither."""
    return rng.choice([b for b in EVAL_BACKGROUNDS if not (b == "gradient" and colour in ("white", "black"))])


def _colour(shape: str, rng: random.Random) -> str:
    return rng.choice([c for c in COLOURS if (c, shape) not in HELD_OUT_COMBOS])


def _shape(colour: str, rng: random.Random) -> str:
    return rng.choice([s for s in SHAPES if (colour, s) not in HELD_OUT_COMBOS])


def _single(shape: str, colour: str, rng: random.Random, **kw) -> SceneSpec:
    base = {"kind": "objects", "shape": shape, "colour": colour, "count": 1, "size": rng.choice(SIZES),
            "position": rng.choice(POSITIONS), "background": _background(colour, rng)}
    base.update(kw)
    return SceneSpec(**base)


# ---- drawers --------------------------------------------------------------------------------------------

def draw_shape(label: int, rng: random.Random, **kw) -> SceneSpec:
    shape = SHAPES[label]
    return _single(shape, _colour(shape, rng), rng, **kw)


def draw_shape_new_background(label: int, rng: random.Random) -> SceneSpec:
    return draw_shape(label, rng, background=rng.choice(EVAL_BACKGROUNDS))


def draw_colour(label: int, rng: random.Random) -> SceneSpec:
    colour = COLOUR_NAMES[label]
    return _single(_shape(colour, rng), colour, rng)


def draw_colour_new_background(label: int, rng: random.Random) -> SceneSpec:
    colour = COLOUR_NAMES[label]
    return _single(_shape(colour, rng), colour, rng, background=eval_background(colour, rng))


def draw_background(label: int, rng: random.Random) -> SceneSpec:
    background = BACKGROUND_NAMES[label]
    shape = rng.choice(SHAPES)
    colour = rng.choice([c for c in COLOURS if c not in INVISIBLE[background] and (c, shape) not in HELD_OUT_COMBOS])
    return _single(shape, colour, rng, background=background)


def draw_texture(label: int, rng: random.Random) -> TexturedSpec:
    shape = rng.choice(SHAPES)
    # Large objects only: a small one holds too few pattern periods to tell stripes from checks.
    return TexturedSpec(_single(shape, _colour(shape, rng), rng, size="large"), TEXTURES[label])


def draw_count(label: int, rng: random.Random, **kw) -> SceneSpec:
    shape = rng.choice(SHAPES)
    # Every count small and centred (as the corpus draws several objects) so size cannot give the count away.
    return _single(shape, _colour(shape, rng), rng, count=COUNTS[label], size="small", position="center", **kw)


def draw_count_shape(label: int, rng: random.Random) -> SceneSpec:
    count, shape = COUNT_SHAPES[label]
    return _single(shape, _colour(shape, rng), rng, count=count, size="small", position="center")


def draw_position(label: int, rng: random.Random, **kw) -> SceneSpec:
    return draw_shape(rng.randrange(len(SHAPES)), rng, position=POSITIONS[label], size="small", **kw)


def draw_position_new_background(label: int, rng: random.Random) -> SceneSpec:
    spec = draw_position(label, rng)
    return replace(spec, background=eval_background(spec.colour, rng))


def draw_size(label: int, rng: random.Random, **kw) -> SceneSpec:
    return draw_shape(rng.randrange(len(SHAPES)), rng, size=SIZES[label], **kw)


def draw_glyph(glyphs: tuple[str, ...], new_background: bool = False) -> Callable[[int, random.Random], SceneSpec]:
    def draw(label: int, rng: random.Random) -> SceneSpec:
        background = rng.choice(list(BACKGROUNDS))
        colour = rng.choice([c for c in COLOURS if c not in INVISIBLE[background]])
        if new_background:
            background = eval_background(colour, rng)
        return SceneSpec(kind="glyph", glyph=glyphs[label], colour=colour, background=background,
                         size=rng.choice(SIZES), position="center")
    return draw


def draw_glyph_colour(label: int, rng: random.Random) -> SceneSpec:
    colour = COLOUR_NAMES[label]
    background = rng.choice([b for b in BACKGROUNDS if colour not in INVISIBLE[b]])
    return SceneSpec(kind="glyph", glyph=rng.choice(GLYPHS), colour=colour, background=background,
                     size=rng.choice(SIZES), position="center")


def draw_combo(label: int, rng: random.Random, **kw) -> SceneSpec:
    colour, shape = COMBOS[label]
    return _single(shape, colour, rng, **kw)


def outline(draw: Callable[..., SceneSpec]) -> Callable[[int, random.Random], SceneSpec]:
    """The same drawer with objects drawn as outlines (sketch style)."""
    return lambda label, rng: draw(label, rng, style="outline")


# ---- prompt ensembles -----------------------------------------------------------------------------------

def per_shape(fmt: Callable[[str, str], str], classes: tuple[str, ...]) -> Prompts:
    """A prompt per shape for each class: the ensemble averages the shape out of the class embedding."""
    return tuple(tuple(fmt(c, s) for s in SHAPES) for c in classes)


def glyph_prompts(glyphs: tuple[str, ...]) -> Prompts:
    return tuple((glyph_phrase(g),) + tuple(f"{glyph_phrase(g)} on a {b} background" for b in BACKGROUNDS)
                 for g in glyphs)


SHAPE_PROMPTS: Prompts = tuple(
    (objects_phrase(s, 1), objects_phrase(s, 1, size="small"), objects_phrase(s, 1, size="large"),
     f"{objects_phrase(s, 1)} in the center", f"{objects_phrase(s, 1)} on a gray background") for s in SHAPES)
COLOUR_PROMPTS = per_shape(lambda c, s: objects_phrase(s, 1, colour=c), COLOUR_NAMES)
BACKGROUND_PROMPTS = per_shape(lambda b, s: f"{objects_phrase(s, 1)} on a {b} background", BACKGROUND_NAMES)
GLYPH_COLOUR_PROMPTS: Prompts = tuple(tuple(f"{glyph_phrase(g)} in {c}" for g in GLYPHS) for c in COLOUR_NAMES)
TEXTURE_PROMPTS = per_shape(lambda t, s: f"a {t} {s}", TEXTURES)
COUNT_PROMPTS: Prompts = tuple(tuple(objects_phrase(s, n) for s in SHAPES) for n in COUNTS)
COUNT_SHAPE_PROMPTS: Prompts = tuple((objects_phrase(s, n),) + tuple(objects_phrase(s, n, colour=c) for c in COLOURS)
                                     for n, s in COUNT_SHAPES)
POSITION_PROMPTS = per_shape(lambda p, s: f"{objects_phrase(s, 1)} {POSITION_PHRASES[p]}", POSITIONS)
SIZE_PROMPTS = per_shape(lambda z, s: objects_phrase(s, 1, size=z), SIZES)
COMBO_PROMPTS: Prompts = tuple(
    (objects_phrase(s, 1, colour=c), objects_phrase(s, 1, colour=c, size="small"),
     objects_phrase(s, 1, colour=c, size="large"), f"{objects_phrase(s, 1, colour=c)} on a gray background")
    for c, s in COMBOS)
