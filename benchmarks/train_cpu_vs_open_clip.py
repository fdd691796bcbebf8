"""CPU training throughput: the project's trainer against open_clip's own trainer, same run, same machine.

    cd /work/main && export PYTHONPATH=$PWD NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0 WANDB_MODE=disabled
    .venv/bin/python benchmarks/train_cpu_vs_open_clip.py [--steps 200 --batch 128 --reps 3 --log-every 10 --skip-steps 20]

What is compared (everything else held equal):
    ours       python -m training.train --config <generated yaml>: DeepSpeed ZeRO-2 inside Ray Train, 2 CPU workers
               over gloo, 1 torch thread each, decoding in the training process (loader_workers 0)
    open_clip  python -m torch.distributed.run --standalone --nproc_per_node 2 -- benchmarks/open_clip_cpu_main.py
               (open_clip_train.main with a CPU-DDP shim, see that file): DDP over gloo, 1 thread per rank,
               --workers 0 (decoding in the training process)
Same tiny architecture on both (our CLIPConfig defaults with the patch stem: ViT 64 px / 8 px patches / width 128 /
3 layers / 4 heads, text context 20 / vocab 1000 / width 128 / 3 layers / 4 heads, embed 128, exact GELU), written
as an open_clip model config (`local-dir:` schema, no hub access); the same WebDataset shards (training.toydata,
read through our manifest on one side and a brace pattern over the same tars on the other); the same BPE tokenizer
(ours, trained on the shards' captions; open_clip loads it as a HF tokenizer file and the harness checks that both
produce identical ids); the same global batch, steps, AdamW hyper-parameters, warmup, grad clipping 1.0, fp32; the
same loss maths (open_clip --local-loss --gather-with-grad = ours: local rows against all-gathered columns);
resampled shard streams on both (--dataset-resampled = our data_mode resampled).

Known differences that stay: open_clip's train transform is RandomResizedCrop(scale 0.9-1) + ToTensor + Normalize,
ours a whole-image bicubic resize + numpy normalise (similar cost at 64 px); open_clip's sample shuffle buffer is
5000 (1000 initial), ours 1000 (100 initial); DDP allreduce against ZeRO-2 reduce-scatter + allgather.

Measurement: each side prints a line every --log-every steps. Steady-state samples/s = samples between the first
log line at step >= --skip-steps and the last log line, divided by the time between them (start-up, Ray and
DeepSpeed initialisation, the shuffle-buffer fill and the final checkpoint are outside the window). Our trainer's
JSON lines carry elapsed_s (seconds since its loop started); open_clip's lines carry microsecond stamps (from the
shim). Runs alternate (ours, open_clip, ours, open_clip, ...) so that drifting machine load hits both; the headline
is the median of the per-pair ratios ours / open_clip. Results: benchmarks/results/cpu_vs_open_clip-<date>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Environment of both sides: one thread per rank, nothing fetched from a hub, no experiment trackers.
BASE_ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    # HF tokenizers batch-encodes on a rayon thread pool: one more thread per rank on both sides unless off.
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1",
}
OURS_LINE = re.compile(r'\{"step":.*\}')
OPEN_CLIP_LINE = re.compile(r"^(\d+\.\d+) \| INFO \| Train Epoch: \d+ \[\s*(\d+)/(\d+) .*?Loss: ([0-9.]+)")
OPEN_CLIP_TIMES = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+ .*?Data \(t\): ([0-9.]+) Batch \(t\): ([0-9.]+)")


def model_dims() -> dict:
    """Our CLIPConfig defaults with the paper's patch stem (open_clip has no convolutional stem)."""
    from training.model import CLIPConfig

    cfg = CLIPConfig()
    keys = ("embed_dim", "image_size", "patch_size", "vision_width", "vision_layers", "vision_heads", "vocab_size",
            "context_length", "text_width", "text_layers", "text_heads")
    dims = {k: getattr(cfg, k) for k in keys}
    fields = {f.name for f in dataclasses.fields(CLIPConfig)}
    # Pinned where this checkout's CLIPConfig has the field: open_clip's ViT has the paper's patch stem and,
    # without quick_gelu, exact GELU.
    for name, value in (("vision_arch", "vit"), ("vision_stem", "patch"), ("act", "gelu")):
        if name in fields:
            dims[name] = value
    return dims


