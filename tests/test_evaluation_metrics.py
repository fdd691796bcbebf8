"""Metric arithmetic on hand-built embeddings: prompt ensembles, zero-shot top-1/top-5/per-class recall, R@k."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import metrics


class TableEncoder:
    """Texts map to fixed vectors from a table; the test knows every embedding exactly."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def encode_images(self, images):  # pragma: no cover - not used here
        raise AssertionError("no images in these tests")

    def encode_texts(self, texts):
        return metrics.l2_normalise(np.array([self.table[t] for t in texts], dtype=np.float64))


def test_prompt_ensemble_averages_normalised_embeddings_and_renormalises():
    enc = TableEncoder({"a": [2.0, 0, 0], "b": [0, 5.0, 0], "c": [0, 0, 1.0], "d": [0, 3.0, 4.0]})
    emb = metrics.class_embeddings(enc, [["a", "b"], ["c", "d"]])
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(emb[0], [s, s, 0])  # (1,0,0)+(0,1,0) -> renormalised, raw norms ignored
    mid = np.array([0, 0.6, 1.8]) / 2  # mean of (0,0,1) and (0,.6,.8)
    np.testing.assert_allclose(emb[1], mid / np.linalg.norm(mid))
    with pytest.raises(ValueError):
        metrics.class_embeddings(enc, [["a"], []])


def _ranked(order: list[int], dim: int) -> np.ndarray:
    """An image embedding whose scores against one-hot classes fall in `order` (first = highest)."""
    v = np.zeros(dim)
    for i, c in enumerate(order):
        v[c] = float(dim - i)
    return v


def test_zero_shot_top1_top5_and_mean_per_class_recall():
    k = 7
    classes = np.eye(k)
    images = np.stack([
        _ranked([0, 1, 2, 3, 4, 5, 6], k),  # label 0: rank 0 -> top1, top5
        _ranked([2, 3, 1, 0, 4, 5, 6], k),  # label 1: rank 2 -> top5 only
        _ranked([0, 1, 3, 4, 5, 6, 2], k),  # label 2: rank 6 -> neither
        _ranked([2, 0, 1, 3, 4, 5, 6], k),  # label 2: rank 0
    ])
    out = metrics.zero_shot(images, classes, [0, 1, 2, 2])
    assert out == {"top1": 0.5, "top5": 0.75, "mean_per_class_recall": pytest.approx((1 + 0 + 0.5) / 3)}
    # Classes listed as present but without images are ignored; with <= 5 classes there is no top5.
    out4 = metrics.zero_shot(np.eye(4)[[0, 1, 1]], np.eye(4), [0, 1, 2], present=[0, 1, 2, 3])
    assert out4 == {"top1": pytest.approx(2 / 3), "mean_per_class_recall": pytest.approx(2 / 3)}
    assert metrics.zero_shot_chance(7) == {"top1": 1 / 7, "top5": 5 / 7, "mean_per_class_recall": 1 / 7}


def test_ties_count_against_the_model():
    constant = np.ones((6, 4))
    assert metrics.zero_shot(constant, np.eye(4), [0, 1, 2, 3, 0, 1])["top1"] == 0.0
    assert metrics.retrieval(np.ones((12, 3)), np.ones((12, 3)))["image_to_text_R@10"] == 0.0


def _retrieval_case(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    images = np.eye(n)
    texts = np.eye(n)
    texts[0] = 0.6 * np.eye(n)[0] + 0.8 * np.eye(n)[1]  # text 0 is closer to image 1: its true image ranks 2nd
    texts[2] = np.arange(1, 8) @ np.eye(n)[2:9]  # text 2 scores images 3..8 higher than image 2: rank 6
    return images, texts


def test_retrieval_recall_at_k_both_directions():
    images, texts = _retrieval_case()
    out = metrics.retrieval(images, texts)
    # image i scores text j as texts[j, i]: every image still prefers its own text (1 > 0.8, 1 > 0.1...).
    for k in (1, 5, 10):
        assert out[f"image_to_text_R@{k}"] == 1.0
    assert out["text_to_image_R@1"] == pytest.approx(10 / 12)
    assert out["text_to_image_R@5"] == pytest.approx(11 / 12)
    assert out["text_to_image_R@10"] == 1.0
    # Swapping the roles swaps the directions.
    swapped = metrics.retrieval(texts, images)
    assert swapped["image_to_text_R@1"] == pytest.approx(10 / 12)
    assert swapped["text_to_image_R@5"] == 1.0
    assert metrics.retrieval_chance(20)["text_to_image_R@5"] == 0.25
    with pytest.raises(ValueError, match="3 images but 2 texts"):
        metrics.retrieval(np.eye(3), np.eye(3)[:2])
