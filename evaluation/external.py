"""Score an Encoder on one external dataset (evaluation.registry) read from its layout (evaluation.adapters).

    from evaluation.external import evaluate_external
    rows = evaluate_external(load_clip("data/checkpoints/demo"), "cifar10", "s3://bucket/evalsets/cifar10",
                             batch_size=256)

Returns rows like evaluation.evaluate's, {task, metric, value, chance, n, main}: `task` is the registry's task
(zeroshot_classification, retrieval, association); `main` is True on exactly one row, the dataset's main metric
(DataComp's, see evaluation.registry), False on the others. Images are decoded and embedded `batch_size` at a
time, so memory holds one batch of images plus the embeddings; `limit` stops after that many images (retrieval,
classification) or instances (association).

Rows per task:
  classification: top1, top5 (more than 5 classes), mean_per_class_recall; with groups in the data,
    worst_group_top1, worst_group_top5 and top1[group=G] per group; macro_f1 (iWildCam), roc_auc (Hateful
    Memes: label 1 positive, scored by similarity to class 1 minus class 0), mean_top1_top5 (Kinetics-700)
  retrieval: image_to_text_R@{1,5,10}, text_to_image_R@{1,5,10}, mean_R@1 (image->text hits when any caption of
    the image is in the top k)
  association: jaccard, jaccard_5-6, jaccard_10-12 (instances with 5-6 and 10-12 candidates): the model picks as
    many candidates as there are true associations, by similarity to "A <cue>" / "An <cue>" (DataComp's prompt)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

import numpy as np

from evaluation import external_metrics as xm
from evaluation import metrics
from evaluation.adapters import Layout, LayoutError, open_layout
from evaluation.registry import ASSOCIATION, CLASSIFICATION, RETRIEVAL, DatasetSpec, get

T = TypeVar("T")
_LAYOUT_TASK = {"classification": CLASSIFICATION, "retrieval": RETRIEVAL, "association": ASSOCIATION}


def evaluate_external(encoder: metrics.Encoder, name: str | DatasetSpec, root: str, *, batch_size: int = 64,
                      limit: int | None = None, split: str = "test", layout: str | None = None) -> list[dict]:
    """Metric rows of `encoder` on dataset `name` (a registry name, or a DatasetSpec for a dataset of one's own)
    stored under `root` in any layout of evaluation.adapters."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    spec = name if isinstance(name, DatasetSpec) else get(name)
    name = spec.name
    data = open_layout(root, split, layout)
    if _LAYOUT_TASK[data.task] != spec.task:
        raise LayoutError(f"{root}: the {data.kind} layout holds {data.task} data but {name} is a {spec.task} "
                          f"dataset")
    if spec.task == CLASSIFICATION:
        rows = _classification(encoder, spec, data, batch_size, limit)
    elif spec.task == RETRIEVAL:
        rows = _retrieval(encoder, data, batch_size, limit)
    else:
        rows = _association(encoder, data, batch_size, limit)
    for r in rows:
        r["main"] = r["metric"] == spec.main_metric
    if not any(r["main"] for r in rows):
        raise LayoutError(f"{root}: {name}'s main metric {spec.main_metric} could not be computed from this data"
                          + (" (no sample has a group: see evaluation.adapters)" if "group" in spec.main_metric
                             else ""))
    return rows


def _row(task: str, metric: str, value: float, chance: float | None, n: int) -> dict:
    return {"task": task, "metric": metric, "value": value, "chance": chance, "n": n}


def _batches(items: Iterable[T], size: int, limit: int | None) -> Iterator[list[T]]:
    it = iter(items) if limit is None else islice(items, limit)
    while batch := list(islice(it, size)):
        yield batch


def encode_texts(encoder: metrics.Encoder, texts: list[str], batch_size: int) -> np.ndarray:
    parts = [np.asarray(encoder.encode_texts(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts, axis=0)


class _Batched:
    """metrics.class_embeddings encodes every prompt in one call; this splits it into batches."""

    def __init__(self, encoder: metrics.Encoder, batch_size: int) -> None:
        self.encoder, self.batch_size = encoder, batch_size

    def encode_images(self, images: list) -> np.ndarray:
        return np.asarray(self.encoder.encode_images(images))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return encode_texts(self.encoder, texts, self.batch_size)


def resolve_classes(spec: DatasetSpec, data: Layout) -> tuple[list[str], list[str]]:
    """(class names, templates): the layout's files when present, else the registry's."""
    names = data.classnames if data.classnames is not None else (
        list(spec.classnames) if spec.classnames is not None else None)
    if names is None:
        raise LayoutError(f"{data.root}/classnames.txt does not exist and {spec.name} has no inline class names "
                          f"({spec.classnames_doc})")
    if not names:
        raise LayoutError(f"{data.root}/classnames.txt is empty")
    if data.class_dirs and len(data.class_dirs) != len(names):
        raise LayoutError(f"{data.split_uri}: {len(data.class_dirs)} class directories but {len(names)} class names "
                          f"(name the directories by label, 0..{len(names) - 1}, when a split lacks classes)")
    templates = data.templates or list(spec.templates)
    return names, templates


def _classification(encoder: metrics.Encoder, spec: DatasetSpec, data: Layout, batch_size: int,
                    limit: int | None) -> list[dict]:
    names, templates = resolve_classes(spec, data)
    class_emb = metrics.class_embeddings(_Batched(encoder, batch_size),
                                         [[t.replace("{c}", c) for t in templates] for c in names])
    parts, labels, groups = [], [], []
    for batch in _batches(data.examples(), batch_size, limit):
        for ex in batch:
            if not 0 <= ex.label < len(names):
                source = "classnames.txt" if data.classnames is not None else f"{spec.name}'s inline names"
                raise LayoutError(f"{ex.source}: sample {ex.key!r} has label {ex.label}, out of range for the "
                                  f"{len(names)} classes of {source}")
        parts.append(np.asarray(encoder.encode_images([ex.image for ex in batch])))
        labels += [ex.label for ex in batch]
        groups += [ex.group for ex in batch]
    if not labels:
        raise LayoutError(f"{data.split_uri}: no samples")
    image_emb, y = np.concatenate(parts), np.asarray(labels)
    n, c, task = len(y), len(names), CLASSIFICATION
    scores = metrics.zero_shot(image_emb, class_emb, y)
    chance = metrics.zero_shot_chance(c)
    rows = [_row(task, m, v, chance.get(m), n) for m, v in scores.items()]
    sim = metrics.l2_normalise(image_emb) @ metrics.l2_normalise(class_emb).T
    rank = metrics.true_rank(sim, y)
    if any(g is not None for g in groups):
        top1 = xm.group_accuracy(rank, groups, 1)
        top5 = xm.group_accuracy(rank, groups, 5)
        rows.append(_row(task, "worst_group_top1", min(top1.values()), 1 / c, n))
        rows.append(_row(task, "worst_group_top5", min(top5.values()), min(5, c) / c, n))
        rows += [_row(task, f"top1[group={g}]", v, 1 / c, sum(x == g for x in groups)) for g, v in top1.items()]
    if spec.main_metric == "macro_f1":
        rows.append(_row(task, "macro_f1", xm.macro_f1(sim.argmax(axis=1), y), None, n))
    if spec.main_metric == "roc_auc":
        if c != 2:
            raise LayoutError(f"{data.root}: roc_auc needs 2 classes, the data has {c}")
        rows.append(_row(task, "roc_auc", xm.roc_auc(sim[:, 1] - sim[:, 0], y == 1), 0.5, n))
    if spec.main_metric == "mean_top1_top5":
        rows.append(_row(task, "mean_top1_top5", float(np.mean(rank < 1) + np.mean(rank < 5)) / 2,
                         (1 + min(5, c)) / (2 * c), n))
    return rows


def _retrieval(encoder: metrics.Encoder, data: Layout, batch_size: int, limit: int | None) -> list[dict]:
    img_parts, txt_parts, text_image, per_image = [], [], [], []
    for batch in _batches(data.examples(), batch_size, limit):
        start = len(per_image)
        img_parts.append(np.asarray(encoder.encode_images([ex.image for ex in batch])))
        texts = [c for ex in batch for c in ex.captions]
        txt_parts.append(encode_texts(encoder, texts, batch_size))
        text_image += [start + i for i, ex in enumerate(batch) for _ in ex.captions]
        per_image += [len(ex.captions) for ex in batch]
    if not per_image:
        raise LayoutError(f"{data.split_uri}: no samples")
    scores = xm.multi_caption_retrieval(np.concatenate(img_parts), np.concatenate(txt_parts), np.asarray(text_image))
    chance = xm.multi_caption_chance(per_image)
    return [_row(RETRIEVAL, m, v, chance[m], len(per_image)) for m, v in scores.items()]


def _cue_prompt(cue: str) -> str:
    cue = cue.strip().lower()
    return f"{'An' if cue[0] in 'aeiou' else 'A'} {cue}"


def _association(encoder: metrics.Encoder, data: Layout, batch_size: int, limit: int | None) -> list[dict]:
    sizes, scores, chances = [], [], []
    for inst in islice(data.associations(), limit):
        img = np.concatenate([np.asarray(encoder.encode_images(inst.images[i:i + batch_size]))
                              for i in range(0, len(inst.images), batch_size)])
        sim = metrics.l2_normalise(img) @ metrics.l2_normalise(encode_texts(encoder, [_cue_prompt(inst.cue)], 1))[0]
        truth = np.asarray(inst.truth)
        k = int(truth.sum())
        # Ties against the model: among equal scores the candidates that are not associations are picked first.
        order = np.lexsort((truth, -sim))
        chosen = np.zeros_like(truth)
        chosen[order[:k]] = True
        sizes.append(len(truth))
        scores.append(xm.jaccard(chosen, truth))
        chances.append(xm.jaccard_chance(len(truth), k))
    if not sizes:
        raise LayoutError(f"{data.split_uri}: no association instances")
    n_of, s, ch = np.asarray(sizes), np.asarray(scores), np.asarray(chances)
    rows = [_row(ASSOCIATION, "jaccard", float(s.mean()), float(ch.mean()), len(s))]
    for metric, mask in (("jaccard_5-6", n_of <= 6), ("jaccard_10-12", n_of >= 10)):
        if mask.any():
            rows.append(_row(ASSOCIATION, metric, float(s[mask].mean()), float(ch[mask].mean()), int(mask.sum())))
    return rows
