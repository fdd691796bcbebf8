"""Curation pays off, DataComp-style: the same tiny model, trained for the same number of samples seen, on the raw
pool, on the curated set, and on the curated set with each curation component switched off in turn; every model
evaluated on the offline suite (evaluation.tasks.DATASETS).

    export PYTHONPATH=$PWD NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0 WANDB_MODE=disabled
    .venv/bin/python benchmarks/curation_pays_off.py --steps 300                   # every row (~60-90 min on 2 cores)
    .venv/bin/python benchmarks/curation_pays_off.py --steps 300 --rows curated    # one row (timing)
    .venv/bin/python benchmarks/curation_pays_off.py --report                      # the table of the latest result

Rows (each a dataset version built from configs/demo.yaml with the overrides in ROWS, under --workdir):
  raw                 DataComp's "no filtering" baseline: everything that downloaded. extract -> download -> shard:
                      no balancing (it runs before download, so the raw pool is the unbalanced one), filter rules
                      all off (only images that decode at all, as the trainer could not use the others), no
                      dedupe, no decontamination, no caption dedupe
  curated             the demo's curation: balance, filter, dedupe (exact + near), decontam, caption_dedupe
  no_<component>      curated with that one component off; "worth" = curated - no_<component>
  curated_model       curated + semdedup + clip_filter with the bootstrap checkpoint (the `curated` row's model:
                      DataComp's bootstrap, a first model trained on the less-filtered set curates the next)
  model_no_<stage>    curated_model without semdedup or without clip_filter

Held equal in every row: configs/demo.yaml's model, optimizer, warm-up, global batch, training.steps (so samples
seen = steps x batch), training.seed, the evaluation settings, and the evaluation datasets (pinned to the list
DATASETS holds when the run starts, for decontam and evaluation alike). Not equal, by design of the system: the
BPE tokenizer is trained on each row's own captions (training/train.py), with the same vocabulary size.

Every switch is a config override (pipeline.<stage>.enabled=false, or a filter rule's threshold set to pass all).

Builds run in-process (pipelines.build.build); training and evaluation run their own entry points as
subprocesses (`python -m training.train`, `python -m evaluation.run`). Rows share committed stage outputs: a
stage whose config, and every upstream stage's, equals an already built row's is copied from it (build.py then
skips it as committed), so the download runs twice (balanced and raw pools), not once per row.
Results: benchmarks/results/curation_pays_off-<UTC time>.json (machine, git HEAD, load average sampled during the
run, dataset list and versions, every row's overrides, funnel, timings and per-dataset scores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
RESULTS = os.path.join(REPO, "benchmarks", "results")
CONFIG = os.path.join(REPO, "configs", "demo.yaml")
PORT = 18631  # own port (the demo uses 18431, curation_scaling 18531): fixed, the WARC URLs embed it

# Every rule of the filter switched off; decoding is still required (the trainer skips what does not decode).
FILTER_OFF = ["pipeline.filter.min_side=0", "pipeline.filter.max_aspect_ratio=1000000000.0",
              "pipeline.filter.min_bytes=0", "pipeline.filter.max_bytes=0", "pipeline.filter.min_words=0",
              "pipeline.filter.max_chars=1000000000", "pipeline.filter.uninformative_patterns=[]",
              "pipeline.filter.languages=[en,fr,de,es,it,pt,nl]"]
BALANCE_OFF = ["pipeline.balance.enabled=false"]
DECONTAM_OFF = ["pipeline.decontam.enabled=false"]
CAPTION_DEDUPE_OFF = ["pipeline.caption_dedupe.enabled=false"]
DEDUPE_OFF = ["pipeline.dedupe.enabled=false"]
BOOTSTRAP = "{bootstrap}"  # replaced by the bootstrap checkpoint (the curated row's run dir)
SEMDEDUP_ON = [f"pipeline.semdedup.checkpoint={BOOTSTRAP}"]
CLIP_FILTER_ON = [f"pipeline.clip_filter.checkpoint={BOOTSTRAP}"]

# row -> (overrides, what the row is, the row it is compared against for "worth")
ROWS: dict[str, tuple[list[str], str, str | None]] = {
    "raw": (BALANCE_OFF + FILTER_OFF + DEDUPE_OFF + DECONTAM_OFF + CAPTION_DEDUPE_OFF,
            "(a) everything that downloaded: extract -> download -> shard", "curated"),
    "curated": ([], "(b) balance + filter + dedupe + decontam + caption_dedupe (the demo's curation)", None),
    "no_balance": (BALANCE_OFF, "(b) without MetaCLIP balancing", "curated"),
    "no_filter": (FILTER_OFF, "(b) without the filter rules (image size/aspect, caption, language)", "curated"),
    "no_dedupe": (DEDUPE_OFF, "(b) without dedupe (exact URL/SHA-256 and near-duplicate images)", "curated"),
    "no_decontam": (DECONTAM_OFF, "(b) without decontamination against the evaluation images", "curated"),
    "no_caption_dedupe": (CAPTION_DEDUPE_OFF, "(b) without caption MinHash dedupe", "curated"),
    "curated_model": (SEMDEDUP_ON + CLIP_FILTER_ON, "(b) + semdedup + clip_filter (bootstrap model: curated's)",
                      None),
    "model_no_semdedup": (CLIP_FILTER_ON, "curated_model without semdedup", "curated_model"),
    "model_no_clip_filter": (SEMDEDUP_ON, "curated_model without clip_filter", "curated_model"),
}
BOOTSTRAP_ROW = "curated"
# The stage work dirs in pipeline order with the config section each depends on (layout: <version>/_work/<dir>).
CHAIN = [("candidates", "extract"), ("balance", "balance"), ("download", "download"), ("filtered", "filter"),
         ("dedupe", "dedupe"), ("decontam", "decontam"), ("caption_dedupe", "caption_dedupe"),
         ("semdedup", "semdedup"), ("clip_filter", "clip_filter")]

log = logging.getLogger("curation_pays_off")


def env() -> dict:
    return {**os.environ, "PYTHONPATH": REPO, "NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0",
            "WANDB_MODE": "disabled"}


def common_overrides(args, row: str, seed: int) -> list[str]:
    tasks = "[" + ",".join(args.datasets) + "]"
    return [f"storage.root={args.workdir}/root", f"web.dir={args.workdir}/web", f"web.port={PORT}",
            f"pipeline.download.allow_private=['127.0.0.1:{PORT}']", f"pipeline.version={row}",
            f"pipeline.decontam.tasks={tasks}", f"evaluation.tasks={tasks}", f"training.run={row}-s{seed}",
            f"training.steps={args.steps}", f"training.seed={seed}"]


def row_overrides(args, row: str) -> list[str]:
    """A row's config overrides, the bootstrap checkpoint filled in."""
    ckpt = os.path.join(args.workdir, "root", "checkpoints", f"{BOOTSTRAP_ROW}-s{args.seeds[0]}")
    return [o.replace(BOOTSTRAP, ckpt) for o in ROWS[row][0]]


