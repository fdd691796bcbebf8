"""The `training` section of a run config (see training/train.py). Defaults are the 2-core CPU demo."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from training.model import CLIPConfig


@dataclass
class TrainConfig:
    run: str = "demo"
    """Run name: checkpoints go to <storage.root>/checkpoints/<run>/."""
    manifest: str = ""
    """Dataset manifest URI; empty: <storage.root>/<pipeline.dataset>/<pipeline.version>/manifest.json."""
    mix: list[dict[str, Any]] = field(default_factory=list)
    """Weighted mixing of several dataset versions instead of `manifest`: a list of {uri: <manifest URI>,
    weight: <float>}; each sample's source is drawn in proportion to the weights (resampled mode only)."""
    data_mode: str = "resampled"
    """"resampled": shards drawn with replacement, forever (open_clip's --dataset-resampled); "epoch": every
    sample seen exactly once per epoch across all ranks and loader workers (the stream position is checkpointed)."""
    model: CLIPConfig = field(default_factory=CLIPConfig)
    """Architecture of both towers and the joint embedding."""
    steps: int = 300
    """Optimizer steps (each one global batch); ~4-5 minutes on the idle 2-core demo machine (~130 samples/s)."""
    batch_size: int = 128
    """GLOBAL batch (all ranks together); contrastive negatives come from the whole global batch."""
    lr: float = 1e-3
    """Peak learning rate of AdamW (betas 0.9/0.98, eps 1e-6 as in the CLIP paper)."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices; gains, biases, embeddings and the temperature are not decayed."""
    warmup_steps: int = 25
    """Linear warmup from 0 to lr, then cosine decay to 0 at the last step."""
    accum_freq: int = 1
    """GradCache micro-batches per step: the global batch is computed in accum_freq pieces whose gradient equals
    that of one full contrastive batch (negatives from the whole global batch), for batches larger than memory."""
    precision: str = "fp32"
    """fp32, bf16 (torch autocast, fp32 master weights) or fp16 (DeepSpeed dynamic loss scaling; GPU only)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    grad_checkpointing: bool = False
    """Recompute Transformer blocks in the backward pass: less activation memory for ~30% more compute."""
    compile: bool = False
    """torch.compile the model (GPU runs; the first steps pay the compilation)."""
    decode: str = "auto"
    """JPEG decoding: "cpu" (PIL in the loader), "gpu" (torchvision nvjpeg on the rank's GPU), "auto" (gpu when
    the run uses GPUs and torchvision can decode there, else cpu)."""
    max_skip_fraction: float = 0.05
    """Abort when more than this fraction of samples is unreadable (after at least 100 skips)."""
    resume: str = ""
    """"": start fresh (fails if the run already has checkpoints); "latest": continue from the run's latest
    checkpoint; "auto": latest if one exists, else fresh (what restarts use); or a step-dir URI."""
    stop_after: int = 0
    """Stop cleanly after this step (with a checkpoint) although the schedule runs to `steps`: for time-boxed or
    preemptible slots; continue later with training.resume=latest. 0: run to `steps`."""
    max_failures: int = 0
    """Ray Train restarts the worker group this many times after a worker dies; each restart resumes from the
    latest checkpoint (set checkpoint_every)."""
    log_uids: bool = False
    """Each rank writes the uids of every step's samples into the checkpoint (uids/rank<r>.jsonl): which data a
    model saw, and a check that an epoch sees each sample exactly once across kills and resumes."""
    tensorboard: bool = True
    """Write TensorBoard event files to <run>/tensorboard/ (uploaded at every checkpoint when the root is remote)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 0 (plain data parallel), 1 (optimizer state), 2 (+gradients), 3 (+parameters)."""
    num_workers: int = 2
    """Ray Train workers (= data-parallel ranks)."""
    use_gpu: bool = False
    """One GPU per Ray worker (NCCL); false: CPU workers over gloo in fp32."""
    threads_per_worker: int = 1
    """torch intra-op threads per worker; 1 is fastest with 2 workers on 2 cores (no oversubscription)."""
    loader_workers: int = 0
    """DataLoader processes per rank; 0 decodes in the training process (best on 2 cores: no spare core)."""
    shuffle_buffer: int = 1000
    """Shuffle block: each shard is read in blocks of this many samples, each block shuffled with a seed from
    (seed, epoch, shard, block); memory is one block per source per loader worker. 0 or 1: shard order only."""
    seed: int = 0
    """Seed for model init, shard order and sample shuffling."""
    log_every: int = 25
    """Rank 0 prints a JSON line (step, loss, logit_scale, lr, samples_per_s) every this many steps."""
    checkpoint_every: int = 0
    """Also checkpoint every this many steps (0: only at the end)."""

    def __post_init__(self) -> None:
        if not self.run or "/" in self.run or self.run.startswith("."):
            raise ValueError(f"training.run: {self.run!r} must be a non-empty name without '/'")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"training.zero_stage: {self.zero_stage} is not one of 0, 1, 2, 3")
        for name in ("steps", "batch_size", "num_workers", "threads_per_worker", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "loader_workers", "checkpoint_every", "shuffle_buffer"):
            if getattr(self, name) < 0:
                raise ValueError(f"training.{name} must be >= 0, got {getattr(self, name)}")
        if self.data_mode not in ("resampled", "epoch"):
            raise ValueError(f"training.data_mode {self.data_mode!r} is not one of ['resampled', 'epoch']")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"training.precision {self.precision!r} is not one of ['fp32', 'bf16', 'fp16']")
        if self.decode not in ("auto", "cpu", "gpu"):
            raise ValueError(f"training.decode {self.decode!r} is not one of ['auto', 'cpu', 'gpu']")
        if self.accum_freq < 1 or self.max_failures < 0 or self.grad_clip < 0 or self.stop_after < 0:
            raise ValueError("training.accum_freq must be >= 1; training.max_failures, training.grad_clip and "
                             "training.stop_after >= 0")
        if not 0 < self.max_skip_fraction <= 1:
            raise ValueError(f"training.max_skip_fraction {self.max_skip_fraction} must be in (0, 1]")
        for i, entry in enumerate(self.mix):
            if not isinstance(entry, dict) or set(entry) != {"uri", "weight"} or not entry["uri"] \
                    or not isinstance(entry["weight"], (int, float)) or entry["weight"] <= 0:
                raise ValueError(f"training.mix[{i}]: {entry!r} must be {{uri: <manifest URI>, weight: <positive>}}")
        if self.mix and self.manifest:
            raise ValueError("training.mix and training.manifest are exclusive: list every manifest in mix")
        if self.mix and self.data_mode == "epoch":
            raise ValueError("training.mix needs training.data_mode resampled (an epoch of a weighted mix is undefined)")
        if self.batch_size % (self.num_workers * self.accum_freq):
            raise ValueError(f"training.batch_size {self.batch_size} is not divisible by training.num_workers "
                             f"{self.num_workers} x training.accum_freq {self.accum_freq}")
        if self.batch_size % self.num_workers:
            raise ValueError(f"training.batch_size {self.batch_size} is not divisible by "
                             f"training.num_workers {self.num_workers}")
        if self.lr <= 0:
            raise ValueError(f"training.lr must be positive, got {self.lr}")
