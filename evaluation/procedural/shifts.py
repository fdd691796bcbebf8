"""Seeded distribution shifts applied to a rendered evaluation image: same image and seed, same pixels.

These live here rather than in synthweb.scenes.degrade so that what a dataset version renders depends only on
evaluation code; `blur` and `rotate` reproduce degrade()'s pixels exactly (the datasets that used it keep their
version), `noise` is new (per-pixel Gaussian noise from a generator seeded by the sample).
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageFilter

SHIFTS = ("", "blur", "noise", "rotate", "tilt")
NOISE_SIGMA = 40.0
"""Standard deviation (0-255 scale) of the per-pixel, per-channel Gaussian noise of the `noise` shift."""
TILT_DEGREES = (15.0, 35.0)
"""The `tilt` shift turns the image by an angle of this magnitude range, either way."""


def apply_shift(img: Image.Image, shift: str, seed: int) -> Image.Image:
    """`img` under `shift` ("" = unchanged); the random choices come from `seed` only."""
    if shift == "":
        return img
    rng = random.Random(seed)
    if shift == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=max(1.0, img.width / 64)))
    if shift == "noise":
        gen = np.random.default_rng([seed, 0x5EED])
        arr = np.asarray(img, dtype=np.float32) + gen.normal(0.0, NOISE_SIGMA, size=(img.height, img.width, 3))
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    if shift == "rotate":  # quarter turns: nothing is cropped, no fill needed
        return img.rotate(rng.choice((90, 180, 270)))
    if shift == "tilt":
        angle = rng.uniform(*TILT_DEGREES) * rng.choice((-1, 1))
        # Corners uncovered by the turn take the corner pixel: the plain backgrounds stay plain.
        return img.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=img.getpixel((0, 0)))
    raise ValueError(f"unknown shift {shift!r} (known: {', '.join(s for s in SHIFTS if s)})")
