"""CLIP model and contrastive loss: shapes, causal text attention, EOT pooling, loss vs a naive reference,
and the distributed (all-gather) loss giving the same gradients as one process on the whole batch."""

from __future__ import annotations

import dataclasses
import os

import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.conftest import free_port
from training.loss import clip_loss
from training.model import CLIP, CLIPConfig, param_groups

TINY = CLIPConfig(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2,
                  vocab_size=50, context_length=10, text_width=32, text_layers=2, text_heads=2)
EOT = 2


def _tokens(b: int, n: int = 10, eot_at: int = 6) -> torch.Tensor:
    t = torch.randint(3, 50, (b, n))
    t[:, 0] = 1
    t[:, eot_at] = EOT
    t[:, eot_at + 1:] = 0
    return t


def test_shapes_norms_and_temperature():
    torch.manual_seed(0)
    m = CLIP(TINY, eot_id=EOT)
    img, txt, scale = m(torch.randn(3, 3, 32, 32), _tokens(3))
    assert img.shape == (3, 16) and txt.shape == (3, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert m.logit_scale.shape == (1,)  # DeepSpeed 0.19.8 rejects 0-dim parameters
    assert math.isclose(scale.item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    assert math.isclose(m(torch.randn(1, 3, 32, 32), _tokens(1))[2].item(), 100.0, rel_tol=1e-5)
    assert m.visual.positional_embedding.shape == (17, 32)  # 4x4 patches + class token


def test_bad_config_names_field():
    with pytest.raises(ValueError, match="patch_size"):
        CLIPConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="vision_stem"):
        CLIPConfig(vision_stem="resnet")


def test_conv_stem_gives_the_patch_grid():
    cfg = dataclasses.replace(TINY, vision_stem="conv")
    m = CLIP(cfg, eot_id=EOT)
    tokens = m.visual.conv1(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 32, 4, 4)  # same 4x4 grid as 8-pixel patches
    img, _, _ = m(torch.randn(2, 3, 32, 32), _tokens(2))
    assert img.shape == (2, 16)


def test_text_attention_is_causal():
    torch.manual_seed(0)
    m = CLIP(TINY, eot_id=EOT).eval()
    a = _tokens(2)
    b = a.clone()
    b[:, 5] = (b[:, 5] + 1 - 3) % 47 + 3  # change position 5 only
    fa, fb = m.text.features(a), m.text.features(b)
    assert torch.allclose(fa[:, :5], fb[:, :5], atol=1e-6)  # earlier positions cannot see the change
    assert not torch.allclose(fa[:, 5:], fb[:, 5:], atol=1e-4)


def test_pooling_at_eot_position():
    torch.manual_seed(0)
    m = CLIP(TINY, eot_id=EOT).eval()
    t = torch.stack([_tokens(1, eot_at=3)[0], _tokens(1, eot_at=7)[0]])
    feats = m.text.features(t)
    expected = torch.stack([feats[0, 3], feats[1, 7]]) @ m.text.proj
    assert torch.allclose(m.text(t, EOT), expected, atol=1e-6)
    # Tokens after EOT (padding) do not change the embedding: causal attention + pooling at EOT.
    t2 = t.clone()
    t2[0, 5:] = 7
    assert torch.allclose(m.encode_text(t)[0], m.encode_text(t2)[0], atol=1e-6)


def test_no_weight_decay_on_gains_biases_embeddings_temperature():
    m = CLIP(TINY, eot_id=EOT)
    decay, keep = param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    kept = {names[id(p)] for p in keep["params"]}
    assert {"logit_scale", "text.token_embedding.weight", "visual.class_embedding", "visual.ln_post.bias"} <= kept
    assert all(p.ndim == 2 or p.ndim == 4 for p in decay["params"])


def test_loss_matches_naive_reference():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(5, 8), dim=-1)
    txt = F.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor([7.0])
    total = 0.0
    for i in range(5):  # row-by-row softmax cross-entropy, both directions
        li = scale.item() * (img[i] @ txt.T)
        lt = scale.item() * (txt[i] @ img.T)
        total += -(li[i] - torch.logsumexp(li, 0)) - (lt[i] - torch.logsumexp(lt, 0))
    assert torch.allclose(clip_loss(img, txt, scale), total / 10, atol=1e-5)


def _dist_worker(rank: int, port: int, img: torch.Tensor, txt: torch.Tensor, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        n = img.shape[0] // 2
        mine_i = img[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        mine_t = txt[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        scale = torch.tensor([5.0], requires_grad=True)
        loss = clip_loss(F.normalize(mine_i, dim=-1), F.normalize(mine_t, dim=-1), scale.exp().log())
        loss.backward()
        # DDP/DeepSpeed average parameter gradients across ranks (the shared temperature here). Each rank's
        # embeddings already receive every rank's loss gradient through all_gather's backward, so the gradient
        # of the rank-averaged loss w.r.t. them is the local gradient / world size.
        dist.all_reduce(scale.grad)
        for g in (mine_i.grad, mine_t.grad, scale.grad):
            g /= 2
        grads = [torch.zeros_like(mine_i.grad) for _ in range(2)]
        dist.all_gather(grads, mine_i.grad)
        grads_t = [torch.zeros_like(mine_t.grad) for _ in range(2)]
        dist.all_gather(grads_t, mine_t.grad)
        loss_avg = loss.detach().clone()
        dist.all_reduce(loss_avg)
        if rank == 0:
            out["img"], out["txt"] = torch.cat(grads), torch.cat(grads_t)
            out["scale"], out["loss"] = scale.grad.clone(), loss_avg / 2
        # Both ranks leave together: a rank tearing gloo down while its peer is still in a collective or writing
        # its result can abort ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Skip interpreter teardown: gloo/autograd threads torn down at exit sometimes abort the process ("terminate
    # called without an active exception") after all the work is done; the results are already in `out`.
    os._exit(0)


def test_distributed_loss_gradients_equal_single_process():
    torch.manual_seed(0)
    img, txt = torch.randn(8, 6), torch.randn(8, 6)
    ref_i, ref_t = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    ref_s = torch.tensor([5.0], requires_grad=True)
    ref = clip_loss(F.normalize(ref_i, dim=-1), F.normalize(ref_t, dim=-1), ref_s.exp().log())
    ref.backward()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_dist_worker, args=(free_port(), img, txt, out), nprocs=2, join=True)
        out = dict(out)
    assert torch.allclose(out["loss"], ref.detach(), atol=1e-5)
    assert torch.allclose(out["img"], ref_i.grad, atol=1e-5)
    assert torch.allclose(out["txt"], ref_t.grad, atol=1e-5)
    assert torch.allclose(out["scale"], ref_s.grad, atol=1e-5)
