"""Shared fixtures. Every service a test needs is started here and stopped after: local Ray, local Spark,
an S3 server (moto's ThreadedMotoServer on a free loopback port). Nothing leaves 127.0.0.1."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# Workers that Ray or Spark start must import the project from this checkout.
os.environ["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Loopback services must never be reached through a proxy a developer's shell may set.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint (moto server) on 127.0.0.1; sets the AWS variables s3fs/boto3/img2dataset read."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                             "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=endpoint, FSSPEC_S3_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_endpoint):
    """A fresh bucket; yields its s3:// URI."""
    import uuid

    import boto3

    name = f"witforge-test-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    import fsspec

    fsspec.filesystem("s3").invalidate_cache()
    yield f"s3://{name}"


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """An embedded local Ray for the whole session (starting Ray costs seconds; tests share it).

    It depends on the S3 server so that the AWS variables are set before Ray starts its workers, which
    inherit the environment of the process that started Ray."""
    import ray

    start_local_ray()
    yield ray
    shutdown_ray()


def shutdown_ray(timeout_s: float = 15) -> None:
    """ray.shutdown(), unstuck: after a long session the driver's GCS subscriber close() was seen blocking in an
    RPC that never returned (the hang class of ray-project/ray#44836). Killing this session's own GCS server
    fails that RPC, and shutdown goes on to stop the rest. A healthy shutdown takes a few seconds; the full CI
    session's took the whole minute the first version waited, so the wait is short."""
    import threading

    import psutil
    import ray

    worker = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.name().startswith("gcs_server"):
                    proc.kill()
            except psutil.Error:
                pass
        worker.join(timeout_s)


def start_local_ray() -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})


@pytest.fixture(scope="session")
def spark():
    """A local Spark session shared by the tests that need one."""
    from pipelines.engines import EngineConfig, spark_session, stop_spark

    session = spark_session(EngineConfig(spark_master="local[2]", spark_driver_memory="1g"), "witforge-tests")
    yield session
    stop_spark()
