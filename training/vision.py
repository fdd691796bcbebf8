"""The ViT image tower (Dosovitskiy et al. 2021, as used in CLIP), with open_clip's parameter names.

image -> patch embedding (`conv1`) -> [class token; patches] + learned positions -> ln_pre -> Transformer ->
ln_post on the class token -> `proj` (W_i). `conv1` is the paper's one strided convolution per patch, or with
vision_stem "conv" a small stack of stride-2 convolutions giving the same token grid (Xiao et al. 2021).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from training.transformer import Transformer

if TYPE_CHECKING:
    from training.model import CLIPConfig


def conv_stem(width: int, patch_size: int) -> nn.Sequential:
    """log2(patch_size) 3x3 stride-2 convolutions (channels doubling up to width), then a 1x1 projection:
    the same (image_size / patch_size)^2 token grid as a patch embedding."""
    n = int(math.log2(patch_size))
    chans = [3] + [max(16, width >> (n - i)) for i in range(1, n + 1)]
    layers: list[nn.Module] = []
    for c_in, c_out in zip(chans, chans[1:]):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.GroupNorm(1, c_out), nn.GELU()]
    layers.append(nn.Conv2d(chans[-1], width, 1))
    return nn.Sequential(*layers)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: "CLIPConfig") -> None:
        super().__init__()
        w = cfg.vision_width
        if cfg.vision_stem == "conv":
            self.conv1: nn.Module = conv_stem(w, cfg.patch_size)
        else:
            self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        scale = w ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn((cfg.image_size // cfg.patch_size) ** 2 + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads, cfg.act)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.embed_dim))  # W_i

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)  # (b, patches, w)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj
