"""Fill textures for scene objects, drawn on top of synthweb's renderer (which draws flat colours only).

The object's pixels are found by rendering the scene twice with the same seed and two object colours (the
renderer's random draws do not depend on the colour, so geometry and background are identical): wherever the
two differ is the object. The texture keeps the object's colour on its pattern and shows the background
colour (the median of the pixels around the object) through the gaps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from synthweb.scenes import SceneSpec, render

TEXTURES = ("solid", "striped", "checkered", "dotted")


@dataclass(frozen=True)
class TexturedSpec:
    scene: SceneSpec
    texture: str

    def __post_init__(self) -> None:
        if self.texture not in TEXTURES:
            raise ValueError(f"unknown texture {self.texture!r} (known: {', '.join(TEXTURES)})")


def object_mask(spec: SceneSpec, size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of the scene as rendered, boolean mask of its object pixels)."""
    img = np.asarray(render(spec, size, seed))
    other = render(replace(spec, colour="white" if spec.colour == "black" else "black"), size, seed)
    return img, (img != np.asarray(other)).any(axis=2)


def pattern(texture: str, h: int, w: int, rng: random.Random) -> np.ndarray:
    """Boolean (h, w): True where the texture shows the object's colour."""
    period = max(4, round(min(h, w) / 12))
    y, x = np.mgrid[0:h, 0:w]
    x, y = x + rng.randrange(period), y + rng.randrange(period)  # a seeded phase: not every stripe aligns
    if texture == "solid":
        return np.ones((h, w), dtype=bool)
    if texture == "striped":
        return (x + y) % period < period / 2
    if texture == "checkered":
        half = max(2, period // 2)
        return (x // half + y // half) % 2 == 0
    if texture == "dotted":
        dx, dy = x % period - (period - 1) / 2, y % period - (period - 1) / 2
        return dx * dx + dy * dy <= (period * 0.32) ** 2
    raise ValueError(f"unknown texture {texture!r}")


def render_textured(spec: TexturedSpec, size: tuple[int, int], seed: int) -> Image.Image:
    img, mask = object_mask(spec.scene, size, seed)
    if not mask.any() or mask.all():
        raise ValueError(f"{spec}: no object pixels to texture")
    gap = np.median(img[~mask], axis=0).astype(np.uint8)
    ink = pattern(spec.texture, img.shape[0], img.shape[1], random.Random(seed))
    out = img.copy()
    out[mask & ~ink] = gap
    return Image.fromarray(out, "RGB")
