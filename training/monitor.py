"""What a training run reports while it runs: progress, JSON log lines, TensorBoard events, and the NaN guard.

Rank 0 reports; every rank checks its own loss. On a terminal a tqdm bar shows step, loss and samples/s; when
stdout is not a terminal (Ray job logs, CI, `> file`) one JSON line per `log_every` steps instead, so log
pipelines can parse it:
    {"step", "loss", "logit_scale", "lr", "skipped_samples", "epoch", "samples_per_s", "data_wait", "mem_mb",
     "elapsed_s"}
samples_per_s and data_wait cover the last interval only (steady state, not diluted by start-up); elapsed_s is
the time since this process's loop started (so a benchmark can take rates over any window); data_wait is
the fraction of that interval the rank spent waiting for its next batch (a stalled input pipeline shows here
first). TensorBoard event files go to <run>/tensorboard/ (torch.utils.tensorboard; written locally and copied
to the storage root at every checkpoint when the root is remote).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import tempfile
import time
from typing import Any

import torch

from pipelines import storage


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run stops and names the step and the batch that caused it."""


def check_finite(loss: torch.Tensor, step: int, rank: int, uids: list[str], local_ok: bool | None = None) -> None:
    """Raise NonFiniteLoss on a NaN/inf loss. `local_ok`: whether this rank's own embeddings were finite (the
    loss mixes every rank's embeddings, so all ranks see a NaN; the rank with bad embeddings holds the culprit)."""
    value = float(loss.detach().float().item())
    if math.isfinite(value):
        return
    where = "this rank's batch produced non-finite embeddings" if local_ok is False else \
        "embeddings finite on this rank: the offending batch may be on another rank"
    shown = ", ".join(uids[:32]) + (f" ... ({len(uids)} in all)" if len(uids) > 32 else "")
    raise NonFiniteLoss(f"non-finite loss {value} at step {step} on rank {rank} ({where}); batch uids: {shown}")


def memory_mb(device: torch.device) -> float:
    """Peak memory of this rank: CUDA allocator peak on a GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Monitor:
    """Rank 0's reporter (other ranks only time their own data wait). `step()` after every optimizer step."""

    def __init__(self, *, rank: int, total_steps: int, first_step: int, run_uri: str, tensorboard: bool,
                 device: torch.device) -> None:
        self.rank, self.total, self.device = rank, total_steps, device
        self.run_uri = run_uri
        self.active = rank == 0
        self.bar = None
        self.tb = None
        self._tb_local = ""
        self._interval_start = self._t0 = time.perf_counter()
        self._interval_samples = 0
        self._interval_wait = 0.0
        if not self.active:
            return
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            target = storage.join(run_uri, "tensorboard")
            # SummaryWriter writes local files; a remote root gets copies at every checkpoint (sync()).
            self._tb_local = tempfile.mkdtemp(prefix="witforge-tb-") if storage.is_remote(target) else \
                target.removeprefix("file://")
            os.makedirs(self._tb_local, exist_ok=True)
            self.tb = SummaryWriter(self._tb_local, purge_step=first_step + 1)

    def data_wait(self, seconds: float) -> None:
        self._interval_wait += seconds

    def step(self, step: int, samples: int, metrics: dict[str, Any] | None) -> dict[str, Any] | None:
        """Record one step (`samples`: global samples in it); log when the caller passes metrics (its log steps,
        computed collectively). Returns the logged record."""
        self._interval_samples += samples
        if self.bar is not None:
            self.bar.update(1)
        if metrics is None:
            return None
        elapsed = max(time.perf_counter() - self._interval_start, 1e-9)
        record = {"step": step, **metrics, "samples_per_s": round(self._interval_samples / elapsed, 1),
                  "data_wait": round(self._interval_wait / elapsed, 3), "mem_mb": round(memory_mb(self.device), 1),
                  "elapsed_s": round(time.perf_counter() - self._t0, 3)}
        self._interval_start, self._interval_samples, self._interval_wait = time.perf_counter(), 0, 0.0
        if not self.active:
            return record
        if self.bar is not None:
            self.bar.set_postfix(loss=record.get("loss"), sps=record["samples_per_s"])
        else:
            print(json.dumps(record), flush=True)
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"train/{key}", value, step)
        return record

    def sync(self) -> None:
        """Flush TensorBoard events and, for a remote root, copy them next to the checkpoints."""
        if self.tb is None:
            return
        self.tb.flush()
        if not storage.is_remote(self.run_uri):
            return
        for name in os.listdir(self._tb_local):
            storage.put_file(os.path.join(self._tb_local, name), storage.join(self.run_uri, "tensorboard", name))

    def close(self) -> None:
        self.sync()
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()
