"""Train CLIP on a dataset version: DeepSpeed ZeRO data parallelism inside Ray Train.

    python -m training.train --config configs/demo.yaml [training.steps=100 storage.root=s3://bucket/prefix ...]

On a Ray cluster:
    ray job submit --working-dir . -- python -m training.train --config configs/demo.yaml storage.root=s3://b/p

The driver validates the config (before any work), opens the manifest, trains the BPE tokenizer on the
dataset's captions, then runs `train_loop` on `training.num_workers` Ray Train workers. Each worker wraps CLIP
in `deepspeed.initialize` (ZeRO stage `training.zero_stage`; gloo + fp32 on CPU), streams its own shards and
optimises the symmetric contrastive loss over the global batch. Rank 0 logs JSON lines and publishes
checkpoints. The last line of stdout is the URI of the final checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from pipelines import storage
from pipelines.build_config import PipelineConfig
from pipelines.config import config_hash, parse_cli
from pipelines.engines import init_ray
from pipelines.schema import ManifestError, load_manifest, manifest_uri
from pipelines.storage import StorageConfig
from pipelines.version import code_version
from training.checkpoint import latest_checkpoint, run_uri, step_dirname
from training.config import TrainConfig
from training.tokenizer import train_from_manifest

log = logging.getLogger("training.train")


def sections() -> dict[str, type]:
    return {"storage": StorageConfig, "pipeline": PipelineConfig, "training": TrainConfig}


def ds_config(tc: TrainConfig, world: int) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": tc.batch_size // world,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": tc.zero_stage},
        # torch's AdamW: DeepSpeed's FusedAdam needs CUDA. Per-group weight decay comes from model_parameters.
        "optimizer": {"type": "AdamW", "params": {"lr": tc.lr, "betas": [0.9, 0.98], "eps": 1e-6,
                                                  "weight_decay": tc.weight_decay, "torch_adam": True}},
        "scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": tc.steps, "warmup_num_steps": max(1, tc.warmup_steps), "warmup_type": "linear",
            "warmup_min_ratio": 0.0, "cos_min_ratio": 0.0}},
        "steps_per_print": 10**9,  # our own JSON log lines instead of DeepSpeed's
        "wall_clock_breakdown": False,
    }


def _full_state_dict(engine, zero_stage: int) -> dict | None:
    """Full fp32 weights on rank 0 (None elsewhere). ZeRO-3 shards parameters: every rank must join the gather."""
    import deepspeed
    import torch.distributed as dist

    module = engine.module
    if zero_stage == 3:
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = {k: v.detach().clone() for k, v in module.state_dict().items()} if dist.get_rank() == 0 else None
        return state
    return {k: v.detach().clone() for k, v in module.state_dict().items()} if dist.get_rank() == 0 else None


def train_loop(args: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (torch.distributed already initialised by TorchTrainer)."""
    if not args["use_gpu"]:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported in this process
    import deepspeed
    import torch
    import torch.distributed as dist

    from training.checkpoint import save_checkpoint
    from training.data import make_loader
    from training.loss import clip_loss
    from training.model import CLIP, CLIPConfig, param_groups
    from training.tokenizer import CaptionTokenizer

    tc: TrainConfig = args["tc"]
    torch.set_num_threads(tc.threads_per_worker)
    rank, world = dist.get_rank(), dist.get_world_size()
    tokenizer = CaptionTokenizer.from_str(args["tokenizer"], tc.model.context_length)
    cfg: CLIPConfig = tc.model
    torch.manual_seed(tc.seed)  # identical init on every rank (DeepSpeed also broadcasts rank 0's weights)
    model = CLIP(cfg, eot_id=tokenizer.eot_id)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=param_groups(model, tc.weight_decay), config=ds_config(tc, world))
    device = engine.device
    loader = make_loader(args["shards"], tokenizer, cfg.image_size, tc.batch_size // world, rank=rank, world=world,
                         seed=tc.seed, resampled=True, shuffle_buffer=tc.shuffle_buffer, num_workers=tc.loader_workers)
    batches = iter(loader)
    skipped: dict[int, int] = {}
    t0, seen = time.time(), 0
    for step in range(1, tc.steps + 1):
        images, tokens, stats = next(batches)
        skipped[stats["worker"]] = stats["skipped"]
        image_emb, text_emb, scale = engine(images.to(device), tokens.to(device))
        loss = clip_loss(image_emb, text_emb, scale)
        engine.backward(loss)
        engine.step()
        seen += images.shape[0] * world
        if step % tc.log_every == 0 or step == tc.steps:
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)  # every rank participates; rank 0 prints the global mean
            if rank == 0:
                print(json.dumps({"step": step, "loss": round(mean_loss.item() / world, 4),
                                  "logit_scale": round(scale.item(), 3), "lr": scheduler.get_last_lr()[0],
                                  "samples_per_s": round(seen / (time.time() - t0), 1),
                                  "skipped_samples": sum(skipped.values())}), flush=True)
        if step == tc.steps or (tc.checkpoint_every and step % tc.checkpoint_every == 0):
            state = _full_state_dict(engine, tc.zero_stage)
            if rank == 0:
                save_checkpoint(state, cfg, tokenizer, args["root"], tc.run, step, {
                    **args["meta"], "loss": round(loss.item(), 4),
                    "samples_per_s": round(seen / (time.time() - t0), 1), "world_size": world})
            dist.barrier()  # nobody reports done before the checkpoint is published


def train(cfg: dict[str, Any]) -> str:
    st: StorageConfig = cfg["storage"]
    pc: PipelineConfig = cfg["pipeline"]
    tc: TrainConfig = cfg["training"]
    m_uri = tc.manifest or manifest_uri(st.root, pc.dataset, pc.version)
    manifest = load_manifest(m_uri)  # a missing manifest fails here, naming its URI
    shards = manifest.shard_uris(m_uri)
    if len(shards) == 0:
        raise ValueError(f"{m_uri}: the manifest lists no shards")
    tokenizer = train_from_manifest(manifest, m_uri, tc.model.vocab_size, tc.model.context_length)
    log.info("tokenizer: %d tokens from %s", tokenizer.vocab_size, m_uri)

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    init_ray(pc.engine)
    args = {"tc": tc, "tokenizer": tokenizer.to_str(), "shards": shards, "root": st.root, "use_gpu": tc.use_gpu,
            "meta": {"manifest": m_uri, "dataset": f"{manifest.dataset}/{manifest.version}",
                     "config_hash": config_hash(tc), "code_version": code_version(),
                     "zero_stage": tc.zero_stage, "batch_size": tc.batch_size, "steps": tc.steps}}
    trainer = TorchTrainer(
        train_loop, train_loop_config=args,
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                     resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"witforge-{tc.run}"),
    )
    trainer.fit()
    uri = latest_checkpoint(st.root, tc.run)
    expected = storage.join(run_uri(st.root, tc.run), step_dirname(tc.steps))
    if uri != expected:
        raise RuntimeError(f"training finished but {run_uri(st.root, tc.run)}/latest.json points at {uri}, not {expected}")
    return uri


def main(argv: list[str] | None = None) -> str:
    # A malformed config exits with status 2 and the field's name, before any work.
    cfg = parse_cli("python -m training.train", __doc__.splitlines()[0], argv, sections())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uri = train(cfg)
    print(uri, flush=True)
    return uri


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ManifestError, FileNotFoundError) as exc:  # a missing input: name it, no traceback
        sys.exit(f"python -m training.train: {exc}")
