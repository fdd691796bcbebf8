"""Named architectures for `CLIPConfig(preset=...)` (YAML: `training.model.preset: ViT-B-32`).

The paper presets carry the CLIP paper's dimensions (Radford et al. 2021, tables 19-20), which are also
open_clip's model configs of the same name: the image tower, a 12-layer text Transformer over a 49,408-token BPE
with 77-token context, and the joint embedding width. A preset fills only the fields a config leaves unset, so
`preset: ViT-B-32` with `image_size: 256` is ViT-B/32 at 256 px. The two tiny presets are for CPU tests and
smoke runs. DEFAULTS (no preset) is the 2-core CPU demo model.

Parameter counts (our CLIP with the preset's vocab_size, equal to open_clip's model of the same name):
ViT-B-32 151,277,313; ViT-B-16 149,620,737; ViT-L-14 427,616,513; ViT-L-14-336 427,944,193; RN50 102,007,137;
RN101 119,688,033.
"""

from __future__ import annotations

from typing import Any

# The demo model: a 64-px ViT with 8-px patches and 3-layer towers of width 128.
DEFAULTS: dict[str, Any] = {
    "embed_dim": 128, "image_size": 64, "vision_arch": "vit", "patch_size": 8, "vision_stem": "patch",
    "vision_width": 128, "vision_layers": 3, "vision_heads": 4, "vocab_size": 1000, "context_length": 20,
    "text_width": 128, "text_layers": 3, "text_heads": 4, "act": "gelu",
}

# The paper's text Transformer: 63M parameters at width 512 (8 heads of 64), 12 layers, 77 tokens.
_TEXT_512 = {"vocab_size": 49408, "context_length": 77, "text_width": 512, "text_layers": 12, "text_heads": 8}
_TEXT_768 = {**_TEXT_512, "text_width": 768, "text_heads": 12}


def _vit(embed_dim: int, image_size: int, patch_size: int, width: int, layers: int, text: dict) -> dict[str, Any]:
    # Heads of 64 channels, as in every CLIP ViT.
    return {"embed_dim": embed_dim, "image_size": image_size, "vision_arch": "vit", "patch_size": patch_size,
            "vision_width": width, "vision_layers": layers, "vision_heads": width // 64, **text}


def _resnet(embed_dim: int, layers: list[int], width: int, text: dict) -> dict[str, Any]:
    # The attention pool works on width * 32 channels (the last stage's output) in heads of 64.
    return {"embed_dim": embed_dim, "image_size": 224, "vision_arch": "resnet", "vision_layers": layers,
            "vision_width": width, "vision_heads": width * 32 // 64, **text}


PRESETS: dict[str, dict[str, Any]] = {
    "RN50": _resnet(1024, [3, 4, 6, 3], 64, _TEXT_512),
    "RN101": _resnet(512, [3, 4, 23, 3], 64, _TEXT_512),
    "ViT-B-32": _vit(512, 224, 32, 768, 12, _TEXT_512),
    "ViT-B-16": _vit(512, 224, 16, 768, 12, _TEXT_512),
    "ViT-L-14": _vit(768, 224, 14, 1024, 24, _TEXT_768),
    "ViT-L-14-336": _vit(768, 336, 14, 1024, 24, _TEXT_768),
    # CPU-test sizes: a few hundred thousand parameters, forward + backward in milliseconds.
    "ViT-tiny": {"embed_dim": 32, "image_size": 32, "vision_arch": "vit", "patch_size": 8, "vision_width": 64,
                 "vision_layers": 2, "vision_heads": 2, "vocab_size": 512, "context_length": 16,
                 "text_width": 64, "text_layers": 2, "text_heads": 2},
    "RN-tiny": {"embed_dim": 32, "image_size": 64, "vision_arch": "resnet", "vision_layers": [1, 1, 1, 1],
                "vision_width": 8, "vision_heads": 4, "vocab_size": 512, "context_length": 16,
                "text_width": 64, "text_layers": 2, "text_heads": 2},
}
