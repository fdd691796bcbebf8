"""Checkpoints: publish and load CLIP weights as safetensors (never pickles) through pipelines.storage.

    <root>/checkpoints/<run>/step_00000100/model.safetensors   full fp32 weights (ZeRO-3: gathered first)
                                           model_config.json   CLIPConfig
                                           tokenizer.json      the BPE tokenizer the text tower was trained with
                                           optimizer.safetensors  full AdamW moments ("exp_avg/<param>", ...)
                                           trainer_state.json  step, LR schedule, data-stream positions per rank
                                           uids/rank<r>.jsonl  (training.log_uids) the samples each step saw
                                           meta.json           run, step, manifest, config hash, code version,
                                                               digest (sha256 of model.safetensors), time
    <root>/checkpoints/<run>/latest.json   written LAST, after the step dir is complete

Every file is published atomically, and latest.json only names a step dir whose files all exist, so a reader
that follows latest.json never sees a half-written checkpoint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from pipelines import storage
from pipelines.version import code_version
from training.model import CLIP, CLIPConfig
from training.tokenizer import CaptionTokenizer
from training.transform import preprocess

FILES = ("model.safetensors", "model_config.json", "tokenizer.json", "meta.json")


class CheckpointError(FileNotFoundError):
    """No (complete) checkpoint where one was expected; the message names the URI."""


def run_uri(root: str, run: str) -> str:
    return storage.join(root, "checkpoints", run)


def step_dirname(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(model: nn.Module | dict[str, torch.Tensor], cfg: CLIPConfig, tokenizer: CaptionTokenizer,
                    root: str, run: str, step: int, extra_meta: dict[str, Any] | None = None,
                    extra_files: dict[str, bytes] | None = None) -> str:
    """Publish a checkpoint and then point latest.json at it; returns the step dir URI.

    `model` is a module or an already-gathered full state dict (ZeRO-3 callers gather on every rank first).
    `extra_files` (name -> bytes, e.g. the optimizer state) are published before meta.json.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
             for k, v in state.items()}
    blob = st_save(state, metadata={"format": "pt"})
    digest = hashlib.sha256(blob).hexdigest()
    step_uri = storage.join(run_uri(root, run), step_dirname(step))
    storage.write_bytes(storage.join(step_uri, "model.safetensors"), blob)
    storage.write_json(storage.join(step_uri, "model_config.json"), cfg.to_json())
    tokenizer.save(storage.join(step_uri, "tokenizer.json"))
    for name, data in (extra_files or {}).items():
        storage.write_bytes(storage.join(step_uri, name), data)
    meta = {"code_version": code_version(), **(extra_meta or {}), "run": run, "step": step, "digest": digest,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    storage.write_json(storage.join(step_uri, "meta.json"), meta)  # meta last inside the step dir
    storage.write_json(storage.join(run_uri(root, run), "latest.json"),
                       {"step": step, "dir": step_dirname(step), "digest": digest})
    return step_uri


def latest_checkpoint(root: str, run: str) -> str:
    """URI of the run's newest complete step dir."""
    return _resolve_run(run_uri(root, run))


def _resolve_run(uri: str) -> str:
    pointer = storage.join(uri, "latest.json")
    if not storage.exists(pointer):
        raise CheckpointError(f"no checkpoint at {uri}: {pointer} does not exist (has training finished?)")
    latest = storage.read_json(pointer)
    return storage.join(uri, latest["dir"])


class LoadedCLIP:
    """A checkpoint ready for inference: the model in eval mode, its tokenizer and its metadata."""

    def __init__(self, model: CLIP, tokenizer: CaptionTokenizer, meta: dict, uri: str, device: str) -> None:
        self.model, self.tokenizer, self.meta, self.uri, self.device = model, tokenizer, meta, uri, device
        self.digest: str = meta["digest"]
        self.config: CLIPConfig = model.cfg

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image], batch_size: int = 64) -> np.ndarray:
        out = [np.zeros((0, self.config.embed_dim), np.float32)]
        for i in range(0, len(images), batch_size):
            x = torch.stack([preprocess(im, self.config.image_size) for im in images[i: i + batch_size]])
            out.append(self.model.encode_image(x.to(self.device)).float().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        out = [np.zeros((0, self.config.embed_dim), np.float32)]
        for i in range(0, len(texts), batch_size):
            tokens = torch.from_numpy(self.tokenizer.encode(list(texts[i: i + batch_size])))
            out.append(self.model.encode_text(tokens.to(self.device)).float().cpu().numpy())
        return np.concatenate(out)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().clamp(max=100).item())


