"""Evaluate checkpoints on the procedural evaluation suite with Ray: one task per (checkpoint, dataset).

    python -m evaluation.run --config configs/demo.yaml [evaluation.checkpoint=all evaluation.tasks=[shape] ...]

On a cluster: `ray job submit --working-dir . -- python -m evaluation.run --config configs/demo.yaml
storage.root=s3://bucket/prefix`.

Each Ray task loads its checkpoint from storage itself (so the driver never ships weights) and returns metric
rows; the driver stamps provenance and publishes them atomically to
<root>/eval/results/<digest>/<dataset>.jsonl as each task finishes. Pairs already done with the same settings
are skipped, so a rerun resumes. A task that raises is recorded as a failed row and the others finish; a task
whose worker dies is retried (evaluation.max_retries). Prints a table (dataset, chance, top-1 or R@1) and
exits 0, or 1 when any evaluation failed.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from pipelines import storage
from pipelines.config import parse_cli
from pipelines.engines import EngineConfig, init_ray
from pipelines.storage import StorageConfig
from evaluation.config import DashboardConfig, EvalConfig
from evaluation.evaluate import evaluate_dataset
from evaluation.metrics import Encoder
from evaluation.reports import publish_reports
from evaluation.results import (PRIMARY, CheckpointRef, all_rows, failed_row, is_done, ok_rows, read_rows,
                                result_uri, write_rows)

log = logging.getLogger("evaluation.run")
Loader = Callable[[str], Encoder]
# Variables storage needs on the workers (S3 endpoint/credentials), forwarded in the task's runtime_env.


def sections() -> dict[str, type]:
    from training.config import TrainConfig

    return {"storage": StorageConfig, "training": TrainConfig, "evaluation": EvalConfig, "dashboard": DashboardConfig}


def default_loader(uri: str) -> Encoder:
    """Load onto the GPU Ray gave this task, if any (Ray sets CUDA_VISIBLE_DEVICES to it), else the CPU."""
    import torch

    from training.checkpoint import load_clip

    return load_clip(uri, device="cuda" if torch.cuda.is_available() else "cpu")


def checkpoint_ref(uri: str) -> CheckpointRef:
    """Resolve a step dir (or a run dir, via its latest.json) to its digest and step, from meta.json."""
    from training.checkpoint import resolve_checkpoint

    uri = resolve_checkpoint(uri)
    meta_uri = storage.join(uri, "meta.json")
    meta = storage.read_json(meta_uri)
    for key in ("digest", "step"):
        if key not in meta:
            raise ValueError(f"{meta_uri}: missing {key!r}")
    return CheckpointRef(uri=uri, digest=str(meta["digest"]), step=int(meta["step"]), model=str(meta.get("run", "")))


def resolve_checkpoints(root: str, run: str, spec: str) -> list[CheckpointRef]:
    """evaluation.checkpoint -> the checkpoints to evaluate ("" latest of the run, "all" every step, or a URI)."""
    if spec == "all":
        from training.checkpoint import run_uri

        steps = [u for u in storage.listdir(run_uri(root, run))
                 if u.rstrip("/").rsplit("/", 1)[-1].startswith("step_") and storage.exists(storage.join(u, "meta.json"))]
        if not steps:
            raise FileNotFoundError(f"evaluation.checkpoint=all: no complete step dir under {run_uri(root, run)}")
        return sorted((checkpoint_ref(u) for u in steps), key=lambda r: r.step)
    if spec == "":
        from training.checkpoint import latest_checkpoint

        return [checkpoint_ref(latest_checkpoint(root, run))]
    return [checkpoint_ref(spec)]


def _evaluate_task(loader: Loader, uri: str, digest: str, dataset: str, cfg: EvalConfig,
                   external_root: str = "") -> list[dict]:
    model = loader(uri)
    loaded = getattr(model, "digest", digest)
    if loaded != digest:  # the step dir was overwritten between resolving and loading it
        raise RuntimeError(f"{uri}: loaded weights have digest {loaded}, expected {digest}")
    return evaluate_dataset(model, dataset, cfg, external_root)


def _error_text(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # RayTaskError wraps the task's own exception
    return f"{type(cause).__name__}: {cause}"[:2000]


@dataclass
class RunResult:
    rows: list[dict] = field(default_factory=list)
    evaluated: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    reports: str = ""
    """URI of the aggregated CSV, when this run evaluated anything."""


def evaluate(cfg: dict[str, Any], loader: Loader = default_loader,
             checkpoints: list[CheckpointRef] | None = None) -> RunResult:
    """Evaluate and publish; `loader` (uri -> Encoder) runs inside the Ray tasks and must be picklable."""
    root: str = cfg["storage"].root
    ec: EvalConfig = cfg["evaluation"]
    if checkpoints is None:
        checkpoints = resolve_checkpoints(root, cfg["training"].run, ec.checkpoint)
    out = RunResult()
    todo = []
    for ckpt in checkpoints:
        for ds in ec.dataset_names():
            if is_done(root, ckpt, ds, ec):
                out.skipped.append((ckpt.digest, ds))
                out.rows += read_rows(result_uri(root, ckpt.digest, ds))
            else:
                todo.append((ckpt, ds))
    log.info("%d (checkpoint, dataset) pairs to evaluate, %d already done", len(todo), len(out.skipped))
    if not todo:
        return out
    ray = init_ray(EngineConfig(ray_address=ec.ray_address, ray_num_cpus=ec.ray_num_cpus))
    options: dict[str, Any] = {"num_cpus": ec.num_cpus, "num_gpus": task_gpus(ray, ec.num_gpus),
                               "max_retries": ec.max_retries, **storage.ray_task_options()}
    task = ray.remote(_evaluate_task).options(**options)
    changed: list[dict] = []
    external_root = ec.external_root or storage.join(root, "evalsets")
    pending = {task.remote(loader, ckpt.uri, ckpt.digest, ds, ec, external_root): (ckpt, ds) for ckpt, ds in todo}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        ckpt, ds = pending.pop(done[0])
        try:
            rows = ok_rows(ckpt, ds, ec, ray.get(done[0]))
            out.evaluated.append((ckpt.digest, ds))
        except Exception as exc:  # noqa: BLE001 -- any task error becomes a failed row; the others go on
            log.error("evaluation of %s on %s failed: %s", ckpt.uri, ds, _error_text(exc))
            rows = failed_row(ckpt, ds, ec, _error_text(exc))
            out.failed.append((ckpt.digest, ds))
        write_rows(root, ckpt.digest, ds, rows)
        out.rows += rows
        changed += rows
    out.reports = publish_reports(root, all_rows(root), changed)
    return out


def task_gpus(ray: Any, requested: float) -> float:
    """GPUs each task reserves: `requested` when >= 0, else ("auto", -1) one if the cluster has any GPU."""
    if requested >= 0:
        return requested
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def table(rows: list[dict]) -> str:
    """Dataset, chance and primary score (top-1, or image->text R@1 for retrieval) per checkpoint."""
    lines = [f"{'step':>8}  {'dataset':<22} {'metric':<18} {'chance':>7} {'value':>7}"]
    for r in sorted(rows, key=lambda r: (r["step"], r["dataset"])):
        if r["status"] == "failed":
            lines.append(f"{r['step']:>8}  {r['dataset']:<22} {'FAILED':<18} {'':>7} {'':>7}  {r['error'][:60]}")
        elif r.get("main", r["metric"] == PRIMARY.get(r["task"])):  # external rows flag their main metric
            lines.append(f"{r['step']:>8}  {r['dataset']:<22} {r['metric']:<18} {r['chance']:>7.3f} {r['value']:>7.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli("python -m evaluation.run", __doc__.split("\n\n")[0], argv, sections())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        result = evaluate(cfg)
    except (FileNotFoundError, ValueError) as exc:  # no checkpoint, a bad result file: say which, no traceback
        print(f"python -m evaluation.run: {exc}", file=sys.stderr)
        return 2
    print(table(result.rows))
    print(f"{len(result.evaluated)} evaluated, {len(result.skipped)} skipped (already done), "
          f"{len(result.failed)} failed; results under {storage.join(cfg['storage'].root, 'eval', 'results')}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
