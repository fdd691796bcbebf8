"""The per-rank training loop: DeepSpeed ZeRO engine, exact resume, GradCache steps, checkpoints, reporting.

`train_loop(args)` runs on every rank with torch.distributed already initialised, whichever launcher started
it: Ray Train's TorchTrainer (training/train.py, what `ray job submit` runs), or `torchrun` / `deepspeed`
(training/train.py detects their environment). `args` is built once by the driver (training/train.py:prepare).

A step: take accum_freq micro-batches from this rank's stream (timing the wait), one contrastive step over the
global batch (plain, or GradCache when accum_freq > 1), engine.step(), NaN guard, report. A checkpoint is
collective: every rank joins the gather of full weights and AdamW moments (training/state.py) and of the
stream positions; each rank writes its own uid log; after a barrier rank 0 publishes the step dir and only then
latest.json (training/checkpoint.py), so `latest` never names a checkpoint that misses a rank's part.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from pipelines import storage
from training.config import TrainConfig

log = logging.getLogger("training.loop")


def pick_resume(args: dict[str, Any]) -> str | None:
    """The checkpoint to start from. A run dir whose latest.json changed since submission was written by THIS
    run before a failure: a restarted worker group continues from it. Otherwise what the driver resolved."""
    from training.checkpoint import CheckpointError, latest_checkpoint

    try:
        current = latest_checkpoint(args["root"], args["tc"].run)
    except CheckpointError:
        current = None
    if current is not None and current != args["latest_at_submit"]:
        return current
    return args["resume_uri"]


# Samples whose bytes the loader passed (JPEG magic and end marker present) but the device decoder rejected.
DEVICE_DECODE_ERRORS = [0]


def _decode_on_device(raw, tokens, uids: list[str], image_size: int, device, decode_batch):
    """Decode a raw batch on the rank's GPU. Every rank must keep its batch size (the loss all-gathers equal
    shapes), so a sample the decoder rejects (rare: the loader already drops cut JPEGs) is replaced by a copy of
    a decoded pair of the same batch, and counted."""
    dec = decode_batch(raw, image_size, device)
    if len(dec.keep) == len(uids):
        return dec.images, tokens, uids
    if not dec.keep:
        raise RuntimeError(f"no image of a {len(uids)}-sample batch decoded on {device}: {dec.errors[:3]}")
    DEVICE_DECODE_ERRORS[0] += len(uids) - len(dec.keep)
    log.warning("device decode rejected %d samples: %s", len(uids) - len(dec.keep), dec.errors[:3])
    fill = [dec.keep[i % len(dec.keep)] for i in range(len(uids) - len(dec.keep))]
    order = dec.keep + fill
    images = dec.images[list(range(len(dec.keep))) + [i % len(dec.keep) for i in range(len(fill))]]
    return images, tokens[order], [uids[i] for i in order]


def _state_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save as st_save

    return st_save(tensors, metadata={"format": "pt"})


def train_loop(args: dict[str, Any]) -> None:
    tc: TrainConfig = args["tc"]
    if not args["use_gpu"]:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported in this process
    import deepspeed
    import torch
    import torch.distributed as dist

    from training.checkpoint import TrainingState
    from training.data import StreamState, make_loader
    from training.decode import choose_decode, decode_batch
    from training.engine import ds_config
    from training.gradcache import gradcache_backward
    from training.loss import clip_loss
    from training.model import CLIP, LOGIT_SCALE_MAX, param_groups
    from training.monitor import Monitor, check_finite
    from training.state import restore_optimizer, restore_scheduler
    from training.tokenizer import CaptionTokenizer

    torch.set_num_threads(tc.threads_per_worker)
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = tc.model
    resume_uri = pick_resume(args)
    resumed = TrainingState(resume_uri) if resume_uri else None
    tokenizer = CaptionTokenizer.from_str(resumed.tokenizer_json if resumed else args["tokenizer"], cfg.context_length)
    if resumed and resumed.config != cfg:
        raise ValueError(f"training.model differs from the model of {resume_uri}: {resumed.config} != {cfg}")
    torch.manual_seed(tc.seed)  # identical init on every rank (DeepSpeed also broadcasts rank 0's weights)
    model = CLIP(cfg, eot_id=tokenizer.eot_id)
    if resumed:
        model.load_state_dict(resumed.weights, strict=True)  # before initialize: ZeRO partitions these values
    if tc.grad_checkpointing:
        model.set_grad_checkpointing(True)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, tc.weight_decay),
                                           config=ds_config(tc, world))
    if tc.compile:
        engine.compile()
    start = 0
    positions = None
    if resumed:
        start = resumed.step
        restore_optimizer(engine, tc.zero_stage, resumed.moments, float(resumed.trainer["optimizer_step"]))
        restore_scheduler(engine, start, resumed.trainer["scheduler"])
        same_layout = (resumed.trainer["world_size"], resumed.trainer["loader_workers"]) == (world, tc.loader_workers)
        if same_layout:
            positions = resumed.trainer["data"][rank]
        elif rank == 0:
            log.warning("resuming %s on %d ranks x %d loader workers (was %d x %d): weights, optimizer and schedule "
                        "are exact; the data stream restarts at a position derived from step %d, so the current "
                        "epoch's exactly-once guarantee does not carry over", resume_uri, world, tc.loader_workers,
                        resumed.trainer["world_size"], resumed.trainer["loader_workers"], start)
        del resumed.weights, resumed.moments
    device = engine.device
    decode = choose_decode(tc.decode, device)
    # A stream restarted without its position (new world size) gets a seed of its own, so it does not replay
    # the samples the first `start` steps already saw in the same order.
    loader = make_loader(args["sources"], tokenizer, cfg.image_size, tc.batch_size // world // tc.accum_freq,
                         rank=rank, world=world, seed=tc.seed if positions is not None or not start else tc.seed + start,
                         mode=tc.data_mode, shuffle_buffer=tc.shuffle_buffer, num_workers=tc.loader_workers,
                         state=positions, max_skip_fraction=tc.max_skip_fraction, raw=decode == "gpu",
                         pin_memory=decode == "gpu")
    stream = StreamState(loader)
    batches = iter(loader)
    run_uri = storage.join(args["root"], "checkpoints", tc.run)
    monitor = Monitor(rank=rank, total_steps=tc.steps, first_step=start, run_uri=run_uri, tensorboard=tc.tensorboard,
                      device=device)
    uid_log: list[dict[str, Any]] = []
    skipped = 0
    epoch = 0
    scale = torch.ones(1)
    try:
        last = min(tc.steps, tc.stop_after) if tc.stop_after else tc.steps
        for step in range(start + 1, last + 1):
            waited = time.perf_counter()
            micro, uids = [], []
            for _ in range(tc.accum_freq):
                images, tokens, info = next(batches)
                stream.update(info)
                epoch = info.get("epoch") if info.get("epoch") is not None else epoch
                if decode == "gpu":
                    images, tokens, info["uids"] = _decode_on_device(images, tokens, info["uids"], cfg.image_size,
                                                                     device, decode_batch)
                uids += info["uids"]
                micro.append((images.to(device, non_blocking=True), tokens.to(device, non_blocking=True)))
            skipped = sum(stream.skipped().values()) + DEVICE_DECODE_ERRORS[0]
            monitor.data_wait(time.perf_counter() - waited)
            local_ok = None
            if tc.accum_freq == 1:
                image_emb, text_emb, scale = engine(*micro[0])
                local_ok = bool(torch.isfinite(image_emb).all() and torch.isfinite(text_emb).all())
                loss = clip_loss(image_emb, text_emb, scale)
                engine.backward(loss)
                engine.step()
            else:
                def backward(t: torch.Tensor) -> None:
                    # Cached gradients are already those of the whole batch: no 1/accum_freq scaling.
                    engine.backward(t, scale_wrt_gas=False)
                    engine.step()  # DeepSpeed counts micro-steps; it updates weights at the accum boundary only
                loss = gradcache_backward(engine, micro, backward)
                scale = engine.module.logit_scale.detach().clamp(max=LOGIT_SCALE_MAX).exp()
            check_finite(loss, step, rank, uids, local_ok)
            if tc.log_uids:
                uid_log.append({"step": step, "uids": uids})
            metrics = None
            if step % tc.log_every == 0 or step == last:
                mean_loss = loss.detach().float().clone()
                dist.all_reduce(mean_loss)  # every rank joins; rank 0 reports the global mean
                metrics = {"loss": mean_loss.item() / world, "logit_scale": round(float(scale.item()), 3),
                           "lr": engine.get_lr()[0], "skipped_samples": skipped, "epoch": epoch}
            monitor.step(step, tc.batch_size, metrics)
            if step == last or (tc.checkpoint_every and step % tc.checkpoint_every == 0):
                _checkpoint(engine, tc, args, tokenizer, rank, step, stream, uid_log, float(loss.item()))
                uid_log = []
                monitor.sync()
    finally:
        monitor.close()


def _checkpoint(engine, tc: TrainConfig, args: dict[str, Any], tokenizer, rank: int, step: int, stream,
                uid_log: list[dict[str, Any]], loss: float) -> None:
    """Collective: every rank gathers, writes its uid log; rank 0 publishes after everyone's part is written."""
    import torch.distributed as dist

    from training.checkpoint import run_uri, save_checkpoint, step_dirname
    from training.state import gather_objects, gather_state, scheduler_state

    gathered = gather_state(engine, tc.zero_stage)
    positions = gather_objects(stream.state())
    step_uri = storage.join(run_uri(args["root"], tc.run), step_dirname(step))
    if tc.log_uids:
        lines = "".join(json.dumps(r) + "\n" for r in uid_log)
        storage.write_bytes(storage.join(step_uri, "uids", f"rank{rank}.jsonl"), lines.encode())
    dist.barrier()  # every rank's part is in storage before rank 0 publishes meta.json and latest.json
    if rank == 0:
        weights, moments, opt_step = gathered
        trainer = {"step": step, "optimizer_step": opt_step, "scheduler": scheduler_state(engine),
                   "world_size": dist.get_world_size(), "loader_workers": tc.loader_workers,
                   "data_mode": tc.data_mode, "data": positions}
        save_checkpoint(weights, tc.model, tokenizer, args["root"], tc.run, step,
                        {**args["meta"], "loss": round(loss, 4), "world_size": dist.get_world_size()},
                        extra_files={"optimizer.safetensors": _state_bytes(moments),
                                     "trainer_state.json": json.dumps(trainer).encode()})
    dist.barrier()  # nobody moves on (or reports done) before the checkpoint is published
