"""Consolidated training state (training/state.py): full weights + AdamW moments gathered from DeepSpeed ZeRO
1/2/3 on 2 gloo ranks, restored on another world size and stage, give exactly the same next optimizer step."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import free_port
from training.config import TrainConfig
from training.loss import clip_loss
from training.model import CLIP, CLIPConfig, param_groups

TINY = CLIPConfig(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
                  vocab_size=300, context_length=10, text_width=32, text_layers=1, text_heads=2)
GLOBAL = 8


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    images = torch.randn(GLOBAL, 3, 32, 32, generator=g)
    tokens = torch.randint(3, 290, (GLOBAL, 10), generator=g)
    tokens[:, 6], tokens[:, 7:] = 299, 0
    return images, tokens


def _worker(rank: int, world: int, port: int, stage: int, steps: tuple[int, int], state_in, out: dict) -> None:
    os.environ.update({"DS_ACCELERATOR": "cpu", "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import deepspeed
    import torch.distributed as dist

    from training.engine import ds_config
    from training.state import gather_state, restore_optimizer, restore_scheduler, scheduler_state

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    try:
        tc = TrainConfig(model=TINY, batch_size=GLOBAL, num_workers=world, zero_stage=stage, steps=10,
                         warmup_steps=2, lr=1e-2)
        torch.manual_seed(0)
        model = CLIP(TINY, eot_id=299)
        if state_in is not None:
            model.load_state_dict(state_in["weights"])
        engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, tc.weight_decay),
                                          config=ds_config(tc, world))
        first, last = steps
        if state_in is not None:
            restore_optimizer(engine, stage, state_in["moments"], state_in["opt_step"])
            restore_scheduler(engine, first - 1, state_in["scheduler"])
            # Restoring and gathering again gives back exactly what was saved, whatever the layout.
            w, m, s = gather_state(engine, stage) or (None, None, None)
            if rank == 0:
                out["roundtrip"] = (w, m, s)
        share = GLOBAL // world
        for step in range(first, last + 1):
            images, tokens = _batch(step)
            mine = slice(rank * share, (rank + 1) * share)
            loss = clip_loss(*engine(images[mine], tokens[mine]))
            engine.backward(loss)
            engine.step()
        gathered = gather_state(engine, stage)
        if rank == 0:
            weights, moments, opt_step = gathered
            out["state"] = {"weights": weights, "moments": moments, "opt_step": opt_step,
                            "scheduler": scheduler_state(engine), "lr": engine.get_lr()[0]}
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)


def _run(world: int, stage: int, steps: tuple[int, int], state_in=None) -> dict:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(world, free_port(), stage, steps, state_in, out), nprocs=world, join=True)
        return dict(out)


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), f"{k}: max diff {(a[k] - b[k]).abs().max().item()}"


@pytest.mark.parametrize("save,load", [((2, 2), (1, 3)), ((2, 3), (2, 1)), ((1, 0), (2, 2))],
                         ids=["zero2x2-to-zero3x1", "zero3x2-to-zero1x2", "plain-to-zero2x2"])
def test_state_moves_across_world_size_and_stage(save, load):
    (w_save, s_save), (w_load, s_load) = save, load
    reference = _run(w_save, s_save, (1, 4))["state"]  # 4 uninterrupted steps
    half = _run(w_save, s_save, (1, 2))["state"]  # 2 steps, then "checkpoint"
    assert half["moments"] and half["opt_step"] == 2
    resumed = _run(w_load, s_load, (3, 4), half)
    weights, moments, opt_step = resumed["roundtrip"]
    _close(weights, half["weights"], 0)
    _close(moments, half["moments"], 0)
    assert opt_step == 2
    final = resumed["state"]
    assert final["lr"] == pytest.approx(reference["lr"], rel=1e-9)
    # Two more steps on the same global batches: the same weights and moments as never stopping (reduction
    # order differs between world sizes, hence float tolerance).
    _close(final["weights"], reference["weights"], 1e-5)
    _close(final["moments"], reference["moments"], 1e-6)
