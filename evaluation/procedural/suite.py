"""The procedural suite: every dataset, its group, version and (for shifted variants) its parent.

Groups: shape, colour, texture, counting, spatial, ocr, composition, retrieval, and robustness (the shifted
variants: noise, blur, quarter-turn rotation, tilt, outline/sketch style, backgrounds the corpus never shows).
`heldout_combo` draws only colour/shape pairs the corpus never shows (its parent `combo` the pairs it does);
`handwritten_digit` is real handwriting (scikit-learn's bundled scans) scored with the rendered digits' prompts.
A variant made by `shifted` draws exactly its parent's scenes and shifts them (a paired comparison); its version
ends with the parent's, so a parent's bump re-evaluates it too.
"""

from __future__ import annotations

from dataclasses import replace
from collections.abc import Callable

from evaluation.procedural import draw as d
from evaluation.procedural.dataset import ClassificationDataset, HandwrittenDataset, RetrievalDataset
from evaluation.procedural.textures import TEXTURES
from synthweb.scenes import DIGITS, LETTERS, POSITIONS, SHAPES, SIZES

Dataset = ClassificationDataset | RetrievalDataset


def shifted(parent: Dataset, shift: str, description: str, version: str = "1") -> Dataset:
    """`parent`'s very images under `shift`, in the robustness group."""
    return replace(parent, name=f"{parent.name}_{shift}", version=f"{version}.{parent.version}", group="robustness",
                   description=description, shift=shift, parent=parent.name, stream=(parent.name, parent.version),
                   **({"probe": "parent"} if isinstance(parent, ClassificationDataset) else {}))


def variant(parent: ClassificationDataset, name: str, description: str, draw: Callable, version: str = "1",
            **kw) -> ClassificationDataset:
    """A shifted variant that draws its own scenes (another background or drawing style)."""
    return replace(parent, name=name, version=version, group="robustness", description=description, draw=draw,
                   parent=parent.name, probe="parent", stream=("", ""), **kw)


SHAPE = ClassificationDataset("shape", "1", "shape", "which of 6 shapes (one object)", SHAPES, d.SHAPE_PROMPTS,
                              d.draw_shape)
COLOUR = ClassificationDataset("colour", "1", "colour", "which of 8 colours (one object)", d.COLOUR_NAMES,
                               d.COLOUR_PROMPTS, d.draw_colour)
BACKGROUND = ClassificationDataset("background", "1", "colour", "which of the 4 corpus backgrounds",
                                   d.BACKGROUND_NAMES, d.BACKGROUND_PROMPTS, d.draw_background)
GLYPH_COLOUR = ClassificationDataset("glyph_colour", "1", "colour", "colour of a rendered digit or letter",
                                     d.COLOUR_NAMES, d.GLYPH_COLOUR_PROMPTS, d.draw_glyph_colour)
TEXTURE = ClassificationDataset("texture", "1", "texture", "fill texture of one large object (4-way; the corpus "
                                "shows only solid fills)", TEXTURES, d.TEXTURE_PROMPTS, d.draw_texture)
COUNT = ClassificationDataset("count", "1", "counting", "how many objects (1-4)", d.COUNT_NAMES, d.COUNT_PROMPTS,
                              d.draw_count)
COUNT_SHAPE = ClassificationDataset("count_shape", "1", "counting", "how many of which shape (24-way)",
                                    tuple(f"{n} {s}" for n, s in d.COUNT_SHAPES), d.COUNT_SHAPE_PROMPTS,
                                    d.draw_count_shape)
POSITION = ClassificationDataset("position", "1", "spatial", "where a single small object is (5-way)", POSITIONS,
                                 d.POSITION_PROMPTS, d.draw_position)
SIZE = ClassificationDataset("size", "1", "spatial", "small or large (one object)", SIZES, d.SIZE_PROMPTS,
                             d.draw_size)
DIGIT = ClassificationDataset("digit", "1", "ocr", "which rendered digit (10-way)", DIGITS,
                              d.glyph_prompts(DIGITS), d.draw_glyph(DIGITS))
LETTER = ClassificationDataset("letter", "1", "ocr", "which rendered letter (23-way)", LETTERS,
                               d.glyph_prompts(LETTERS), d.draw_glyph(LETTERS))
HANDWRITTEN = HandwrittenDataset("handwritten_digit", "1", "ocr", "which handwritten digit (10-way; real scans "
                                 "from scikit-learn's load_digits)", DIGITS, d.glyph_prompts(DIGITS), parent="digit")
COMBO = ClassificationDataset("combo", "1", "composition", "colour+shape among all 48 pairs; images of the 42 "
                              "pairs the corpus shows", tuple(f"{c} {s}" for c, s in d.COMBOS), d.COMBO_PROMPTS,
                              d.draw_combo, present=d.SEEN_COMBOS)
HELDOUT_COMBO = replace(COMBO, name="heldout_combo", description="colour+shape among all 48 pairs; images only of "
                        "pairs the corpus never shows", present=d.HELD_OUT_COMBO_CLASSES, parent="combo", probe="")
RETRIEVAL = RetrievalDataset("retrieval", "1", "retrieval",
                             "image<->caption retrieval on held-out scenes with clean captions")

SUITE: list[Dataset] = [
    SHAPE, COLOUR, BACKGROUND, GLYPH_COLOUR, TEXTURE, COUNT, COUNT_SHAPE, POSITION, SIZE, DIGIT, LETTER,
    HANDWRITTEN, COMBO, HELDOUT_COMBO, RETRIEVAL,
    variant(SHAPE, "shape_new_background", "shape on backgrounds the corpus never shows",
            d.draw_shape_new_background),
    variant(SHAPE, "shape_sketch", "shape drawn as an outline (sketch style)", d.outline(d.draw_shape)),
    shifted(SHAPE, "noise", "shape under Gaussian pixel noise"),
    shifted(SHAPE, "blur", "shape, blurred"),
    shifted(SHAPE, "rotate", "shape, image turned by a quarter, half or three-quarter turn"),
    variant(COLOUR, "colour_blur", "colour of a blurred object", d.draw_colour, shift="blur"),
    shifted(COLOUR, "noise", "colour under Gaussian pixel noise"),
    variant(COLOUR, "colour_new_background", "colour on backgrounds the corpus never shows",
            d.draw_colour_new_background),
    shifted(COUNT, "noise", "count under Gaussian pixel noise"),
    variant(COUNT, "count_sketch", "count of outlined objects (sketch style)", d.outline(d.draw_count)),
    variant(POSITION, "position_new_background", "position on backgrounds the corpus never shows",
            d.draw_position_new_background),
    variant(SIZE, "size_sketch", "size of an outlined object (sketch style)", d.outline(d.draw_size)),
    shifted(DIGIT, "noise", "rendered digit under Gaussian pixel noise"),
    shifted(DIGIT, "blur", "rendered digit, blurred"),
    shifted(LETTER, "tilt", "rendered letter, tilted 15-35 degrees"),
    variant(LETTER, "letter_new_background", "letter on backgrounds the corpus never shows",
            d.draw_glyph(LETTERS, new_background=True)),
    shifted(HANDWRITTEN, "noise", "handwritten digit under Gaussian pixel noise"),
    shifted(RETRIEVAL, "noise", "retrieval of the same pairs, images under Gaussian pixel noise"),
]
