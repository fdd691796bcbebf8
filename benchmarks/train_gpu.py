"""GPU training throughput on one lent H100/H200: open_clip eager against the project's model, plain and on ZeRO-2.

    python3 benchmarks/train_gpu.py                      # on the GPU machine (see benchmarks/README.md for the call)
    python benchmarks/train_gpu.py --tiny --device cpu   # here, no GPU: every code path, tiny model, 2 steps each

For ViT-B/32 at batch 1024 and ViT-B/16 at batch 256 (text tower: context 77, width 512, 12 layers, 8 heads,
vocab 49408, as open_clip's configs of those names; exact GELU on both sides), in this order, in one process:
    open_clip_eager     open_clip.create_model(name), bf16 autocast, torch fused AdamW, open_clip's ClipLoss:
                        the baseline, measured exactly as ../shared/reference/gpu-baseline/anchor4.py does
    ours_eager          training.model.CLIP with the same dims, bf16 autocast, torch fused AdamW (our param_groups),
                        training.loss.clip_loss, SDPA restricted to the flash / memory-efficient kernels
    ours_compile        the same with torch.compile(model)
    ours_zero2          the same model in deepspeed.initialize(config=training.engine.ds_config(TrainConfig(
                        precision="bf16", zero_stage=2, ...), world=1)): DeepSpeed's torch_autocast mode, the
                        optimizer DeepSpeed builds from that config: what training/loop.py runs
each first on synthetic tensors (one random batch reused), then, for each of ours, fed from WebDataset shards on
local disk (2048 JPEGs at 224 px written by this script into 8 tars, looped over): `shards_gpu` = the loader
workers ship undecoded bytes (training.decode.RawImages) and the step decodes them on the GPU with
training.decode.decode_batch (nvJPEG), as training/loop.py does; `shards_pil` (ours_eager only) = PIL decode in
DataLoader workers, the fallback when no GPU decoder exists. Decoding happens inside the timed step.

Timing as anchor4.py: `--warmup` steps, then torch.cuda.synchronize(), perf_counter, `--steps` steps,
synchronize. Shard-fed runs warm up for at least workers x prefetch + 2 steps, so the batches the loader had
queued before the clock started are consumed before it starts. MFU = samples/s x training FLOPs per sample /
peak. FLOPs per training sample = 3 x forward (backward = 2 x forward) with the forward FLOPs of open_clip's
docs/model_profile.csv (torch FlopCounter, 2 FLOPs per multiply-add, image + text tower, batch 1): ViT-B/32 14.8
-> 44.4 GFLOP (the reference's figure), ViT-B/16 41.1 -> 123.3 GFLOP. The script also counts our model's forward
with torch.utils.flop_counter on the meta device (14.78 and 41.09 GFLOP) and records it beside. Peak: the bf16
matmul rate measured at start (8192^3, as the reference's 805 TFLOP/s on an H200) and the datasheet 989.4.

Ratios per model: project best (max of ours_* on synthetic) / open_clip_eager, ours_zero2 / ours_eager,
shards_gpu / synthetic per project config. Every configuration runs in its own try block: an OOM or compile error
is recorded and the rest still run; `--budget-s` skips what would start after that many seconds. Results:
$OUT/train_gpu.json when OUT is set (the device tool collects $OUT), else benchmarks/results/train_gpu-<date>.json,
rewritten after every configuration so that a run cut short still leaves its numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gc
import io
import json
import os
import platform
import random
import socket
import sys
import tarfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `training` importable when run as a script from anywhere

DATASHEET_BF16_TFLOPS = 989.4  # H100/H200 SXM dense bf16 (performance-anchors.md convention)
_TEXT = {"vocab_size": 49408, "context_length": 77, "text_width": 512, "text_layers": 12, "text_heads": 8}
MODELS: dict[str, dict[str, Any]] = {
    # fwd GFLOP from open_clip docs/model_profile.csv; training = 3 x forward.
    "ViT-B-32": {"batch": 1024, "fwd_gflop": 14.8, "open_clip": "ViT-B-32",
                 "dims": {"embed_dim": 512, "image_size": 224, "patch_size": 32, "vision_width": 768,
                          "vision_layers": 12, "vision_heads": 12, **_TEXT}},
    "ViT-B-16": {"batch": 256, "fwd_gflop": 41.1, "open_clip": "ViT-B-16",
                 "dims": {"embed_dim": 512, "image_size": 224, "patch_size": 16, "vision_width": 768,
                          "vision_layers": 12, "vision_heads": 12, **_TEXT}},
}
# --tiny: a few hundred thousand parameters, for proving every code path on a CPU in seconds.
TINY = {"tiny-ViT": {"batch": 8, "fwd_gflop": None, "open_clip": None,
                     "dims": {"embed_dim": 32, "image_size": 32, "patch_size": 8, "vision_width": 64,
                              "vision_layers": 2, "vision_heads": 2, "vocab_size": 512, "context_length": 16,
                              "text_width": 64, "text_layers": 2, "text_heads": 2}}}
CAPTION_WORDS = (["red", "green", "blue", "yellow", "purple", "orange", "black", "white"],
                 ["circle", "square", "triangle", "star", "house", "tree", "car", "boat", "cat", "dog"],
                 ["on a beach", "in a forest", "at night", "in the snow", "on a table", "in a city"])


# ----------------------------------------------------------------------------------------------- helpers

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 1) if device.type == "cuda" else None


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(device: torch.device) -> None:
    """One-rank process group, created before anything else: DeepSpeed reuses it (as under Ray Train), and
    training.loss.clip_loss sees world size 1 (no all-gather)."""
    import torch.distributed as dist

    port = free_port()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                rank=0, world_size=1)


def our_config(dims: dict[str, Any]):
    """training.model.CLIPConfig with explicit dims (no preset needed), keeping only fields this checkout has."""
    from training.model import CLIPConfig

    fields = {f.name for f in dataclasses.fields(CLIPConfig)}
    full = {**dims, "vision_arch": "vit", "vision_stem": "patch", "act": "gelu"}
    return CLIPConfig(**{k: v for k, v in full.items() if k in fields})


def open_clip_model(spec: dict[str, Any]):
    import open_clip

    if spec["open_clip"]:
        return open_clip.create_model(spec["open_clip"])  # built-in config, random init, no download
    d = spec["dims"]
    from open_clip.model import CLIP as OpenCLIP

    return OpenCLIP(embed_dim=d["embed_dim"],
                    vision_cfg={"image_size": d["image_size"], "patch_size": d["patch_size"], "width": d["vision_width"],
                                "layers": d["vision_layers"], "head_width": d["vision_width"] // d["vision_heads"]},
                    text_cfg={"context_length": d["context_length"], "vocab_size": d["vocab_size"],
                              "width": d["text_width"], "heads": d["text_heads"], "layers": d["text_layers"]})


def counted_fwd_gflop(dims: dict[str, Any]) -> float | None:
    """Forward FLOPs of our model at batch 1, counted by torch's FlopCounterMode on the meta device (no compute)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        from training.model import CLIP

        with torch.device("meta"):
            model = CLIP(our_config(dims))
            img = torch.empty(1, 3, dims["image_size"], dims["image_size"])
            txt = torch.zeros(1, dims["context_length"], dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(img, txt)
        return round(counter.get_total_flops() / 1e9, 2)
    except Exception as exc:  # noqa: BLE001 - a cross-check only
        log(f"flop count failed: {exc!r}")
        return None


def measure_peak_tflops(device: torch.device) -> float | None:
    """bf16 matmul rate, 8192^3 as the reference (3 warm-up products, 10 timed)."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    rate = 10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12
    del a, b
    free_memory(device)
    return round(rate, 1)


def flash_check(device: torch.device) -> dict[str, Any]:
    """Whether SDPA's flash kernel runs for our shapes (bf16, head dim 64, causal and not)."""
    if device.type != "cuda":
        return {"flash": None, "note": "not a CUDA device"}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out: dict[str, Any] = {}
    q = torch.randn(4, 12, 50, 64, device=device, dtype=torch.bfloat16)
    for causal in (False, True):
        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=causal)
            out[f"flash_causal_{causal}"] = True
        except Exception as exc:  # noqa: BLE001
            out[f"flash_causal_{causal}"] = repr(exc)[:200]
    return out