def open_clip_model_cfg(d: dict, pad_id: int, eot_id: int) -> dict:
    """The same architecture in open_clip's model-config schema (heads = width / head_width)."""
    return {
        "embed_dim": d["embed_dim"],
        "quick_gelu": False,  # exact GELU, as our nn.GELU()
        "vision_cfg": {"image_size": d["image_size"], "patch_size": d["patch_size"], "width": d["vision_width"],
                       "layers": d["vision_layers"], "head_width": d["vision_width"] // d["vision_heads"],
                       "mlp_ratio": 4.0},
        "text_cfg": {"context_length": d["context_length"], "vocab_size": d["vocab_size"], "width": d["text_width"],
                     "heads": d["text_heads"], "layers": d["text_layers"], "mlp_ratio": 4.0,
                     # Our tokenizer file (local-dir: schema loads it from the model folder); pool at the first
                     # EOT, exactly as ours does ((tokens == eot_id).argmax), whatever ids the tokenizer assigns.
                     "hf_tokenizer_name": "witforge-bpe", "pool_type": "eos", "eos_id": eot_id, "pad_id": pad_id},
    }


def prepare(workdir: Path, n_samples: int, samples_per_shard: int, dims: dict) -> dict:
    """Shards (reused across invocations), our tokenizer, and the open_clip model folder holding both."""
    from pipelines.schema import load_manifest
    from training.tokenizer import EOT, PAD, SOT, train_from_manifest
    from training.toydata import write_toy_dataset

    data_root = workdir / "data"
    stamp = data_root / f"done-{n_samples}-{samples_per_shard}"
    manifest_uri = str(data_root / "toy" / "v1" / "manifest.json")
    if not stamp.exists():
        shutil.rmtree(data_root, ignore_errors=True)
        t0 = time.time()
        manifest_uri = write_toy_dataset(str(data_root), n_samples, samples_per_shard=samples_per_shard)
        print(f"wrote {n_samples} samples in {time.time() - t0:.0f} s: {manifest_uri}", flush=True)
        stamp.write_text("")
    manifest = load_manifest(manifest_uri)
    tars = manifest.shard_uris(manifest_uri)
    base = str(Path(tars[0]).parent)
    pattern = f"{base}/{{{Path(tars[0]).stem}..{Path(tars[-1]).stem}}}.tar"

    # The tokenizer our driver trains (same function, same captions, deterministic), saved for open_clip with a
    # post-processor that adds SOT/EOT exactly where CaptionTokenizer.encode puts them.
    from tokenizers import processors

    tok = train_from_manifest(manifest, manifest_uri, dims["vocab_size"], dims["context_length"])
    hf = tok.tok
    hf.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, tok.sot_id), (EOT, tok.eot_id)])
    model_dir = workdir / "open_clip_model"
    shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir(parents=True)
    hf.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": PAD, "bos_token": SOT, "eos_token": EOT,
        "model_max_length": dims["context_length"]}))
    from training.transform import MEAN, STD

    (model_dir / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": open_clip_model_cfg(dims, tok.pad_id, tok.eot_id),
        "preprocess_cfg": {"mean": [float(x) for x in MEAN], "std": [float(x) for x in STD],
                           "interpolation": "bicubic", "resize_mode": "squash"}}, indent=1))
    identical = check_tokenizers(tok, model_dir, manifest, manifest_uri)
    return {"manifest": manifest_uri, "tars": tars, "pattern": pattern, "model_dir": str(model_dir),
            "tokenizer_ids_identical": identical,
            "open_clip_model_cfg": open_clip_model_cfg(dims, tok.pad_id, tok.eot_id)}


