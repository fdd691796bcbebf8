"""Download throughput: the project's download stage against plain img2dataset, same URL list, same run.

    cd /work/main && export PYTHONPATH=$PWD NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0
    .venv/bin/python benchmarks/download_vs_img2dataset.py [--pages 250 --images-per-page 16 --reps 3]

Sides, run in turn within each repetition (A, B, C, A, B, C, ...) so that drifting load hits all of them:
    img2dataset       img2dataset.download with exactly the arguments the stage passes (Ray distributor, 16
                      threads per shard, 1000 samples per shard, resize_mode no + skip_reencode, sha256,
                      X-Robots-Tag directives) and the same Ray task environment (so both sides share Ray's
                      warm workers): its own urllib fetcher, no robots.txt, no SSRF guard, no caps.
    witforge          pipelines.stages.download.run with sample_retries=0: the same img2dataset call with our
                      guarded fetcher (robots.txt per origin, address checks on every hop, pinned connections,
                      time/byte/pixel caps), then the finishing round that adds reason/attempts to every shard
                      parquet, and the statistics: the same work as img2dataset, done safely.
    witforge_retries  the stage as the demo runs it (sample_retries=2): also refetches transient failures.
The headline is the median over repetitions of witforge / img2dataset samples/s; samples/s = candidate URLs /
wall seconds of the call (start-up of img2dataset's logger process and of the Ray tasks included on every side),
after --warmup unmeasured rounds (Ray starts a side's workers once, as a build does).

The URLs: the synthetic web (synthweb) served by `python -m synthweb --serve` in its own process on 127.0.0.1
(so the server does not share this process's interpreter lock with the drivers), every <img> URL of its truth
file normalised as the extract stage writes them, with slow images off (8-second stalls would measure the
timeout, not the downloader). The SSRF probes that point at the cloud metadata address are left out of the list
for every side: plain img2dataset would connect to them. The loopback probes stay (on plain img2dataset they
reach this server again; ours refuses them), as do robots-disallowed paths, opt-outs, bombs and the rest.
Results: benchmarks/results/download_vs_img2dataset-<UTC time>.json (machine, versions, every run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_candidates(truth_path: str, uri: str) -> int:
    """The truth's image URLs as extract's candidate parts (+ commit marker); returns how many."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import layout, storage
    from pipelines.funnel import StageCounts
    from pipelines.stages.html_images import make_uid
    from pipelines.urls import normalize_url

    rows = []
    for line in Path(truth_path).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["url"].startswith("data:") or r.get("ssrf_target") == "link_local":
            continue
        url = normalize_url(r["url"])
        rows.append({"uid": make_uid(url, r["alt"] or ""), "url": url, "caption": r["alt"] or "",
                     "page_url": r["page_url"], "source": "synthweb"})
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    storage.write_bytes(storage.join(uri, "part-00000.parquet"), buf.getvalue())
    layout.commit(uri, StageCounts("extract", input=len(rows), output=len(rows)))
    return len(rows)


def successes(out: str) -> int:
    import pyarrow.parquet as pq

    return sum(sum(s == "success" for s in pq.read_table(os.path.join(out, n), columns=["status"])
                   .column("status").to_pylist()) for n in os.listdir(out) if n.endswith(".parquet") and n[0].isdigit())


def run_img2dataset(cands: str, out: str, args) -> None:
    import img2dataset

    from pipelines.stages.download import DownloadConfig, _keep_sigint, _output_to_log, _ray_task_env
    from pipelines.storage import storage_env

    cfg = DownloadConfig()
    # The Ray task environment the stage gives img2dataset's tasks: both sides then run in the same Ray workers
    # (a task with another environment would make Ray start, and later kill, a second set of workers).
    env = {**storage_env(), "OPENCV_IO_MAX_IMAGE_PIXELS": str(cfg.max_image_pixels)}
    with _ray_task_env(env), _output_to_log("img2dataset"), _keep_sigint():
        img2dataset.download(
            url_list=cands, input_format="parquet", url_col="url", caption_col="caption",
            save_additional_columns=["uid", "page_url", "source"], output_format="webdataset",
            output_folder=out, resize_mode="no", skip_reencode=True, compute_hash="sha256",
            incremental_mode="incremental", number_sample_per_shard=args.shard_size,
            processes_count=cfg.processes_count, thread_count=args.thread_count, timeout=int(cfg.timeout),
            retries=cfg.retries, user_agent_token=cfg.user_agent_token,
            disallowed_header_directives=list(cfg.disallowed_header_directives), distributor="ray",
            max_shard_retry=cfg.max_shard_retry, enable_wandb=False)


