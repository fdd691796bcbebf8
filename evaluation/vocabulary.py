"""The words of the synthetic web's alt texts, and clean captions for evaluation scenes.

Alt texts on the synthetic web read like "three red stars on a gray background", "a small blue circle on the
left", "the number 7", "the letter K"; prompts and retrieval captions use the same phrasing so that zero-shot
scores measure what the model learnt about the world, not how well it copes with unfamiliar wording.
"""

from __future__ import annotations

from synthweb.scenes import DIGITS, INVISIBLE, SceneSpec  # noqa: F401  (INVISIBLE re-exported for tasks)

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "cross": "crosses", "diamond": "diamonds"}
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                    "bottom": "at the bottom", "center": "in the center"}


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def objects_phrase(shape: str, count: int, colour: str = "", size: str = "") -> str:
    """'a small red circle', 'three blue stars' (no size adjective for several objects)."""
    words = " ".join(w for w in (size if count == 1 else "", colour) if w)
    noun = shape if count == 1 else PLURALS[shape]
    head = NUMBER_WORDS[count] if count > 1 else article(words or noun)
    return " ".join(w for w in (head, words, noun) if w)


def glyph_phrase(glyph: str) -> str:
    return f"the number {glyph}" if glyph in DIGITS else f"the letter {glyph}"


def caption(spec: SceneSpec) -> str:
    """A clean, complete description of a scene in alt-text style (the retrieval dataset's text side)."""
    if spec.kind == "glyph":
        return f"{glyph_phrase(spec.glyph)} in {spec.colour} on a {spec.background} background"
    colour = f"{spec.colour} outlined" if spec.style == "outline" else spec.colour  # the corpus' word order
    text = objects_phrase(spec.shape, spec.count, colour, spec.size if spec.count == 1 else "")
    if spec.count == 1:
        text += " " + POSITION_PHRASES[spec.position]
    return f"{text} on a {spec.background} background"
