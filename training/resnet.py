"""CLIP's modified ResNet image tower (Radford et al. 2021, section 2.4), with open_clip's parameter names.

Three changes to a ResNet-D-style network: a 3-convolution stem with an average pool instead of a max pool;
anti-aliased strided convolutions (every stride-2 step is an average pool before a stride-1 convolution, in
the bottleneck and in its downsampling shortcut); and the global average pool replaced by one layer of
multi-head QKV attention whose query is the mean of the final feature map (`attnpool`), which also projects
to the joint embedding. Names and shapes follow open_clip's ModifiedResNet, so weights map 1:1.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from training.model import CLIPConfig


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        # All convolutions have stride 1; a stride > 1 is an average pool after the 3x3 convolution.
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            # The shortcut is anti-aliased the same way: average pool, then a stride-1 1x1 convolution.
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.act3(out + identity)


class AttentionPool2d(nn.Module):
    """QKV attention over the (h*w) feature vectors with the mean vector as the only query, plus learned
    positions; `c_proj` maps the attended vector to the joint embedding."""

    def __init__(self, spatial_dim: int, embed_dim: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spatial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # (b, hw, c)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        b, n, c = x.shape
        d = c // self.heads
        # Only the mean token's output is used, so it is the only query (open_clip computes all n and keeps 0).
        q = self.q_proj(x[:, :1]).view(b, 1, self.heads, d).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.heads, d).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.heads, d).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)  # (b, heads, 1, d)
        return self.c_proj(y.transpose(1, 2).reshape(b, c))


class ModifiedResNet(nn.Module):
    def __init__(self, cfg: "CLIPConfig") -> None:
        super().__init__()
        width = cfg.vision_width
        self.conv1 = nn.Conv2d(3, width // 2, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width  # grows as the stages are built
        self.layer1 = self._make_layer(width, cfg.vision_layers[0])
        self.layer2 = self._make_layer(width * 2, cfg.vision_layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, cfg.vision_layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, cfg.vision_layers[3], stride=2)
        # Stem /4, then three stride-2 stages: a (image_size / 32)^2 grid of width * 32 channels.
        self.attnpool = AttentionPool2d(cfg.image_size // 32, width * 32, cfg.vision_heads, cfg.embed_dim)
        self._init_parameters()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_parameters(self) -> None:
        # OpenAI's initialisation: attention pool weights ~ N(0, 1/c); each residual branch's last BatchNorm
        # gain starts at zero, so every bottleneck starts as the identity (Goyal et al. 2017).
        std = self.attnpool.c_proj.in_features ** -0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """A no-op, deliberately: recomputing a BatchNorm layer in the backward pass would update its running
        statistics a second time, so the ResNet tower keeps its activations (open_clip does the same)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)
