"""CLIP model and contrastive loss: shapes, presets (paper parameter counts, open_clip's parameter names), config
validation, causal text attention, EOT pooling, gradient checkpointing, bf16 autocast, the ResNet tower, loss vs
a naive reference, and the distributed (all-gather) loss giving the same gradients as one process."""

from __future__ import annotations

import copy
import dataclasses
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from pipelines.config import ConfigError, build_dataclass
from tests.conftest import free_port
from training.loss import clip_loss
from training.model import CLIP, CLIPConfig, param_groups
from training.presets import DEFAULTS, PRESETS
from training.resnet import ModifiedResNet
from training.transformer import QuickGELU

TINY = CLIPConfig(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2,
                  vocab_size=50, context_length=10, text_width=32, text_layers=2, text_heads=2)
PAD, SOT, EOT = 0, 48, 49  # the tokenizer's layout: EOT is the highest id, SOT the one below


def _tokens(b: int, n: int = 10, eot_at: int = 6, vocab: int = 50) -> torch.Tensor:
    t = torch.randint(1, vocab - 2, (b, n))
    t[:, 0] = vocab - 2
    t[:, eot_at] = vocab - 1
    t[:, eot_at + 1:] = PAD
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


def test_defaults_are_the_demo_model_and_round_trip():
    cfg = CLIPConfig()
    assert {k: getattr(cfg, k) for k in DEFAULTS} == DEFAULTS
    assert (cfg.vision_arch, cfg.vision_stem, cfg.act, cfg.vision_width, cfg.patch_size) == \
        ("vit", "patch", "gelu", 128, 8)
    for c in (cfg, TINY, CLIPConfig(preset="RN50", act="quick_gelu")):
        assert CLIPConfig.from_json(c.to_json()) == c
    # A model_config.json written before the preset/vision_arch/act fields existed still loads.
    old = {k: v for k, v in TINY.to_json().items() if k not in ("preset", "vision_arch", "act")}
    assert CLIPConfig.from_json(old) == TINY


def test_preset_fills_unset_fields_and_yaml_overrides():
    cfg = CLIPConfig(preset="ViT-B-32", image_size=256, act="quick_gelu")
    assert (cfg.embed_dim, cfg.vision_width, cfg.vision_layers, cfg.vision_heads, cfg.patch_size) == \
        (512, 768, 12, 12, 32)
    assert (cfg.context_length, cfg.vocab_size, cfg.text_width, cfg.text_heads, cfg.text_layers) == \
        (77, 49408, 512, 8, 12)
    assert (cfg.image_size, cfg.act) == (256, "quick_gelu")  # explicit fields win over the preset
    rn = CLIPConfig(preset="RN50")
    assert (rn.vision_arch, rn.vision_layers, rn.vision_width, rn.vision_heads, rn.embed_dim) == \
        ("resnet", [3, 4, 6, 3], 64, 32, 1024)
    # What training.model in a YAML file becomes (the config machinery passes only the keys present).
    yaml_cfg = build_dataclass(CLIPConfig, {"preset": "ViT-L-14-336", "text_layers": 6}, "training.model")
    assert (yaml_cfg.image_size, yaml_cfg.vision_width, yaml_cfg.text_width, yaml_cfg.text_layers) == \
        (336, 1024, 768, 6)
    rn = build_dataclass(CLIPConfig, {"preset": "RN-tiny", "vision_layers": [2, 1, 1, 1]}, "training.model")
    assert rn.vision_layers == [2, 1, 1, 1]
    with pytest.raises(ConfigError, match="model.preset"):
        build_dataclass(CLIPConfig, {"preset": "ViT-Z-99"}, "training.model")


