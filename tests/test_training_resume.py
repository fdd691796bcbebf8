"""Exact resume through the real launchers: `torchrun -m training.train` with 2 gloo ranks on CPU.

- stop at step 3 and resume: the loss at steps 4-6 equals the uninterrupted run's (within 1e-4);
- SIGKILL the whole 2-rank run mid-epoch, resume from `latest`: every sample of each epoch is trained on
  exactly once (the uid logs the checkpoints carry are counted);
- resume a 2-rank checkpoint on 1 rank (weights, optimizer and schedule carry over, the run completes);
- a NaN loss stops the run naming the step and the batch's uids.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from training.toydata import toy_uid, write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"embed_dim": 16, "image_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 1,
              "vision_heads": 2, "vocab_size": 300, "context_length": 16, "text_width": 32, "text_layers": 1,
              "text_heads": 2}
N, PER_SHARD = 64, 16  # 4 shards: each of 2 ranks reads 2 shards = 32 samples = 8 steps of 4 per epoch


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    return write_toy_dataset(str(tmp_path_factory.mktemp("toy")), n=N, samples_per_shard=PER_SHARD, px=(40, 48))


def _config(tmp_path: Path, manifest: str, **training) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "storage": {"root": str(tmp_path / "out")},
        "training": {"model": TINY_MODEL, "manifest": manifest, "steps": 6, "batch_size": 8, "warmup_steps": 2,
                     "log_every": 1, "data_mode": "epoch", "shuffle_buffer": 0, "zero_stage": 2,
                     "tensorboard": False, **training},
    }))
    return str(path)


def _torchrun_cmd(config: str, *overrides: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            "-m", "training.train", "--config", config, *overrides]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def _run(config: str, *overrides: str, nproc: int = 2, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(_torchrun_cmd(config, *overrides, nproc=nproc), cwd=ROOT, env=_env(), text=True,
                          capture_output=True, timeout=300, check=False)
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _losses(stdout: str) -> dict[int, float]:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("{") and '"loss"' in line:
            record = json.loads(line)
            out[record["step"]] = record["loss"]
    return out


def test_resume_continues_the_loss_curve(tmp_path, toy):
    full = _losses(_run(_config(tmp_path / "a", toy, run="full")).stdout)
    assert sorted(full) == [1, 2, 3, 4, 5, 6]
    part = _config(tmp_path / "b", toy, run="part")
    first = _losses(_run(part, "training.stop_after=3").stdout)
    assert sorted(first) == [1, 2, 3]
    refused = _run(part, ok=False)  # the run has checkpoints: a fresh start must not overwrite them silently
    assert refused.returncode != 0 and "training.resume=latest" in refused.stderr
    second = _losses(_run(part, "training.resume=latest").stdout)
    assert sorted(second) == [4, 5, 6]
    for step in (1, 2, 3):
        assert first[step] == pytest.approx(full[step], abs=1e-6)
    for step in (4, 5, 6):
        assert second[step] == pytest.approx(full[step], abs=1e-4), (step, second[step], full[step])


def _latest_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "latest.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _uid_log(run_dir: Path) -> dict[tuple[int, int], list[str]]:
    """(rank, step) -> uids, from every checkpoint's uids/rank<r>.jsonl."""
    seen: dict[tuple[int, int], list[str]] = {}
    for path in run_dir.glob("step_*/uids/rank*.jsonl"):
        rank = int(path.stem.removeprefix("rank"))
        for line in path.read_text().splitlines():
            record = json.loads(line)
            seen[(rank, record["step"])] = record["uids"]
    return seen


def test_sigkill_mid_epoch_then_resume_sees_each_sample_once_per_epoch(tmp_path, toy):
    steps = 16  # two epochs of 8 steps
    config = _config(tmp_path, toy, run="killed", steps=steps, checkpoint_every=2, log_uids=True, log_every=4)
    run_dir = tmp_path / "out" / "checkpoints" / "killed"
    proc = subprocess.Popen(_torchrun_cmd(config), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while _latest_step(run_dir) < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-epoch, no chance to clean up
    proc.wait()
    killed_at = _latest_step(run_dir)
    assert 4 <= killed_at < 8, f"the kill should land in the first epoch (latest step {killed_at})"
    _run(config, "training.resume=latest")
    assert _latest_step(run_dir) == steps
    log = _uid_log(run_dir)
    assert sorted(log) == [(r, s) for r in (0, 1) for s in range(1, steps + 1)]
    everything = {toy_uid(0, i) for i in range(N)}
    for epoch in (0, 1):
        uids = [u for (r, s), batch in log.items() if epoch * 8 < s <= (epoch + 1) * 8 for u in batch]
        counts = collections.Counter(uids)
        assert set(counts) == everything and set(counts.values()) == {1}, f"epoch {epoch}: {len(uids)} samples"


def test_resume_on_a_different_world_size(tmp_path, toy):
    config = _config(tmp_path, toy, run="resize", zero_stage=3)
    _run(config, "training.stop_after=2")
    proc = _run(config, "training.resume=latest", "training.zero_stage=1", nproc=1)
    assert sorted(_losses(proc.stdout)) == [3, 4, 5, 6]
    assert "data stream restarts" in proc.stderr  # the one thing that cannot carry over is said out loud
    state = json.loads((tmp_path / "out" / "checkpoints" / "resize" / "step_00000006" / "trainer_state.json")
                       .read_text())
    assert state["world_size"] == 1 and state["step"] == 6 and state["optimizer_step"] == 6


def test_nan_loss_stops_with_step_and_uids(tmp_path, toy):
    proc = _run(_config(tmp_path, toy, run="nan", lr=1e30, warmup_steps=0, grad_clip=0.0), ok=False)
    assert proc.returncode != 0
    assert "non-finite loss" in proc.stderr and "batch uids:" in proc.stderr
    named = proc.stderr.split("batch uids:")[1].split()[0].strip(",")
    assert named in {toy_uid(0, i) for i in range(N)}


def test_deepspeed_launcher_runs_the_same_entry(tmp_path, toy):
    """`deepspeed --module training.train` (the launcher appends --local_rank=N; ranks come from the env)."""
    config = _config(tmp_path, toy, run="dsl", steps=4, log_every=2, data_mode="resampled")
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_accelerators", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "--module", "training.train", "--config", config]
    proc = subprocess.run(cmd, cwd=ROOT, env={**_env(), "DS_ACCELERATOR": "cpu"}, text=True, capture_output=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(_losses(proc.stdout)) == [2, 4]
    assert str(tmp_path / "out" / "checkpoints" / "dsl" / "step_00000004") in proc.stdout.splitlines()
