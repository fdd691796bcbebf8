"""Zero-shot scores and speed of evaluation.external against CLIP_benchmark 1.6.2, same data, same model.

    .venv/bin/python benchmarks/eval_vs_clip_benchmark.py --checkpoint data/checkpoints/demo [--reps 3]

1. Creates CLIP_benchmark's own environment if it is missing (--clipbench-venv, default .venv-clipbench):
   torch==2.14.1 torchvision==0.29.1 first (from this machine's disk), then clip-benchmark==1.6.2,
   open_clip_torch==3.3.0, "numpy<2.4" (clip-benchmark 1.6.2 fails with numpy >= 2.4), requests==2.34.2 (its
   datasets module imports requests without declaring it).
2. Copies the checkpoint into the work dir and exports it with `python -m training.export ... --format open_clip`.
3. Writes fixture datasets in CLIP_benchmark's WebDataset layout (test/N.tar, nshards.txt, classnames.txt,
   zeroshot_classification_templates.txt; dataset_type.txt for retrieval), rendered from the procedural scenes of
   evaluation.tasks (colour, blurred colour, size, shape, position; a retrieval set), a few hundred images each.
4. Runs `clip_benchmark eval --dataset wds/NAME --dataset_root DIR --model local-dir:EXPORT --num_workers 0
   --batch_size 64 --no_amp` once per dataset as a command (its JSON is the agreement reference), then for each
   rep, alternating sides (theirs, ours, theirs, ours: a load drifting during the run hits both): CLIP_benchmark's
   CLI in-process in its venv, with a timer around its metric `evaluate` call, and evaluation.external's
   `evaluate_external` in ours. Each side is one process with `--threads` torch threads, images decoded in that
   process (CLIP_benchmark's --num_workers 0): the same process count. Timed: building the classifier from the
   prompts plus the image pass (reading the shards, decoding, preprocessing, encoding, scoring); not timed:
   imports and loading the model.
5. Writes benchmarks/results/eval_vs_clip_benchmark-<UTC time>.json: machine, date, versions, commands, and for
   every dataset and rep both sides' top-1 (or R@k) and images/s.

Both sides preprocess alike: the export's preprocess_cfg is open_clip's Resize((size, size), bicubic) on the PIL
image ("squash": no crop) + ToTensor + Normalize, which is what training/transform.py does (whole image, bicubic).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BATCH = 64
RECALL_K = (1, 5, 10)
CLIPBENCH_PINS = (["torch==2.14.1", "torchvision==0.29.1"],
                  ["clip-benchmark==1.6.2", "open_clip_torch==3.3.0", "numpy<2.4", "requests==2.34.2"])


# ------------------------------------------------------------------------------ fixture datasets (our venv)

def fixture_specs() -> dict[str, dict]:
    """name -> {classnames, templates, task, source dataset in evaluation.tasks, images per class}."""
    from evaluation.vocabulary import POSITION_PHRASES
    from synthweb.scenes import COLOURS, POSITIONS, SHAPES, SIZES

    on_shapes = tuple(f"a {{c}} {s}" for s in SHAPES)
    return {
        "colour": {"source": "colour", "classnames": list(COLOURS), "templates": on_shapes, "per_class": 40},
        "colour_blur": {"source": "colour_blur", "classnames": list(COLOURS), "templates": on_shapes,
                        "per_class": 40},
        "size": {"source": "size", "classnames": list(SIZES), "templates": on_shapes, "per_class": 150},
        "shape": {"source": "shape", "classnames": list(SHAPES), "per_class": 50,
                  "templates": ("a {c}", "a small {c}", "a large {c}", "a {c} in the center",
                                "a {c} on a gray background")},
        "position": {"source": "position", "classnames": [POSITION_PHRASES[p] for p in POSITIONS], "per_class": 60,
                     "templates": tuple(f"a small {s} {{c}}" for s in SHAPES)},
        "retrieval": {"source": "retrieval", "pairs": 300},
    }


def _jpeg(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_fixtures(root: Path, image_size: int, seed: int, per_shard: int = 100) -> dict[str, int]:
    """Each fixture dataset in CLIP_benchmark's WebDataset layout under root/<name>; returns name -> images."""
    import io
    import tarfile

    from evaluation.render import render_sample
    from evaluation.tasks import get_dataset

    counts = {}
    for name, fx in fixture_specs().items():
        ds = get_dataset(fx["source"])
        out = root / name
        if out.exists():
            shutil.rmtree(out)
        (out / "test").mkdir(parents=True)
        if name == "retrieval":
            samples = ds.samples(fx["pairs"], seed)
            members = [(f"{i:06d}.jpg", _jpeg(render_sample(s, image_size))) for i, s in enumerate(samples)]
            members = [m for i, s in enumerate(samples) for m in (members[i], (f"{i:06d}.txt", s.text.encode()))]
            (out / "dataset_type.txt").write_text("retrieval\n")
        else:
            samples = ds.samples(fx["per_class"], seed)
            members = [m for i, s in enumerate(samples)
                       for m in ((f"{i:06d}.jpg", _jpeg(render_sample(s, image_size))),
                                 (f"{i:06d}.cls", str(s.label).encode()))]
            (out / "classnames.txt").write_text("\n".join(fx["classnames"]) + "\n")
            (out / "zeroshot_classification_templates.txt").write_text("\n".join(fx["templates"]) + "\n")
        per = 2 * per_shard  # two members per sample
        shards = [members[i:i + per] for i in range(0, len(members), per)]
        for n, shard in enumerate(shards):
            with tarfile.open(out / "test" / f"{n}.tar", "w") as tar:
                for member, data in shard:
                    info = tarfile.TarInfo(member)
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
        (out / "test" / "nshards.txt").write_text(f"{len(shards)}\n")
        counts[name] = len(samples)
    return counts