@pytest.mark.parametrize("kwargs, field", [
    ({"image_size": 30, "patch_size": 8}, "patch_size"),
    ({"vision_stem": "resnet"}, "vision_stem"),
    ({"preset": "nope"}, "preset"),
    ({"act": "relu"}, "act"),
    ({"vision_arch": "convnext"}, "vision_arch"),
    ({"vision_arch": "resnet", "vision_layers": 3, "image_size": 64, "vision_heads": 4}, "vision_layers"),
    ({"preset": "RN-tiny", "vision_stem": "conv"}, "vision_stem"),
    ({"preset": "RN-tiny", "image_size": 48}, "image_size"),
    ({"preset": "ViT-B-32", "vision_layers": [1, 2, 3, 4]}, "vision_layers"),
    ({"text_heads": 3}, "text_heads"),
    ({"embed_dim": 0}, "embed_dim"),
])
def test_bad_config_names_field(kwargs, field):
    with pytest.raises(ValueError, match=f"model.{field}"):
        CLIPConfig(**kwargs)


# The paper models' parameter counts (= open_clip's models of the same name, logit_scale included).
PAPER_PARAMS = {"RN50": 102_007_137, "RN101": 119_688_033, "ViT-B-32": 151_277_313, "ViT-B-16": 149_620_737,
                "ViT-L-14": 427_616_513, "ViT-L-14-336": 427_944_193}


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_paper_presets_match_open_clip_parameter_for_parameter(name):
    import open_clip

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        ours = CLIP(CLIPConfig(preset=name))
        theirs = open_clip.model.CLIP(**open_clip.get_model_config(name))
    assert sum(p.numel() for p in ours.parameters()) == PAPER_PARAMS[name]
    # Same names and shapes once our text tower's `text.` prefix is dropped (logit_scale: [1] vs scalar).
    mapped = {k.removeprefix("text."): tuple(v.shape) if k != "logit_scale" else ()
              for k, v in ours.state_dict().items()}
    assert mapped == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


def test_tiny_presets_are_tiny():
    for name in ("ViT-tiny", "RN-tiny"):
        assert sum(p.numel() for p in CLIP(CLIPConfig(preset=name)).parameters()) < 600_000
    assert set(PAPER_PARAMS) | {"ViT-tiny", "RN-tiny"} == set(PRESETS)


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
    b[:, 5] = b[:, 5] % 46 + 1  # change position 5 only (stays a plain token)
    fa, fb = m.text.features(a), m.text.features(b)
    assert torch.allclose(fa[:, :5], fb[:, :5], atol=1e-6)  # earlier positions cannot see the change
    assert not torch.allclose(fa[:, 5:], fb[:, 5:], atol=1e-4)


def test_pooling_at_eot_position():
    torch.manual_seed(0)
    m = CLIP(TINY, eot_id=EOT).eval()
    t = torch.stack([_tokens(1, eot_at=3)[0], _tokens(1, eot_at=7)[0]])
    feats = m.text.features(t)
    expected = torch.stack([feats[0, 3], feats[1, 7]]) @ m.text.text_projection
    assert torch.allclose(m.text(t, EOT), expected, atol=1e-6)
    # EOT is the highest id, so the paper's argmax pooling (open_clip's default) picks the same position.
    assert torch.allclose(m.text(t, None), expected, atol=1e-6)
    # Tokens after EOT (padding) do not change the embedding: causal attention + pooling at EOT.
    t2 = t.clone()
    t2[0, 5:] = 7
    assert torch.allclose(m.encode_text(t)[0], m.encode_text(t2)[0], atol=1e-6)


def test_quick_gelu_option():
    m = CLIP(dataclasses.replace(TINY, act="quick_gelu"))
    acts = [type(b.mlp.gelu) for b in [*m.visual.transformer.resblocks, *m.text.transformer.resblocks]]
    assert acts == [QuickGELU] * 4
    assert type(CLIP(TINY).visual.transformer.resblocks[0].mlp.gelu) is torch.nn.GELU


