"""The ops CLI (`python -m pipelines.jobs`) against a real Ray cluster with token authentication on.

The module starts its own head (`ray start --head --block` on 127.0.0.1, its own ports, temp dir and HOME, so the
user's ~/.ray is never read or written) and stops exactly the processes it started. Every CLI call is a
subprocess: Ray reads the auth mode and token once per process, so a client without the token must be another
process.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from conftest import REPO, free_port

VENV_BIN = str(Path(sys.executable).parent)
CODE_VERSION = "0123abcd4567"  # fixed: other work in this checkout must not change the ids between submits


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_") and k not in ("PYTHONPATH", "WITFORGE_CODE_VERSION")}
    env.update(HOME=str(home), PATH=VENV_BIN + os.pathsep + env.get("PATH", ""), RAY_USAGE_STATS_ENABLED="0",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


@pytest.fixture(scope="module")
def cluster():
    """A token-authenticated Ray head on loopback; yields (dashboard URL, token, scratch dir)."""
    # Short path: Ray's unix sockets live under the temp dir and have a ~107-byte limit.
    root = Path(tempfile.mkdtemp(prefix="wf-ops-", dir="/tmp"))
    (root / "home").mkdir()
    token = secrets.token_hex(32)
    dash = free_port()
    env = _base_env(root / "home")
    # No PYTHONPATH: jobs must import the project from the uploaded working_dir.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    ports = {f"--{name}": str(free_port()) for name in (
        "port", "ray-client-server-port", "node-manager-port", "object-manager-port", "metrics-export-port",
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port")}
    cmd = [str(Path(VENV_BIN) / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--temp-dir", str(root / "ray"),
           "--num-cpus", "1", "--include-dashboard", "true", "--disable-usage-stats",
           *[x for kv in ports.items() for x in kv]]
    with open(root / "ray-start.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}: {(root / 'ray-start.log').read_text()[-3000:]}")
            try:
                r = requests.get(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=2)
                if r.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dashboard never answered: {(root / 'ray-start.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, token, root
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    """Stop only this cluster: `ray stop` would kill every Ray on the machine (other tests' too)."""
    try:
        tree = [proc, *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    # --block handles SIGTERM by shutting its own processes down.
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs([p for p in tree if isinstance(p, psutil.Process)], timeout=10)
    proc.wait(timeout=5)


def cli(args: list[str], url: str, home: Path, token: str | None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = _base_env(home)
    env.update(RAY_ADDRESS=url, PYTHONPATH=str(REPO), WITFORGE_CODE_VERSION=CODE_VERSION)
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token  # RAY_AUTH_MODE left unset: the CLI turns token mode on by itself
    return subprocess.run([sys.executable, "-m", "pipelines.jobs", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def job_template(root: Path, name: str, entrypoint: str) -> Path:
    """A job template beside configs/jobs/defaults.yaml's values, with the cluster's own Python (no pip)."""
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "entrypoint": entrypoint, "deps": {"mode": "image"},
                                    "resources": {"num_cpus": 0, "memory_gb": 0}}))
    return path


def submission_id(out: str) -> str:
    line = next(l for l in out.splitlines() if l.startswith(("submitted ", "witforge-")))
    return line.split()[1] if line.startswith("submitted ") else line.split(":")[0]


def test_submit_follow_logs_and_no_duplicate(cluster):
    url, token, root = cluster
    home = root / "home"
    # A real module entry point run from the uploaded working_dir, then a look at what the upload carried.
    probe = ("import os, pipelines.version as v; print('WF-PROBE', v.code_version(), "
             "sorted(n for n in os.listdir('.') if n in ('.git', '.venv', 'data', 'pipelines', 'configs')))")
    tpl = job_template(root, "probe", f"python -m pipelines.build --help && python -c \"{probe}\" {{config}}")
    first = cli(["submit", str(tpl)], url, home, token)
    assert first.returncode == 0, first.stdout + first.stderr
    sid = submission_id(first.stdout)
    assert sid.startswith("witforge-probe-") and sid.endswith("-0123abcd")
    assert "usage: python -m pipelines.build" in first.stdout
    # The code came from the upload: no .git, .venv or data; the version travelled in the environment.
    assert f"WF-PROBE {CODE_VERSION} ['configs', 'pipelines']" in first.stdout
    assert f"{sid}: SUCCEEDED" in first.stdout

    logs = cli(["logs", sid], url, home, token)
    assert logs.returncode == 0 and "WF-PROBE" in logs.stdout and token not in logs.stdout

    again = cli(["submit", str(tpl)], url, home, token)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{sid}: already submitted (SUCCEEDED); not starting a duplicate" in again.stdout
    listed = cli(["list", "--json", "--pipeline", "probe"], url, home, token)
    rows = [json.loads(l) for l in listed.stdout.splitlines()]
    assert [r["submission_id"] for r in rows] == [sid] and rows[0]["code_version"] == CODE_VERSION

    status = cli(["status", sid], url, home, token)
    assert status.returncode == 0 and f"{sid}: SUCCEEDED" in status.stdout and "witforge_pipeline: probe" in status.stdout


def test_failed_job_exits_nonzero_and_stop(cluster):
    url, token, root = cluster
    home = root / "home"
    tpl = job_template(root, "boom", "python -c \"import sys; print('about to fail'); sys.exit(7)\" {config}")
    failed = cli(["submit", str(tpl)], url, home, token)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "about to fail" in failed.stdout and ": FAILED" in failed.stdout and "-r2" in failed.stdout

    tpl = job_template(root, "sleeper", "python -c \"import time; print('sleeping', flush=True); time.sleep(600)\" {config}")
    started = cli(["submit", str(tpl), "--no-wait"], url, home, token)
    assert started.returncode == 0, started.stdout + started.stderr
    sid = submission_id(started.stdout)
    stopped = cli(["stop", sid], url, home, token)
    assert stopped.returncode == 0 and f"{sid}: STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
    status = cli(["status", sid], url, home, token)
    assert status.returncode == 3 and f"{sid}: STOPPED" in status.stdout
    missing = cli(["status", "witforge-no-such-job"], url, home, token)
    assert missing.returncode == 5 and "no such job" in missing.stderr


def test_submission_without_the_token_is_refused(cluster):
    url, token, root = cluster
    body = {"entrypoint": "echo pwned", "submission_id": "tokenless"}
    assert requests.post(f"{url}/api/jobs/", json=body, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer " + secrets.token_hex(32)}
    assert requests.post(f"{url}/api/jobs/", json=body, headers=wrong, timeout=10).status_code == 403

    empty_home = root / "empty-home"
    empty_home.mkdir(exist_ok=True)
    tpl = job_template(root, "tokenless", "echo pwned {config}")
    # Without any token Ray's client refuses before sending (the server's 401 is checked above).
    no_token = cli(["submit", str(tpl)], url, empty_home, None)
    assert no_token.returncode == 4 and "couldn't find an authentication token" in no_token.stderr, no_token.stderr
    bad_token = cli(["list"], url, empty_home, secrets.token_hex(32))
    assert bad_token.returncode == 4 and "Authentication failed" in bad_token.stderr, bad_token.stderr
    # Nothing reached the cluster: the only jobs are those the token holder submitted.
    jobs = requests.get(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    assert all("pwned" not in j["entrypoint"] for j in jobs)


# --- the submission a template resolves to (no cluster) ---------------------------------------------------------

def test_submission_id_is_deterministic_and_pins_every_requirement(monkeypatch):
    import datetime as dt

    from packaging.requirements import Requirement

    from pipelines.jobs import identity
    from pipelines.jobs.spec import load_spec, resolve

    monkeypatch.setattr(identity, "code_version", lambda: "v0.1-3-g0123abcd4567")
    spec = load_spec("nightly")
    day = dt.date(2026, 1, 2)
    a = resolve(spec, overrides=["storage.root=s3://b/p"], today=day)
    assert a.submission_id == resolve(spec, overrides=["storage.root=s3://b/p"], today=day).submission_id
    assert re.fullmatch(r"witforge-nightly-[0-9a-f]{10}-0123abcd-20260102", a.submission_id)
    assert resolve(spec, overrides=["storage.root=s3://b/q"], today=day).submission_id != a.submission_id
    assert a.metadata["code_version"] == a.runtime_env["env_vars"]["WITFORGE_CODE_VERSION"] == "v0.1-3-g0123abcd4567"
    # Overrides are shell-quoted, and reach both commands of the nightly chain.
    odd = resolve(spec, overrides=["dashboard.title=nightly run"], today=day).entrypoint
    assert odd.count("'dashboard.title=nightly run'") == 2 and "  " not in odd

    pinned = {Requirement(p).name: p for p in a.runtime_env["pip"]["packages"]}
    wanted = [Requirement(line.split("#")[0]) for line in (REPO / "requirements.txt").read_text().splitlines()
              if line.split("#")[0].strip()]
    for req in wanted:
        if req.name in spec.deps.exclude:
            assert req.name not in pinned
        else:
            assert re.search(r"==[\w.]+$", pinned[req.name]), pinned[req.name]


def test_unpinned_requirement_is_named(tmp_path):
    from pipelines.jobs.deps import pinned_packages

    (tmp_path / "r.txt").write_text("numpy==2.0.0\nboto3  # open\n")
    (tmp_path / "c.txt").write_text("boto3==1.2.3\n")
    assert pinned_packages(tmp_path / "r.txt", tmp_path / "c.txt", []) == ["numpy==2.0.0", "boto3==1.2.3"]
    (tmp_path / "c.txt").write_text("numpy==2.0.0\n")
    with pytest.raises(ValueError, match=r"r.txt:2: boto3 has no exact pin"):
        pinned_packages(tmp_path / "r.txt", tmp_path / "c.txt", [])


def test_dirty_tree_digest_follows_the_edits(tmp_path):
    from pipelines.jobs.identity import worktree_digest

    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-C", str(tmp_path)]
    subprocess.run(git[:5] + ["init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run(git + ["add", "a.py"], check=True)
    subprocess.run(git + ["commit", "-qm", "a"], check=True)
    clean = worktree_digest(tmp_path)
    (tmp_path / "a.py").write_text("x = 2\n")
    edited = worktree_digest(tmp_path)
    assert edited == worktree_digest(tmp_path) != clean
    (tmp_path / "new.py").write_text("y = 1\n")
    assert worktree_digest(tmp_path) not in (clean, edited)