# ------------------------------------------------------------------------------------- ours (our venv)

def ours_side(args) -> dict:
    import torch

    from evaluation.external import evaluate_external
    from evaluation.registry import CLASSIFICATION, RETRIEVAL, DatasetSpec
    from training.checkpoint import load_clip

    torch.set_num_threads(args.threads)
    model = load_clip(args.checkpoint)
    out = {}
    for name in args.datasets:
        retrieval = name == "retrieval"
        spec = DatasetSpec(name, name, "fixture", RETRIEVAL if retrieval else CLASSIFICATION,
                           "mean_R@1" if retrieval else "top1", ())
        t0 = time.perf_counter()
        rows = evaluate_external(model, spec, str(Path(args.root) / name), batch_size=BATCH)
        seconds = time.perf_counter() - t0
        out[name] = {"seconds": seconds, "n": rows[0]["n"], "metrics": {r["metric"]: r["value"] for r in rows}}
    return out


# ------------------------------------------------------------------- CLIP_benchmark (its own venv, no project code)

def clip_benchmark_argv(name: str, root: Path, export: Path, output: Path) -> list[str]:
    task = "zeroshot_retrieval" if name == "retrieval" else "zeroshot_classification"
    argv = ["eval", "--dataset", f"wds/{name}", "--dataset_root", str(root / name), "--task", task,
            "--model", f"local-dir:{export}", "--pretrained", "none", "--batch_size", str(BATCH),
            "--num_workers", "0", "--no_amp", "--output", str(output)]
    if task == "zeroshot_retrieval":
        argv += ["--recall_k", *map(str, RECALL_K)]
    return argv