def run_witforge(cands: str, out: str, args, authority: str, sample_retries: int) -> None:
    from pipelines.engines import EngineConfig
    from pipelines.stages.download import DownloadConfig, run

    cfg = DownloadConfig(thread_count=args.thread_count, number_sample_per_shard=args.shard_size,
                         allow_private=[authority], sample_retries=sample_retries)
    run(cfg, EngineConfig(), cands, out)


def serve(web_yaml: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "synthweb", "--config", str(web_yaml), "--serve"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the synthweb server did not start on 127.0.0.1:{port}")


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("img2dataset", "ray", "pyarrow", "pillow", "opencv-python-headless")
            if _has(p)} | {"python": platform.python_version()}


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=250)
    ap.add_argument("--images-per-page", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (Ray starts the workers of "
                    "each side's runtime environment once; a build pays that once, not per stage)")
    ap.add_argument("--thread-count", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--workdir", default="/tmp/witforge-bench-download")
    ap.add_argument("--sides", default="img2dataset,witforge,witforge_retries")
    args = ap.parse_args()

    import yaml

    from pipelines.engines import EngineConfig, init_ray
    from synthweb.config import WebConfig
    from synthweb.corpus import ensure_corpus

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    web = {"dir": str(work / "web"), "pages": args.pages, "images_per_page": args.images_per_page, "port": port,
           "slow": 0.0}
    corpus = ensure_corpus(WebConfig(**web))
    web_yaml = work / "web.yaml"
    web_yaml.write_text(yaml.safe_dump({"web": web}))
    cands = str(work / "candidates")
    shutil.rmtree(cands, ignore_errors=True)
    n = write_candidates(corpus.truth_path, cands)
    init_ray(EngineConfig())
    server = serve(web_yaml, port)
    sides = args.sides.split(",")
    runs = []
    try:
        for rep in range(-args.warmup, args.reps):
            for side in sides:
                out = str(work / f"out-{side}")
                shutil.rmtree(out, ignore_errors=True)
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                if side == "img2dataset":
                    run_img2dataset(cands, out, args)
                else:
                    run_witforge(cands, out, args, f"127.0.0.1:{port}", 0 if side == "witforge" else 2)
                wall = time.perf_counter() - t0
                row = {"rep": rep, "side": side, "wall_s": round(wall, 3), "samples_per_s": round(n / wall, 1),
                       "successes": successes(out), "load1_before": load}
                print(json.dumps(row), flush=True)
                if rep >= 0:
                    runs.append(row)
    finally:
        server.terminate()
        server.wait(timeout=10)

    def median(side: str) -> float:
        return statistics.median(r["samples_per_s"] for r in runs if r["side"] == side)

    summary = {side: median(side) for side in sides}
    ratios = {}
    for side in sides[1:]:
        pairs = [a["samples_per_s"] / b["samples_per_s"] for a, b in zip(
            [r for r in runs if r["side"] == side], [r for r in runs if r["side"] == sides[0]])]
        ratios[f"{side}_over_{sides[0]}"] = round(statistics.median(pairs), 3)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    result = {"when": stamp, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                         "processor": platform.processor()},
              "versions": versions(), "corpus": corpus.corpus_id, "candidates": n, "args": vars(args),
              "median_samples_per_s": summary, "median_pair_ratios": ratios, "runs": runs}
    path = REPO / "benchmarks" / "results" / f"download_vs_img2dataset-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median_samples_per_s": summary, "median_pair_ratios": ratios}))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
