"""GradCache: k micro-batches give exactly the gradient of one k-times-larger contrastive batch, in one process
and across 2 gloo ranks (with the rank-averaging that DeepSpeed applies)."""

from __future__ import annotations

import os

import torch
import torch.multiprocessing as mp

from tests.conftest import free_port
from training.gradcache import gradcache_backward
from training.loss import clip_loss
from training.model import CLIP, CLIPConfig

TINY = CLIPConfig(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2,
                  vocab_size=300, context_length=10, text_width=32, text_layers=2, text_heads=2)


def _batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    tokens = torch.randint(3, 290, (n, 10), generator=g)
    tokens[:, 0] = 297
    tokens[:, 6] = 299  # EOT: the highest id, then padding
    tokens[:, 7:] = 0
    return images, tokens


def _model() -> CLIP:
    torch.manual_seed(0)
    return CLIP(TINY, eot_id=299)


def _grads(model: CLIP) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _reference(images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = _model()
    loss = clip_loss(*model(images, tokens))
    loss.backward()
    return loss.detach(), _grads(model)


def _assert_same(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert got.keys() == ref.keys()
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=2e-6, rtol=1e-4), \
            f"{name}: max diff {(got[name] - ref[name]).abs().max().item()}"


def test_gradcache_equals_one_large_batch():
    images, tokens = _batch(12)
    ref_loss, ref = _reference(images, tokens)
    model = _model()
    micro = [(images[i:i + 3], tokens[i:i + 3]) for i in range(0, 12, 3)]
    loss = gradcache_backward(model, micro, lambda t: t.backward())
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    _assert_same(_grads(model), ref)
    # Plain accumulation (mean of per-micro-batch losses) is NOT the same thing: fewer negatives per loss.
    plain = _model()
    for im, tok in micro:
        (clip_loss(*plain(im, tok)) / len(micro)).backward()
    diffs = [(g - ref[n]).abs().max().item() for n, g in _grads(plain).items()]
    assert max(diffs) > 1e-4


def _rank(rank: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        images, tokens = _batch(8)
        mine = slice(rank * 4, rank * 4 + 4)  # this rank's half of the global batch, in 2 micro-batches of 2
        model = _model()
        micro = [(images[mine][i:i + 2], tokens[mine][i:i + 2]) for i in (0, 2)]
        loss = gradcache_backward(model, micro, lambda t: t.backward())
        grads = _grads(model)
        for g in grads.values():  # what DeepSpeed/DDP do: average parameter gradients over ranks
            dist.all_reduce(g)
            g /= 2
        dist.all_reduce(loss)
        if rank == 0:
            out["grads"], out["loss"] = grads, loss / 2
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip gloo's exit-time teardown (see test_training_model's distributed test)


def test_gradcache_across_two_ranks_equals_single_process():
    images, tokens = _batch(8)
    ref_loss, ref = _reference(images, tokens)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(free_port(), out), nprocs=2, join=True)
        out = dict(out)
    assert torch.allclose(out["loss"], ref_loss, atol=1e-5)
    _assert_same(out["grads"], ref)
