"""The DeepSpeed side of a run: the config dict `deepspeed.initialize` gets for a TrainConfig.

Precision follows what was measured on an H200 (../shared/reference/architecture.md): DeepSpeed's own bf16
optimizer path cost 2.3x against eager autocast, while its `torch_autocast` mode (fp32 master weights and
optimizer state, bf16 matmuls under torch.autocast) was within 0.87-0.94x. So:
    fp32  plain fp32 everywhere (the CPU default)
    bf16  torch_autocast with bfloat16 (no loss scaling needed: bf16 has fp32's exponent range)
    fp16  DeepSpeed's fp16 mode with dynamic loss scaling (fp16 overflows without it)
"""

from __future__ import annotations

from typing import Any

from training.config import TrainConfig

PRECISIONS = ("fp32", "bf16", "fp16")


def ds_config(tc: TrainConfig, world: int) -> dict[str, Any]:
    """DeepSpeed config: micro batch = global batch / world / accum_freq, ZeRO stage, AdamW, warmup+cosine."""
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": tc.batch_size // world // tc.accum_freq,
        # GradCache (training/gradcache.py) runs the k micro-batches itself and calls backward k times with the
        # exact gradient of the full contrastive batch; DeepSpeed accumulates them and steps at the boundary.
        "gradient_accumulation_steps": tc.accum_freq,
        "gradient_clipping": tc.grad_clip,
        "zero_optimization": {"stage": tc.zero_stage},
        # torch's AdamW (decoupled weight decay; per-group decay comes from model_parameters). DeepSpeed's
        # FusedAdam needs a CUDA JIT build that failed on the measured GPU image; torch's fused kernel is used there.
        "optimizer": {"type": "AdamW", "params": {"lr": tc.lr, "betas": [0.9, 0.98], "eps": 1e-6,
                                                  "weight_decay": tc.weight_decay, "torch_adam": True}},
        "scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": tc.steps, "warmup_num_steps": max(1, tc.warmup_steps), "warmup_type": "linear",
            "warmup_min_ratio": 0.0, "cos_min_ratio": 0.0}},
        "steps_per_print": 10**9,  # our own log lines instead of DeepSpeed's
        "wall_clock_breakdown": False,
    }
    if tc.precision == "bf16":
        cfg["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    elif tc.precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                       "hysteresis": 2, "min_loss_scale": 1}
    if tc.zero_stage in (2, 3):
        # Overlap gradient reduction with the backward pass; large buckets (fewer, bigger collectives).
        cfg["zero_optimization"].update({"overlap_comm": tc.use_gpu, "contiguous_gradients": True,
                                         "reduce_bucket_size": 5e8})
    return cfg
