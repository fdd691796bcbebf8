"""Metric arithmetic on hand-built embeddings: prompt ensembles, zero-shot top-1/top-5/per-class recall, R@k;
robustness rows from hand-built result rows."""

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


def _row(digest: str, dataset: str, task: str, metric: str, value: float, chance: float | None = None, **kw) -> dict:
    return {"digest": digest, "step": 1, "model": "m", "dataset": dataset, "dataset_version": "1", "task": task,
            "metric": metric, "value": value, "chance": chance, "n": 10, "status": "ok", "error": None, **kw}


def test_robustness_rows_relate_each_shift_to_its_parent():
    from evaluation.robustness import robustness_rows

    rows = [
        _row("a", "shape", "zeroshot", "top1", 0.8, 1 / 6, parent=""),
        _row("a", "shape", "zeroshot", "top5", 0.9, 5 / 6, parent=""),
        _row("a", "shape_noise", "zeroshot", "top1", 0.6, 1 / 6, parent="shape"),
        _row("a", "shape_noise", "zeroshot", "top5", 0.7, 5 / 6, parent="shape"),  # not a headline metric
        _row("a", "probe_shape", "linear_probe", "top1", 0.9, 1 / 6, parent=""),
        _row("a", "probe_shape_noise", "linear_probe", "top1", 0.45, 1 / 6, parent="probe_shape"),
        _row("a", "retrieval", "retrieval", "text_to_image_R@1", 0.5, 0.005, parent=""),
        _row("a", "retrieval_noise", "retrieval", "text_to_image_R@1", 0.25, 0.005, parent="retrieval"),
        _row("a", "shape_blur", "zeroshot", "top1", 0.1, 1 / 6),  # no parent field: the registry's (shape)
        {**_row("a", "shape_rotate", "zeroshot", "error", 0.0, parent="shape"), "status": "failed", "value": None},
        _row("b", "shape_noise", "zeroshot", "top1", 0.5, 1 / 6, parent="shape"),  # b has no parent row
    ]
    out = {(r["dataset"], r["metric"]): r for r in robustness_rows(rows)}
    assert set(out) == {(d, f"{p}_{s}") for d, p in (("shape_noise", "zeroshot_top1"),
                                                     ("probe_shape_noise", "linear_probe_top1"),
                                                     ("retrieval_noise", "retrieval_text_to_image_R@1"),
                                                     ("shape_blur", "zeroshot_top1"))
                        for s in ("drop", "ratio", "above_chance_ratio")}
    noise = {m: r["value"] for (d, m), r in out.items() if d == "shape_noise"}
    assert noise == pytest.approx({"zeroshot_top1_drop": 0.2, "zeroshot_top1_ratio": 0.75,
                                   "zeroshot_top1_above_chance_ratio": (0.6 - 1 / 6) / (0.8 - 1 / 6)})
    r = out[("probe_shape_noise", "linear_probe_top1_ratio")]
    assert r["value"] == pytest.approx(0.5) and r["parent"] == "probe_shape" and r["task"] == "robustness"
    assert (r["shifted"], r["in_distribution"], r["of_task"], r["of_metric"]) == (0.45, 0.9, "linear_probe", "top1")
    assert (r["digest"], r["step"], r["model"], r["chance"], r["status"]) == ("a", 1, "m", None, "ok")
    assert out[("retrieval_noise", "retrieval_text_to_image_R@1_ratio")]["value"] == pytest.approx(0.5)
    # Below chance under the shift: a negative share of the margin survives.
    assert out[("shape_blur", "zeroshot_top1_above_chance_ratio")]["value"] < 0


def test_effective_robustness_against_a_baseline_trend():
    from evaluation.robustness import robustness_rows

    rows = [_row("a", "shape", "zeroshot", "top1", 0.8, 1 / 6, parent=""),
            _row("a", "shape_noise", "zeroshot", "top1", 0.6, 1 / 6, parent="shape"),
            _row("a", "colour", "zeroshot", "top1", 0.9, 1 / 8, parent=""),
            _row("a", "colour_noise", "zeroshot", "top1", 0.9, 1 / 8, parent="colour")]
    # Baseline models lose exactly nothing on shape (logit line = identity), so a predicts 0.8 and is 0.2
    # below the trend; colour has a single baseline point, too few for a line: no effective row.
    baseline = [_row(d, ds, "zeroshot", "top1", v, parent=p) for d, ds, v, p in (
        ("x", "shape", 0.5, ""), ("x", "shape_noise", 0.5, "shape"), ("y", "shape", 0.9, ""),
        ("y", "shape_noise", 0.9, "shape"), ("x", "colour", 0.5, ""), ("x", "colour_noise", 0.4, "colour"))]
    out = {(r["dataset"], r["metric"]): r["value"] for r in robustness_rows(rows, baseline)}
    assert out[("shape_noise", "zeroshot_top1_effective")] == pytest.approx(-0.2)
    assert ("colour_noise", "zeroshot_top1_effective") not in out and ("colour_noise", "zeroshot_top1_ratio") in out
