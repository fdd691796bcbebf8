"""The whole chain at tiny scale through the real entry points: synthetic web -> build (Spark, img2dataset, Ray)
-> DeepSpeed training in Ray Train -> Ray evaluation -> dashboard; once on a local root and once on an S3 server,
proving file:// and s3:// are one code path. Plus: a build killed mid-way and rerun loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, free_port
from pipelines import storage
from pipelines.schema import load_manifest

pytestmark = pytest.mark.slow

TINY_MODEL = {"embed_dim": 16, "image_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 1,
              "vision_heads": 2, "vocab_size": 300, "context_length": 16, "text_width": 32, "text_layers": 1,
              "text_heads": 2}


def tiny_config(tmp_path, root: str, web_dir: str, port: int) -> str:
    cfg = {
        "storage": {"root": root},
        "web": {"dir": web_dir, "pages": 12, "images_per_page": 10, "pages_per_warc": 4, "port": port,
                "slow": 0.0},
        "pipeline": {"download": {"thread_count": 8}, "shard": {"samples_per_shard": 25}},
        "training": {"model": TINY_MODEL, "steps": 3, "batch_size": 8, "warmup_steps": 1, "log_every": 1,
                     "shuffle_buffer": 20},
        "evaluation": {"samples_per_class": 2, "retrieval_pairs": 10, "image_size": 40,
                       "tasks": ["colour", "shape", "heldout_combo", "retrieval"]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def sample_uids(manifest_uri: str) -> list[str]:
    manifest = load_manifest(manifest_uri)
    base = manifest_uri.rsplit("/", 1)[0]
    uids: list[str] = []
    for shard in manifest.shards:
        with storage.open_uri(storage.join(base, shard.parquet)) as f:
            uids += pq.read_table(f, columns=["uid"]).column("uid").to_pylist()
    return uids


def run_chain(config: str, capsys) -> dict:
    from evaluation import dashboard, run as eval_run
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
    assert list(stages) == ["extract", "download", "filter", "dedupe", "shard"]
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


def test_chain_on_local_root(tmp_path, ray_local, spark, capsys):
    root = str(tmp_path / "data")
    config = tiny_config(tmp_path, root, str(tmp_path / "web"), free_port())
    out = run_chain(config, capsys)
    check_outputs(out, root)
    # A second build with the same config finds the version built and changes nothing.
    before = storage.read_bytes(out["manifest"])
    from pipelines import build

    assert build.main(["--config", config]) == 0
    assert storage.read_bytes(out["manifest"]) == before


def test_chain_on_s3_root(tmp_path, s3_bucket, ray_local, spark, capsys):
    root = s3_bucket + "/witforge"
    config = tiny_config(tmp_path, root, str(tmp_path / "web"), free_port())
    out = run_chain(config, capsys)
    check_outputs(out, root)
    assert not os.path.exists(tmp_path / "data")  # nothing went to local disk but the synthetic web itself


def test_killed_build_resumes_without_loss_or_duplicates(tmp_path, ray_local, spark, capsys):
    """SIGKILL a build (a separate process) once its filter stage has committed, rerun it, and compare the
    sample set with an uninterrupted build of the same config under another root."""
    from pipelines import build

    web_dir, port = str(tmp_path / "web"), free_port()
    (tmp_path / "clean").mkdir()
    clean_cfg = tiny_config(tmp_path / "clean", str(tmp_path / "clean" / "data"), web_dir, port)
    assert build.main(["--config", clean_cfg]) == 0
    clean_manifest = capsys.readouterr().out.strip().splitlines()[-1]

    (tmp_path / "killed").mkdir()
    root = str(tmp_path / "killed" / "data")
    cfg = tiny_config(tmp_path / "killed", root, web_dir, port)
    marker = os.path.join(root, "synthweb", "v1", "_work", "filtered", "_COMMITTED.json")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.build", "--config", cfg], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert os.path.exists(marker), "the build never reached the filter stage"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every worker it started
    proc.wait()
    manifest = os.path.join(root, "synthweb", "v1", "manifest.json")
    assert not os.path.exists(manifest), "a manifest is visible for an incomplete version"

    assert build.main(["--config", cfg]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == manifest
    assert sorted(sample_uids(manifest)) == sorted(sample_uids(clean_manifest))
    assert len(set(sample_uids(manifest))) == len(sample_uids(manifest))
