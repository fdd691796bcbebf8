"""The procedural datasets: >= 30 of them with groups and versions, deterministic pixels pinned per version,
held-out datasets really held out, shifted variants shifted as they claim, disjoint probe splits."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from evaluation.config import EvalConfig
from evaluation.procedural.handwritten import SPLITS, HandwrittenSpec, pool
from evaluation.procedural.shifts import apply_shift
from evaluation.procedural.textures import TEXTURES, TexturedSpec, object_mask
from evaluation.render import render_sample, render_samples
from evaluation.tasks import DATASETS, RETRIEVAL, ClassificationDataset, LinearProbeDataset, get_dataset, groups
from pipelines.config import ConfigError, build_dataclass
from synthweb.scenes import (BACKGROUNDS, COLOURS, EVAL_BACKGROUNDS, HELD_OUT_COMBOS, SHAPES, SceneSpec, degrade,
                             render, sample_spec)

SUITE = [n for n, d in DATASETS.items() if d.kind != "linear_probe"]
# sha256 prefix of the pixels of one image per class (12 pairs for retrieval), seed 0, 32 px. A dataset whose
# pixels change needs a version bump (results are keyed by version): bump it, then update its pin here.
PINS = {
    "shape": ("1", "492e10fd7dc89799"), "colour": ("1", "fd37f4c3d295423b"),
    "background": ("1", "b97d8cb487bf978a"), "glyph_colour": ("1", "26adeb0b31be67b0"),
    "texture": ("1", "d8b33627d6f81a01"), "count": ("1", "f7eb73048ca3166f"),
    "count_shape": ("1", "fc71af2f5bce60a1"), "position": ("1", "1bea1d8eb775a4fc"),
    "size": ("1", "0299092e9982e759"), "digit": ("1", "23ae829b9a88e12d"), "letter": ("1", "45eabf3bed0c2401"),
    "handwritten_digit": ("1", "e0bc0d3a9374f0a4"), "combo": ("1", "1fb181216ebe5516"),
    "heldout_combo": ("1", "64fd8c620e2e16d8"), "retrieval": ("1", "6d6d653a2cba033e"),
    "shape_new_background": ("1", "8143faf69ed307d8"), "shape_sketch": ("1", "1aa1718f2994947b"),
    "shape_noise": ("1.1", "4adb1d9471ed5553"), "shape_blur": ("1.1", "8844d45b620e050c"),
    "shape_rotate": ("1.1", "9e52d80def161736"), "colour_blur": ("1", "9ea9a8603c2e4fbf"),
    "colour_noise": ("1.1", "a26920ebe420fe8c"), "colour_new_background": ("1", "91845b0ea5154a67"),
    "count_noise": ("1.1", "ca806b48872384fd"), "count_sketch": ("1", "ee08c1d47b47962a"),
    "position_new_background": ("1", "ecfc398a9511535f"), "size_sketch": ("1", "f8a7eada4a905585"),
    "digit_noise": ("1.1", "66e5fbf0a72a5144"), "digit_blur": ("1.1", "6bb840f2f6d43eb3"),
    "letter_tilt": ("1.1", "e0f29382db96721e"), "letter_new_background": ("1", "ec44fb1771708cea"),
    "handwritten_digit_noise": ("1.1", "ff1d363e4647a0d9"), "retrieval_noise": ("1.1", "13edae6072bae7dd"),
}


def _pixels(name: str, seed: int, per_class: int = 2, size: int = 48, split: str = "test") -> np.ndarray:
    ds = get_dataset(name)
    samples = ds.samples(20 if ds.kind == "retrieval" else per_class, seed, split)
    return np.stack([np.asarray(im) for im in render_samples(samples, size)])


def _scene(spec) -> SceneSpec | None:
    return spec.scene if isinstance(spec, TexturedSpec) else spec if isinstance(spec, SceneSpec) else None


def test_suite_has_thirty_datasets_with_groups_versions_and_probes():
    assert len(SUITE) >= 30
    assert {"shape", "colour", "texture", "counting", "spatial", "ocr", "composition", "retrieval",
            "robustness"} <= set(groups())
    for ds in DATASETS.values():
        assert ds.version and ds.group and ds.kind in ("zeroshot", "retrieval", "linear_probe"), ds.name
        if ds.parent:
            parent = get_dataset(ds.parent)
            assert parent.kind == ds.kind, ds.name
            if ds.kind != "retrieval":
                assert parent.classes == ds.classes, ds.name
        if ds.kind == "zeroshot":
            assert len(ds.prompts) == len(ds.classes) and all(ds.prompts)
            assert ds.chance() == 1 / len(ds.classes)
            assert (f"probe_{ds.name}" in DATASETS) == bool(ds.probe), ds.name
    assert sum(d.kind == "linear_probe" for d in DATASETS.values()) >= 20
    assert sum(bool(d.parent) for d in DATASETS.values() if d.kind != "linear_probe") >= 15


def test_every_dataset_version_renders_its_pinned_pixels():
    assert set(PINS) == set(SUITE), "pin every procedural dataset (and only those)"
    for name, (version, digest) in PINS.items():
        ds = get_dataset(name)
        px = _pixels(name, 0, per_class=1, size=32) if ds.kind != "retrieval" else np.stack(
            [np.asarray(im) for im in render_samples(ds.samples(12, 0), 32)])
        got = hashlib.sha256(px.tobytes()).hexdigest()[:16]
        assert (ds.version, got) == (version, digest), f"{name}: content or version changed; bump and re-pin"


@pytest.mark.parametrize("name", SUITE)
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
    assert len(ds.classes) == len(COLOURS) * len(SHAPES) and ds.parent == "combo"
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
    # ... and the corpus sampler never draws them; no other dataset shows them either (in any split).
    rng = random.Random(0)
    corpus = {(sp.colour, sp.shape) for sp in (sample_spec(rng) for _ in range(3000)) if sp.kind == "objects"}
    assert not corpus & HELD_OUT_COMBOS
    for name in SUITE:
        if name != "heldout_combo":
            other = get_dataset(name)
            n = 30 if other.kind == "retrieval" else 3
            scenes = [_scene(s.spec) for split in ("test", "train") for s in other.samples(n, 0, split)]
            assert not any(sc and sc.is_held_out() for sc in scenes), name


def test_shift_datasets_use_what_they_claim():
    assert {s.spec.background for s in get_dataset("shape_new_background").samples(10, 0)} == set(EVAL_BACKGROUNDS)
    for name in SUITE:
        ds = get_dataset(name)
        specs = [s.spec for s in ds.samples(30 if ds.kind == "retrieval" else 3, 0)]
        backgrounds = {sp.background for sp in specs if not isinstance(sp, TexturedSpec)}
        backgrounds |= {sp.scene.background for sp in specs if isinstance(sp, TexturedSpec)}
        assert backgrounds <= set(EVAL_BACKGROUNDS if name.endswith("_new_background") else BACKGROUNDS), name
        if name.endswith("_sketch"):
            assert all(sp.style == "outline" for sp in specs), name
    assert all(s.shift == "blur" for s in get_dataset("colour_blur").samples(3, 0))


@pytest.mark.parametrize("name", ["shape_noise", "shape_rotate", "letter_tilt", "handwritten_digit_noise",
                                  "retrieval_noise"])
def test_paired_shifts_show_the_parents_images_shifted(name):
    ds, parent = get_dataset(name), get_dataset(get_dataset(name).parent)
    n = 12 if ds.kind == "retrieval" else 2
    ours, theirs = ds.samples(n, 5), parent.samples(n, 5)
    assert [(s.spec, s.seed, s.label, s.text) for s in ours] == [(s.spec, s.seed, s.label, s.text) for s in theirs]
    assert ds.shift and all(s.shift == ds.shift for s in ours)
    for mine, base in zip(ours, theirs):
        shifted = apply_shift(render_sample(base, 48), ds.shift, base.seed)
        np.testing.assert_array_equal(np.asarray(render_sample(mine, 48)), np.asarray(shifted))
        assert not np.array_equal(np.asarray(shifted), np.asarray(render_sample(base, 48)))


def test_seeded_shifts_and_the_synthweb_transforms_they_replace():
    img = render(SceneSpec(shape="star", colour="blue"), (48, 48), 3)
    a, b = (np.asarray(apply_shift(img, "noise", 11), dtype=float) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, np.asarray(apply_shift(img, "noise", 12)))
    assert 25 < np.std(a - np.asarray(img, dtype=float)) < 45  # sigma 40, a little less after clipping
    for kind in ("blur", "rotate"):  # colour_blur v1 and the quarter turns keep synthweb's exact pixels
        np.testing.assert_array_equal(np.asarray(apply_shift(img, kind, 9)), np.asarray(degrade(img, kind, 9)))
    with pytest.raises(ValueError, match="unknown shift 'fog'"):
        apply_shift(img, "fog", 0)


def test_textures_pattern_the_object_and_nothing_else():
    ds = get_dataset("texture")
    assert ds.classes == TEXTURES
    ink_share = {}
    for sample in ds.samples(3, 4):
        scene = sample.spec.scene
        plain, mask = object_mask(scene, (96, 96), sample.seed)
        img = np.asarray(render_sample(sample, 96))
        np.testing.assert_array_equal(img[~mask], plain[~mask])  # the background is untouched
        inked = (img[mask] == plain[mask]).all(axis=1).mean()
        ink_share.setdefault(ds.classes[sample.label], []).append(inked)
    assert min(ink_share["solid"]) == 1.0
    assert all(0.3 < v < 0.7 for t in ("striped", "checkered") for v in ink_share[t])
    assert all(0.1 < v < 0.5 for v in ink_share["dotted"])


def test_handwritten_digits_are_real_scans_in_disjoint_splits():
    from sklearn.datasets import load_digits

    target = load_digits().target
    for digit in range(10):
        pools = [set(pool(digit, split, 1234)) for split in SPLITS]
        assert all(len(p) >= 55 for p in pools) and not (pools[0] & pools[1] or pools[0] & pools[2] or
                                                         pools[1] & pools[2])
        assert all(target[i] == digit for p in pools for i in p)
    ds = get_dataset("handwritten_digit")
    samples = ds.samples(3, 1234)
    assert all(isinstance(s.spec, HandwrittenSpec) and target[s.spec.index] == s.label for s in samples)
    for s, img in zip(samples, render_samples(samples, 48)):
        px = np.asarray(img).reshape(-1, 3).astype(int)
        assert np.abs(px - COLOURS[s.spec.colour]).max(axis=1).min() <= 30  # ink of the sample's colour is there
    with pytest.raises(ValueError, match="train split holds"):
        ds.samples(100, 1234, "train")


def test_probe_splits_are_disjoint_and_shift_probes_fit_on_the_parent():
    probe = get_dataset("probe_shape")
    assert isinstance(probe, LinearProbeDataset) and probe.parent == "" and probe.group == "shape"
    keys = {split: {(s.spec, s.seed) for s in probe.samples(5, 0, split)} for split in ("train", "val", "test")}
    assert not (keys["train"] & keys["val"] or keys["train"] & keys["test"] or keys["val"] & keys["test"])
    assert keys["test"] == {(s.spec, s.seed) for s in get_dataset("shape").samples(5, 0)}
    shifted = get_dataset("probe_shape_sketch")
    assert shifted.parent == "probe_shape" and shifted.group == "robustness"
    assert [s.spec for s in shifted.samples(2, 0, "train")] == [s.spec for s in probe.samples(2, 0, "train")]
    assert all(s.spec.style == "outline" for s in shifted.samples(2, 0))
    assert "probe_heldout_combo" not in DATASETS and isinstance(get_dataset("heldout_combo"), ClassificationDataset)


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
    with pytest.raises(ConfigError, match="evaluation.probe_c_grid"):
        build_dataclass(EvalConfig, {"probe_c_grid": [1.0, -1.0]}, "evaluation")
