"""Evaluate each checkpoint of a training run as training writes it, and rebuild the dashboard after each.

    python -m evaluation.watch --config configs/demo.yaml [watch.poll_s=60 watch.idle_timeout_s=7200]

On a cluster, beside the training job: `ray job submit --working-dir . -- python -m evaluation.watch --config
configs/demo.yaml storage.root=s3://bucket/prefix`.

Every `watch.poll_s` seconds it lists <root>/checkpoints/<training.run>/ for complete step dirs (a step dir counts
once its meta.json exists: training publishes meta.json after the weights, and latest.json after both) and hands
the new ones to evaluation.run's `evaluate` (one Ray task per (checkpoint, dataset); done pairs are skipped, so a
restarted watcher picks up where it stopped). It stops after evaluating the run's final step (meta.json step ==
steps), after `watch.idle_timeout_s` with no new checkpoint (0: wait for the final step however long), or at
SIGTERM/SIGINT (`ray job stop`) once the checkpoint in hand is done. Exit status: 0, or 1 if any evaluation failed.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from pipelines import storage
from pipelines.config import parse_cli
from evaluation.results import CheckpointRef
from evaluation.run import Loader, RunResult, checkpoint_ref, default_loader, evaluate, sections

log = logging.getLogger("evaluation.watch")


@dataclass
class WatchConfig:
    poll_s: float = 60.0
    """Seconds between two listings of the run's checkpoint folder."""
    idle_timeout_s: float = 0.0
    """Stop after this many seconds without a new checkpoint; 0 = wait until the run's final step is evaluated."""
    dashboard: bool = True
    """Rebuild the dashboard after each evaluated checkpoint."""

    def __post_init__(self) -> None:
        if self.poll_s <= 0:
            raise ValueError(f"watch.poll_s: must be positive, got {self.poll_s}")
        if self.idle_timeout_s < 0:
            raise ValueError(f"watch.idle_timeout_s: must be >= 0, got {self.idle_timeout_s}")


def complete_steps(run_dir: str) -> list[str]:
    """Step dir URIs under `run_dir` whose meta.json exists, oldest step first."""
    if not storage.exists(run_dir):
        return []
    steps = [u for u in storage.listdir(run_dir) if u.rstrip("/").rsplit("/", 1)[-1].startswith("step_")]
    return sorted(u for u in steps if storage.exists(storage.join(u, "meta.json")))


def is_final(step_uri: str) -> bool:
    meta = storage.read_json(storage.join(step_uri, "meta.json"))
    return "steps" in meta and int(meta["step"]) >= int(meta["steps"])


class _Stop:
    """Set by SIGTERM/SIGINT: finish the checkpoint in hand, then leave (Ray's `job stop` sends SIGTERM)."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping after the current checkpoint", signum)
        self.requested = True


def watch(cfg: dict[str, Any], loader: Loader = default_loader,
          on_checkpoint: Callable[[CheckpointRef, RunResult], None] | None = None,
          clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
          stop: _Stop | None = None) -> list[RunResult]:
    """Poll, evaluate new checkpoints in step order, call `on_checkpoint` after each; returns one result each."""
    from training.checkpoint import run_uri

    wc: WatchConfig = cfg["watch"]
    run_dir = run_uri(cfg["storage"].root, cfg["training"].run)
    stop = stop or _Stop()
    seen: set[str] = set()
    results: list[RunResult] = []
    last_new = clock()
    log.info("watching %s every %.0f s", run_dir, wc.poll_s)
    while not stop.requested:
        new = [u for u in complete_steps(run_dir) if u not in seen]
        for uri in new:
            ref = checkpoint_ref(uri)
            result = evaluate(cfg, loader, [ref])
            log.info("step %d: %d evaluated, %d already done, %d failed", ref.step, len(result.evaluated),
                     len(result.skipped), len(result.failed))
            seen.add(uri)
            results.append(result)
            if on_checkpoint:
                on_checkpoint(ref, result)
            if is_final(uri):
                log.info("step %d is the run's final step: done", ref.step)
                return results
            if stop.requested:
                return results
        if new:
            last_new = clock()
        elif wc.idle_timeout_s and clock() - last_new >= wc.idle_timeout_s:
            log.info("no new checkpoint for %.0f s: done", wc.idle_timeout_s)
            return results
        sleep(wc.poll_s)
    return results


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli("python -m evaluation.watch", __doc__.split("\n\n")[0], argv, {**sections(), "watch": WatchConfig})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def rebuild(_ref: CheckpointRef, _result: RunResult) -> None:
        if cfg["watch"].dashboard:
            from evaluation.dashboard import build_dashboard

            print(f"dashboard: {build_dashboard(cfg['storage'].root, cfg['dashboard'])}", flush=True)

    results = watch(cfg, on_checkpoint=rebuild, stop=stop)
    failed = sum(len(r.failed) for r in results)
    print(f"{len(results)} checkpoints watched, {failed} failed evaluations")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