def clip_benchmark_side(args) -> dict:
    import torch
    from clip_benchmark import cli
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    torch.set_num_threads(args.threads)
    seconds: list[float] = []

    def timed(module) -> None:
        evaluate = module.evaluate

        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            result = evaluate(*a, **kw)
            seconds.append(time.perf_counter() - t0)
            return result
        module.evaluate = wrapper  # cli calls zeroshot_classification.evaluate through the module

    timed(zeroshot_classification)
    timed(zeroshot_retrieval)
    out = {}
    for name in args.datasets:
        output = Path(args.workdir) / f"cb-inproc-{name}.json"
        sys.argv = ["clip_benchmark", *clip_benchmark_argv(name, Path(args.root), Path(args.export), output),
                    "--quiet"]
        cli.main()
        out[name] = {"seconds": seconds[-1], "metrics": json.loads(output.read_text())["metrics"]}
    return out


# ------------------------------------------------------------------------------------------------- driver

def ensure_clipbench_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for pins in CLIPBENCH_PINS:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    return python


def _env(threads: int, project: bool) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    env.pop("PYTHONPATH", None)
    if project:  # CLIP_benchmark's side runs without the project on its path
        env["PYTHONPATH"] = str(REPO)
    return env


def _side(python: str, side: str, args, workdir: Path, export: Path, ckpt: Path) -> dict:
    result = workdir / f"{side}.json"
    cmd = [python, str(Path(__file__).resolve()), "--side", side, "--root", str(workdir / "datasets"),
           "--export", str(export), "--checkpoint", str(ckpt), "--workdir", str(workdir),
           "--threads", str(args.threads), "--result", str(result), "--datasets", *args.datasets]
    subprocess.run(cmd, check=True, env=_env(args.threads, side == "ours"), cwd=REPO, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text())