def load(args, overrides: list[str]) -> dict:
    from pipelines import build
    from pipelines.config import load_config

    return load_config(CONFIG, overrides, build.sections())


def chain_keys(cfg: dict) -> dict[str, str]:
    """work dir -> a key of its stage's config and every upstream stage's: equal keys, equal committed output."""
    pc = cfg["pipeline"]
    key = hashlib.sha256(json.dumps({"web": asdict(cfg["web"]), "source": asdict(pc.source)}, sort_keys=True,
                                    default=str).encode()).hexdigest()
    keys = {}
    for work_dir, section in CHAIN:
        part = asdict(getattr(pc, section))
        key = hashlib.sha256((key + json.dumps(part, sort_keys=True, default=str)).encode()).hexdigest()
        keys[work_dir] = key
    return keys


def reuse_stages(args, row: str, keys: dict[str, str], built: dict[str, dict[str, str]]) -> list[str]:
    """Copy the committed work dirs that an already built row has under the same chain key; returns their names."""
    from pipelines import layout

    dst_version = os.path.join(args.workdir, "root", "synthweb", row)
    copied = []
    for work_dir, _ in CHAIN:
        src_row = next((r for r, k in built.items() if r != row and k.get(work_dir) == keys[work_dir]), None)
        if src_row is None:
            break
        src = os.path.join(args.workdir, "root", "synthweb", src_row, "_work", work_dir)
        dst = os.path.join(dst_version, "_work", work_dir)
        if not os.path.isdir(src):  # a stage the source row skipped (balance off): nothing to copy, go on
            continue
        if layout.committed(src) is None:
            break
        if not os.path.exists(os.path.join(dst, layout.COMMIT_MARKER)):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
        copied.append(f"{work_dir}<-{src_row}")
    return copied


def build_row(args, row: str, overrides: list[str], built: dict) -> dict:
    from pipelines import build
    from pipelines.schema import load_manifest

    cfg = load(args, overrides)
    keys = chain_keys(cfg)
    copied = reuse_stages(args, row, keys, built)
    t0 = time.perf_counter()
    manifest_uri = build.build(cfg)
    seconds = time.perf_counter() - t0
    built[row] = keys
    m = load_manifest(manifest_uri)
    return {"manifest": manifest_uri, "samples": m.total_samples, "shards": len(m.shards),
            "funnel": [{"stage": s["stage"], "in": s["input"], "out": s["output"], "dropped": s["dropped"]}
                       for s in m.funnel["stages"]],
            "build_s": seconds, "stages_reused": copied}


