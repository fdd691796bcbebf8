"""A Ray worker SIGKILLed in the middle of a pipeline stage: Ray retries its task and the stage finishes with
every sample. (A killed DRIVER is covered elsewhere: test_chain.py kills a build five times, driver, Ray and Spark
processes, and the rerun resumes; test_training_resume.py and test_training_train.py kill training.)

    .venv/bin/python -m pytest -q tests/test_faults_ray.py
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import psutil
import pyarrow.parquet as pq
import s3fs

from pipelines import layout, storage
from pipelines.stages import filter as filter_stage
from tests.pipelines_curation_data import download_fixture, filter_test_config, filtered_fixture
from tests.s3_fault_proxy import S3FaultProxy


def _connected_process(local_port: int) -> psutil.Process:
    """The process whose TCP socket has this local port on 127.0.0.1 (the client of a proxied request)."""
    pids = {c.pid for c in psutil.net_connections("tcp4")
            if c.laddr and c.laddr.port == local_port and c.laddr.ip == "127.0.0.1" and c.pid}
    assert len(pids) == 1, f"expected one process on 127.0.0.1:{local_port}, found {pids}"
    return psutil.Process(pids.pop())


def _rows(folder: str) -> dict[str, dict]:
    """Filtered rows by uid, without src_tar (it names the download folder, which differs between the runs)."""
    out = {}
    for uri in storage.listdir(folder):
        if uri.endswith(".parquet"):
            with storage.open_uri(uri) as f:
                out.update({r["uid"]: {k: v for k, v in r.items() if k != "src_tar"}
                            for r in pq.read_table(f).to_pylist()})
    return out


def test_filter_stage_survives_a_worker_killed_mid_task(ray_local, s3_endpoint, s3_bucket, monkeypatch):
    """The filter stage (one Ray task per download shard) on S3; the proxy in front of the S3 server parks the
    read of shard 00001's tar, the test SIGKILLs the Ray worker process that sent it (found by its socket), then
    lets the request go. Ray retries the task in a new worker (tasks' default max_retries=3).
    Lost: nothing. The stage commits the same counts and the same row for every sample as a fault-free run."""
    planted = download_fixture()
    reference = filtered_fixture()  # the same stage, same input, no fault (shared with test_pipelines_filter)
    download = f"{s3_bucket}/ds/v1/_work/download"
    names = sorted(n for n in os.listdir(planted.download_uri) if n.endswith((".tar", ".parquet")))
    for name in names:
        storage.put_file(os.path.join(planted.download_uri, name), storage.join(download, name))
    out = f"{s3_bucket}/ds/v1/_work/filtered"
    tars = [n for n in names if n.endswith(".tar")]
    assert len(tars) >= 2  # one task is killed while the others run normally
    victim_tar = f"/{download.removeprefix('s3://')}/{tars[-1]}"

    with S3FaultProxy(s3_endpoint, rate=0.0) as proxy:
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            with monkeypatch.context() as m:
                m.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
                m.setenv("FSSPEC_S3_ENDPOINT_URL", proxy.endpoint)
                hold = proxy.hold(lambda op, path: op == "GetObject" and path == victim_tar)
                with ThreadPoolExecutor(1) as pool:
                    stage = pool.submit(filter_stage.run, filter_test_config(), download, out)
                    assert hold.arrived.wait(180), "the filter task never read its shard"
                    worker = _connected_process(hold.client_port)
                    ours = {p.pid for p in psutil.Process().children(recursive=True)}
                    assert worker.pid in ours and worker.name().startswith("ray::"), worker  # our Ray's worker
                    worker.send_signal(signal.SIGKILL)
                    worker.wait(30)
                    hold.release()
                    counts = stage.result(timeout=300)
        finally:
            s3fs.S3FileSystem.clear_instance_cache()

    retried = [r for r in proxy.log if r.op == "GetObject" and r.path == victim_tar and r.client_port != hold.client_port]
    assert retried, "the killed task was never run again"
    assert counts.to_json() == layout.committed(reference).to_json() == layout.committed(out).to_json()
    got, want = _rows(out), _rows(reference)
    assert got == want and len(got) == counts.input > 0