def check_tokenizers(tok, model_dir: Path, manifest, manifest_uri: str) -> bool:
    """Both sides must feed the text tower the same ids: compare on the dataset's own captions."""
    import numpy as np
    from open_clip import get_tokenizer

    from training.tokenizer import manifest_captions

    captions = [c for _, c in zip(range(500), manifest_captions(manifest, manifest_uri))]
    captions.append("a caption that is much longer than the context window of the tiny text tower " * 3)
    theirs = get_tokenizer(f"local-dir:{model_dir}")(captions).numpy()
    ours = tok.encode(captions)
    same = theirs.shape == ours.shape and bool(np.array_equal(theirs, ours))
    if not same:
        bad = next(i for i in range(len(captions)) if not np.array_equal(theirs[i], ours[i]))
        print(f"WARNING: tokenizers differ, e.g. {captions[bad]!r}: ours {ours[bad].tolist()} "
              f"open_clip {theirs[bad].tolist()}", flush=True)
    return same


def ours_command(args, prep: dict, dims: dict, rundir: Path) -> list[str]:
    from training.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    training = {
        "run": "bench", "manifest": prep["manifest"], "model": dims, "steps": args.steps,
        "batch_size": args.batch, "lr": args.lr, "weight_decay": 0.1, "warmup_steps": args.warmup,
        "zero_stage": 2, "num_workers": 2, "threads_per_worker": 1, "loader_workers": 0, "shuffle_buffer": 1000,
        "log_every": args.log_every, "seed": 0, "precision": "fp32", "grad_clip": 1.0, "data_mode": "resampled",
        "tensorboard": False, "checkpoint_every": 0, "accum_freq": 1, "compile": False, "decode": "cpu",
    }
    # training/ is being edited concurrently: only pass the fields this checkout's TrainConfig has.
    training = {k: v for k, v in training.items() if k in fields}
    import yaml

    cfg = rundir / "config.yaml"
    cfg.write_text(yaml.safe_dump({"storage": {"root": str(rundir / "root")}, "training": training}))
    return [sys.executable, "-m", "training.train", "--config", str(cfg)]