def resolve_checkpoint(uri: str) -> str:
    """A step dir URI as it is; a run dir URI -> the step dir its latest.json names."""
    uri = uri.rstrip("/")
    if storage.exists(storage.join(uri, "meta.json")):
        return uri
    if storage.exists(storage.join(uri, "latest.json")):
        return _resolve_run(uri)
    raise CheckpointError(f"no checkpoint at {uri}: neither meta.json (a step dir) nor latest.json (a run dir)")


def load_clip(uri: str, device: str = "cpu") -> LoadedCLIP:
    """Load a step dir, or a run dir (-> its latest.json). Verifies the weights' digest against meta.json."""
    uri = resolve_checkpoint(uri)
    missing = [f for f in FILES if not storage.exists(storage.join(uri, f))]
    if missing:
        raise CheckpointError(f"incomplete checkpoint at {uri}: missing {', '.join(missing)}")
    meta = storage.read_json(storage.join(uri, "meta.json"))
    blob = storage.read_bytes(storage.join(uri, "model.safetensors"))
    if hashlib.sha256(blob).hexdigest() != meta.get("digest"):
        raise CheckpointError(f"{uri}/model.safetensors does not match the digest in meta.json (corrupt checkpoint)")
    cfg = CLIPConfig.from_json(storage.read_json(storage.join(uri, "model_config.json")))
    tokenizer = CaptionTokenizer.load(storage.join(uri, "tokenizer.json"), cfg.context_length)
    model = CLIP(cfg, eot_id=tokenizer.eot_id)
    model.load_state_dict(_tensors(blob, uri, "model.safetensors"), strict=True)
    model.to(device).eval()
    return LoadedCLIP(model, tokenizer, meta, uri, device)


def _tensors(blob: bytes, uri: str, name: str) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes; anything else (a pickle, a torch.save zip) is refused, never deserialised."""
    try:
        return st_load(blob)
    except SafetensorError as exc:
        raise CheckpointError(f"{uri}/{name}: not a readable safetensors file ({exc})") from exc


TRAINING_FILES = ("optimizer.safetensors", "trainer_state.json")


class TrainingState:
    """Everything a run needs to continue from a checkpoint: weights, AdamW moments, trainer state, tokenizer."""

    def __init__(self, uri: str) -> None:
        uri = resolve_checkpoint(uri)
        missing = [f for f in FILES + TRAINING_FILES if not storage.exists(storage.join(uri, f))]
        if missing:
            raise CheckpointError(f"cannot resume from {uri}: missing {', '.join(missing)} "
                                  "(a weights-only checkpoint, or not a checkpoint)")
        self.uri = uri
        self.meta = storage.read_json(storage.join(uri, "meta.json"))
        blob = storage.read_bytes(storage.join(uri, "model.safetensors"))
        if hashlib.sha256(blob).hexdigest() != self.meta.get("digest"):
            raise CheckpointError(f"{uri}/model.safetensors does not match the digest in meta.json (corrupt checkpoint)")
        self.weights = _tensors(blob, uri, "model.safetensors")
        self.moments = _tensors(storage.read_bytes(storage.join(uri, "optimizer.safetensors")), uri,
                                "optimizer.safetensors")
        self.trainer = storage.read_json(storage.join(uri, "trainer_state.json"))
        self.config = CLIPConfig.from_json(storage.read_json(storage.join(uri, "model_config.json")))
        self.tokenizer_json = storage.read_bytes(storage.join(uri, "tokenizer.json")).decode()
        self.step: int = int(self.trainer["step"])
