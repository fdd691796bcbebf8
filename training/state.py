"""Consolidated training state: full fp32 weights + full AdamW moments, independent of ZeRO stage and world size.

A checkpoint must let a run continue exactly where it stopped, also on a different number of ranks. DeepSpeed's
native checkpoints are one file per rank, laid out by ZeRO partition, so they only reload on the same world
size (or after an offline universal-checkpoint conversion). Instead every rank takes part in gathering each
parameter's full fp32 master copy and its full `exp_avg` / `exp_avg_sq` (deepspeed.utils.safe_get_full_*,
collective for ZeRO 1-3), and rank 0 publishes them as two safetensors files. Loading reverses it on any world
size: weights go into the module before `deepspeed.initialize` (which partitions them), the moments are
scattered back with safe_set_full_optimizer_state afterwards.

Cost: rank 0 holds 3x the fp32 model in host memory while saving (ViT-L/14: ~5 GB), acceptable up to the
paper's largest models; per-rank sharded checkpoints would be the next step beyond that.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

OPT_KEYS = ("exp_avg", "exp_avg_sq")


def _inner_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer that owns the state (ZeRO wraps it and steps it on flat fp32 partitions)."""
    opt = engine.optimizer
    return opt.optimizer if isinstance(getattr(opt, "optimizer", None), torch.optim.Optimizer) else opt


def _flat_partitions(engine, zero_stage: int) -> list[torch.Tensor]:
    """The tensors torch's AdamW really steps: ZeRO swaps its flat fp32 partitions into the param groups only
    for the duration of a step, so they are found on the ZeRO optimizer, not in the inner param_groups."""
    if zero_stage in (1, 2):
        return list(engine.optimizer.single_partition_of_fp32_groups)
    if zero_stage == 3:
        return list(engine.optimizer.fp32_partitioned_groups_flat)
    return [p for group in _inner_optimizer(engine).param_groups for p in group["params"]]


def _optimizer_step(engine, zero_stage: int) -> float:
    inner = _inner_optimizer(engine)
    for flat in _flat_partitions(engine, zero_stage):
        if "step" in inner.state.get(flat, {}):
            return float(inner.state[flat]["step"])
    return 0.0


def _link_fragments(engine, zero_stage: int) -> None:
    """ZeRO-1/2 reach the moments through per-parameter views ("fragments") into each group's flat state.
    DeepSpeed 0.19.8 links them once, right after the FIRST param group's first step, so every later group
    (ours has two: decayed and not) keeps empty fragments and safe_get_full_optimizer_state fails with
    "exp_avg not found". Link every group to its current state ourselves (idempotent, cheap: views only)."""
    if zero_stage not in (1, 2):
        return
    zopt, inner = engine.optimizer, _inner_optimizer(engine)
    for i, group in enumerate(zopt.bit16_groups):
        flat = zopt.single_partition_of_fp32_groups[i]
        if "exp_avg" not in inner.state.get(flat, {}):
            continue
        for lp in group:
            if getattr(lp, "_hp_mapping", None) is not None:
                lp._hp_mapping.set_optim_state_fragment(flat, inner.state[flat])


def gather_state(engine, zero_stage: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float] | None:
    """(full model state dict, {"<key>/<param name>": moment}, optimizer step) on rank 0; None on other ranks.

    Collective: every rank must call it at the same point; parameters are visited in the same order everywhere.
    """
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    rank0 = dist.get_rank() == 0
    module = engine.module
    inner = _inner_optimizer(engine)
    _link_fragments(engine, zero_stage)
    has_state = any("exp_avg" in inner.state.get(f, {}) for f in _flat_partitions(engine, zero_stage))
    weights: dict[str, torch.Tensor] = {}
    moments: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters():
        if zero_stage == 0:
            full = p.detach().float()
            st = inner.state.get(p, {})
            got = {k: st[k].detach() for k in OPT_KEYS if k in st}
        else:
            full = safe_get_full_fp32_param(p)
            got = {k: safe_get_full_optimizer_state(p, k) for k in OPT_KEYS} if has_state else {}
        if rank0:
            weights[name] = full.detach().to("cpu", torch.float32).clone()
            for k, v in got.items():
                if v is not None:
                    moments[f"{k}/{name}"] = v.detach().to("cpu", torch.float32).reshape(full.shape).clone()
    if not rank0:
        return None
    # Buffers (e.g. BatchNorm statistics) are not partitioned by ZeRO: every rank holds them whole.
    params = dict(module.named_parameters())
    for name, tensor in module.state_dict().items():
        if name not in params:
            weights[name] = tensor.detach().cpu().clone()
    return weights, moments, _optimizer_step(engine, zero_stage)


def _materialize_optimizer_state(engine, zero_stage: int, step: float) -> None:
    """torch's AdamW creates its state lazily at the first step; create it (zeros) so it can be overwritten."""
    inner = _inner_optimizer(engine)
    for flat in _flat_partitions(engine, zero_stage):
        if "exp_avg" not in inner.state.get(flat, {}):
            inner.state[flat] = {"step": torch.tensor(step, dtype=torch.float32),
                                 "exp_avg": torch.zeros_like(flat, memory_format=torch.preserve_format),
                                 "exp_avg_sq": torch.zeros_like(flat, memory_format=torch.preserve_format)}
        else:
            inner.state[flat]["step"] = torch.tensor(step, dtype=torch.float32)
    _link_fragments(engine, zero_stage)


def restore_optimizer(engine, zero_stage: int, moments: dict[str, torch.Tensor], step: float) -> None:
    """Scatter full moments (from `gather_state`, any world size) into this engine's partitions. Collective."""
    from deepspeed.utils import safe_set_full_optimizer_state

    _materialize_optimizer_state(engine, zero_stage, step)
    inner = _inner_optimizer(engine)
    missing = [f"{k}/{name}" for name, _ in engine.module.named_parameters() for k in OPT_KEYS
               if f"{k}/{name}" not in moments]
    if missing:
        raise ValueError(f"optimizer state lacks {len(missing)} entries, e.g. {missing[:3]} (a different model?)")
    for name, p in engine.module.named_parameters():
        for k in OPT_KEYS:
            value = moments[f"{k}/{name}"]
            if zero_stage == 0:
                inner.state[p][k].copy_(value.reshape(inner.state[p][k].shape))
            else:
                safe_set_full_optimizer_state(p, value.to(p.device), k)


def scheduler_state(engine) -> dict[str, Any]:
    return engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else {}


def restore_scheduler(engine, step: int, sched: dict[str, Any]) -> None:
    """Put the LR schedule (and DeepSpeed's step counters) where they were after `step` optimizer steps."""
    engine.global_steps = step
    engine.global_samples = step * engine.train_batch_size()
    if engine.lr_scheduler is not None and sched:
        engine.lr_scheduler.load_state_dict(sched)
        # DeepSpeed's schedulers write every group's lr in step(n); load_state_dict alone leaves the lrs stale.
        engine.lr_scheduler.step(sched["last_batch_iteration"])


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` on every rank (the data-stream positions go into rank 0's checkpoint)."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
