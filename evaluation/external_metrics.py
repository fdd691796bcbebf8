"""The metrics the external suite needs beyond evaluation.metrics: worst-group accuracy, macro F1, ROC AUC,
retrieval with several captions per image, WinoGAViL's Jaccard index. Ties count against the model, as in
evaluation.metrics."""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import numpy as np

from evaluation.metrics import l2_normalise, true_rank

CHUNK = 1024  # rows of a similarity matrix computed at once: bounds memory on COCO-sized sets


def group_accuracy(rank: np.ndarray, groups: Sequence[str | None], k: int) -> dict[str, float]:
    """Top-k accuracy per group (samples whose group is None belong to none)."""
    out = {}
    for g in sorted({g for g in groups if g is not None}):
        mask = np.array([x == g for x in groups])
        out[g] = float(np.mean(rank[mask] < k))
    return out


def macro_f1(pred: np.ndarray, labels: np.ndarray) -> float:
    """F1 averaged over the classes present in `labels` (WILDS' F1-macro_all)."""
    scores = []
    for c in np.unique(labels):
        tp = np.sum((pred == c) & (labels == c))
        fp = np.sum((pred == c) & (labels != c))
        fn = np.sum((pred != c) & (labels == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; tied scores count half)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs both positive and negative samples")
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg_rank = (ends - (counts - 1) / 2.0)[inverse]  # 1-based ranks, ties averaged
    return float((avg_rank[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def multi_caption_retrieval(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                            ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@k both ways when image i has several captions (text_image[t] = the image of text t).

    image->text: a hit when any of the image's captions ranks in the top k (CLIP_benchmark's and the CLIP
    paper's definition); the image's other captions do not count against it. text->image: the text's image
    in the top k.
    """
    img = l2_normalise(image_emb).astype(np.float32)
    txt = l2_normalise(text_emb).astype(np.float32)
    text_image = np.asarray(text_image, dtype=np.int64)
    i2t = np.empty(len(img), dtype=np.int64)
    for s in range(0, len(img), CHUNK):
        sim = img[s:s + CHUNK] @ txt.T
        rows = np.arange(sim.shape[0])
        own = text_image[None, :] == (rows + s)[:, None]
        best = np.where(own, sim, -np.inf).max(axis=1)
        i2t[s:s + CHUNK] = ((sim >= best[:, None]) & ~own).sum(axis=1)
    t2i = np.empty(len(txt), dtype=np.int64)
    for s in range(0, len(txt), CHUNK):
        t2i[s:s + CHUNK] = true_rank(txt[s:s + CHUNK] @ img.T, text_image[s:s + CHUNK])
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = float(np.mean(i2t < k))
        out[f"text_to_image_R@{k}"] = float(np.mean(t2i < k))
    out["mean_R@1"] = (out["image_to_text_R@1"] + out["text_to_image_R@1"]) / 2
    return out


def multi_caption_chance(captions_per_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected R@k of a random ranking."""
    m = np.asarray(captions_per_image)
    n_img, n_txt = len(m), int(m.sum())
    out = {}
    for k in ks:
        miss = [comb(n_txt - c, min(k, n_txt)) / comb(n_txt, min(k, n_txt)) for c in m]
        out[f"image_to_text_R@{k}"] = float(1 - np.mean(miss))
        out[f"text_to_image_R@{k}"] = min(k, n_img) / n_img
    out["mean_R@1"] = (out["image_to_text_R@1"] + out["text_to_image_R@1"]) / 2
    return out


def jaccard(chosen: np.ndarray, truth: np.ndarray) -> float:
    union = np.sum(chosen | truth)
    return float(np.sum(chosen & truth) / union) if union else 1.0


def jaccard_chance(n: int, k: int) -> float:
    """Expected Jaccard index of k candidates drawn at random out of n against the k true ones."""
    total = comb(n, k)
    return sum(comb(k, i) * comb(n - k, k - i) / total * i / (2 * k - i) for i in range(k + 1))
