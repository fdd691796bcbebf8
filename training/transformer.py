"""The pre-LN Transformer both CLIP towers are built from, with open_clip's parameter layout.

Parameter names and shapes are those of open_clip's `Transformer` / OpenAI's CLIP (`resblocks.N.ln_1`,
`attn.in_proj_weight` [3w, w] holding q, k, v stacked, `attn.out_proj`, `mlp.c_fc`, `mlp.c_proj`), so exported
state dicts map 1:1 onto theirs. Attention is computed by `F.scaled_dot_product_attention` (flash /
memory-efficient kernels on GPU) instead of nn.MultiheadAttention.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

ACTIVATIONS = ("gelu", "quick_gelu")


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP models were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()  # exact (erf) GELU: open_clip's default, and what HF calls "gelu"
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"model.act {name!r} is not one of {list(ACTIVATIONS)}")


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameters (in_proj_weight/bias, out_proj)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's initialisation (what open_clip's image tower trains from).
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, n, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)  # each (b, heads, n, d)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, w))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with a 4x-wide MLP."""

    def __init__(self, width: int, heads: int, act: str = "gelu") -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)), ("gelu", activation(act)), ("c_proj", nn.Linear(4 * width, width)),
        ]))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual blocks over (batch, tokens, width); optionally recomputed in the backward pass."""

    def __init__(self, width: int, layers: int, heads: int, act: str = "gelu") -> None:
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, act) for _ in range(layers))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                # Non-reentrant checkpointing: works with inputs that need no grad, with autocast, and under
                # DeepSpeed ZeRO-3's parameter hooks; activations inside the block are recomputed in backward.
                x = checkpoint(block, x, causal, use_reentrant=False)
            else:
                x = block(x, causal)
        return x
