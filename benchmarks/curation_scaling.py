"""Curation scaling: samples/s per core of every stage of `pipelines.build` at several corpus sizes, and how
each stage's time grows with its input (the exponent b of time ~ n^b; 1 is linear).

    export PYTHONPATH=$PWD NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0
    .venv/bin/python benchmarks/curation_scaling.py --candidates 10000      # ~3 min on 2 cores
    .venv/bin/python benchmarks/curation_scaling.py --candidates 30000      # ~7 min
    .venv/bin/python benchmarks/curation_scaling.py --candidates 100000     # ~25 min, ~2 GB under --workdir
    .venv/bin/python benchmarks/curation_scaling.py --report --candidates 10000 30000 100000   # the table

Each size builds the demo config (configs/demo.yaml: synthetic web with every planted fault, the demo's
download/filter/dedupe/shard settings) with web.pages = candidates / web.images_per_page, from scratch, in-process
through `pipelines.build.build`, on an embedded Ray and a local Spark of --cores cores that are started BEFORE
the build (engine start-up is not a stage's cost). The synthetic web is generated before the clock starts and
cached in --workdir (it is the stand-in for the internet, not part of the pipeline). The balance stage's t (pairs
per metadata entry) is scaled with the corpus (demo t x candidates / the demo's candidates), so balancing keeps
the same fraction at every size and every later stage's input grows with the corpus. A stage's time is what
build.py logs for it ("stage X done in S s: n in, m out"), so stages the build gains are measured without
changes here; the shard stage, which build.py calls directly, is timed by wrapping its `run`. The 1-minute load
average is sampled every 10 s during the build (`load_1min_during`): per-core rates on a shared machine need it.
Results: benchmarks/results/curation_scaling-<candidates>-<UTC time>.json (machine, versions, every stage).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import logging
import math
import os
import platform
import shutil
import sys
import threading
import time
from importlib import metadata
from typing import Self

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
RESULTS = os.path.join(REPO, "benchmarks", "results")
BENCH_PORT = 18531  # fixed: the URLs inside the WARC files embed it, so a cached corpus needs the same port


class _StageTimes(logging.Handler):
    """Collects build.py's "stage %s done in %.1fs: %d in, %d out" records (their args carry the exact float)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.stages: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("stage %s done in") and len(record.args) == 4:
            name, seconds, n_in, n_out = record.args
            self.stages.append({"stage": name, "seconds": float(seconds), "input": int(n_in), "output": int(n_out)})


class LoadSampler:
    """Samples the 1-minute load average (/proc/loadavg) every `every` seconds while the build runs: on a shared
    machine the per-core rates mean little without the load they were measured under."""

    def __init__(self, every: float = 10.0) -> None:
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            self.samples.append([round(time.perf_counter() - t0, 1), os.getloadavg()[0]])
            self._stop.wait(self.every)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        loads = [v for _, v in self.samples]
        return {"every_s": self.every, "min": min(loads), "mean": sum(loads) / len(loads), "max": max(loads),
                "samples": self.samples}


def _config(args, candidates: int) -> dict:
    from pipelines import build
    from pipelines.config import load_config, read_raw

    raw = read_raw(args.config)
    per_page = raw.get("web", {}).get("images_per_page", 16)
    overrides = [f"web.dir={args.workdir}/web", f"web.pages={math.ceil(candidates / per_page)}",
                 f"web.port={BENCH_PORT}", f"storage.root={args.workdir}/root-{candidates}",
                 f"pipeline.engine.ray_num_cpus={args.cores}", f"pipeline.engine.spark_master=local[{args.cores}]",
                 f"pipeline.download.allow_private=['127.0.0.1:{BENCH_PORT}']"]
    balance = raw.get("pipeline", {}).get("balance", {})
    if balance.get("enabled") and "t" in balance:
        # MetaCLIP's t is a count per entry sized for its pool (20k for 400M pairs): a fixed t would keep a
        # shrinking fraction of a growing corpus, and every stage after balance would see about the same input
        # at 30k and 100k candidates. Scaled with the corpus, balance keeps the same fraction at every size.
        pool = raw.get("web", {}).get("pages", 500) * per_page
        overrides.append(f"pipeline.balance.t={max(1, round(balance['t'] * candidates / pool))}")
    return load_config(args.config, overrides, build.sections())


def measure(args, candidates: int) -> dict:
    from pipelines import build
    from pipelines.engines import init_ray, spark_session
    from pipelines.stages import shard
    from synthweb.corpus import ensure_corpus

    cfg = _config(args, candidates)
    t0 = time.perf_counter()
    corpus = ensure_corpus(cfg["web"])
    generate_s = time.perf_counter() - t0
    shutil.rmtree(cfg["storage"].root, ignore_errors=True)  # a fresh build: no committed stage to skip
    init_ray(cfg["pipeline"].engine)
    spark_session(cfg["pipeline"].engine)
    times = _StageTimes()
    logging.getLogger("pipelines.build").addHandler(times)
    run_shard, shard_time = shard.run, []

    def timed_shard(*a, **kw):
        start = time.perf_counter()
        infos, counts = run_shard(*a, **kw)
        shard_time.append({"stage": "shard", "seconds": time.perf_counter() - start, "input": counts.input,
                           "output": counts.output})
        return infos, counts

    shard.run = timed_shard
    try:
        with LoadSampler() as load:
            t0 = time.perf_counter()
            manifest = build.build(cfg)
            build_s = time.perf_counter() - t0
    finally:
        shard.run = run_shard
        logging.getLogger("pipelines.build").removeHandler(times)
    if not any(s["stage"] == "shard" for s in times.stages):  # unless build.py logs the shard stage itself
        times.stages += shard_time
    for s in times.stages:
        s["samples_per_s"] = s["input"] / s["seconds"] if s["seconds"] else None
        s["samples_per_s_per_core"] = s["samples_per_s"] / args.cores if s["samples_per_s"] else None
    if not args.keep:
        shutil.rmtree(cfg["storage"].root, ignore_errors=True)
    return {"candidates_requested": candidates, "corpus_id": corpus.corpus_id, "generate_s": generate_s,
            "build_s": build_s, "manifest": manifest, "cores": args.cores, "stages": times.stages,
            "balance_t": cfg["pipeline"].balance.t if cfg["pipeline"].balance.enabled else None,
            "load_1min_during": load.summary()}