def run_logged(cmd: list[str], log_path: str) -> tuple[float, str]:
    """Run an entry point, its output to log_path; (seconds, last stdout line). Fails naming the log."""
    t0 = time.perf_counter()
    with open(log_path, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=f, text=True, check=False)
        f.write("\n--- stdout ---\n" + proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} exited {proc.returncode}: see {log_path}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return time.perf_counter() - t0, lines[-1] if lines else ""


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def train_log_points(log_path: str) -> list[dict]:
    """The trainer's JSON log lines (one per log_every steps) found in a run's log."""
    with open(log_path, errors="replace") as f:
        lines = f.readlines()
    points = []
    for line in lines:
        start = line.find('{"step"')
        if start >= 0:
            try:
                points.append(json.loads(line[start:]))
            except json.JSONDecodeError:
                continue
    return points


def train_and_eval(args, row: str, seed: int, overrides: list[str]) -> dict:
    from evaluation.results import PRIMARY, read_rows, result_uri
    from evaluation.run import checkpoint_ref
    from training.checkpoint import run_uri

    root = os.path.join(args.workdir, "root")
    run = f"{row}-s{seed}"
    logs = os.path.join(args.workdir, "logs")
    os.makedirs(logs, exist_ok=True)
    out: dict = {"seed": seed, "run": run}
    latest = os.path.join(run_uri(root, run), "latest.json")
    common = ["--config", CONFIG, *overrides]
    out["train_command"] = " ".join(["python -m training.train", *common])
    if os.path.exists(latest) and read_json(latest).get("step") == args.steps:
        out["train_s"] = None  # trained by an earlier invocation of this script (same steps): reused
    else:
        out["train_s"], _ = run_logged([sys.executable, "-m", "training.train", *common],
                                       os.path.join(logs, f"train-{run}.log"))
    points = train_log_points(os.path.join(logs, f"train-{run}.log")) if out["train_s"] is not None else []
    out["train_log"] = [{k: p.get(k) for k in ("step", "loss", "samples_per_s", "skipped_samples")} for p in points]
    out["eval_command"] = " ".join(["python -m evaluation.run", *common])
    out["eval_s"], _ = run_logged([sys.executable, "-m", "evaluation.run", *common],
                                  os.path.join(logs, f"eval-{run}.log"))
    ckpt = checkpoint_ref(run_uri(root, run))
    out.update(checkpoint=ckpt.uri, digest=ckpt.digest, step=ckpt.step)
    scores = {}
    for ds in args.datasets:
        rows = read_rows(result_uri(root, ckpt.digest, ds))
        primary = next(r for r in rows if r["status"] == "ok" and r["metric"] == PRIMARY[r["task"]])
        scores[ds] = {"metric": primary["metric"], "value": primary["value"], "chance": primary["chance"],
                      "n": primary["n"], "dataset_version": primary["dataset_version"]}
    out["scores"] = scores
    out.update(averages(scores))
    return out


def averages(scores: dict) -> dict:
    """Suite average (DataComp: the mean of every dataset's main metric), its classification and retrieval parts,
    and the sampling standard error of the suite average from the evaluation set sizes (binomial per dataset)."""
    values = [s["value"] for s in scores.values()]
    cls = [s["value"] for s in scores.values() if s["metric"] == "top1"]
    ret = [s["value"] for s in scores.values() if s["metric"] != "top1"]
    var = sum(s["value"] * (1 - s["value"]) / s["n"] for s in scores.values() if s["n"]) / len(values) ** 2
    return {"suite_average": sum(values) / len(values), "classification_mean_top1": sum(cls) / len(cls),
            "retrieval_R@1": sum(ret) / len(ret) if ret else None, "suite_average_se": math.sqrt(var)}


class LoadSampler:
    """The 1-minute load average every `every` s while the benchmark runs (a shared 2-core machine)."""

    def __init__(self, every: float = 30.0) -> None:
        import threading

        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append([dt.datetime.now(dt.UTC).strftime("%H:%M:%S"), os.getloadavg()[0]])
            self._stop.wait(self.every)

    def start(self) -> LoadSampler:
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        loads = [v for _, v in self.samples]
        return {"every_s": self.every, "min": min(loads), "mean": sum(loads) / len(loads), "max": max(loads),
                "samples": self.samples}


