"""Linear probe: C chosen on the validation split, high accuracy on separable features, chance on noise, and the
probe datasets end to end with a transparent encoder."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.config import EvalConfig
from evaluation.evaluate import evaluate_dataset
from evaluation.linear_probe import linear_probe
from synthweb.scenes import COLOURS

GRID = [0.01, 1.0, 100.0]


def _clusters(n_per_class: int, k: int, dim: int, seed: int, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(k, dim))  # the same classes in every split
    y = np.repeat(np.arange(k), n_per_class)
    return centres[y] + spread * rng.normal(size=(len(y), dim)), y


def test_separable_features_reach_high_accuracy():
    (tx, ty), (vx, vy), (sx, sy) = (_clusters(n, 7, 16, seed) for n, seed in ((10, 1), (10, 2), (30, 3)))
    out = linear_probe(tx, ty, vx, vy, sx, sy, GRID)
    assert out.test["top1"] >= 0.95 and out.test["top5"] == 1.0 and out.test["mean_per_class_recall"] >= 0.95
    assert set(out.val_top1) == set(GRID) and out.C in GRID and out.val_top1[out.C] == max(out.val_top1.values())


def test_noise_features_score_about_chance():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1200, 32))
    y = rng.integers(0, 4, size=1200)
    out = linear_probe(x[:400], y[:400], x[400:600], y[400:600], x[600:], y[600:], GRID)
    assert 0.17 < out.test["top1"] < 0.33  # chance 0.25; 600 test images: 3.5 standard errors either way


def test_c_is_chosen_on_the_validation_split():
    # Train: 70 points of class 0 along e0, 30 of class 1 along e1. A tiny C predicts the majority class
    # everywhere; a large C separates the two.
    rng = np.random.default_rng(0)
    eye = np.eye(4)
    tx = np.concatenate([eye[0] + 0.05 * rng.normal(size=(70, 4)), eye[1] + 0.05 * rng.normal(size=(30, 4))])
    ty = np.array([0] * 70 + [1] * 30)
    sx, sy = eye[[0, 1]], np.array([0, 1])
    grid = [1e-4, 100.0]
    honest = linear_probe(tx, ty, tx[::5], ty[::5], sx, sy, grid)
    assert honest.C == 100.0 and honest.val_top1 == {1e-4: 0.7, 100.0: 1.0} and honest.test["top1"] == 1.0
    # A validation split that labels class-1 features 0 makes the majority guess the best C: it is chosen,
    # and the probe refitted with it predicts class 0 for everything.
    odd = linear_probe(tx, ty, eye[[1, 1, 1]], np.zeros(3, dtype=int), sx, sy, grid)
    assert odd.C == 1e-4 and odd.val_top1 == {1e-4: 1.0, 100.0: 0.0} and odd.test["top1"] == 0.5
    # Ties go to the most regularised C.
    assert linear_probe(tx, ty, tx, ty, sx, sy, [100.0, 1000.0]).C == 100.0


def test_probe_refuses_what_it_cannot_fit():
    x = np.eye(3)
    with pytest.raises(ValueError, match="at least two classes"):
        linear_probe(x, [0, 0, 0], x, [0, 0, 0], x, [0, 0, 0], GRID)
    with pytest.raises(ValueError, match=r"test classes \[2\]"):
        linear_probe(x[:2], [0, 1], x[:2], [0, 1], x, [0, 1, 2], GRID)


class ColourFeatures:
    """Image -> one-hot of the object's colour (its 2nd most common pixel, nearest palette entry) plus a little
    seeded noise; `blind` -> pure noise (no information about the image)."""

    def __init__(self, blind: bool = False) -> None:
        self.blind, self.rng = blind, np.random.default_rng(0)
        self.rgb = np.array(list(COLOURS.values()), dtype=float)

    def encode_images(self, images):
        out = 0.05 * self.rng.normal(size=(len(images), len(self.rgb)))
        if self.blind:
            return out
        for i, im in enumerate(images):
            values, counts = np.unique(np.asarray(im).reshape(-1, 3), axis=0, return_counts=True)
            obj = values[np.argsort(-counts)[1]].astype(float)
            out[i, int(np.argmin(((self.rgb - obj) ** 2).sum(axis=1)))] += 1.0
        return out

    def encode_texts(self, texts):  # pragma: no cover - a probe reads no text
        raise AssertionError("the linear probe must not encode text")


def test_probe_datasets_end_to_end():
    cfg = EvalConfig(samples_per_class=8, probe_samples_per_class=6, image_size=48, probe_c_grid=GRID)
    rows = {r["metric"]: r for r in evaluate_dataset(ColourFeatures(), "probe_colour", cfg)}
    assert set(rows) == {"top1", "top5", "mean_per_class_recall", "val_top1", "C"}
    assert rows["top1"]["value"] == 1.0 and rows["val_top1"]["value"] == 1.0 and rows["C"]["value"] in GRID
    assert rows["top1"]["chance"] == 1 / 8 and rows["C"]["chance"] is None and rows["top1"]["n"] == 64
    assert all(r["task"] == "linear_probe" and r["group"] == "colour" and r["parent"] == "" for r in rows.values())
    # Fitted on clean colours, scored on noisy ones: a row naming its in-distribution probe.
    noisy = {r["metric"]: r for r in evaluate_dataset(ColourFeatures(), "probe_colour_noise", cfg)}
    assert noisy["top1"]["parent"] == "probe_colour" and noisy["top1"]["group"] == "robustness"
    blind = {r["metric"]: r["value"] for r in evaluate_dataset(ColourFeatures(blind=True), "probe_colour", cfg)}
    assert blind["top1"] < 0.4