def _machine() -> dict:
    import psutil

    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_1min_before": os.getloadavg()[0]}


def _versions() -> dict:
    out = {}
    for pkg in ("ray", "pyspark", "img2dataset", "pillow", "imagehash", "numpy", "pyarrow", "webdataset", "langid"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    from pipelines.version import code_version

    out["witforge"] = code_version()
    return out


def growth_exponent(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(seconds) against log(n): 1.0 is linear scaling."""
    pts = [(math.log(n), math.log(t)) for n, t in points if n > 0 and t > 0]
    if len(pts) < 2:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    var = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / var if var else None


def linear_fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(a, c) of the least-squares line seconds = a + c * n: a is the stage's fixed cost (scheduling, engine
    jobs, retry back-off), c its cost per sample. Linear scaling means the points lie on it, whatever a is."""
    if len(points) < 2:
        return None
    mx, my = sum(n for n, _ in points) / len(points), sum(t for _, t in points) / len(points)
    var = sum((n - mx) ** 2 for n, _ in points)
    if not var:
        return None
    c = sum((n - mx) * (t - my) for n, t in points) / var
    return my - c * mx, c


def report(only: list[int] | None = None) -> str:
    """Markdown: per stage and size, input, seconds and samples/s/core (latest result per size, restricted to
    the sizes in `only` if given), + the exponent and the linear fit over those sizes."""
    latest: dict[int, dict] = {}
    for path in sorted(glob.glob(os.path.join(RESULTS, "curation_scaling-*.json"))):
        with open(path) as f:
            res = json.load(f)
        latest[res["run"]["candidates_requested"]] = res  # files sort by time within a size
    if only:
        latest = {n: r for n, r in latest.items() if n in only}
    if not latest:
        return "no results/curation_scaling-*.json yet"
    sizes = sorted(latest)
    stages = list(dict.fromkeys(s["stage"] for n in sizes for s in latest[n]["run"]["stages"]))
    head = ("| stage | " + " | ".join(f"{n:,} cand.: in / s / samples/s/core" for n in sizes)
            + " | exponent b | fixed s + marginal samples/s/core |")
    lines = [head, "|" + "---|" * (len(sizes) + 3)]
    for stage in stages + ["build (all stages)"]:
        cells, points = [], []
        for n in sizes:
            run = latest[n]["run"]
            if stage.startswith("build"):
                s = {"input": run["stages"][0]["input"], "seconds": run["build_s"]}
                s["samples_per_s_per_core"] = s["input"] / s["seconds"] / run["cores"]
            else:
                s = next((x for x in run["stages"] if x["stage"] == stage), None)
            if s is None:
                cells.append("-")
                continue
            cells.append(f"{s['input']:,} / {s['seconds']:.1f} / {s['samples_per_s_per_core'] or 0:.0f}")
            points.append((s["input"], s["seconds"]))
        b, fit = growth_exponent(points), linear_fit(points)
        cores = latest[sizes[-1]]["run"]["cores"]
        line = "-" if not fit or fit[1] <= 0 else f"{fit[0]:.1f} + {1 / fit[1] / cores:.0f}"
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {'-' if b is None else f'{b:.2f}'} | {line} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, nargs="*", default=[], help="corpus sizes (<img> candidates)")
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "demo.yaml"))
    parser.add_argument("--workdir", default="/tmp/witforge-bench-curation")
    parser.add_argument("--cores", type=int, default=2, help="Ray CPUs and Spark local[N] threads")
    parser.add_argument("--keep", action="store_true", help="keep each size's dataset version (for explain)")
    parser.add_argument("--report", action="store_true", help="print the table from results/ and exit")
    args = parser.parse_args(argv)
    if args.report or not args.candidates:
        print(report(args.candidates))  # with --report, --candidates picks the sizes to tabulate
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("pipelines", "synthweb"):
        logging.getLogger(name).setLevel(logging.INFO)
    os.makedirs(RESULTS, exist_ok=True)
    for n in args.candidates:
        machine, started = _machine(), dt.datetime.now(dt.UTC)
        run = measure(args, n)
        machine["load_1min_after"] = os.getloadavg()[0]
        out = {"benchmark": "curation_scaling", "started": started.isoformat(timespec="seconds"),
               "command": " ".join([sys.executable] + sys.argv), "machine": machine, "versions": _versions(),
               "run": run}
        path = os.path.join(RESULTS, f"curation_scaling-{n}-{started.strftime('%Y%m%dT%H%M%SZ')}.json")
        with open(path, "w") as f:
            json.dump(out, f, indent=2)
        print(json.dumps({s["stage"]: round(s["seconds"], 1) for s in run["stages"]}), "->", path)
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
