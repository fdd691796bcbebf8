"""shard stage (Ray): WebDataset-readable tars matching their parquet, deterministic shuffle, resumable, shards
closed at a sample or byte target (whichever first, sizes planned exactly); and the filter -> dedupe -> shard
chain on an S3 root (moto server)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipelines import layout, storage
from pipelines.stages import dedupe, shard
from pipelines.stages import filter as filter_stage
from pipelines.stages.shard import ShardConfig, plan_shards, sample_tar_bytes, shuffle_order, tar_bytes
from tests.pipelines_curation_data import deduped_fixture, download_fixture, filter_test_config


@pytest.fixture(scope="module")
def sharded(ray_local, spark, tmp_path_factory):
    version = str(tmp_path_factory.mktemp("version"))
    dd = deduped_fixture(spark)
    infos, counts = shard.run(ShardConfig(samples_per_shard=5, shuffle_seed=3), dd, download_fixture().download_uri,
                              version)
    return version, dd, infos, counts


def test_shards_readable_with_webdataset_and_match_parquet(sharded):
    version, dd, infos, counts = sharded
    survivors = pq.read_table(os.path.join(dd, "keep.parquet")).column("uid").to_pylist()
    assert counts.stage == "shard" and counts.input == counts.output == len(survivors) and not counts.dropped
    assert [i.samples for i in infos] == [5] * (len(survivors) // 5) + ([len(survivors) % 5] if len(survivors) % 5 else [])
    seen = []
    for info in infos:
        tar_path = os.path.join(version, info.path)
        assert os.path.getsize(tar_path) == info.bytes
        assert info.sha256 == hashlib.sha256(storage.read_bytes(tar_path)).hexdigest()
        samples = list(wds.WebDataset([tar_path], shardshuffle=False))
        rows = pq.read_table(os.path.join(version, info.parquet)).to_pylist()
        assert [s["__key__"] for s in samples] == [r["uid"] for r in rows]  # same order, one row per sample
        with tarfile.open(tar_path) as tf:  # each sample's members are contiguous
            keys = [m.name.split(".", 1)[0] for m in tf.getmembers()]
        assert keys == [k for k in dict.fromkeys(keys) for _ in range(3)]
        for s, r in zip(samples, rows):
            assert set(s) >= {"jpg", "txt", "json"}
            assert s["jpg"][:3] == b"\xff\xd8\xff"  # JPEG, also for the PNG original
            img = Image.open(io.BytesIO(s["jpg"]))
            assert (img.width, img.height) == (r["width"], r["height"])
            meta = json.loads(s["json"])
            assert meta["uid"] == r["uid"] and s["txt"].decode() == r["caption"] == meta["caption"]
            assert meta["scores"]["lang_score"] > 0 and meta["source"] == "synthetic-web:test"
        seen += [r["uid"] for r in rows]
    assert sorted(seen) == sorted(survivors) and len(set(seen)) == len(seen)
    assert seen == shuffle_order(survivors, 3)


def _survivor_rows(dd: str, seed: int) -> list[dict]:
    by_uid = {r["uid"]: r for r in pq.read_table(os.path.join(dd, "keep.parquet")).to_pylist()}
    return [by_uid[u] for u in shuffle_order(list(by_uid), seed)]


def test_shards_close_at_samples_or_bytes_whichever_first(ray_local, spark, tmp_path):
    dd = deduped_fixture(spark)
    rows = _survivor_rows(dd, 3)
    # 20 kB of tar (records of 10 kB) holds 3-4 of the fixture's ~2 kB JPEGs: bytes close shards before 6 samples.
    target = 20_480
    cfg = ShardConfig(samples_per_shard=6, max_shard_bytes=target, shuffle_seed=3)
    infos, counts = shard.run(cfg, dd, download_fixture().download_uri, str(tmp_path))
    planned = plan_shards(rows, cfg)
    assert [i.samples for i in infos] == [len(p) for p in planned] and counts.output == len(rows)
    for info, part in zip(infos, planned):
        assert info.bytes == os.path.getsize(tmp_path / info.path)
        assert info.bytes == tar_bytes(sum(sample_tar_bytes(r) for r in part))  # planned exactly (JPEG sources)
        assert info.bytes <= target or info.samples == 1
    for info, part, nxt in zip(infos, planned, planned[1:]):  # each shard closed for a reason
        assert info.samples == 6 or tar_bytes(sum(sample_tar_bytes(r) for r in part + nxt[:1])) > target
    assert any(i.samples < 6 for i in infos[:-1])  # at least one shard was closed by the byte target
    got = [u for info in infos for u in pq.read_table(tmp_path / info.parquet).column("uid").to_pylist()]
    assert got == [r["uid"] for r in rows]  # the byte cut keeps the global shuffle order


def test_images_read_by_offset_equal_the_streamed_ones_and_a_changed_tar_is_refused(spark, tmp_path):
    rows = _survivor_rows(deduped_fixture(spark), 0)
    assert rows and all(r["offset"] is not None and r["offset"] % tarfile.BLOCKSIZE == 0 for r in rows)
    ranged = shard.read_images(rows)
    streamed = shard.read_images([{**r, "offset": None} for r in rows])  # rows from a filter without offsets
    assert ranged == streamed and len(ranged) == len(rows)
    # One image's bytes changed in a copy of its download tar: the sha256 check names the tar, never ships it.
    victim = rows[0]
    copy = tmp_path / os.path.basename(victim["src_tar"])
    data = bytearray(storage.read_bytes(victim["src_tar"]))
    data[victim["offset"] + victim["bytes"] // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{copy}: .* not sample {victim['uid']}'s image"):
        shard.read_images([{**r, "src_tar": str(copy)} for r in rows if r["src_tar"] == victim["src_tar"]])


def test_plan_without_byte_target_or_with_an_oversized_sample():
    rows = [{"uid": f"{i:08x}", "url": "u", "caption": "c", "width": 1, "height": 1, "sha256": "s", "phash": "p",
             "bytes": 5000 if i != 3 else 50_000} for i in range(10)]
    assert [len(p) for p in plan_shards(rows, ShardConfig(samples_per_shard=4, max_shard_bytes=0))] == [4, 4, 2]
    # 20 kB: two 5 kB samples (+ headers, txt, json, end blocks) fit, a third does not; the 50 kB one stands alone.
    sizes = [len(p) for p in plan_shards(rows, ShardConfig(samples_per_shard=4, max_shard_bytes=20_480))]
    assert sizes == [2, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="max_shard_bytes=0"):
        plan_shards([{**rows[0], "bytes": None}], ShardConfig())


def test_shuffle_depends_on_seed_not_input_order():
    uids = [f"{i:08x}" for i in range(50)]
    assert shuffle_order(uids, 1) == shuffle_order(list(reversed(uids)), 1)
    assert shuffle_order(uids, 1) != shuffle_order(uids, 2) and shuffle_order(uids, 1) != uids


def test_rerun_rebuilds_only_uncommitted_shards_identically(sharded):
    version, dd, infos, _ = sharded
    record = os.path.join(version, "_work", "shard", "000001.json")
    first_tar, second_tar = (os.path.join(version, i.path) for i in infos[:2])
    before = open(second_tar, "rb").read()
    untouched = os.stat(first_tar).st_mtime_ns
    os.remove(record)
    os.remove(second_tar)  # as if the run died after publishing nothing of shard 1
    again, counts = shard.run(ShardConfig(samples_per_shard=5, shuffle_seed=3), dd, download_fixture().download_uri,
                              version)
    assert again == infos and counts.output == sum(i.samples for i in infos)
    assert open(second_tar, "rb").read() == before and os.path.exists(record)
    assert os.stat(first_tar).st_mtime_ns == untouched


def test_chain_on_s3(ray_local, spark, s3_bucket):
    """filter -> dedupe -> shard with every URI on S3 (Ray tasks and fsspec talk to the moto server)."""
    planted = download_fixture()
    root = f"{s3_bucket}/ds/v1"
    download = storage.join(root, "_work", "download")
    for name in os.listdir(planted.download_uri):
        storage.put_file(os.path.join(planted.download_uri, name), storage.join(download, name))
    filtered, dd = storage.join(root, "_work", "filtered"), storage.join(root, "_work", "dedupe")
    fcounts = filter_stage.run(filter_test_config(), download, filtered)
    dcounts = dedupe.run(spark, dedupe.DedupeConfig(), filtered, dd)
    infos, scounts = shard.run(ShardConfig(samples_per_shard=4), dd, download, root)
    assert layout.committed(filtered).to_json() == fcounts.to_json()
    assert layout.committed(dd).to_json() == dcounts.to_json()
    assert scounts.output == dcounts.output == sum(i.samples for i in infos) > 0
    local_keep = pq.read_table(os.path.join(deduped_fixture(spark), "keep.parquet")).column("uid").to_pylist()
    got = []
    for info in infos:
        data = storage.read_bytes(storage.join(root, info.path))
        assert hashlib.sha256(data).hexdigest() == info.sha256 and len(data) == info.bytes  # whole, as committed
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            got += sorted({m.name.split(".", 1)[0] for m in tf.getmembers()})
        assert storage.exists(storage.join(root, info.parquet))
    assert sorted(got) == sorted(local_keep)
