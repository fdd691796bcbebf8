"""Robustness rows: each shifted dataset's score set against its in-distribution parent's, computed from result
rows (nothing is re-evaluated), for the run, the dashboard or a notebook to call:

    from evaluation.robustness import robustness_rows
    rows = robustness_rows(all_rows(root))        # evaluation.results.all_rows

For every checkpoint (digest), every dataset that has a parent (the row's `parent`, else the registry's), and
every headline metric both have (zero-shot top-1, linear-probe top-1, retrieval R@1 both ways), rows with task
"robustness", the shifted dataset's name and provenance, `parent`, `of_task`, `of_metric`, `shifted`,
`in_distribution`, and metric:

    <of_task>_<of_metric>_drop                in_distribution - shifted (what the shift costs)
    <of_task>_<of_metric>_ratio               shifted / in_distribution (1 = fully robust)
    <of_task>_<of_metric>_above_chance_ratio  (shifted - chance) / (in_distribution - chance): the share of the
                                              margin over chance that survives (datasets with different
                                              numbers of classes become comparable)
    <of_task>_<of_metric>_effective           with `baseline` rows only: shifted minus what the baseline
                                              models' trend predicts from in_distribution

The last is effective robustness (Taori et al. 2020, the measure of the CLIP paper's section 3.3): across a
family of baseline models (other checkpoints, or models trained another way), fit a line through their
(logit in-distribution, logit shifted) scores; a model above that line is more robust than its in-distribution
score alone predicts. A pair with fewer than two distinct baseline points gets no effective row. Zero-shot
against linear-probe rows of the same checkpoint is the paper's other comparison: the probe's ratio is that of
a classifier adapted to the in-distribution data.
"""

from __future__ import annotations

import math

import numpy as np

HEADLINE = {"zeroshot": ("top1",), "linear_probe": ("top1",),
            "retrieval": ("image_to_text_R@1", "text_to_image_R@1")}
_METRIC_FIELDS = ("task", "metric", "value", "chance", "n", "status", "error", "group", "parent")
_LOGIT_EPS = 1e-4


def _parent(row: dict) -> str:
    if row.get("parent") is not None:
        return row["parent"]
    from evaluation.tasks import DATASETS

    ds = DATASETS.get(row["dataset"])
    return getattr(ds, "parent", "") if ds else ""


def _index(rows: list[dict]) -> dict[tuple[str, str, str, str], dict]:
    """(digest, dataset, task, metric) -> row, headline metrics of ok rows only."""
    return {(r["digest"], r["dataset"], r["task"], r["metric"]): r for r in rows
            if r.get("status", "ok") == "ok" and r["metric"] in HEADLINE.get(r["task"], ()) and r["value"] is not None}


def _logit(p: float) -> float:
    p = min(max(p, _LOGIT_EPS), 1 - _LOGIT_EPS)
    return math.log(p / (1 - p))


def _trend(baseline: dict, shifted: str, parent: str, task: str, metric: str) -> tuple[float, float] | None:
    """(slope, intercept) of logit(shifted) on logit(parent) over the baseline checkpoints, or None."""
    xs, ys = [], []
    for (digest, dataset, t, m), row in baseline.items():
        if (dataset, t, m) == (shifted, task, metric) and (digest, parent, task, metric) in baseline:
            xs.append(_logit(baseline[(digest, parent, task, metric)]["value"]))
            ys.append(_logit(row["value"]))
    if len(set(xs)) < 2:
        return None
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(slope), float(intercept)


def robustness_rows(rows: list[dict], baseline: list[dict] | None = None) -> list[dict]:
    index = _index(rows)
    base = _index(baseline or [])
    trends: dict[tuple[str, str, str, str], tuple[float, float] | None] = {}
    out = []
    for (digest, dataset, task, metric), row in sorted(index.items()):
        parent = _parent(row)
        ref = index.get((digest, parent, task, metric)) if parent else None
        if ref is None:
            continue
        s, p = float(row["value"]), float(ref["value"])
        chance = row.get("chance")
        stats: dict[str, float | None] = {"drop": p - s, "ratio": s / p if p > 0 else None,
                                          "above_chance_ratio": (s - chance) / (p - chance)
                                          if chance is not None and p > chance else None}
        if baseline is not None:
            key = (dataset, parent, task, metric)
            if key not in trends:
                trends[key] = _trend(base, *key)
            if trends[key] is not None:
                slope, intercept = trends[key]
                stats["effective"] = s - 1 / (1 + math.exp(-(slope * _logit(p) + intercept)))
        provenance = {k: v for k, v in row.items() if k not in _METRIC_FIELDS}
        for stat, value in stats.items():
            if value is not None:
                out.append({**provenance, "task": "robustness", "metric": f"{task}_{metric}_{stat}", "value": value,
                            "chance": None, "n": row.get("n"), "status": "ok", "error": None, "group": "robustness",
                            "parent": parent, "of_task": task, "of_metric": metric, "shifted": s,
                            "in_distribution": p})
    return out
