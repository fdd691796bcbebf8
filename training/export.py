"""Export a checkpoint for open_clip or Hugging Face transformers.

    python -m training.export <checkpoint uri> --format open_clip|hf --out DIR [--force]

The checkpoint URI is a step dir or a run dir (-> its latest.json), local or on S3 (training.checkpoint.load_clip
reads it and verifies its digest). DIR is a local directory; it is written complete or not at all: the files
go to a temporary directory beside it, which is renamed to DIR last (--force replaces an existing DIR).

open_clip (open_clip's Hugging Face Hub layout; ViT and ResNet image towers):
    open_clip_config.json         {"model_cfg": {embed_dim, quick_gelu, vision_cfg, text_cfg}, "preprocess_cfg"}
    open_clip_model.safetensors   open_clip's CLIP state dict
    tokenizer.json, tokenizer_config.json   our BPE as a transformers fast tokenizer
  model, _, preprocess = open_clip.create_model_and_transforms("local-dir:DIR")
  tokenizer = open_clip.get_tokenizer("local-dir:DIR")   # text_cfg.hf_tokenizer_name makes it read DIR's files;
                                                         # set it to the repo id when publishing to the Hub
hf (transformers.CLIPModel; ViT image towers only, transformers has no CLIP ResNet):
    config.json, model.safetensors, preprocessor_config.json, the tokenizer files above
  model = transformers.CLIPModel.from_pretrained(DIR); tokenizer = transformers.AutoTokenizer.from_pretrained(DIR)
  AutoImageProcessor.from_pretrained(DIR, backend="pil") reproduces training/transform.py exactly (the default
  torchvision backend's bicubic resize differs by ~1e-2).

Both directories also hold witforge_export.json (the source checkpoint URI, run, step and weights digest).
Not exportable (ExportError naming the field): vision_stem conv (neither library has that patch embedding),
and a tokenizer from before EOT became the highest id (both libraries locate EOT as the argmax token id).
The last line printed is DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from safetensors.torch import save_file

from training.checkpoint import CheckpointError, LoadedCLIP, load_clip
from training.model import CLIP, CLIPConfig
from training.tokenizer import EOT, PAD, SOT, CaptionTokenizer
from training.transform import MEAN, STD

if TYPE_CHECKING:  # transformers is imported only by the hf export (it takes seconds to import)
    from transformers import CLIPConfig as HFCLIPConfig

FORMATS = ("open_clip", "hf")
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which every LayerNorm of ours uses


class ExportError(ValueError):
    """The checkpoint cannot be expressed in the requested format, or DIR is in the way."""


def check_exportable(cfg: CLIPConfig, tokenizer: CaptionTokenizer, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not one of {list(FORMATS)}")
    if cfg.vision_arch == "vit" and cfg.vision_stem != "patch":
        raise ExportError(f"model.vision_stem {cfg.vision_stem!r} cannot be exported to {fmt}: open_clip and "
                          f"transformers only have the one-convolution patch embedding (vision_stem patch)")
    if fmt == "hf" and cfg.vision_arch != "vit":
        raise ExportError(f"model.vision_arch {cfg.vision_arch!r}: transformers' CLIPModel has no ResNet image "
                          f"tower; export it with --format open_clip")
    if not tokenizer.eot_is_highest:
        raise ExportError(f"the tokenizer's end-of-text id {tokenizer.eot_id} is not its highest id "
                          f"({tokenizer.vocab_size - 1}): open_clip and transformers pool text at the highest id, so "
                          f"this checkpoint (trained before EOT moved to the top) would be pooled at the wrong token")


def _preprocess_floats(values) -> list[float]:
    # float32 constants as their shortest decimal (0.48145466, not 0.48145467042922974).
    return [float(str(v)) for v in values]


# ---------------------------------------------------------------------------------------------------- open_clip

def open_clip_config(cfg: CLIPConfig, hf_tokenizer_name: str) -> dict:
    """open_clip_config.json: the model_cfg open_clip's CLIP(**model_cfg) builds, and the preprocessing."""
    if cfg.vision_arch == "vit":
        vision = {"image_size": cfg.image_size, "layers": cfg.vision_layers, "width": cfg.vision_width,
                  "head_width": cfg.vision_width // cfg.vision_heads, "patch_size": cfg.patch_size, "mlp_ratio": 4.0}
    else:  # open_clip derives the attention pool's heads as width * 32 // head_width
        vision = {"image_size": cfg.image_size, "layers": list(cfg.vision_layers), "width": cfg.vision_width,
                  "head_width": cfg.vision_width * 32 // cfg.vision_heads, "patch_size": None}
    text = {"context_length": cfg.context_length, "vocab_size": cfg.vocab_size, "width": cfg.text_width,
            "heads": cfg.text_heads, "layers": cfg.text_layers, "mlp_ratio": 4.0,
            # Any non-empty name makes open_clip.get_tokenizer("local-dir:DIR") load DIR's tokenizer files.
            "hf_tokenizer_name": hf_tokenizer_name}
    return {
        "model_cfg": {"embed_dim": cfg.embed_dim, "quick_gelu": cfg.act == "quick_gelu",
                      "vision_cfg": vision, "text_cfg": text},
        # training/transform.py: the whole image resized to a square (no crop, captions name positions).
        "preprocess_cfg": {"size": cfg.image_size, "mode": "RGB", "mean": _preprocess_floats(MEAN),
                           "std": _preprocess_floats(STD), "interpolation": "bicubic", "resize_mode": "squash"},
    }


def open_clip_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    """Our names are open_clip's with the text tower under `text.`; its logit_scale is a 0-dim scalar."""
    out = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        if key == "logit_scale":
            value = value.reshape(())
        out[key.removeprefix("text.")] = value
    return out


# ---------------------------------------------------------------------------------------------------- transformers

def hf_config(cfg: CLIPConfig, tokenizer: CaptionTokenizer, logit_scale: float) -> "HFCLIPConfig":
    """transformers.CLIPConfig for a ViT model (check_exportable first)."""
    from transformers import CLIPConfig as HFCLIPConfig

    act = "quick_gelu" if cfg.act == "quick_gelu" else "gelu"  # HF "gelu" is the exact (erf) GELU, like ours
    text = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.text_width, "intermediate_size": 4 * cfg.text_width,
            "projection_dim": cfg.embed_dim, "num_hidden_layers": cfg.text_layers,
            "num_attention_heads": cfg.text_heads, "max_position_embeddings": cfg.context_length,
            "hidden_act": act, "layer_norm_eps": LAYER_NORM_EPS,
            # eos_token_id != 2 selects HF's "first EOT position" pooling, the same rule as ours.
            "pad_token_id": tokenizer.pad_id, "bos_token_id": tokenizer.sot_id, "eos_token_id": tokenizer.eot_id}
    vision = {"hidden_size": cfg.vision_width, "intermediate_size": 4 * cfg.vision_width,
              "projection_dim": cfg.embed_dim, "num_hidden_layers": cfg.vision_layers,
              "num_attention_heads": cfg.vision_heads, "num_channels": 3, "image_size": cfg.image_size,
              "patch_size": cfg.patch_size, "hidden_act": act, "layer_norm_eps": LAYER_NORM_EPS}
    config = HFCLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.embed_dim,
                          logit_scale_init_value=logit_scale)
    config.architectures = ["CLIPModel"]
    return config