def _versions(python: str) -> dict:
    code = ("import json, importlib.metadata as m\nout = {}\nfor p in ['torch', 'torchvision', 'numpy', 'pillow', "
            "'webdataset', 'open_clip_torch', 'clip-benchmark', 'transformers']:\n    try: out[p] = m.version(p)\n"
            "    except m.PackageNotFoundError: pass\nprint(json.dumps(out))")
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="data/checkpoints/demo", help="step dir or run dir (patch stem)")
    p.add_argument("--workdir", default="/tmp/witforge-eval-vs-clipbench")
    p.add_argument("--clipbench-venv", default=str(REPO / ".venv-clipbench"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads on each side")
    p.add_argument("--image-size", type=int, default=96, help="side of the rendered fixture images")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--datasets", nargs="+", default=None)
    # internal: one side's run, in its own interpreter
    p.add_argument("--side", choices=("ours", "clip_benchmark"), help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--export", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        result = ours_side(args) if args.side == "ours" else clip_benchmark_side(args)
        Path(args.result).write_text(json.dumps(result))
        return 0

    sys.path.insert(0, str(REPO))
    from training.checkpoint import resolve_checkpoint

    args.datasets = args.datasets or list(fixture_specs())
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cb_python = str(ensure_clipbench_venv(Path(args.clipbench_venv)))
    src = resolve_checkpoint(args.checkpoint)
    ckpt = workdir / "checkpoint"  # a copy: the benchmark never writes beside the user's checkpoint
    if ckpt.exists():
        shutil.rmtree(ckpt)
    shutil.copytree(src, ckpt)
    export = workdir / "export"
    subprocess.run([sys.executable, "-m", "training.export", str(ckpt), "--format", "open_clip", "--out",
                    str(export), "--force"], check=True, cwd=REPO, env=_env(args.threads, True),
                   stdout=subprocess.DEVNULL)
    counts = write_fixtures(workdir / "datasets", args.image_size, args.seed)
    print(f"fixtures: {counts}", flush=True)

    # The CLI itself, once per dataset: its JSON is the agreement reference.
    cli_metrics, cli_cmds = {}, {}
    cb_bin = str(Path(cb_python).parent / "clip_benchmark")
    for name in args.datasets:
        output = workdir / f"cb-cli-{name}.json"
        cmd = [cb_bin, *clip_benchmark_argv(name, workdir / "datasets", export, output)]
        subprocess.run(cmd, check=True, env=_env(args.threads, False), cwd=workdir, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        cli_metrics[name] = json.loads(output.read_text())["metrics"]
        cli_cmds[name] = " ".join(cmd)

    runs = []
    for rep in range(args.reps):
        for side, python in (("clip_benchmark", cb_python), ("ours", sys.executable)):
            load0 = os.getloadavg()[0]
            t0 = time.time()
            res = _side(python, side, args, workdir, export, ckpt)
            runs.append({"rep": rep, "side": side, "load_before": load0, "load_after": os.getloadavg()[0],
                         "wall_s": time.time() - t0, "datasets": res})
            print(f"rep {rep} {side}: " + ", ".join(f"{n} {counts[n] / r['seconds']:.0f} img/s"
                                                    for n, r in res.items()), flush=True)

    table = []
    for name in args.datasets:
        ours = [r["datasets"][name] for r in runs if r["side"] == "ours"]
        theirs = [r["datasets"][name] for r in runs if r["side"] == "clip_benchmark"]
        ours_ips = statistics.median(counts[name] / r["seconds"] for r in ours)
        theirs_ips = statistics.median(counts[name] / r["seconds"] for r in theirs)
        if name == "retrieval":
            pairs = {f"{d}_R@{k}": (ours[0]["metrics"][f"{d}_R@{k}"], cli_metrics[name][f"{cb}_recall@{k}"])
                     for k in RECALL_K for d, cb in (("image_to_text", "text_retrieval"),
                                                     ("text_to_image", "image_retrieval"))}
        else:
            pairs = {"top1": (ours[0]["metrics"]["top1"], cli_metrics[name]["acc1"]),
                     "mean_per_class_recall": (ours[0]["metrics"]["mean_per_class_recall"],
                                               cli_metrics[name]["mean_per_class_recall"])}
        inproc_same = all(r["metrics"] == theirs[0]["metrics"] for r in theirs) and \
            theirs[0]["metrics"] == cli_metrics[name]
        table.append({
            "dataset": name, "images": counts[name],
            "scores": {m: {"ours": o, "clip_benchmark": t, "diff_pp": 100 * (o - t)} for m, (o, t) in pairs.items()},
            "agree_within_0.1pp": all(abs(o - t) <= 0.001 + 1e-12 for o, t in pairs.values()),
            "clip_benchmark_inprocess_equals_cli": inproc_same,
            "images_per_s": {"ours": ours_ips, "clip_benchmark": theirs_ips, "ratio": ours_ips / theirs_ips},
        })

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {
        "benchmark": "eval_vs_clip_benchmark", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "gpu": None},
        "command": " ".join([".venv/bin/python", "benchmarks/eval_vs_clip_benchmark.py", *(argv or sys.argv[1:])]),
        "checkpoint": {"source": src, "meta": json.loads((ckpt / "meta.json").read_text())},
        "settings": {"batch_size": BATCH, "threads_per_side": args.threads, "decode": "in the evaluating process "
                     "(clip_benchmark --num_workers 0)", "amp": False, "reps": args.reps,
                     "image_size": args.image_size, "seed": args.seed},
        "versions": {"ours": _versions(sys.executable), "clip_benchmark_venv": _versions(cb_python)},
        "clip_benchmark_commands": cli_cmds, "clip_benchmark_cli_metrics": cli_metrics,
        "table": table, "runs": runs,
    }
    out = REPO / "benchmarks" / "results" / f"eval_vs_clip_benchmark-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for row in table:
        s = row["scores"]
        main = s.get("top1") or s["image_to_text_R@1"]
        print(f"{row['dataset']:<12} ours {main['ours']:.4f} clip_benchmark {main['clip_benchmark']:.4f} "
              f"(diff {main['diff_pp']:+.2f} pp)  img/s ours {row['images_per_s']['ours']:.0f} "
              f"clip_benchmark {row['images_per_s']['clip_benchmark']:.0f} "
              f"(x{row['images_per_s']['ratio']:.2f})")
    print(out)
    return 0 if all(r["agree_within_0.1pp"] for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
