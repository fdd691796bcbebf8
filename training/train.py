"""Train CLIP on dataset versions: DeepSpeed ZeRO data parallelism, launched by Ray Train, torchrun or deepspeed.

    python -m training.train --config configs/demo.yaml [training.steps=100 storage.root=s3://bucket/prefix ...]
    python -m training.train --config configs/demo.yaml training.resume=latest      # continue the run

On a Ray cluster (Ray Train TorchTrainer, one worker per rank; training.max_failures restarts the worker
group from the latest checkpoint):
    ray job submit --working-dir . -- python -m training.train --config configs/demo.yaml storage.root=s3://b/p
With the plain launchers (same code; they set RANK/WORLD_SIZE, and every rank runs this module):
    torchrun --nproc_per_node 2 -m training.train --config configs/demo.yaml
    deepspeed --num_gpus 8 --module training.train --config configs/demo.yaml training.use_gpu=true

The driver (rank 0 under the plain launchers) validates the config before any work, opens the manifest(s),
trains the BPE tokenizer on their captions (a resumed run keeps its checkpoint's tokenizer), resolves
training.resume, then every rank runs training/loop.py:train_loop. The last line of stdout is the URI of the
final checkpoint.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from typing import Any

from pipelines import storage
from pipelines.build_config import PipelineConfig
from pipelines.config import config_hash, parse_cli
from pipelines.engines import init_ray
from pipelines.schema import ManifestError, load_manifest, manifest_uri
from pipelines.storage import StorageConfig
from pipelines.version import code_version
from training.checkpoint import CheckpointError, latest_checkpoint, resolve_checkpoint, run_uri, step_dirname
from training.config import TrainConfig
from training.data import mix_sources
from training.loop import train_loop
from training.monitor import NonFiniteLoss
from training.tokenizer import CaptionTokenizer, manifest_captions

log = logging.getLogger("training.train")


def sections() -> dict[str, type]:
    return {"storage": StorageConfig, "pipeline": PipelineConfig, "training": TrainConfig}


def _latest_or_none(root: str, run: str) -> str | None:
    try:
        return latest_checkpoint(root, run)
    except CheckpointError:
        return None


def resolve_resume(tc: TrainConfig, root: str) -> str | None:
    """training.resume -> the step dir to start from (None: fresh). Refuses to silently overwrite a run."""
    latest = _latest_or_none(root, tc.run)
    if tc.resume == "":
        if latest is not None:
            raise CheckpointError(f"run {tc.run!r} already has checkpoints ({latest}); continue it with "
                                  "training.resume=latest, or choose another training.run")
        return None
    if tc.resume == "auto":
        return latest
    if tc.resume == "latest":
        if latest is None:
            raise CheckpointError(f"training.resume=latest: no checkpoint under {run_uri(root, tc.run)}")
        return latest
    return resolve_checkpoint(tc.resume)


def prepare(cfg: dict[str, Any]) -> dict[str, Any]:
    """Everything every rank needs, computed once: data sources, tokenizer, resume point, provenance."""
    st: StorageConfig = cfg["storage"]
    pc: PipelineConfig = cfg["pipeline"]
    tc: TrainConfig = cfg["training"]
    mix = tc.mix or [{"uri": tc.manifest or manifest_uri(st.root, pc.dataset, pc.version), "weight": 1.0}]
    # A missing manifest fails here, naming its URI; per-shard sample counts let the loader count lost samples.
    sources = mix_sources(mix)
    manifests = [load_manifest(entry["uri"]) for entry in mix]
    resume_uri = resolve_resume(tc, st.root)
    if resume_uri:
        tokenizer_json = ""  # the checkpoint's own tokenizer is used (train_loop reads it)
        log.info("resuming from %s", resume_uri)
    else:
        captions = itertools.chain.from_iterable(manifest_captions(m, e["uri"]) for m, e in zip(manifests, mix))
        tokenizer = CaptionTokenizer.train(captions, tc.model.vocab_size, tc.model.context_length)
        tokenizer_json = tokenizer.to_str()
        log.info("tokenizer: %d tokens from %s", tokenizer.vocab_size, ", ".join(e["uri"] for e in mix))
    return {"tc": tc, "tokenizer": tokenizer_json, "sources": sources, "root": st.root, "use_gpu": tc.use_gpu,
            "resume_uri": resume_uri, "latest_at_submit": _latest_or_none(st.root, tc.run),
            "meta": {"manifest": mix[0]["uri"] if len(mix) == 1 else [e["uri"] for e in mix],
                     "dataset": ", ".join(f"{m.dataset}/{m.version}" for m in manifests),
                     "config_hash": config_hash(tc), "code_version": code_version(), "zero_stage": tc.zero_stage,
                     "batch_size": tc.batch_size, "steps": tc.steps, "precision": tc.precision,
                     "accum_freq": tc.accum_freq}}


def _final_checkpoint(root: str, tc: TrainConfig) -> str:
    uri = latest_checkpoint(root, tc.run)
    expected = storage.join(run_uri(root, tc.run), step_dirname(min(tc.steps, tc.stop_after or tc.steps)))
    if uri != expected:
        raise RuntimeError(f"training finished but {run_uri(root, tc.run)}/latest.json points at {uri}, not {expected}")
    return uri


def launched_by_torchrun() -> bool:
    """torchrun and the deepspeed launcher start one process per rank with these set; Ray's driver has none."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def train_with_launcher(cfg: dict[str, Any]) -> str | None:
    """Every rank runs this: rank 0 prepares and broadcasts, all train. Returns the final URI on rank 0."""
    import dataclasses

    tc: TrainConfig = cfg["training"]
    if not tc.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch
    import torch.distributed as dist

    if tc.use_gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend="nccl" if tc.use_gpu else "gloo")
    world = dist.get_world_size()
    if tc.batch_size % (world * tc.accum_freq):
        raise ValueError(f"training.batch_size {tc.batch_size} is not divisible by WORLD_SIZE {world} x "
                         f"training.accum_freq {tc.accum_freq}")
    cfg = {**cfg, "training": dataclasses.replace(tc, num_workers=world)}
    box: list[Any] = [prepare(cfg) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    train_loop(box[0])
    dist.barrier()
    return _final_checkpoint(cfg["storage"].root, cfg["training"]) if dist.get_rank() == 0 else None


def train(cfg: dict[str, Any]) -> str:
    """Ray Train: one TorchTrainer worker per rank (CPU + gloo, or one GPU each + NCCL)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    tc: TrainConfig = cfg["training"]
    args = prepare(cfg)
    started_here = not ray.is_initialized()
    init_ray(cfg["pipeline"].engine)
    trainer = TorchTrainer(
        train_loop, train_loop_config=args,
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                     resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"witforge-{tc.run}", failure_config=FailureConfig(max_failures=tc.max_failures)),
    )
    trainer.fit()
    if started_here:  # stops the workers' log stream to this stdout, so the URI printed next is its last line
        ray.shutdown()
    return _final_checkpoint(cfg["storage"].root, tc)


def _strip_launcher_args(argv: list[str]) -> list[str]:
    """The deepspeed launcher appends --local_rank=N; the rank comes from LOCAL_RANK in the environment anyway."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--local_rank":
            skip = True
        elif not a.startswith("--local_rank="):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> str | None:
    # A malformed config exits with status 2 and the field's name, before any work.
    argv = _strip_launcher_args(list(sys.argv[1:] if argv is None else argv))
    cfg = parse_cli("python -m training.train", __doc__.splitlines()[0], argv, sections())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uri = train_with_launcher(cfg) if launched_by_torchrun() else train(cfg)
    if uri is not None:
        print(uri, flush=True)
    return uri


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ManifestError, FileNotFoundError, NonFiniteLoss) as exc:  # name the cause, no traceback
        sys.exit(f"python -m training.train: {exc}")
    except Exception as exc:  # Ray wraps worker errors: surface a NaN stop or a missing input plainly
        cause = exc
        while cause is not None and not isinstance(cause, (NonFiniteLoss, FileNotFoundError, ManifestError)):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        sys.exit(f"python -m training.train: {cause}")
