"""The whole chain at tiny scale through the real entry points: synthetic web -> build (Spark, img2dataset, Ray)
-> DeepSpeed training in Ray Train -> Ray evaluation -> dashboard: `run_chain` and `check_outputs`, which
tests/test_faults_s3.py runs on an S3 server behind a proxy that throttles a share of requests (file:// is the
same code path, run by the killed-build test below and the stage tests). Here: the resume acceptance, a build
SIGKILLed five times at seeded random points (driver, Ray processes and Spark's JVM) and rerun each time ends
with exactly the sample set of an uninterrupted build."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import psutil
import pytest
from conftest import REPO

from pipelines import explain, layout, storage
from pipelines.schema import load_manifest
from tests.pipelines_build_data import sample_uids, tiny_build, tiny_config

pytestmark = pytest.mark.slow


def run_chain(config: str, capsys) -> dict:
    from evaluation import dashboard
    from evaluation import run as eval_run
    from pipelines import build
    from training import train

    assert build.main(["--config", config]) == 0
    manifest_uri = capsys.readouterr().out.strip().splitlines()[-1]
    ckpt = train.main(["--config", config])
    assert eval_run.main(["--config", config]) == 0
    eval_out = capsys.readouterr().out
    assert dashboard.main(["--config", config]) == 0
    dash = capsys.readouterr().out.strip().splitlines()[-1]
    return {"manifest": manifest_uri, "checkpoint": ckpt, "eval_out": eval_out, "dashboard": dash}


def check_outputs(out: dict, root: str) -> None:
    manifest = load_manifest(out["manifest"])
    assert out["manifest"] == storage.join(root, "synthweb", "v1", "manifest.json")
    uids = sample_uids(out["manifest"])
    assert manifest.total_samples == len(uids) == len(set(uids)) > 20
    stages = {s["stage"]: s for s in manifest.funnel["stages"]}
    # The funnel's stages are the committed stage dirs in commit order (what explain walks), then shard.
    version = out["manifest"].rsplit("/", 1)[0]
    assert list(stages) == [s.stage for s in layout.stage_dirs(version)] + ["shard"]
    assert list(stages)[:3] == ["extract", "download", "filter"] and "dedupe" in stages
    assert stages["shard"]["output"] == manifest.total_samples
    # Every stage's input is the previous stage's output: nothing vanishes between stages.
    order = list(stages.values())
    assert all(a["output"] == b["input"] for a, b in zip(order, order[1:]))
    for shard in manifest.shards:
        assert storage.exists(storage.join(root, "synthweb", "v1", shard.path))
    assert out["checkpoint"].startswith(storage.join(root, "checkpoints", "demo", "step_"))
    rows = [json.loads(line) for uri in storage.walk_files(storage.join(root, "eval", "results"))
            for line in storage.read_bytes(uri).decode().splitlines() if line.strip()]
    assert {r["dataset"] for r in rows} == {"colour", "shape", "heldout_combo", "retrieval"}
    for key in ("model", "checkpoint", "step", "dataset", "task", "metric", "value", "n", "code_version",
                "config_hash", "time"):
        assert all(key in r for r in rows), key
    html = storage.read_bytes(out["dashboard"]).decode()
    assert "<svg" in html and "heldout_combo" in html


# The resume acceptance: five kills at seeded random points, then a final uninterrupted rerun.
KILL_SEED = 20261127
KILLS = 5
# Set in the killed build's environment: Ray's and Spark's processes inherit it, and keep it once the driver's
# death re-parents them, so the sweep after each kill finds every one of them.
TAG_VAR = "WITFORGE_KILL_TEST_TAG"


def _engine_processes(driver: psutil.Process) -> dict[str, list[psutil.Process]]:
    """The driver's descendants that belong to Ray (GCS, raylet, workers, agents) or Spark (JVM, Python daemon)."""
    groups: dict[str, list[psutil.Process]] = {"ray": [], "spark": []}
    for p in driver.children(recursive=True):
        try:
            name, cmd = p.name(), " ".join(p.cmdline())
        except psutil.Error:
            continue
        if name == "java" or "pyspark" in cmd or "org.apache.spark" in cmd:
            groups["spark"].append(p)
        elif name.startswith("ray::") or "/ray/" in cmd or name in ("raylet", "gcs_server"):
            groups["ray"].append(p)
    return groups


