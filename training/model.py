"""CLIP (Radford et al., 2021): a ViT image tower and a causal Transformer text tower, projected into one space.

Image: conv patch embedding -> [class token; patches] + learned positions -> ln_pre -> pre-LN blocks ->
ln_post on the class token -> W_i. Text: token + learned positions -> pre-LN blocks with a causal mask ->
ln_final -> the feature at the end-of-text token (the highest id in each row, as in the paper's BPE, because
EOT is the last special token we add; see tokenizer.py) -> W_t. Both embeddings are L2-normalised and compared
with a learned temperature.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Paper: temperature initialised to 0.07 and clipped so logits are scaled by at most 100.
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


@dataclass
class CLIPConfig:
    embed_dim: int = 128
    """Dimension of the joint image-text embedding space."""
    image_size: int = 64
    """Square input resolution in pixels (images are resized to this)."""
    patch_size: int = 8
    """ViT patch side in pixels; image_size must be a multiple of it."""
    vision_stem: str = "patch"
    """"patch": the paper's one strided convolution per patch; "conv": a stack of 3x3 stride-2 convolutions with
    the same output grid (Xiao et al. 2021, "Early convolutions help transformers see better"), which trains
    faster and more stably, notably for small models and short schedules."""
    vision_width: int = 128
    """Width of the image Transformer."""
    vision_layers: int = 3
    """Number of image Transformer blocks."""
    vision_heads: int = 4
    """Attention heads in the image Transformer (must divide vision_width)."""
    vocab_size: int = 1000
    """BPE vocabulary size including special tokens (the tokenizer is trained to exactly this size or less)."""
    context_length: int = 20
    """Tokens per caption, start and end tokens included; longer captions are truncated."""
    text_width: int = 128
    """Width of the text Transformer."""
    text_layers: int = 3
    """Number of text Transformer blocks."""
    text_heads: int = 4
    """Attention heads in the text Transformer (must divide text_width)."""

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"model.image_size {self.image_size} is not a multiple of model.patch_size {self.patch_size}")
        if self.vision_stem not in ("patch", "conv"):
            raise ValueError(f"model.vision_stem {self.vision_stem!r} is not one of ['patch', 'conv']")
        if self.vision_stem == "conv" and (self.patch_size & (self.patch_size - 1) or self.patch_size < 2):
            raise ValueError(f"model.patch_size {self.patch_size} must be a power of two for vision_stem conv")
        if self.vision_width % self.vision_heads:
            raise ValueError(f"model.vision_heads {self.vision_heads} does not divide model.vision_width {self.vision_width}")
        if self.text_width % self.text_heads:
            raise ValueError(f"model.text_heads {self.text_heads} does not divide model.text_width {self.text_width}")
        for name in ("embed_dim", "vocab_size", "context_length", "vision_layers", "text_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "CLIPConfig":
        return cls(**data)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    """Pre-LN residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


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
    def __init__(self, cfg: CLIPConfig) -> None:
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
        self.blocks = nn.ModuleList(Block(w, cfg.vision_heads) for _ in range(cfg.vision_layers))
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.embed_dim))  # W_i

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)  # (b, patches, w)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x[:, 0]) @ self.proj


class TextTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        w = cfg.text_width
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, w))
        self.blocks = nn.ModuleList(Block(w, cfg.text_heads) for _ in range(cfg.text_layers))
        self.ln_final = nn.LayerNorm(w)
        self.proj = nn.Parameter(w ** -0.5 * torch.randn(w, cfg.embed_dim))  # W_t
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-position features after ln_final (b, n, width); exposed for tests of causality."""
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, causal=True)
        return self.ln_final(x)

    def forward(self, tokens: torch.Tensor, eot_id: int | None = None) -> torch.Tensor:
        x = self.features(tokens)
        # Pool at the end-of-text token: the first position holding eot_id, or (paper) the argmax id.
        pos = (tokens == eot_id).int().argmax(dim=-1) if eot_id is not None else tokens.argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), pos] @ self.proj


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig, eot_id: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.eot_id = eot_id
        self.visual = VisionTransformer(cfg)
        self.text = TextTransformer(cfg)
        # Shape [1], not a 0-dim scalar: DeepSpeed 0.19.8 fails at initialize on 0-dim parameters.
        self.logit_scale = nn.Parameter(torch.full((1,), LOGIT_SCALE_INIT))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(tokens, self.eot_id), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image embeddings, text embeddings, scale) with scale = exp(logit_scale) clamped to <= 100."""
        scale = self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()
        return self.encode_image(images), self.encode_text(tokens), scale


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Gains, biases, embeddings and the temperature are not weight-decayed (as in the CLIP/OpenCLIP recipes)."""
    return param.ndim < 2 or "embedding" in name or "logit_scale" in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
