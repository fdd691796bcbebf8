"""S3 throttling across the chain: a proxy in front of the moto server answers a seeded share of requests with
S3's 503 SlowDown (tests/s3_fault_proxy.py); the whole chain on an s3:// root (every check of test_chain.py's
fault-free S3 run, plus the fault checks), the training stream and multipart uploads run through it and lose
nothing.

    .venv/bin/python -m pytest -q tests/test_faults_s3.py
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import statistics
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import boto3
import fsspec
import pyarrow.parquet as pq
import s3fs

from pipelines import explain, storage
from pipelines.schema import load_manifest
from tests.pipelines_build_data import TINY_MODEL, sample_uids, tiny_build, tiny_config
from tests.s3_fault_proxy import S3FaultProxy
from tests.test_chain import check_outputs, run_chain

SEED = 6
# Share of requests answered 503 SlowDown: a few dozen faults in the tiny chain, every common operation hit.
RATE = 0.05
# A retry that backs off waits botocore's full-jitter delay, uniform in [0, 1) s for the first retry (median
# 0.5 s); an immediate retry on loopback takes milliseconds. The median over dozens of retries tells them apart.
MIN_MEDIAN_RETRY_GAP_S = 0.05


@contextlib.contextmanager
def throttled(endpoint: str, monkeypatch, **proxy_args) -> Iterator[S3FaultProxy]:
    """Route every S3 client of the test (driver, Ray and Spark workers: they get the AWS variables with their
    tasks) through a fault-injecting proxy; the session's endpoint variables are restored after."""
    with S3FaultProxy(endpoint, seed=SEED, **proxy_args) as proxy:
        s3fs.S3FileSystem.clear_instance_cache()  # cached clients hold the old endpoint
        try:
            with monkeypatch.context() as m:
                m.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
                m.setenv("FSSPEC_S3_ENDPOINT_URL", proxy.endpoint)
                if "endpoint_url" in fsspec.config.conf.get("s3", {}):  # read from the environment at import
                    m.setitem(fsspec.config.conf["s3"], "endpoint_url", proxy.endpoint)
                yield proxy
        finally:
            s3fs.S3FileSystem.clear_instance_cache()  # nothing may keep talking to the closed proxy


def check_retried_with_backoff(proxy: S3FaultProxy) -> None:
    gaps = proxy.retry_gaps()
    assert len(gaps) == sum(proxy.injected.values()) > 0
    unretried = [(r.op, r.path) for r, nxt, _ in gaps if nxt is None]
    assert not unretried, f"503s not retried by the SDK (same invocation id): {unretried[:5]}"
    # Retried by the SDK's retry handler (same invocation, next attempt), not by a caller starting over.
    assert all(nxt.attempt == r.attempt + 1 for r, nxt, _ in gaps if r.invocation)
    median = statistics.median(g for _, _, g in gaps)
    assert median >= MIN_MEDIAN_RETRY_GAP_S, f"retries came without backoff (median gap {median:.3f}s)"


def objects(endpoint: str, bucket_uri: str) -> dict[str, bytes]:
    """Every object of the bucket, read straight from the S3 server (not through the proxy)."""
    bucket = bucket_uri.removeprefix("s3://")
    client = boto3.client("s3", endpoint_url=endpoint)
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads"), "multipart uploads left open"
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def check_whole(key: str, data: bytes) -> None:
    """A partial object (a cut PUT, an incomplete multipart upload) fails its format's own parser."""
    if key.endswith(".parquet"):
        pq.read_table(io.BytesIO(data))
    elif key.endswith(".tar"):
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar:
                if m.isfile():
                    assert len(tar.extractfile(m).read()) == m.size, f"{key}: member {m.name} cut"
    elif key.endswith((".json", ".jsonl")):
        for line in data.decode().splitlines() if key.endswith(".jsonl") else [data]:
            json.loads(line)


