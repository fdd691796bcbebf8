"""Deterministic rendering of evaluation samples: same sample, same pixels, in any process."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from evaluation.procedural.handwritten import HandwrittenSpec, render_handwritten
from evaluation.procedural.shifts import SHIFTS, apply_shift
from evaluation.procedural.textures import TexturedSpec, render_textured
from synthweb.scenes import SceneSpec, render

Spec = SceneSpec | TexturedSpec | HandwrittenSpec


@dataclass(frozen=True)
class Sample:
    spec: Spec
    """What the image shows: a synthweb scene, a scene whose object is textured, or a handwritten digit."""
    seed: int
    """Render seed (jitter, placement, shift) of this sample."""
    label: int = -1
    """Class index for classification datasets."""
    text: str = ""
    """Caption for retrieval datasets."""
    shift: str = ""
    """A distribution shift (evaluation.procedural.shifts) applied after rendering ("" = none)."""

    def __post_init__(self) -> None:
        if self.shift not in SHIFTS:
            raise ValueError(f"unknown shift {self.shift!r}")


def render_sample(sample: Sample, image_size: int) -> Image.Image:
    size = (image_size, image_size)
    spec = sample.spec
    if isinstance(spec, TexturedSpec):
        img = render_textured(spec, size, sample.seed)
    elif isinstance(spec, HandwrittenSpec):
        img = render_handwritten(spec, size, sample.seed)
    else:
        img = render(spec, size, sample.seed)
    return apply_shift(img, sample.shift, sample.seed)


def render_samples(samples: list[Sample], image_size: int) -> list[Image.Image]:
    return [render_sample(s, image_size) for s in samples]