def open_clip_command(args, prep: dict, rundir: Path) -> list[str]:
    return [
        # "--" ends torchrun's own options: without it torchrun's argparse takes open_clip's --logs for an
        # ambiguous abbreviation of its --logs-specs/--logs_specs and exits.
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--",
        str(REPO / "benchmarks" / "open_clip_cpu_main.py"),
        "--model", f"local-dir:{prep['model_dir']}",
        "--train-data", prep["pattern"], "--dataset-type", "webdataset", "--dataset-resampled",
        "--train-num-samples", str(args.steps * args.batch), "--epochs", "1",
        "--batch-size", str(args.batch // 2),  # per rank: global batch = 2 x this
        # 0: decode in the training process, like our loader_workers 0. On 2 cores with 2 ranks a loader process
        # per rank would compete with the other rank's compute (no spare core), and ours has none either.
        "--workers", "0",
        "--precision", "fp32", "--device", "cpu", "--dist-backend", "gloo",
        "--lr", str(args.lr), "--wd", "0.1", "--warmup", str(args.warmup),
        "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--grad-clip-norm", "1.0",
        "--local-loss", "--gather-with-grad",
        "--log-every-n-steps", str(args.log_every), "--seed", "0",
        "--logs", str(rundir / "logs"), "--name", "bench", "--report-to", "",
        "--zeroshot-frequency", "0", "--val-frequency", "0", "--save-frequency", "1",
    ]


def parse_ours(text: str, batch: int) -> list[tuple[int, float, float]]:
    """(step, seconds since the loop started, loss) from our trainer's JSON lines (training/monitor.py).
    Under Ray each line can reach the driver twice; keying by step keeps one."""
    del batch  # the lines carry their own clock
    recs = sorted({json.loads(m.group(0))["step"]: json.loads(m.group(0)) for m in OURS_LINE.finditer(text)}.items())
    return [(step, rec["elapsed_s"], rec["loss"]) for step, rec in recs]


def parse_open_clip(text: str, batch: int) -> list[tuple[int, float, float]]:
    """(step, unix time, loss) from open_clip's 'Train Epoch: 0 [samples/total ...]' lines (samples = step*batch)."""
    points = []
    for line in text.splitlines():
        m = OPEN_CLIP_LINE.match(line.strip())
        if m:
            points.append((int(m.group(2)) // batch, float(m.group(1)), float(m.group(4))))
    return sorted(set(points))


def data_wait(side: str, text: str, batch: int, window: list[int]) -> float | None:
    """Mean fraction of step time spent waiting for the next batch over the window's log intervals: our
    trainer's data_wait field (training/monitor.py; absent from older trainers), open_clip's Data (t) / Batch (t)
    averages (per log interval)."""
    vals = []
    if side == "ours":
        for m in OURS_LINE.finditer(text):
            rec = json.loads(m.group(0))
            if "data_wait" in rec and window[0] < rec["step"] <= window[1]:
                vals.append(rec["data_wait"])
    else:
        for m in OPEN_CLIP_TIMES.finditer(text):
            step = int(m.group(1)) // batch
            if window[0] < step <= window[1] and float(m.group(3)) > 0:
                vals.append(float(m.group(2)) / float(m.group(3)))
    return round(sum(vals) / len(vals), 3) if vals else None


def steady_state(points: list[tuple[int, float, float]], batch: int, skip: int) -> dict:
    """samples/s between the first log point at step >= skip and the last one."""
    usable = [p for p in points if p[0] >= skip]
    if len(usable) < 2:
        raise RuntimeError(f"need two log lines at step >= {skip}, got steps {[p[0] for p in points]}")
    (s0, t0, _), (s1, t1, loss) = usable[0], usable[-1]
    return {"samples_per_s": round((s1 - s0) * batch / (t1 - t0), 1), "window_steps": [s0, s1],
            "window_s": round(t1 - t0, 2), "final_loss": loss}


def run_side(side: str, cmd: list[str], rundir: Path, timeout: int) -> tuple[str, float, int]:
    env = {**os.environ, **BASE_ENV, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.time()
    with open(rundir / "log.txt", "w") as log:
        proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    return (rundir / "log.txt").read_text(errors="replace"), time.time() - t0, proc.returncode


def versions() -> dict:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "open_clip_torch", "deepspeed", "ray", "webdataset", "tokenizers", "transformers"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing package is recorded, not fatal
            out[pkg] = None
    return out


def _proc_field(path: str, prefix: str) -> str | None:
    try:
        with open(path) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(prefix)), None)
    except OSError:
        return None


def machine() -> dict:
    model = _proc_field("/proc/cpuinfo", "model name") or ""
    mem = _proc_field("/proc/meminfo", "MemTotal")
    mem_gib = round(int(mem.split()[0]) / 2**20, 1) if mem else None
    return {"hostname": platform.node(), "cpu": model, "cores": os.cpu_count(), "mem_gib": mem_gib,
            "platform": platform.platform()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per run (each one global batch)")
    p.add_argument("--batch", type=int, default=128, help="GLOBAL batch (2 ranks x batch/2)")
    p.add_argument("--reps", type=int, default=3, help="runs per side, alternated ours/open_clip")
    p.add_argument("--log-every", type=int, default=10, help="steps between log lines on both sides")
    p.add_argument("--skip-steps", type=int, default=None,
                   help="steps excluded from the steady-state window (default: max(log_every, steps/10))")
    p.add_argument("--warmup", type=int, default=25, help="LR warmup steps (both sides)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--samples", type=int, default=4000, help="toy dataset size (written once into --workdir)")
    p.add_argument("--samples-per-shard", type=int, default=500)
    p.add_argument("--workdir", default="/tmp/witforge-bench-cpu", help="shards, model folder, per-run logs")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for the results JSON")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per run before it is killed")
    p.add_argument("--tag", default="", help="label in the results file name and JSON, e.g. smoke")
    args = p.parse_args(argv)
    if args.batch % 2:
        p.error("--batch must be even (2 ranks)")
    skip = args.skip_steps if args.skip_steps is not None else max(args.log_every, args.steps // 10)
    if skip + args.log_every > args.steps:
        p.error(f"--steps {args.steps} leaves no steady-state window after skipping {skip} steps")

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dims = model_dims()
    prep = prepare(workdir, args.samples, args.samples_per_shard, dims)
    print(f"model {dims}\nshards {prep['pattern']}  tokenizer ids identical: {prep['tokenizer_ids_identical']}",
          flush=True)

    started = dt.datetime.now(dt.UTC)
    runs: list[dict] = []
    for rep in range(args.reps):
        for side in ("ours", "open_clip"):
            rundir = workdir / "runs" / f"{side}-{rep}"
            shutil.rmtree(rundir, ignore_errors=True)
            rundir.mkdir(parents=True)
            cmd = ours_command(args, prep, dims, rundir) if side == "ours" else open_clip_command(args, prep, rundir)
            load_before = os.getloadavg()[0]
            print(f"[{side} rep {rep}] {' '.join(cmd)}", flush=True)
            text, wall, rc = run_side(side, cmd, rundir, args.timeout)
            rec = {"side": side, "rep": rep, "rc": rc, "wall_s": round(wall, 1), "log": str(rundir / "log.txt"),
                   "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2),
                   "command": cmd}
            points = (parse_ours if side == "ours" else parse_open_clip)(text, args.batch)
            rec["log_points"] = [[s, round(t, 3), l] for s, t, l in points]
            try:
                if rc != 0:
                    raise RuntimeError(f"exit status {rc}; tail: {text[-1500:]}")
                rec.update(steady_state(points, args.batch, skip))
                rec["data_wait_fraction"] = data_wait(side, text, args.batch, rec["window_steps"])
            except Exception as exc:  # noqa: BLE001 - one failed run is recorded, the others still run
                rec["error"] = str(exc)[-2000:]
            if side == "open_clip":
                threads = re.findall(r"open_clip_cpu_main: rank \d+ torch \S+ threads (\d+)", text)
                rec["torch_threads_per_rank"] = sorted({int(t) for t in threads})
            runs.append(rec)
            print(f"[{side} rep {rep}] rc {rc}, wall {wall:.0f} s, steady-state "
                  f"{rec.get('samples_per_s', 'n/a')} samples/s over steps {rec.get('window_steps')}, "
                  f"loss {rec.get('final_loss')}" + (f"\n  ERROR {rec['error'][-600:]}" if "error" in rec else ""),
                  flush=True)

    def sps(side: str) -> list[float]:
        return [r["samples_per_s"] for r in runs if r["side"] == side and "samples_per_s" in r]

    pairs = [(a["samples_per_s"] / b["samples_per_s"])
             for a, b in zip([r for r in runs if r["side"] == "ours"], [r for r in runs if r["side"] == "open_clip"])
             if "samples_per_s" in a and "samples_per_s" in b]
    summary = {
        "ours_samples_per_s": sps("ours"), "open_clip_samples_per_s": sps("open_clip"),
        "ours_median": statistics.median(sps("ours")) if sps("ours") else None,
        "open_clip_median": statistics.median(sps("open_clip")) if sps("open_clip") else None,
        "pair_ratios_ours_over_open_clip": [round(r, 3) for r in pairs],
        "median_pair_ratio_ours_over_open_clip": round(statistics.median(pairs), 3) if pairs else None,
    }
    if summary["ours_median"] and summary["open_clip_median"]:
        summary["ratio_of_medians"] = round(summary["ours_median"] / summary["open_clip_median"], 3)
    result = {
        "benchmark": "train_cpu_vs_open_clip", "tag": args.tag, "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": [sys.executable, *sys.argv], "settings": {**vars(args), "skip_steps": skip},
        "machine": machine(), "versions": versions(), "env": BASE_ENV, "model": dims,
        "open_clip_model_cfg": prep["open_clip_model_cfg"], "data": {k: prep[k] for k in ("manifest", "pattern")},
        "tokenizer_ids_identical": prep["tokenizer_ids_identical"], "summary": summary, "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    path = out / f"cpu_vs_open_clip-{started.strftime('%Y%m%dT%H%M%SZ')}{tag}.json"
    path.write_text(json.dumps(result, indent=1))

    print("\nside       rep  samples/s  window     wall_s  load(1m) before/after")
    for r in runs:
        print(f"{r['side']:<10} {r['rep']:>3}  {r.get('samples_per_s', 'FAILED'):>9}  {r.get('window_steps')!s:<9}"
              f"  {r['wall_s']:>6}  {r['load_avg_1m_before']}/{r['load_avg_1m_after']}")
    print(f"median ours {summary['ours_median']}  open_clip {summary['open_clip_median']}  "
          f"median pair ratio ours/open_clip {summary['median_pair_ratio_ours_over_open_clip']}")
    print(path)
    return result


if __name__ == "__main__":
    main()
