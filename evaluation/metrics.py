"""Classification (zero-shot, linear probe) and retrieval metrics on L2-normalised embeddings.

The metric code knows only the `Encoder` protocol, never the training code, so tests can check the arithmetic
with a transparent encoder. Ties count against the model (a class scoring exactly as high as the true one
ranks above it): a constant encoder then scores 0, never a flattering chance-or-better.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image


class Encoder(Protocol):
    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, d) L2-normalised image embeddings."""

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(n, d) L2-normalised text embeddings."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def class_embeddings(encoder: Encoder, prompts: Sequence[Sequence[str]]) -> np.ndarray:
    """Per class: the mean of its prompts' normalised text embeddings, renormalised (a prompt ensemble)."""
    flat = [p for ps in prompts for p in ps]
    emb = l2_normalise(encoder.encode_texts(flat))
    out, start = [], 0
    for ps in prompts:
        if not ps:
            raise ValueError("every class needs at least one prompt")
        out.append(emb[start:start + len(ps)].mean(axis=0))
        start += len(ps)
    return l2_normalise(np.stack(out))


def true_rank(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per row, how many other columns score at least as high as column truth[row] (0 = ranked first)."""
    rows = np.arange(scores.shape[0])
    target = scores[rows, truth][:, None]
    at_least = scores >= target
    at_least[rows, truth] = False
    return at_least.sum(axis=1)


def classification(scores: np.ndarray, labels: Sequence[int], present: Sequence[int] | None = None) -> dict[str, float]:
    """top1, top5 (only when there are more than 5 classes) and mean per-class recall of a score matrix
    (images x classes; higher = more likely).

    Mean per-class recall averages top-1 recall over the classes that have images (`present`, default: those
    appearing in `labels`), so datasets whose images cover only some classes are not penalised for the others.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("classification: no images")
    rank = true_rank(scores, labels)
    out = {"top1": float(np.mean(rank < 1))}
    if scores.shape[1] > 5:
        out["top5"] = float(np.mean(rank < 5))
    classes = sorted(set(labels.tolist())) if present is None else list(present)
    recalls = [float(np.mean(rank[labels == c] < 1)) for c in classes if np.any(labels == c)]
    out["mean_per_class_recall"] = float(np.mean(recalls))
    return out


def zero_shot(image_emb: np.ndarray, class_emb: np.ndarray, labels: Sequence[int],
              present: Sequence[int] | None = None) -> dict[str, float]:
    """`classification` of the cosine similarities between images and class embeddings."""
    if len(labels) == 0:
        raise ValueError("zero_shot: no images")
    return classification(l2_normalise(image_emb) @ l2_normalise(class_emb).T, labels, present)


def zero_shot_chance(num_classes: int, present: int | None = None) -> dict[str, float]:
    """Expected score of a uniform random guess over all `num_classes` classes."""
    out = {"top1": 1.0 / num_classes}
    if num_classes > 5:
        out["top5"] = 5.0 / num_classes
    out["mean_per_class_recall"] = 1.0 / num_classes
    return out


def retrieval(image_emb: np.ndarray, text_emb: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways for paired rows (image i <-> text i): image_to_text_R@k, text_to_image_R@k."""
    if image_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(f"retrieval: {image_emb.shape[0]} images but {text_emb.shape[0]} texts")
    sim = l2_normalise(image_emb) @ l2_normalise(text_emb).T
    idx = np.arange(sim.shape[0])
    i2t, t2i = true_rank(sim, idx), true_rank(sim.T, idx)
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = float(np.mean(i2t < k))
        out[f"text_to_image_R@{k}"] = float(np.mean(t2i < k))
    return out


def retrieval_chance(n: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = out[f"text_to_image_R@{k}"] = min(k, n) / n
    return out
