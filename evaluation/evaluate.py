"""Evaluate one encoder on one dataset: render it, embed it, score it. Returns metric rows without provenance.

Every row is {task, metric, value, chance, n, group, parent}: `task` is the dataset's kind (zeroshot,
retrieval, linear_probe), `group` what the dashboard averages over, `parent` the in-distribution dataset a
shifted variant is compared with (evaluation.robustness). A linear probe adds two rows beside its scores:
`val_top1` (validation top-1 of the chosen C) and `C` itself (no chance level).
"""

from __future__ import annotations

import numpy as np

from evaluation import metrics
from evaluation.config import EvalConfig
from evaluation.linear_probe import linear_probe
from evaluation.render import render_samples
from evaluation.tasks import ClassificationDataset, Dataset, LinearProbeDataset, RetrievalDataset, get_dataset

BATCH = 64  # images per encode call: bounds memory on large evaluation sets


def _encode_images(encoder: metrics.Encoder, images: list) -> np.ndarray:
    parts = [np.asarray(encoder.encode_images(images[i:i + BATCH])) for i in range(0, len(images), BATCH)]
    return np.concatenate(parts, axis=0)


def _encode_texts(encoder: metrics.Encoder, texts: list[str]) -> np.ndarray:
    parts = [np.asarray(encoder.encode_texts(texts[i:i + BATCH])) for i in range(0, len(texts), BATCH)]
    return np.concatenate(parts, axis=0)


def _rows(ds: Dataset, scores: dict[str, float], chance: dict[str, float | None], n: int) -> list[dict]:
    return [{"task": ds.kind, "metric": m, "value": v, "chance": chance.get(m), "n": n, "group": ds.group,
             "parent": ds.parent} for m, v in scores.items()]


def evaluate_classification(encoder: metrics.Encoder, ds: ClassificationDataset, cfg: EvalConfig) -> list[dict]:
    samples = ds.samples(cfg.samples_per_class, cfg.seed)
    image_emb = _encode_images(encoder, render_samples(samples, cfg.image_size))
    class_emb = metrics.class_embeddings(_TextBatcher(encoder), ds.prompts)
    scores = metrics.zero_shot(image_emb, class_emb, [s.label for s in samples], ds.image_classes())
    return _rows(ds, scores, metrics.zero_shot_chance(len(ds.classes)), len(samples))


def evaluate_retrieval(encoder: metrics.Encoder, ds: RetrievalDataset, cfg: EvalConfig) -> list[dict]:
    samples = ds.samples(cfg.retrieval_pairs, cfg.seed)
    image_emb = _encode_images(encoder, render_samples(samples, cfg.image_size))
    text_emb = _encode_texts(encoder, [s.text for s in samples])
    scores = metrics.retrieval(image_emb, text_emb)
    return _rows(ds, scores, metrics.retrieval_chance(len(samples)), len(samples))


def evaluate_linear_probe(encoder: metrics.Encoder, ds: LinearProbeDataset, cfg: EvalConfig) -> list[dict]:
    splits = {split: ds.samples(cfg.probe_samples_per_class if split != "test" else cfg.samples_per_class,
                                cfg.seed, split) for split in ("train", "val", "test")}
    feats = {split: _encode_images(encoder, render_samples(s, cfg.image_size)) for split, s in splits.items()}
    labels = {split: [s.label for s in samples] for split, samples in splits.items()}
    result = linear_probe(feats["train"], labels["train"], feats["val"], labels["val"], feats["test"],
                          labels["test"], cfg.probe_c_grid)
    chance: dict[str, float | None] = dict(metrics.zero_shot_chance(len(ds.image_classes())))
    chance["val_top1"] = chance["top1"]
    scores = {**result.test, "val_top1": result.val_top1[result.C], "C": result.C}
    return _rows(ds, scores, chance, len(splits["test"]))


def evaluate_dataset(encoder: metrics.Encoder, name: str, cfg: EvalConfig, external_root: str = "") -> list[dict]:
    """Metric rows of `encoder` on dataset `name` (see the module docstring); an external (registry) dataset is
    read from <external_root>/<name>/."""
    from evaluation.catalog import info

    if info(name).external:
        return evaluate_external_dataset(encoder, name, cfg, external_root)
    ds = get_dataset(name)
    if isinstance(ds, RetrievalDataset):
        return evaluate_retrieval(encoder, ds, cfg)
    if isinstance(ds, LinearProbeDataset):
        return evaluate_linear_probe(encoder, ds, cfg)
    return evaluate_classification(encoder, ds, cfg)


def evaluate_external_dataset(encoder: metrics.Encoder, name: str, cfg: EvalConfig, external_root: str) -> list[dict]:
    """Rows of evaluation.external with the task kinds and groups the procedural rows carry; `main` is kept."""
    from evaluation.catalog import info
    from evaluation.external import evaluate_external
    from pipelines import storage

    if not external_root:
        raise ValueError(f"{name}: external dataset but no external root (evaluation.external_root)")
    ds = info(name)
    rows = evaluate_external(encoder, name, storage.join(external_root, name), batch_size=cfg.batch_size,
                             limit=cfg.external_limit or None)
    return [{**r, "task": ds.kind, "group": ds.group, "parent": ""} for r in rows]


class _TextBatcher:
    """Wraps an encoder so class_embeddings' single encode_texts call is batched."""

    def __init__(self, encoder: metrics.Encoder) -> None:
        self.encoder = encoder

    def encode_images(self, images: list) -> np.ndarray:
        return _encode_images(self.encoder, images)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return _encode_texts(self.encoder, texts)
