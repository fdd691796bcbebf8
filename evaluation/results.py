"""Result rows and where they live.

    <root>/eval/results/<checkpoint digest>/<dataset>.jsonl     one JSON row per metric, published atomically

A row: {model, checkpoint, step, digest, dataset, dataset_version, group, parent, task, metric, value, chance, n, status,
error, code_version, config_hash, ray_job_id, time}. `status` is "ok", or "failed" for the single row recording a task that
raised (metric "error", value null, the error text in `error`). A (checkpoint, dataset) file counts as done only
when all its rows are ok and its config_hash matches the current settings: a rerun retries failures and
re-evaluates results computed with different settings or an older dataset version, and skips the rest.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
from dataclasses import dataclass

from pipelines import storage
from pipelines.config import config_hash
from pipelines.version import code_version, ray_job_id
from evaluation.config import EvalConfig
from evaluation.catalog import info


# The headline metric of each task kind: the console table, the bar chart and the by-step chart show it.
PRIMARY = {"zeroshot": "top1", "retrieval": "image_to_text_R@1", "linear_probe": "top1"}


@dataclass(frozen=True)
class CheckpointRef:
    uri: str
    digest: str
    step: int
    model: str
    """The training run's name (the model family the step belongs to)."""


def results_root(root: str) -> str:
    return storage.join(root, "eval", "results")


def result_uri(root: str, digest: str, dataset: str) -> str:
    return storage.join(results_root(root), digest, f"{dataset}.jsonl")


def dataset_hash(cfg: EvalConfig, dataset: str) -> str:
    """Hash of everything that decides a dataset's contents: the render settings and the dataset's version."""
    ds = info(dataset)
    settings = cfg.external_settings() if ds.external else cfg.data_settings()
    return config_hash({**settings, "dataset": dataset, "dataset_version": ds.version})


def _provenance(ckpt: CheckpointRef, dataset: str, cfg: EvalConfig) -> dict:
    return {"model": ckpt.model, "checkpoint": ckpt.uri, "step": ckpt.step, "digest": ckpt.digest,
            "dataset": dataset, "dataset_version": info(dataset).version, "code_version": code_version(),
            "config_hash": dataset_hash(cfg, dataset), "ray_job_id": ray_job_id(),
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def ok_rows(ckpt: CheckpointRef, dataset: str, cfg: EvalConfig, metrics: list[dict]) -> list[dict]:
    base = _provenance(ckpt, dataset, cfg)
    return [{**base, **m, "status": "ok", "error": None} for m in metrics]


def failed_row(ckpt: CheckpointRef, dataset: str, cfg: EvalConfig, error: str) -> list[dict]:
    ds = info(dataset)
    return [{**_provenance(ckpt, dataset, cfg), "task": ds.kind, "group": ds.group, "metric": "error", "value": None, "chance": None,
             "n": 0, "status": "failed", "error": error}]


def write_rows(root: str, digest: str, dataset: str, rows: list[dict]) -> str:
    uri = result_uri(root, digest, dataset)
    storage.write_bytes(uri, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
    return uri


def parse_rows(data: bytes, uri: str) -> list[dict]:
    rows = []
    for i, line in enumerate(data.decode().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{uri}:{i}: not a JSON row: {exc}") from exc
    return rows


def read_rows(uri: str) -> list[dict]:
    return parse_rows(storage.read_bytes(uri), uri)


def is_done(root: str, ckpt: CheckpointRef, dataset: str, cfg: EvalConfig) -> bool:
    uri = result_uri(root, ckpt.digest, dataset)
    if not storage.exists(uri):
        return False
    rows = read_rows(uri)
    want = dataset_hash(cfg, dataset)
    return bool(rows) and all(r.get("status") == "ok" and r.get("config_hash") == want for r in rows)


def all_rows(root: str) -> list[dict]:
    """Every row under <root>/eval/results/ (the dashboard's input)."""
    base = results_root(root)
    if not storage.exists(base):
        return []
    return [r for uri in storage.walk_files(base) if posixpath.basename(uri).endswith(".jsonl")
            for r in read_rows(uri)]