def test_chain_on_s3_through_slowdowns_loses_nothing(tmp_path, s3_endpoint, s3_bucket, ray_local, spark, capsys,
                                                    monkeypatch):
    """The whole chain on an s3:// root (build: Spark, img2dataset, Ray stages; training; Ray evaluation; the
    dashboard) and one epoch of the training stream, behind a proxy answering ~5% of S3 requests with 503
    SlowDown. (Ray Train's workers inherit the session's endpoint from the Ray they run in, so their own reads
    and checkpoint writes reach the S3 server directly; the stream check below reads through the proxy.)
    Lost: nothing. The manifest lists exactly the shards (same samples, bytes, sha256) and funnel of the
    fault-free build of the same corpus; every object in the bucket is whole; the stream delivers every sample
    once and skips none; the checkpoint loads with its digest verified; every 503 was retried with backoff."""
    from pipelines import build
    from training.checkpoint import load_clip
    from training.data import load_source, make_loader
    from training.tokenizer import CaptionTokenizer

    ref = tiny_build()  # the fault-free reference (shared with test_chain and test_pipelines_explain)
    ref_manifest = load_manifest(ref.manifest)
    root = s3_bucket + "/witforge"
    config = tiny_config(tmp_path, root, ref.web_dir, ref.port)
    with throttled(s3_endpoint, monkeypatch, rate=RATE) as proxy:
        out = run_chain(config, capsys)
        check_outputs(out, root)
        assert not os.path.exists(tmp_path / "data")  # nothing went to local disk but the synthetic web itself
        version = out["manifest"].rsplit("/", 1)[0]
        kept = sample_uids(out["manifest"])[0]
        report = explain.explain(version, kept)  # lineage reads S3 through the same code path
        assert report["outcome"]["status"] == "kept" and report["outcome"]["shard"].startswith("s3://")
        assert [s["stage"] for s in report["stages"]][:4] == ["extract", "download", "filter", "dedupe"]
        # A second build with the same config finds the version built and changes nothing.
        before = storage.read_bytes(out["manifest"])
        assert build.main(["--config", config]) == 0
        assert storage.read_bytes(out["manifest"]) == before

        tok = CaptionTokenizer.load(storage.join(out["checkpoint"], "tokenizer.json"), TINY_MODEL["context_length"])
        loader = make_loader([load_source(out["manifest"])], tok, 16, 8, mode="epoch", epochs=1, partial=True,
                             num_workers=0)
        batches = list(loader)
    streamed = [u for _, _, info in batches for u in info["uids"]]
    assert batches[-1][2]["skipped"] == {}

    # Everything below reads the S3 server directly: what a reader sees after the faults.
    got = load_manifest(out["manifest"])
    uids = sample_uids(out["manifest"])
    assert len(uids) == len(set(uids)) and set(uids) == set(sample_uids(ref.manifest))
    assert sorted(streamed) == sorted(uids)
    assert got.shards == ref_manifest.shards and got.funnel["stages"] == ref_manifest.funnel["stages"]
    stored = objects(s3_endpoint, s3_bucket)
    prefix = version.removeprefix(s3_bucket + "/")
    for shard in got.shards:
        data = stored[f"{prefix}/{shard.path}"]
        assert len(data) == shard.bytes and hashlib.sha256(data).hexdigest() == shard.sha256
    for key, data in stored.items():
        check_whole(key, data)
    assert load_clip(out["checkpoint"]).digest  # load_clip verifies the weights against meta.json's digest

    assert sum(proxy.injected.values()) > 10, proxy.injected
    assert {"PutObject", "GetObject", "HeadObject"} <= set(proxy.injected), proxy.injected
    # The project's own clients retry in botocore's standard mode, 10 attempts (pipelines/storage.py).
    assert any(r.max_attempts == storage.S3_MAX_ATTEMPTS for r in proxy.log), "no retry announced our limit"
    check_retried_with_backoff(proxy)
    with capsys.disabled():  # what the faults hit, in the test log
        gaps = [g for _, _, g in proxy.retry_gaps()]
        print(f"\n{sum(proxy.injected.values())} of {len(proxy.log)} S3 requests answered 503 SlowDown "
              f"({dict(proxy.injected)}); retry gap median {statistics.median(gaps):.2f}s, max {max(gaps):.2f}s")


def test_multipart_upload_with_throttled_parts_publishes_whole_object(s3_endpoint, s3_bucket, monkeypatch):
    """storage.write_bytes's multipart path (s3fs's pipe_file, taken by objects over 2 x its 50 MiB chunk: real
    checkpoints; here 5 MiB parts) with CreateMultipartUpload, parts and CompleteMultipartUpload throttled.
    Lost: nothing. Nothing is visible under the key until the upload completes, then the object is
    byte-identical to what was written, and no upload is left open."""
    data = hashlib.sha256(b"seed").digest() * (11 * 2**20 // 32)  # 11 MiB: three parts
    bucket = s3_bucket.removeprefix("s3://")
    direct = boto3.client("s3", endpoint_url=s3_endpoint)
    with throttled(s3_endpoint, monkeypatch, rate=0.5, max_consecutive=2,
                   ops={"CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}) as proxy:
        complete = proxy.hold(lambda op, path: op == "CompleteMultipartUpload")
        fs, path = storage.filesystem(f"{s3_bucket}/big/object.bin")
        with ThreadPoolExecutor(1) as pool:
            upload = pool.submit(fs.pipe_file, path, data, chunksize=5 * 2**20)
            assert complete.arrived.wait(120), "the upload never reached CompleteMultipartUpload"
            # Every part is uploaded, the upload not yet completed: a reader sees no object.
            visible_early = direct.list_objects_v2(Bucket=bucket, Prefix="big/").get("KeyCount", 0)
            complete.release()
            upload.result(timeout=120)
    assert visible_early == 0
    assert objects(s3_endpoint, s3_bucket)["big/object.bin"] == data
    assert proxy.injected["UploadPart"] > 0, proxy.injected
    check_retried_with_backoff(proxy)