def _sigkill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _tagged(tag: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(TAG_VAR) == tag:
                out.append(p)
        except (psutil.Error, OSError):
            continue
    return out


def _kill_build(proc: subprocess.Popen, tag: str, rng: random.Random) -> str:
    """SIGKILL the driver and its Ray and Spark processes, in a seeded order; returns what was done."""
    try:
        driver = psutil.Process(proc.pid)
        engines = _engine_processes(driver)
    except psutil.NoSuchProcess:  # it finished just now: only the sweep below is left to do
        driver, engines = None, {"ray": [], "spark": []}
    workers = engines["ray"] + engines["spark"]
    what = f"{len(engines['ray'])} Ray + {len(engines['spark'])} Spark processes"
    pause = rng.uniform(0.0, 1.0)
    if rng.random() < 0.5:  # the workers die first and the driver lives on a moment (it may see the failure)
        _sigkill(workers)
        time.sleep(pause)
        _sigkill([driver] if driver else [])
        order = f"{what}, then the driver after {pause:.2f}s"
    else:
        _sigkill([driver] if driver else [])
        time.sleep(pause)
        _sigkill(workers)
        order = f"the driver, then {what} after {pause:.2f}s"
    proc.wait()
    # Anything spawned after the snapshot, or re-parented before it was seen, still carries the tag.
    leftovers = _tagged(tag)
    _sigkill(leftovers)
    _, alive = psutil.wait_procs(leftovers, timeout=30)
    assert not alive, f"processes of the killed build survived: {alive}"
    return order


@dataclass
class KillPoint:
    stage: str  # the stage to kill in (its name in funnel.json)
    after: str | None  # the stage whose commit starts it (None: the build's start)
    delay: float  # seconds into the stage
    ends: list[str]  # files (relative to the version) whose appearance ends the stage: kill then at the latest


def _kill_points(ref_version: str, rng: random.Random) -> list[KillPoint]:
    """KILLS points on the reference build's timeline, one drawn uniformly (seeded) in each of KILLS equal
    stretches of it, so the kills spread over the whole build and long stages (download) take more of them.
    Each point is a stage (every committed stage under _work/ in pipeline order, then shard) and an offset."""
    stages = layout.stage_dirs(ref_version)
    start = os.path.getmtime(os.path.join(ref_version, "config.yaml"))  # written as the build starts
    ends = [s.committed_at for s in stages] + [os.path.getmtime(os.path.join(ref_version, "manifest.json"))]
    names = [s.stage for s in stages] + ["shard"]
    # A stage ends with its marker; the shard stage with its last shard's commit record (before the manifest).
    shard_dir = os.path.join(ref_version, "_work", layout.SHARD_RECORDS)
    records = sorted(f"_work/{layout.SHARD_RECORDS}/{n}" for n in os.listdir(shard_dir))
    markers = [[f"_work/{s.dir}/{layout.COMMIT_MARKER}"] for s in stages] + [records]
    begins = [start] + ends[:-1]
    total = ends[-1] - start
    points = []
    for k in range(KILLS):
        t = start + rng.uniform(k * total / KILLS, (k + 1) * total / KILLS)
        i = next(j for j, end in enumerate(ends) if t < end or j == len(ends) - 1)
        points.append(KillPoint(names[i], names[i - 1] if i else None, t - begins[i], markers[i]))
    return points


def _stage_started(point: KillPoint, version: str, log_path) -> bool:
    """The stage before `point.stage` is done in this run: committed and logged by build.py as done or skipped."""
    if point.after is None:
        return os.path.exists(os.path.join(version, "config.yaml"))
    text = log_path.read_text(errors="replace")
    return f"stage {point.after} done in" in text or f"stage {point.after} already committed" in text


def _diagnose(ref_version: str, version: str, uids: set[str]) -> str:
    """What the lineage of each differing sample says in both builds."""
    lines = []
    for uid in sorted(uids)[:5]:
        a, b = explain.explain(ref_version, uid)["outcome"], explain.explain(version, uid)["outcome"]
        lines.append(f"{uid}: uninterrupted {a}\n    resumed {b}")
    return "\n".join(lines)


def test_build_killed_five_times_resumes_without_loss_or_duplicates(tmp_path, ray_local, spark, capsys):
    """Kill a build (a separate process with its own Ray and Spark) at 5 seeded random points, rerunning it each
    time, then let it finish: its manifest lists exactly the shards (same samples, same bytes) and funnel of an
    uninterrupted build of the same config under another root."""
    from pipelines import build

    ref = tiny_build()
    ref_manifest = load_manifest(ref.manifest)
    ref_uids = sample_uids(ref.manifest)
    root = str(tmp_path / "data")
    cfg = tiny_config(tmp_path, root, ref.web_dir, ref.port)
    version = os.path.join(root, "synthweb", "v1")
    manifest = os.path.join(version, "manifest.json")
    rng = random.Random(KILL_SEED)
    points = _kill_points(ref.version, rng)
    tag = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the killed build starts its own Ray
    env.update(PYTHONPATH=str(REPO), **{TAG_VAR: tag})
    history = []
    for i, point in enumerate(points):
        log_path = tmp_path / f"run{i}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "pipelines.build", "--config", cfg], cwd=REPO, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while not _stage_started(point, version, log_path) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert _stage_started(point, version, log_path), (
            f"run {i}: {point} never began:\n{log_path.read_text()[-3000:]}")
        # Into the stage by the drawn delay, or right as it ends if this run gets through it sooner.
        until = time.time() + point.delay
        while (time.time() < until and not all(os.path.exists(os.path.join(version, f)) for f in point.ends)
               and proc.poll() is None):
            time.sleep(0.02)
        assert proc.poll() is None or os.path.exists(manifest), f"run {i} failed:\n{log_path.read_text()[-3000:]}"
        committed = [s.stage for s in layout.stage_dirs(version) if s.counts]
        how = _kill_build(proc, tag, rng)
        if os.path.exists(manifest):  # the kill came after the manifest (while Spark/Ray shut down): complete
            got = load_manifest(manifest)
            assert all(os.path.exists(os.path.join(version, s.path)) for s in got.shards)
            committed.append("manifest")
        history.append(f"kill {i + 1}: {point.delay:.1f}s into {point.stage} (committed: {committed or 'none'}): {how}")
        with capsys.disabled():  # what the kills hit, in the test log
            print(("\n" if i == 0 else "") + history[-1])
        # Lineage of a partial version: a sample the clean build kept is never reported dropped.
        assert explain.explain(version, ref_uids[i])["outcome"]["status"] in ("kept", "in_progress", "unknown")

    assert build.main(["--config", cfg]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == manifest
    uids = sample_uids(manifest)
    assert len(set(uids)) == len(uids), "duplicates in the resumed build"
    differ = set(uids) ^ set(ref_uids)
    assert not differ, "\n".join([f"{len(differ)} samples differ", *history, _diagnose(ref.version, version, differ)])
    got = load_manifest(manifest)
    assert got.shards == ref_manifest.shards  # same cut, same bytes: nothing lost, duplicated or rebuilt differently
    assert got.funnel["stages"] == ref_manifest.funnel["stages"]
