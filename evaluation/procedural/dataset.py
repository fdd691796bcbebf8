"""The three dataset kinds of the procedural suite: zero-shot classification, retrieval and linear probe.

Every dataset has a name, a version (bump it whenever what it renders or asks changes: results are keyed by
it), a group (what the dashboard averages over) and optionally a parent: the in-distribution dataset it is a
shifted variant of (robustness rows relate the two). Samples come from a generator seeded by
(seed, stream, version, split), so the same seed gives the same pixels in any process, and the train and
validation splits a linear probe fits on are disjoint draws from the test split it is scored on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from collections.abc import Callable

from evaluation.procedural.handwritten import HandwrittenSpec, pool
from evaluation.render import Sample, Spec
from evaluation.vocabulary import caption
from synthweb.scenes import BACKGROUNDS, sample_spec, visible_colours

Draw = Callable[[int, random.Random], Spec]
SPLITS = ("test", "train", "val")
PROBE_MODES = ("self", "parent", "")


def _stream(seed: int, name: str, version: str, split: str) -> random.Random:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    # The test split keeps the stream the suite always used: its pixels do not move when splits are added.
    return random.Random(f"{seed}/{name}/{version}" + ("" if split == "test" else f"/{split}"))


@dataclass(frozen=True)
class ClassificationDataset:
    name: str
    version: str
    group: str
    description: str
    classes: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]
    """Per class, the prompt ensemble whose normalised text embeddings are averaged."""
    draw: Draw | None = field(default=None, repr=False)
    """(class index, rng) -> what one image of that class shows."""
    present: tuple[int, ...] = ()
    """Classes that have images (empty = all); the others are distractors only."""
    shift: str = ""
    """A seeded image shift applied after rendering (evaluation.procedural.shifts)."""
    parent: str = ""
    """The in-distribution dataset this one is a shifted variant of ("" = none)."""
    probe: str = "self"
    """Linear probe: "self" fits on this dataset's train/val splits, "parent" on the parent's (an in-distribution
    classifier scored under the shift), "" none."""
    stream: tuple[str, str] = ("", "")
    """(name, version) whose scenes this dataset draws; empty = its own. A shift variant that draws its parent's
    scenes shows exactly the parent's images, shifted: a paired comparison."""
    kind: str = "zeroshot"

    def __post_init__(self) -> None:
        assert len(self.prompts) == len(self.classes) and all(self.prompts), self.name
        assert self.probe in PROBE_MODES and (self.probe != "parent" or self.parent), self.name

    def image_classes(self) -> tuple[int, ...]:
        return self.present or tuple(range(len(self.classes)))

    def chance(self) -> float:
        return 1.0 / len(self.classes)

    def rng(self, seed: int, split: str) -> random.Random:
        name, version = self.stream if self.stream[0] else (self.name, self.version)
        return _stream(seed, name, version, split)

    def samples(self, per_class: int, seed: int, split: str = "test") -> list[Sample]:
        assert self.draw is not None, self.name
        rng = self.rng(seed, split)
        return [Sample(self.draw(label, rng), rng.getrandbits(31), label=label, shift=self.shift)
                for label in self.image_classes() for _ in range(per_class)]


@dataclass(frozen=True)
class HandwrittenDataset(ClassificationDataset):
    """Classes are the digits 0-9; each split deals from its own pool of real scans (no image in two splits)."""

    def samples(self, per_class: int, seed: int, split: str = "test") -> list[Sample]:
        rng = self.rng(seed, split)
        out = []
        for label in self.image_classes():
            indices = pool(label, split, seed)
            if per_class > len(indices):
                raise ValueError(f"{self.name}: {per_class} images per class asked (evaluation.samples_per_class or "
                                 f"probe_samples_per_class) but the {split} split holds {len(indices)} of digit {label}")
            for index in indices[:per_class]:
                background = rng.choice(list(BACKGROUNDS))
                spec = HandwrittenSpec(index, rng.choice(visible_colours(background)), background)
                out.append(Sample(spec, rng.getrandbits(31), label=label, shift=self.shift))
        return out


@dataclass(frozen=True)
class RetrievalDataset:
    name: str
    version: str
    group: str
    description: str
    shift: str = ""
    parent: str = ""
    stream: tuple[str, str] = ("", "")
    kind: str = "retrieval"

    def samples(self, n: int, seed: int, split: str = "test") -> list[Sample]:
        """`n` held-out scenes with distinct clean captions (duplicate captions would make R@k ambiguous)."""
        name, version = self.stream if self.stream[0] else (self.name, self.version)
        rng = _stream(seed, name, version, split)
        out: list[Sample] = []
        seen: set[str] = set()
        for _ in range(n * 50):
            spec = sample_spec(rng)
            text = caption(spec)
            if text not in seen:
                seen.add(text)
                out.append(Sample(spec, rng.getrandbits(31), text=text, shift=self.shift))
                if len(out) == n:
                    return out
        raise ValueError(f"{self.name}: could not draw {n} scenes with distinct captions")


@dataclass(frozen=True)
class LinearProbeDataset:
    """Logistic regression on frozen image features: fit on `fit_on`'s train/val splits, scored on `target`'s
    test split (the very images zero-shot classification of `target` scores)."""

    name: str
    version: str
    group: str
    description: str
    target: ClassificationDataset = field(repr=False)
    fit_on: ClassificationDataset = field(repr=False)
    parent: str = ""
    kind: str = "linear_probe"

    @property
    def classes(self) -> tuple[str, ...]:
        return self.target.classes

    def image_classes(self) -> tuple[int, ...]:
        return self.fit_on.image_classes()

    def chance(self) -> float:
        return 1.0 / len(self.image_classes())

    def samples(self, per_class: int, seed: int, split: str = "test") -> list[Sample]:
        return (self.target if split == "test" else self.fit_on).samples(per_class, seed, split)
