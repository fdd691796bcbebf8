"""Handwritten digits: the 1,797 8x8 scans of scikit-learn's bundled `load_digits` set (UCI optdigits, 43
writers; the file ships inside the scikit-learn wheel, nothing is downloaded), drawn as ink of a palette colour
on a plain corpus background, upscaled to the evaluation image size.

Splits are disjoint by image: per class, a fixed seeded permutation of that class's images is dealt round-robin
into test, train and validation pools (about 60 images per class each), so a linear probe never fits on an
image it is scored on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from synthweb.scenes import BACKGROUNDS, COLOURS

SPLITS = ("test", "train", "val")


@dataclass(frozen=True)
class HandwrittenSpec:
    index: int
    """Row of sklearn.datasets.load_digits()."""
    colour: str
    background: str


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target.astype(np.int64)


def pool(digit: int, split: str, seed: int) -> list[int]:
    """The image indices of `digit` in `split` (disjoint across splits, fixed by `seed`)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    _, target = _digits()
    idx = [int(i) for i in np.flatnonzero(target == digit)]
    random.Random(f"handwritten/{seed}/{digit}").shuffle(idx)
    return idx[SPLITS.index(split)::len(SPLITS)]


def render_handwritten(spec: HandwrittenSpec, size: tuple[int, int], seed: int) -> Image.Image:
    rng = random.Random(seed)
    w, h = size
    images, _ = _digits()
    side = max(8, round(min(w, h) * rng.uniform(0.55, 0.8)))
    ink = Image.fromarray(np.rint(images[spec.index] * 255).astype(np.uint8), "L").resize(
        (side, side), Image.Resampling.BICUBIC)
    jitter = [max(0, min(255, v + rng.randint(-10, 10))) for v in BACKGROUNDS[spec.background]]
    img = Image.new("RGB", (w, h), tuple(jitter))
    colour = tuple(max(0, min(255, v + rng.randint(-18, 18))) for v in COLOURS[spec.colour])
    x = round((w - side) / 2 + rng.uniform(-w * 0.08, w * 0.08))
    y = round((h - side) / 2 + rng.uniform(-h * 0.08, h * 0.08))
    img.paste(Image.new("RGB", (side, side), colour), (x, y), ink)
    return img