# Inside a residual block: our (open_clip's) names -> CLIPEncoderLayer's.
_HF_BLOCK = {f"{ours}.{kind}": f"{theirs}.{kind}" for kind in ("weight", "bias") for ours, theirs in (
    ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
    ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))}
_IN_PROJ = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}  # q, k, v stacked -> three Linears
_HF_FIXED = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "text.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "text.positional_embedding": "text_model.embeddings.position_embedding.weight",
}
_HF_PREFIX = {"visual.ln_pre.": "vision_model.pre_layrnorm.", "visual.ln_post.": "vision_model.post_layernorm.",
              "text.ln_final.": "text_model.final_layer_norm."}
_BLOCK_KEY = re.compile(r"^(visual|text)\.transformer\.resblocks\.(\d+)\.(.+)$")


def hf_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    """Rename to transformers' CLIPModel: split the stacked q/k/v projections, and store the two projections
    as bias-free nn.Linear weights ([out, in], the transpose of our [in, out] matrices)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if key in _HF_FIXED:
            out[_HF_FIXED[key]] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.T
        elif key == "text.text_projection":
            out["text_projection.weight"] = value.T
        elif key == "logit_scale":
            out["logit_scale"] = value.reshape(())
        elif any(key.startswith(p) for p in _HF_PREFIX):
            prefix = next(p for p in _HF_PREFIX if key.startswith(p))
            out[_HF_PREFIX[prefix] + key[len(prefix):]] = value
        elif (m := _BLOCK_KEY.match(key)) and (m[3] in _HF_BLOCK or m[3] in _IN_PROJ):
            tower, index, rest = m.groups()
            base = f"{'vision_model' if tower == 'visual' else 'text_model'}.encoder.layers.{index}."
            if rest in _IN_PROJ:
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{base}self_attn.{name}.{_IN_PROJ[rest]}"] = part
            else:
                out[base + _HF_BLOCK[rest]] = value
        else:  # a parameter this mapping does not know: fail the export rather than drop weights silently
            raise ExportError(f"no transformers CLIPModel parameter corresponds to {key}")
    return {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------- files

def write_hf_tokenizer(tokenizer: CaptionTokenizer, directory: Path) -> None:
    """Our tokenizer as a transformers fast tokenizer whose plain call - tokenizer(texts, padding="max_length",
    max_length=context_length, truncation=True) - gives exactly CaptionTokenizer.encode's ids."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(tokenizer.to_str())
    # SOT/EOT are added by our encode(); a post-processor makes the library add them (truncation accounts for them).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, tokenizer.sot_id), (EOT, tokenizer.eot_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SOT, eos_token=EOT, pad_token=PAD,
                                   model_max_length=tokenizer.context_length, padding_side="right",
                                   clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(directory))


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_open_clip(loaded: LoadedCLIP, directory: Path, name: str) -> None:
    _write_json(directory / "open_clip_config.json", open_clip_config(loaded.config, name))
    save_file(open_clip_state_dict(loaded.model), str(directory / "open_clip_model.safetensors"),
              metadata={"format": "pt"})
    write_hf_tokenizer(loaded.tokenizer, directory)