def sdpa_fast(device: torch.device):
    """SDPA restricted to the flash / memory-efficient kernels on CUDA: a silent fall back to the math kernel
    would be a slowdown we want to see as an error. No restriction on CPU (tiny runs)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


# ----------------------------------------------------------------------------------------------- shards

def write_shards(root: Path, n: int, px: int, per_shard: int) -> list[str]:
    """n JPEGs (px x px, smooth gradients + noise, ~25-45 KB at quality 90) with captions, in WebDataset tars."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = random.Random(0)
    x = np.linspace(0, 255, px, dtype=np.float32)
    paths = []
    for s, start in enumerate(range(0, n, per_shard)):
        path = root / f"{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(start, min(n, start + per_shard)):
                k = i % 7 + 1
                base = np.add.outer(x, x * k / 7) % 256
                arr = np.stack([base, base[::-1], base.T], -1) + rng.normal(0, 12, (px, px, 3))
                buf = io.BytesIO()
                Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
                caption = " ".join([words.choice(CAPTION_WORDS[0]), words.choice(CAPTION_WORDS[1]),
                                    words.choice(CAPTION_WORDS[2]), f"number {i}"])
                for name, data in ((f"{i:08x}.jpg", buf.getvalue()), (f"{i:08x}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def read_samples(path: str) -> Iterator[tuple[bytes, str]]:
    """(jpg bytes, caption) per sample of one tar: webdataset's own tar iteration when installed (what
    training/data.py uses), else the standard library's tarfile."""
    try:
        from webdataset.tariterators import group_by_keys, tar_file_expander
    except ImportError:
        with tarfile.open(path) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for m in tar:
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for sample in members.values():
            yield sample["jpg"], sample["txt"].decode()
        return
    with open(path, "rb") as stream:
        for sample in group_by_keys(tar_file_expander([{"url": path, "stream": stream}])):
            yield sample["jpg"], sample["txt"].decode()


def pil_uint8(blob: bytes, size: int) -> torch.Tensor:
    """PIL decode + whole-image bicubic resize, as training/transform.preprocess, kept uint8 (3, s, s): a quarter
    of float32's bytes through the workers' shared memory; normalised on the device."""
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


class ShardBatches(IterableDataset):
    """Endless batches from the tars, each loader worker looping over its own share of them.

    mode "raw": (RawImages of undecoded JPEG bytes, tokens) for decode_batch on the training device.
    mode "pil": (uint8 images decoded and resized by PIL in the worker, tokens)."""

    def __init__(self, tars: list[str], tokenizer, batch: int, image_size: int, mode: str) -> None:
        self.tars, self.tokenizer, self.batch, self.image_size, self.mode = tars, tokenizer, batch, image_size, mode

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.tars[wid::nw] or self.tars  # more workers than tars: the extra ones read all of them
        rng = random.Random(wid)
        blobs: list[bytes] = []
        captions: list[str] = []
        while True:
            for path in rng.sample(mine, len(mine)):
                for jpg, caption in read_samples(path):
                    blobs.append(jpg)
                    captions.append(caption)
                    if len(blobs) == self.batch:
                        yield self._collate(blobs, captions)
                        blobs, captions = [], []

    def _collate(self, blobs: list[bytes], captions: list[str]):
        tokens = torch.from_numpy(self.tokenizer.encode(captions))
        if self.mode == "raw":
            from training.decode import RawImages

            return RawImages.pack(blobs), tokens
        return torch.stack([pil_uint8(b, self.image_size) for b in blobs]), tokens


class ShardFeed:
    """A DataLoader over ShardBatches plus the device-side half of a step's input: decode_batch (raw) or
    normalisation (pil). Iterating yields (images float32 (b, 3, s, s), tokens) on the device."""

    def __init__(self, tars: list[str], tokenizer, batch: int, image_size: int, mode: str, workers: int,
                 device: torch.device, prefetch: int = 2) -> None:
        self.mode, self.image_size, self.device, self.workers, self.prefetch = mode, image_size, device, workers, prefetch
        self.wait_s = 0.0  # host time blocked on the loader (not synchronised with the GPU: an indication)
        self.dropped = 0
        self.loader = DataLoader(ShardBatches(tars, tokenizer, batch, image_size, mode), batch_size=None,
                                 num_workers=workers, pin_memory=device.type == "cuda",
                                 prefetch_factor=prefetch if workers else None)
        self.it = iter(self.loader)
        from training.transform import MEAN, STD

        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    @property
    def queued(self) -> int:
        """Batches the workers may have ready before the clock starts."""
        return max(1, self.workers) * self.prefetch

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        images, tokens = next(self.it)
        self.wait_s += time.perf_counter() - t0
        if self.mode == "raw":
            from training.decode import decode_batch

            dec = decode_batch(images, self.image_size, self.device)
            self.dropped += len(dec.errors)
            return dec.images, tokens[dec.keep].to(self.device, non_blocking=True)
        x = images.to(self.device, non_blocking=True).float()
        return (x / 255.0 - self.mean) / self.std, tokens.to(self.device, non_blocking=True)

    def close(self) -> None:
        del self.it
        del self.loader


def synthetic(batch: int, dims: dict[str, Any], device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One random batch, reused every step (as the reference anchors)."""
    img = torch.randn(batch, 3, dims["image_size"], dims["image_size"], device=device)
    txt = torch.randint(1, dims["vocab_size"] - 1, (batch, dims["context_length"]), device=device)
    while True:
        yield img, txt


# ----------------------------------------------------------------------------------------------- runners

class Runner:
    """A model + optimizer + one training step; built once, timed on synthetic and then shard inputs."""

    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    extra: dict[str, Any]

    def close(self) -> None:
        pass


def open_clip_runner(spec: dict[str, Any], device: torch.device, args) -> Runner:
    """anchor4.py's amp(): open_clip model, autocast bf16, fused AdamW lr 1e-4, ClipLoss on float embeddings."""
    from open_clip.loss import ClipLoss

    model = open_clip_model(spec).to(device)
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    r = Runner()

    def step(img, txt):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            i, t, s = model(img, txt)
            loss = loss_fn(i.float(), t.float(), s.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    r.step, r.extra = step, {"params": sum(p.numel() for p in model.parameters())}
    r._keep = (model, opt)
    return r


def ours_runner(spec: dict[str, Any], device: torch.device, args, compiled: bool, eot_id: int | None) -> Runner:
    """training.model.CLIP, bf16 autocast, torch fused AdamW over our param groups (betas/eps of the paper)."""
    from training.loss import clip_loss
    from training.model import CLIP, param_groups

    torch.manual_seed(0)
    model = CLIP(our_config(spec["dims"]), eot_id=eot_id).to(device)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, fused=True)
    fwd = torch.compile(model) if compiled else model
    # Eager: flash / memory-efficient SDPA only. Compiled: inductor's own attention lowering picks the kernel
    # (it chooses flash for these shapes); a backend restriction around a compiled call only adds guards.
    attention = contextlib.nullcontext if compiled else (lambda: sdpa_fast(device))
    r = Runner()

    def step(img, txt):
        with attention(), torch.autocast(device.type, dtype=torch.bfloat16):
            i, t, s = fwd(img, txt)
            loss = clip_loss(i.float(), t.float(), s.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    r.step, r.extra = step, {"params": sum(p.numel() for p in model.parameters())}
    r._keep = (model, opt, fwd)
    return r


def zero2_runner(spec: dict[str, Any], device: torch.device, args, eot_id: int | None) -> Runner:
    """The project's DeepSpeed path: ds_config(TrainConfig(precision=bf16, zero_stage=2), world=1), the engine's
    forward (torch_autocast inside), clip_loss, engine.backward, engine.step, as training/loop.py."""
    if device.type != "cuda":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported (as training/loop.py)
    import deepspeed

    from training.config import TrainConfig
    from training.engine import ds_config
    from training.loss import clip_loss
    from training.model import CLIP, param_groups

    cfg = our_config(spec["dims"])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    wanted = {"run": "bench", "model": cfg, "batch_size": spec["batch"], "steps": 100_000, "lr": 1e-4,
              "warmup_steps": 1, "precision": "bf16", "zero_stage": 2, "num_workers": 1,
              "use_gpu": device.type == "cuda", "grad_clip": 1.0, "accum_freq": 1}
    tc = TrainConfig(**{k: v for k, v in wanted.items() if k in fields})
    dsc = ds_config(tc, world=1)
    torch.manual_seed(0)
    model = CLIP(cfg, eot_id=eot_id)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, tc.weight_decay),
                                           config=dsc)
    r = Runner()

    def step(img, txt):
        with sdpa_fast(device):
            i, t, s = engine(img, txt)
            loss = clip_loss(i.float(), t.float(), s.float())
        engine.backward(loss)
        engine.step()
        return loss

    r.step = step
    r.extra = {"params": sum(p.numel() for p in model.parameters()), "ds_config": dsc,
               "optimizer": type(engine.optimizer).__name__, "deepspeed": deepspeed.__version__}
    r._keep = (engine, model)
    return r


def timed(runner: Runner, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], warmup: int, steps: int,
          device: torch.device) -> dict[str, Any]:
    """anchor4.py's measurement: warm-up steps, synchronize, perf_counter over `steps` steps, synchronize."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        img, txt = next(batches)
        loss = runner.step(img, txt)
    sync(device)
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    samples = 0
    t0 = time.perf_counter()
    for _ in range(steps):
        img, txt = next(batches)
        samples += img.shape[0]
        loss = runner.step(img, txt)
    sync(device)
    dt_s = time.perf_counter() - t0
    value = float(loss.detach().float().item())
    out = {"samples_per_s": round(samples / dt_s, 1), "step_ms": round(1000 * dt_s / steps, 1),
           "warmup_steps": warmup, "timed_steps": steps, "warm_s": round(warm_s, 1), "peak_gib": peak_gib(device),
           "loss": round(value, 4)}
    if not np.isfinite(value):
        out["warning"] = "non-finite loss"
    return out


# ----------------------------------------------------------------------------------------------- main

class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.t_start = time.time()
        self.started = dt.datetime.now(dt.UTC)
        out_env = os.environ.get("OUT")
        self.path = (Path(out_env) / "train_gpu.json" if out_env else
                     REPO / "benchmarks" / "results" / f"train_gpu-{self.started.strftime('%Y%m%dT%H%M%SZ')}.json")
        if args.tiny and not out_env and args.out is None:
            self.path = Path("/tmp") / "witforge-train-gpu-tiny.json"  # a smoke run is no result
        if args.out:
            self.path = Path(args.out)
        self.result: dict[str, Any] = {"benchmark": "train_gpu", "started_utc": self.started.isoformat(timespec="seconds"),
                                       "argv": sys.argv, "settings": vars(args), "models": {}}

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.time() - self.t_start, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1, default=str))
        tmp.replace(self.path)

    def over_budget(self) -> bool:
        return time.time() - self.t_start > self.args.budget_s

    def guarded(self, where: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run one configuration; record its numbers or its error; never raise."""
        if self.over_budget():
            where[name] = {"skipped": f"time budget of {self.args.budget_s} s spent"}
            log(f"  {name}: skipped (budget)")
            return None
        log(f"  {name} ...")
        try:
            res = fn()
        except Exception as exc:  # noqa: BLE001 - OOM, compile or DeepSpeed errors: record, go on
            res = {"error": repr(exc)[:600], "traceback": traceback.format_exc()[-2500:]}
            if isinstance(exc, torch.OutOfMemoryError):
                res["oom"] = True
            with contextlib.suppress(Exception):
                torch._dynamo.reset()  # a failed compile must not leak into the next configuration
        where[name] = res
        log(f"  {name}: " + (f"{res['samples_per_s']} samples/s, {res.get('step_ms')} ms/step, "
                             f"peak {res.get('peak_gib')} GiB, loss {res.get('loss')}"
                             if "samples_per_s" in res else f"ERROR {res.get('error')}"))
        self.save()
        return res if "samples_per_s" in res else None

    def run(self) -> dict[str, Any]:
        a, device = self.args, self.device
        self.result["machine"] = {"hostname": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                                  "torch": torch.__version__}
        if device.type == "cuda":
            self.result["machine"].update(gpu=torch.cuda.get_device_name(device),
                                          gpu_mem_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1))
        for pkg in ("open_clip", "deepspeed", "webdataset", "torchvision"):
            try:
                self.result["machine"][pkg] = __import__(pkg).__version__
            except Exception as exc:  # noqa: BLE001 - recorded: the configs that need it will fail on their own
                self.result["machine"][pkg] = f"unavailable: {exc!r}"[:200]
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # as open_clip's trainer; bf16 autocast does the matmuls
            torch.backends.cudnn.benchmark = True
        init_process_group(device)
        self.result["peak_bf16_tflops_measured"] = measure_peak_tflops(device)
        self.result["peak_bf16_tflops_datasheet"] = DATASHEET_BF16_TFLOPS if device.type == "cuda" else None
        self.result["sdpa"] = flash_check(device)
        log(f"device {self.result['machine'].get('gpu', device)}; bf16 matmul {self.result['peak_bf16_tflops_measured']} "
            f"TFLOP/s; {self.result['sdpa']}")

        # Shards: written once, read by every shard-fed configuration.
        t0 = time.time()
        shard_dir = Path(a.workdir) / "shards"
        tars = write_shards(shard_dir, a.shard_samples, a.shard_px, a.shard_samples // a.shards)
        self.result["shards"] = {"dir": str(shard_dir), "tars": len(tars), "samples": a.shard_samples, "px": a.shard_px,
                                 "mean_kb": round(sum(os.path.getsize(t) for t in tars) / a.shard_samples / 1024, 1),
                                 "write_s": round(time.time() - t0, 1)}
        try:
            from training.decode import decode_batch  # noqa: F401 - the GPU decode path exists in this checkout

            gpu_decode = True
        except ImportError as exc:
            gpu_decode = False
            self.result["shards"]["gpu_decode"] = f"training.decode unavailable ({exc!r}): PIL feed only"
        log(f"shards: {self.result['shards']}")
        self.save()

        specs = TINY if a.tiny else {k: MODELS[k] for k in a.models}
        for name, spec in specs.items():
            self.run_model(name, spec, tars, gpu_decode)
        self.summarise()
        self.save()
        return self.result

    def run_model(self, name: str, spec: dict[str, Any], tars: list[str], gpu_decode: bool) -> None:
        a, device = self.args, self.device
        batch = a.batch or spec["batch"]
        spec = {**spec, "batch": batch}
        dims = spec["dims"]
        counted = counted_fwd_gflop(dims)
        fwd = spec["fwd_gflop"] or counted
        m: dict[str, Any] = {"batch": batch, "dims": dims, "train_gflop_per_sample": round(3 * fwd, 2) if fwd else None,
                             "gflop_source": ("3 x forward GFLOP of open_clip docs/model_profile.csv"
                                              if spec["fwd_gflop"] else "3 x forward GFLOP counted on our model"),
                             "fwd_gflop_counted_ours": counted, "configs": {}}
        self.result["models"][name] = m
        cfgs = m["configs"]
        log(f"== {name} batch {batch}: {m['train_gflop_per_sample']} GFLOP per training sample "
            f"(counted forward on ours: {counted})")
        warm, steps = a.warmup, a.steps

        # The captions' tokenizer (ours, trained on the shards' captions) for the shard feeds and the EOT id our
        # text tower pools at. Without it the synthetic configurations still run (argmax pooling, same cost).
        tokenizer, eot_id = None, None
        try:
            from training.tokenizer import CaptionTokenizer

            captions = [c for t in tars[:2] for _, c in read_samples(t)]
            tokenizer = CaptionTokenizer.train(captions, min(dims["vocab_size"], 4096), dims["context_length"])
            eot_id = tokenizer.eot_id
        except Exception as exc:  # noqa: BLE001 - recorded; shard-fed configurations are skipped
            m["tokenizer_error"] = repr(exc)[:300]

        def synth_and_shards(prefix: str, build: Callable[[], Runner], shard_modes: tuple[str, ...]) -> None:
            holder: dict[str, Runner] = {}

            def synth() -> dict[str, Any]:
                t0 = time.time()
                holder["r"] = build()
                res = timed(holder["r"], synthetic(batch, dims, device), warm, steps, device)
                res["build_s"] = round(time.time() - t0 - res["warm_s"], 1)
                res.update(self.mfu(res["samples_per_s"], m["train_gflop_per_sample"]), **holder["r"].extra)
                return res

            self.guarded(cfgs, prefix, synth)
            for mode in shard_modes:
                if "r" not in holder:
                    cfgs[f"{prefix}_shards_{mode}"] = {"skipped": f"{prefix} failed"}
                    continue
                if tokenizer is None:
                    cfgs[f"{prefix}_shards_{mode}"] = {"skipped": f"no tokenizer: {m['tokenizer_error']}"}
                    continue
                if mode == "gpu" and not gpu_decode:
                    cfgs[f"{prefix}_shards_gpu"] = {"skipped": "training.decode.decode_batch unavailable"}
                    continue

                def shards(mode=mode) -> dict[str, Any]:
                    workers = a.raw_workers if mode == "gpu" else a.pil_workers
                    feed = ShardFeed(tars, tokenizer, batch, dims["image_size"], "raw" if mode == "gpu" else "pil",
                                     workers, device)
                    # Warm-up past the batches queued before the clock; PIL workers finish their batches in
                    # bursts (all started together, ~batch/200 s each), so time at least two bursts.
                    timed_steps = max(steps, a.shard_steps, 2 * workers if mode == "pil" else 0)
                    try:
                        res = timed(holder["r"], feed, max(warm, feed.queued + 2), timed_steps, device)
                    finally:
                        feed.close()
                    res.update(self.mfu(res["samples_per_s"], m["train_gflop_per_sample"]), loader_workers=workers,
                               decode="decode_batch on " + device.type if mode == "gpu" else "PIL in loader workers",
                               loader_wait_s=round(feed.wait_s, 2), dropped_samples=feed.dropped)
                    return res

                self.guarded(cfgs, f"{prefix}_shards_{mode}", shards)
            if "r" in holder:
                holder["r"].close()
            holder.clear()
            if "compile" in prefix:
                torch._dynamo.reset()  # drop the compiled graphs (and what they keep alive) before the next model
            free_memory(device)

        synth_and_shards("open_clip_eager", lambda: open_clip_runner(spec, device, a), ())
        synth_and_shards("ours_eager", lambda: ours_runner(spec, device, a, False, eot_id), ("gpu", "pil"))
        synth_and_shards("ours_compile", lambda: ours_runner(spec, device, a, True, eot_id), ("gpu",))
        synth_and_shards("ours_zero2", lambda: zero2_runner(spec, device, a, eot_id), ("gpu",))
        if a.open_clip_compile:
            def oc_compile() -> Runner:
                r = open_clip_runner(spec, device, a)
                model = r._keep[0]
                compiled = torch.compile(model)
                r._keep = (*r._keep, compiled)
                # Rebind the step on the compiled module (anchor2.py's open_clip compile measurement).
                loss_fn = __import__("open_clip.loss", fromlist=["ClipLoss"]).ClipLoss()
                opt = r._keep[1]

                def step(img, txt):
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        i, t, s = compiled(img, txt)
                        loss = loss_fn(i.float(), t.float(), s.float())
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    return loss

                r.step = step
                return r

            synth_and_shards("open_clip_compile", oc_compile, ())

    def mfu(self, sps: float, gflop: float | None) -> dict[str, Any]:
        if not gflop:
            return {}
        achieved = sps * gflop / 1e3  # TFLOP/s
        out = {"achieved_tflops": round(achieved, 1)}
        if self.result.get("peak_bf16_tflops_measured"):
            out["mfu_measured_peak"] = round(achieved / self.result["peak_bf16_tflops_measured"], 3)
        if self.result.get("peak_bf16_tflops_datasheet"):
            out["mfu_datasheet_peak"] = round(achieved / self.result["peak_bf16_tflops_datasheet"], 3)
        return out

    def summarise(self) -> None:
        for m in self.result["models"].values():
            def sps(key: str, c: dict = m["configs"]) -> float | None:
                return c.get(key, {}).get("samples_per_s")

            ours = {k: sps(k) for k in ("ours_eager", "ours_compile", "ours_zero2") if sps(k)}
            best = max(ours, key=ours.get) if ours else None
            ratios: dict[str, Any] = {"project_best": best}
            if best and sps("open_clip_eager"):
                ratios["project_best_over_open_clip_eager"] = round(ours[best] / sps("open_clip_eager"), 3)
            if sps("ours_eager") and sps("open_clip_eager"):
                ratios["ours_eager_over_open_clip_eager"] = round(sps("ours_eager") / sps("open_clip_eager"), 3)
            if sps("ours_zero2") and sps("ours_eager"):
                ratios["zero2_over_project_plain"] = round(sps("ours_zero2") / sps("ours_eager"), 3)
            for k, synth in ours.items():
                if sps(f"{k}_shards_gpu"):
                    ratios[f"{k}_shards_gpu_over_synthetic"] = round(sps(f"{k}_shards_gpu") / synth, 3)
            if sps("ours_eager_shards_pil"):
                ratios["ours_eager_shards_pil_over_synthetic"] = round(sps("ours_eager_shards_pil") / ours["ours_eager"], 3)
            if best and sps(f"{best}_shards_gpu"):
                ratios["project_best_shards_over_synthetic"] = round(sps(f"{best}_shards_gpu") / ours[best], 3)
            m["ratios"] = ratios
        self.result["finished_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def table(self) -> str:
        lines = [f"{'model':<9} {'config':<28} {'samples/s':>10} {'ms/step':>8} {'MFU':>6} {'peak GiB':>8}"]
        for name, m in self.result["models"].items():
            for cfg, r in m["configs"].items():
                if "samples_per_s" in r:
                    mfu = r.get("mfu_measured_peak")
                    lines.append(f"{name:<9} {cfg:<28} {r['samples_per_s']:>10} {r['step_ms']:>8} "
                                 f"{(f'{100 * mfu:.1f}%' if mfu else '-'):>6} {r.get('peak_gib')!s:>8}")
                else:
                    lines.append(f"{name:<9} {cfg:<28} {('SKIPPED' if 'skipped' in r else 'FAILED'):>10}  "
                                 f"{(r.get('skipped') or r.get('error', ''))[:90]}")
            lines.append(f"{name:<9} ratios: {json.dumps(m.get('ratios', {}))}")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (the GPU machine) or cpu (with --tiny, here)")
    p.add_argument("--tiny", action="store_true", help="tiny model, batch 8, 2 steps per config: proves the code paths")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch", type=int, default=None, help="override each model's batch (default: B/32 1024, B/16 256)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up steps before the clock (compile happens here)")
    p.add_argument("--steps", type=int, default=15, help="timed steps per configuration")
    p.add_argument("--shard-steps", type=int, default=15, help="timed steps per shard-fed configuration")
    p.add_argument("--shard-samples", type=int, default=2048)
    p.add_argument("--shards", type=int, default=8, help="number of tars the samples are split into")
    p.add_argument("--shard-px", type=int, default=224, help="side of the JPEGs written into the shards")
    p.add_argument("--raw-workers", type=int, default=4, help="loader workers for the GPU-decode feed (tar + tokenize)")
    p.add_argument("--pil-workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)),
                   help="loader workers decoding with PIL (default: all cores but two, at most 14)")
    p.add_argument("--open-clip-compile", action="store_true", help="also time torch.compile'd open_clip (~1 min/model)")
    # 360: the slowest configuration (a torch.compile warm-up, ~1 min) started just before it still ends, with
    # ~30 s of wheel install and imports, inside the 8 minutes one device call is sized for.
    p.add_argument("--budget-s", type=float, default=360, help="configurations that would start later are skipped")
    p.add_argument("--workdir", default="/tmp/witforge-train-gpu", help="where the shards are written")
    p.add_argument("--out", default=None, help="results JSON path (default: $OUT/train_gpu.json or benchmarks/results/)")
    args = p.parse_args(argv)
    if args.tiny:
        # Every path, as fast as it goes: 1 warm-up + 2 timed steps, 64 small JPEGs in 4 tars, 2 loader workers.
        args.warmup, args.steps, args.shard_steps = 1, 2, 2
        args.shard_samples, args.shards, args.shard_px = 64, 4, 48
        args.raw_workers, args.pil_workers = 2, 2
        args.open_clip_compile = True
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device here: use --tiny --device cpu")
    if not args.device.startswith("cuda"):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports deepspeed
    bench = Bench(args)
    bench.run()
    print(bench.table(), flush=True)
    print(bench.path, flush=True)
    return bench.result


if __name__ == "__main__":
    main()