def test_no_weight_decay_on_gains_biases_embeddings_temperature():
    m = CLIP(TINY, eot_id=EOT)
    decay, keep = param_groups(m, 0.1)
    names = {id(p): n for n, p in m.named_parameters()}
    kept = {names[id(p)] for p in keep["params"]}
    assert {"logit_scale", "text.token_embedding.weight", "text.positional_embedding", "visual.class_embedding",
            "visual.ln_post.bias", "visual.ln_post.weight", "visual.transformer.resblocks.0.attn.in_proj_bias"} <= kept
    assert all(p.ndim == 2 or p.ndim == 4 for p in decay["params"])
    rn = CLIP(CLIPConfig(preset="RN-tiny"))
    names = {id(p): n for n, p in rn.named_parameters()}
    kept = {names[id(p)] for p in param_groups(rn, 0.1)[1]["params"]}
    assert {"visual.bn1.weight", "visual.layer1.0.bn3.weight", "visual.attnpool.positional_embedding"} <= kept


def _grads(model: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    clip_loss(*model(images, tokens)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("preset", ["ViT-tiny", "RN-tiny"])
def test_grad_checkpointing_gives_the_same_gradients(preset, monkeypatch):
    import training.transformer

    torch.manual_seed(0)
    cfg = CLIPConfig(preset=preset)
    plain = CLIP(cfg, eot_id=511).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    images = torch.randn(4, 3, cfg.image_size, cfg.image_size)
    tokens = _tokens(4, n=cfg.context_length, eot_at=9, vocab=512)
    calls = []
    real = training.transformer.checkpoint
    monkeypatch.setattr(training.transformer, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    expected, got = _grads(plain, images, tokens), _grads(ckpt, images, tokens)
    # Text blocks always; ViT blocks too (the ResNet keeps its activations: BatchNorm must not run twice).
    assert len(calls) == cfg.text_layers + (cfg.vision_layers if cfg.vision_arch == "vit" else 0)
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, atol=1e-6, rtol=1e-5), name
    with torch.no_grad():  # no recomputation to save in inference: checkpointing stays out of the way
        calls.clear()
        ckpt(images, tokens)
        assert not calls


@pytest.mark.parametrize("preset", ["ViT-tiny", "RN-tiny"])
def test_bf16_autocast_forward_on_cpu(preset):
    torch.manual_seed(0)
    cfg = CLIPConfig(preset=preset)
    m = CLIP(cfg, eot_id=511).eval()
    images = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    tokens = _tokens(2, n=cfg.context_length, eot_at=5, vocab=512)
    with torch.no_grad():
        ref_i, ref_t, _ = m(images, tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            img, txt, scale = m(images, tokens)
    assert img.dtype == torch.bfloat16 and torch.isfinite(img.float()).all() and torch.isfinite(txt.float()).all()
    assert (img.float() - ref_i).abs().max() < 0.05 and (txt.float() - ref_t).abs().max() < 0.05


def test_resnet_tower_forward_backward():
    torch.manual_seed(0)
    cfg = CLIPConfig(preset="RN-tiny")
    m = CLIP(cfg, eot_id=511).train()
    assert isinstance(m.visual, ModifiedResNet) and m.visual.attnpool.positional_embedding.shape == (5, 256)
    images = torch.randn(3, 3, 64, 64)
    # Anti-aliased downsampling: stem /4, then /2 per stage -> 2x2 grid of width*32 channels for the pool.
    stem = m.visual.avgpool(m.visual.act3(m.visual.bn3(m.visual.conv3(m.visual.act2(m.visual.bn2(
        m.visual.conv2(m.visual.act1(m.visual.bn1(m.visual.conv1(images))))))))))
    assert stem.shape == (3, 8, 16, 16)
    img, txt, scale = m(images, _tokens(3, n=16, eot_at=4, vocab=512))
    assert img.shape == txt.shape == (3, 32)
    clip_loss(img, txt, scale).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # Bottlenecks start as the identity (zero-initialised last BatchNorm gain), as in OpenAI's initialisation.
    assert all(float(b.bn3.weight.detach().abs().sum()) == 0 for b in CLIP(cfg).visual.layer1)


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