def _write_hf(loaded: LoadedCLIP, directory: Path, name: str) -> None:
    from transformers import CLIPImageProcessor

    cfg = loaded.config
    logit_scale = float(loaded.model.logit_scale.detach().reshape(()).item())
    hf_config(cfg, loaded.tokenizer, logit_scale).save_pretrained(str(directory))
    save_file(hf_state_dict(loaded.model), str(directory / "model.safetensors"), metadata={"format": "pt"})
    CLIPImageProcessor(do_resize=True, size={"height": cfg.image_size, "width": cfg.image_size},
                       resample=3,  # PIL bicubic, as training/transform.py
                       do_center_crop=False, crop_size={"height": cfg.image_size, "width": cfg.image_size},
                       do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=_preprocess_floats(MEAN),
                       image_std=_preprocess_floats(STD), do_convert_rgb=True).save_pretrained(str(directory))
    write_hf_tokenizer(loaded.tokenizer, directory)


WRITERS: dict[str, Callable[[LoadedCLIP, Path, str], None]] = {"open_clip": _write_open_clip, "hf": _write_hf}


def publish_dir(out: Path, write: Callable[[Path], None], force: bool = False) -> Path:
    """Run write(tmp) into a fresh directory beside `out`, then rename it to `out`: readers see a complete
    export or none. On any failure the temporary directory is removed and `out` is left as it was."""
    out = Path(out).absolute()
    if out.exists() and not force:
        raise ExportError(f"{out} already exists (pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))  # same filesystem: rename is atomic
    try:
        write(tmp)
        if out.exists():  # --force: move the old export aside first (a directory cannot be renamed over)
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_checkpoint(uri: str, fmt: str, out: str | Path, force: bool = False) -> Path:
    """Export the checkpoint at `uri` (step or run dir, local or remote) to the local directory `out`."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not one of {list(FORMATS)}")
    loaded = load_clip(uri)
    check_exportable(loaded.config, loaded.tokenizer, fmt)
    out = Path(out)

    def write(directory: Path) -> None:
        WRITERS[fmt](loaded, directory, out.name)
        _write_json(directory / "witforge_export.json", {
            "format": fmt, "source": loaded.uri, "run": loaded.meta.get("run"), "step": loaded.meta.get("step"),
            "digest": loaded.digest, "model_config": loaded.config.to_json()})

    return publish_dir(out, write, force)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="step dir or run dir URI (local path or s3://...)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="local output directory (must not exist unless --force)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    out = export_checkpoint(args.checkpoint, args.format, args.out, args.force)
    print(out, flush=True)
    return str(out)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ExportError, CheckpointError, FileNotFoundError) as exc:  # name the problem, no traceback
        sys.exit(f"python -m training.export: {exc}")