def git_head() -> str:
    """git describe of the checkout, or WITFORGE_CODE_VERSION (run from an exported snapshot of a commit)."""
    from pipelines.version import code_version

    return code_version()


def machine() -> dict:
    import psutil

    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform()}


def report(path: str | None = None) -> str:
    """Markdown table of a result file (default: the latest)."""
    paths = sorted(glob.glob(os.path.join(RESULTS, "curation_pays_off-*.json")))
    if not path and not paths:
        return "no results/curation_pays_off-*.json yet"
    res = read_json(path or paths[-1])
    datasets = res["datasets"]
    rows = res["rows"]
    head = ("| row | samples | suite avg (+-SE) | worth (base - row) | cls top-1 | retr. R@1 | "
            + " | ".join(datasets) + " |")
    lines = [head, "|" + "---|" * (6 + len(datasets))]
    for name, r in rows.items():
        for t in r["trainings"]:
            base = rows.get(ROWS[name][2]) if ROWS.get(name) and ROWS[name][2] else None
            worth = "-"
            if base:
                b = next((x for x in base["trainings"] if x["seed"] == t["seed"]), None)
                if b:
                    worth = f"{b['suite_average'] - t['suite_average']:+.3f}"
            lines.append(f"| {name}{'' if len(r['trainings']) == 1 else ' s' + str(t['seed'])} | {r['build']['samples']:,}"
                         f" | {t['suite_average']:.3f} +-{t['suite_average_se']:.3f} | {worth} | "
                         f"{t['classification_mean_top1']:.3f} | {t['retrieval_R@1']:.3f} | "
                         + " | ".join(f"{t['scores'][d]['value']:.3f}" for d in datasets) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0], help="training seeds (each row, each seed)")
    parser.add_argument("--workdir", default="/tmp/witforge-bench-paysoff")
    parser.add_argument("--report", action="store_true", help="print the table of the latest result and exit")
    parser.add_argument("--result", default="", help="with --report: this result file instead of the latest")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.result or None))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("pipelines", "synthweb", "curation_pays_off"):
        logging.getLogger(name).setLevel(logging.INFO)
    from evaluation.tasks import DATASETS

    args.datasets = list(DATASETS)  # pinned for the whole run: decontam and evaluation see the same suite
    batch = load(args, [])["_raw"]["training"]["batch_size"]
    started = dt.datetime.now(dt.UTC)
    load_sampler = LoadSampler().start()
    result = {"benchmark": "curation_pays_off", "started": started.isoformat(timespec="seconds"),
              "command": " ".join([sys.executable] + sys.argv), "git_head": git_head(), "machine": machine(),
              "steps": args.steps, "batch_size": batch, "samples_seen": args.steps * batch,
              "datasets": args.datasets,
              "dataset_versions": {d: DATASETS[d].version for d in args.datasets}, "rows": {}}
    path = os.path.join(RESULTS, f"curation_pays_off-{started.strftime('%Y%m%dT%H%M%SZ')}.json")
    built: dict[str, dict[str, str]] = {}
    try:
        for row in args.rows:
            own = row_overrides(args, row)
            if any("semdedup.checkpoint" in o or "clip_filter.checkpoint" in o for o in own) and \
                    BOOTSTRAP_ROW not in result["rows"] and not os.path.isdir(
                        os.path.join(args.workdir, "root", "checkpoints", f"{BOOTSTRAP_ROW}-s{args.seeds[0]}")):
                raise SystemExit(f"row {row} needs the bootstrap checkpoint: run row {BOOTSTRAP_ROW} first")
            entry = {"what": ROWS[row][1], "compared_to": ROWS[row][2], "overrides": own, "trainings": []}
            log.info("row %s: building", row)
            entry["build"] = build_row(args, row, own + common_overrides(args, row, args.seeds[0]), built)
            import ray

            ray.shutdown()  # the subprocesses start their own Ray; ours would only hold memory
            for seed in args.seeds:
                log.info("row %s seed %d: training %d steps", row, seed, args.steps)
                t = train_and_eval(args, row, seed, own + common_overrides(args, row, seed))
                entry["trainings"].append(t)
                log.info("row %s seed %d: suite average %.3f (train %s s, eval %.0f s)", row, seed,
                         t["suite_average"], t["train_s"], t["eval_s"])
            result["rows"][row] = entry
            with open(path, "w") as f:  # after every row: a stopped run keeps what it measured
                json.dump({**result, "load_1min": {"samples": load_sampler.samples}}, f, indent=2)
    finally:
        result["load_1min"] = load_sampler.stop()
        result["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        if result["rows"]:
            with open(path, "w") as f:
                json.dump(result, f, indent=2)
    print(report(path))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
