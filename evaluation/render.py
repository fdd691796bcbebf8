"""Deterministic rendering of evaluation samples: same sample, same pixels, in any process."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from synthweb.scenes import SceneSpec, degrade, render


@dataclass(frozen=True)
class Sample:
    spec: SceneSpec
    seed: int
    """Render seed (jitter, placement) of this sample."""
    label: int = -1
    """Class index for classification datasets."""
    text: str = ""
    """Caption for retrieval datasets."""
    degrade: str = ""
    """A synthweb.scenes.degrade kind applied after rendering ("" = none)."""


def render_sample(sample: Sample, image_size: int) -> Image.Image:
    size = (image_size, image_size)
    img = render(sample.spec, size, sample.seed)
    if sample.degrade:
        img = degrade(img, sample.degrade, seed=sample.seed)
    return img


def render_samples(samples: list[Sample], image_size: int) -> list[Image.Image]:
    return [render_sample(s, image_size) for s in samples]
