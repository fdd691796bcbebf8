"""The `training` section of a run config (see training/train.py). Defaults are the 2-core CPU demo."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.model import CLIPConfig


@dataclass
class TrainConfig:
    run: str = "demo"
    """Run name: checkpoints go to <storage.root>/checkpoints/<run>/."""
    manifest: str = ""
    """Dataset manifest URI; empty: <storage.root>/<pipeline.dataset>/<pipeline.version>/manifest.json."""
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
    """Samples held in each rank's shuffle buffer."""
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
        if self.batch_size % self.num_workers:
            raise ValueError(f"training.batch_size {self.batch_size} is not divisible by "
                             f"training.num_workers {self.num_workers}")
        if self.lr <= 0:
            raise ValueError(f"training.lr must be positive, got {self.lr}")
