"""The procedural datasets: deterministic pixels, and held-out datasets really are held out."""

from __future__ import annotations

import random

import numpy as np
import pytest

from evaluation.config import EvalConfig
from evaluation.render import render_samples
from evaluation.tasks import DATASETS, RETRIEVAL, get_dataset
from pipelines.config import ConfigError, build_dataclass
from synthweb.scenes import (BACKGROUNDS, COLOURS, EVAL_BACKGROUNDS, HELD_OUT_COMBOS, SHAPES, render, sample_spec)


def _pixels(name: str, seed: int, per_class: int = 2) -> np.ndarray:
    ds = get_dataset(name)
    samples = ds.samples(20 if ds.kind == "retrieval" else per_class, seed)
    return np.stack([np.asarray(im) for im in render_samples(samples, 48)])


def test_suite_has_at_least_eight_classification_datasets_and_retrieval():
    kinds = [d.kind for d in DATASETS.values()]
    assert kinds.count("zeroshot") >= 8 and "retrieval" in DATASETS
    for ds in DATASETS.values():
        if ds.kind == "zeroshot":
            assert len(ds.prompts) == len(ds.classes) and all(ds.prompts)
            assert ds.chance() == 1 / len(ds.classes)


@pytest.mark.parametrize("name", list(DATASETS))
def test_same_seed_same_pixels_other_seed_other_pixels(name):
    a, b = _pixels(name, 7), _pixels(name, 7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _pixels(name, 8))


def test_noise_background_is_deterministic():
    ds = get_dataset("shape_new_background")
    noisy = [s for s in ds.samples(6, 3) if s.spec.background == "noise"]
    assert noisy
    first = np.asarray(render_samples(noisy[:1], 48)[0])
    np.testing.assert_array_equal(first, np.asarray(render_samples(noisy[:1], 48)[0]))
    other_seed = np.asarray(render(noisy[0].spec, (48, 48), noisy[0].seed + 1))
    assert not np.array_equal(first, other_seed)


def test_heldout_combo_images_only_show_pairs_the_corpus_never_draws():
    ds = get_dataset("heldout_combo")
    assert len(ds.classes) == len(COLOURS) * len(SHAPES)
    samples = ds.samples(5, 0)
    seen = {(s.spec.colour, s.spec.shape) for s in samples}
    assert seen == set(HELD_OUT_COMBOS)
    assert all(ds.classes[s.label] == f"{s.spec.colour} {s.spec.shape}" for s in samples)
    # The object in the picture has the class's colour: the most common non-background pixel is near it.
    for s, img in zip(samples, render_samples(samples, 64)):
        px = np.asarray(img).reshape(-1, 3)
        colours, counts = np.unique(px, axis=0, return_counts=True)
        obj = colours[np.argsort(-counts)[1]]
        assert np.abs(obj.astype(int) - COLOURS[s.spec.colour]).max() <= 18
    # ... and the corpus sampler never draws them; no other dataset shows them either.
    rng = random.Random(0)
    corpus = {(sp.colour, sp.shape) for sp in (sample_spec(rng) for _ in range(3000)) if sp.kind == "objects"}
    assert not corpus & HELD_OUT_COMBOS
    for name, other in DATASETS.items():
        if name != "heldout_combo":
            n = 30 if other.kind == "retrieval" else 3
            assert not any(s.spec.is_held_out() for s in other.samples(n, 0)), name


def test_shift_datasets_use_what_they_claim():
    nb = get_dataset("shape_new_background").samples(10, 0)
    assert {s.spec.background for s in nb} == set(EVAL_BACKGROUNDS)
    assert all(s.spec.style == "outline" for s in get_dataset("shape_sketch").samples(3, 0))
    assert all(s.degrade == "blur" for s in get_dataset("colour_blur").samples(3, 0))
    others = [d for n, d in DATASETS.items() if n != "shape_new_background"]
    for ds in others:
        n = 30 if ds.kind == "retrieval" else 3
        assert all(s.spec.background in BACKGROUNDS for s in ds.samples(n, 0)), ds.name


def test_retrieval_pairs_have_distinct_clean_captions():
    samples = RETRIEVAL.samples(200, 1)
    texts = [s.text for s in samples]
    assert len(set(texts)) == 200
    assert any(t.startswith("the number ") for t in texts) and any(t.startswith("the letter ") for t in texts)
    assert any(t.startswith(("two ", "three ", "four ")) for t in texts)


def test_eval_config_rejects_bad_values_naming_the_field():
    assert EvalConfig().dataset_names() == list(DATASETS)
    with pytest.raises(ConfigError, match="evaluation.tasks: unknown dataset 'shapes'"):
        build_dataclass(EvalConfig, {"tasks": ["shapes"]}, "evaluation")
    with pytest.raises(ConfigError, match="evaluation.samples_per_class"):
        build_dataclass(EvalConfig, {"samples_per_class": 0}, "evaluation")
