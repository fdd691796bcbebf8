"""CLIP (Radford et al., 2021): an image tower and a causal Transformer text tower, projected into one space.

Image tower (`model.visual`): a ViT (training/vision.py) or the paper's modified ResNet (training/resnet.py).
Text tower (`model.text`): token + learned positions -> pre-LN blocks with a causal mask -> ln_final -> the
feature at the end-of-text token -> W_t. Both embeddings are L2-normalised and compared with a learned
temperature. Architectures by name: `CLIPConfig(preset="ViT-B-32")` (training/presets.py); any field set
alongside a preset overrides it.

Parameter names follow open_clip (`visual.*` identical; `text.*` is open_clip's top-level text tower), so
training/export.py converts checkpoints for open_clip and Hugging Face transformers by renaming only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.presets import DEFAULTS, PRESETS
from training.resnet import ModifiedResNet
from training.transformer import ACTIVATIONS, Transformer
from training.vision import VisionTransformer

# Paper: temperature initialised to 0.07 and clipped so logits are scaled by at most 100.
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


@dataclass
class CLIPConfig:
    """Architecture of both towers. Every field left unset (None) takes the preset's value, or without a
    preset the demo model's (training/presets.py DEFAULTS, noted per field); after construction all are set."""

    preset: str = ""
    """Named architecture filling the fields not set here: RN50, RN101, ViT-B-32, ViT-B-16, ViT-L-14,
    ViT-L-14-336 (the paper's), ViT-tiny, RN-tiny (CPU tests); "": the 2-core CPU demo model."""
    embed_dim: int | None = None
    """Dimension of the joint image-text embedding space (demo: 128)."""
    image_size: int | None = None
    """Square input resolution in pixels; images are resized to this (demo: 64)."""
    vision_arch: str | None = None
    """Image tower: "vit" (Vision Transformer) or "resnet" (the paper's modified ResNet) (demo: vit)."""
    patch_size: int | None = None
    """ViT patch side in pixels; image_size must be a multiple of it (demo: 8). Unused by the ResNet."""
    vision_stem: str | None = None
    """ViT patch embedding. "patch": the paper's one strided convolution per patch; "conv": a stack of 3x3
    stride-2 convolutions with the same output grid (Xiao et al. 2021, "Early convolutions help transformers see
    better"), which trains faster and more stably for small models and short schedules, but has no open_clip or
    Hugging Face equivalent, so it cannot be exported (demo: patch)."""
    vision_width: int | None = None
    """ViT: Transformer width. ResNet: stem width (64 in RN50); the last stage has 32x as many channels
    (demo: 128)."""
    vision_layers: int | list[int] | None = None
    """ViT: number of Transformer blocks. ResNet: bottlenecks in each of the 4 stages, e.g. [3, 4, 6, 3]
    (demo: 3)."""
    vision_heads: int | None = None
    """Attention heads of the ViT blocks, or of the ResNet's attention pool (which has vision_width * 32
    channels) (demo: 4)."""
    vocab_size: int | None = None
    """Token embedding rows; the BPE tokenizer is trained to this size or less, special tokens included
    (demo: 1000)."""
    context_length: int | None = None
    """Tokens per caption, start and end tokens included; longer captions are truncated (demo: 20)."""
    text_width: int | None = None
    """Width of the text Transformer (demo: 128)."""
    text_layers: int | None = None
    """Number of text Transformer blocks (demo: 3)."""
    text_heads: int | None = None
    """Attention heads in the text Transformer (must divide text_width) (demo: 4)."""
    act: str | None = None
    """MLP activation of both Transformers: "gelu" (exact GELU, open_clip's default) or "quick_gelu"
    (x * sigmoid(1.702 x), what OpenAI's released models use) (demo: gelu)."""

    def __post_init__(self) -> None:
        if self.preset and self.preset not in PRESETS:
            raise ValueError(f"model.preset {self.preset!r} is not one of {list(PRESETS)}")
        base = {**DEFAULTS, **PRESETS.get(self.preset, {})}
        for f in dataclasses.fields(self):
            if f.name != "preset" and getattr(self, f.name) is None:
                setattr(self, f.name, base[f.name])
        if isinstance(self.vision_layers, tuple):
            self.vision_layers = list(self.vision_layers)
        self._validate()

    def _validate(self) -> None:
        for name, allowed in (("vision_arch", ("vit", "resnet")), ("vision_stem", ("patch", "conv")),
                              ("act", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name} {getattr(self, name)!r} is not one of {list(allowed)}")
        for name in ("embed_dim", "image_size", "vision_width", "vision_heads", "vocab_size", "context_length",
                     "text_width", "text_layers", "text_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.text_width % self.text_heads:
            raise ValueError(f"model.text_heads {self.text_heads} does not divide model.text_width {self.text_width}")
        if self.vision_arch == "vit":
            if not isinstance(self.vision_layers, int) or self.vision_layers < 1:
                raise ValueError(f"model.vision_layers must be a positive integer for a ViT, got {self.vision_layers}")
            if self.patch_size < 1 or self.image_size % self.patch_size:
                raise ValueError(f"model.image_size {self.image_size} is not a multiple of "
                                 f"model.patch_size {self.patch_size}")
            if self.vision_stem == "conv" and (self.patch_size & (self.patch_size - 1) or self.patch_size < 2):
                raise ValueError(f"model.patch_size {self.patch_size} must be a power of two for vision_stem conv")
            if self.vision_width % self.vision_heads:
                raise ValueError(f"model.vision_heads {self.vision_heads} does not divide "
                                 f"model.vision_width {self.vision_width}")
        else:
            if not (isinstance(self.vision_layers, list) and len(self.vision_layers) == 4
                    and all(isinstance(n, int) and n >= 1 for n in self.vision_layers)):
                raise ValueError(f"model.vision_layers must list 4 positive block counts for a ResNet, "
                                 f"got {self.vision_layers}")
            if self.vision_stem != "patch":
                raise ValueError(f"model.vision_stem {self.vision_stem!r} applies to ViTs only; the ResNet has its "
                                 f"own stem")
            if self.image_size % 32:
                raise ValueError(f"model.image_size {self.image_size} must be a multiple of 32 for a ResNet")
            if self.vision_width % 2 or (self.vision_width * 32) % self.vision_heads:
                raise ValueError(f"model.vision_heads {self.vision_heads} does not divide the attention pool's "
                                 f"width (model.vision_width {self.vision_width} x 32), or vision_width is odd")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "CLIPConfig":
        return cls(**data)


class TextTransformer(nn.Module):
    """CLIP's text tower. Names as open_clip's CLIP text attributes (token_embedding, positional_embedding,
    transformer, ln_final, text_projection), which live at the top level there and under `text.` here."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        w = cfg.text_width
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, w))
        self.transformer = Transformer(w, cfg.text_layers, cfg.text_heads, cfg.act)
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Parameter(torch.empty(w, cfg.embed_dim))  # W_t
        self._init_parameters()

    def _init_parameters(self) -> None:
        # OpenAI's text tower initialisation: residual-branch outputs scaled down by sqrt(2 * layers) so the
        # residual stream's variance does not grow with depth.
        w, layers = self.transformer.width, self.transformer.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std, proj_std, fc_std = w ** -0.5, w ** -0.5 * (2 * layers) ** -0.5, (2 * w) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=w ** -0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-position features after ln_final (b, n, width); exposed for tests of causality."""
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        return self.ln_final(self.transformer(x, causal=True))

    def forward(self, tokens: torch.Tensor, eot_id: int | None = None) -> torch.Tensor:
        x = self.features(tokens)
        # Pool at the end-of-text token: the first position holding eot_id, or (paper) the argmax id. The two
        # agree when EOT is the highest id, as our tokenizer guarantees.
        pos = (tokens == eot_id).int().argmax(dim=-1) if eot_id is not None else tokens.argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), pos] @ self.text_projection


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig, eot_id: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.eot_id = eot_id
        self.visual: nn.Module = VisionTransformer(cfg) if cfg.vision_arch == "vit" else ModifiedResNet(cfg)
        self.text = TextTransformer(cfg)
        # Shape [1], not a 0-dim scalar: DeepSpeed 0.19.8 fails at initialize on 0-dim parameters.
        self.logit_scale = nn.Parameter(torch.full((1,), LOGIT_SCALE_INIT))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each Transformer block in the backward pass (both towers; the ResNet keeps its
        activations, see ModifiedResNet.set_grad_checkpointing): far less activation memory, ~30% more compute."""
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(tokens, self.eot_id), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image embeddings, text embeddings, scale) with scale = exp(logit_scale) clamped to <= 100."""
        scale = self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()
        return self.encode_image(images), self.encode_text(tokens), scale


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Gains, biases, embeddings and the temperature are not weight-decayed (as in the CLIP/OpenCLIP recipes).
    Every LayerNorm/BatchNorm weight and bias is 1-D, hence covered by ndim < 2."""
    return param.ndim < 2 or "embedding" in name or "logit_scale" in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
