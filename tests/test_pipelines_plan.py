"""The capacity planner (python -m pipelines.plan): its arithmetic on a small case worked by hand, and that it
reads the rates from the benchmark result files (largest curation run, newest GPU run) and a pilot manifest."""

from __future__ import annotations

import json
import math

import pytest

from pipelines import plan as P
from pipelines.plan_rates import (
    FORWARD_GFLOP,
    PARAMS,
    REFERENCE_GPU,
    ZERO2_OVER_EAGER,
    CurationRates,
    GpuRate,
    PlanInputError,
    StageRate,
    curation_rates,
    gpu_rate,
    override_rates,
)
from pipelines.schema import Manifest, ShardInfo, write_manifest


def small_case() -> dict:
    # 1,000 pairs of 10,000 tar bytes each (7,196 image + 500 metadata + 3 x 768 tar overhead), 10 per shard.
    inp = P.PlanInputs(pairs=1000, model="ViT-B-32", epochs=2, curation_hours=0.02, train_hours=0.01,
                       cpu_node_cores=2, gpus_per_node=8, cpu_node_price=3.6, gpu_node_price=36.0,
                       image_bytes=7196, meta_bytes=500, parquet_bytes=150, shard_mb=0.1,
                       download_shard_candidates=10, loader_workers=4, checkpoints_kept=2, scaling=0.5,
                       embed_per_gpu=100.0, s3_headroom=0.5, s3_price_gb_month=1.0)
    # Measured funnel: 4,000 candidates -> 2,000 downloaded attempts -> 1,000 pairs; semdedup passed through.
    cur = CurationRates([StageRate("extract", 4000, 2000, 100.0), StageRate("download", 2000, 1000, 10.0),
                         StageRate("semdedup", 1000, 1000, None), StageRate("shard", 1000, 1000, 50.0)], "test")
    return P.plan(inp, cur, GpuRate("ViT-B-32", 10.0, "test GPU", "test"))


def test_small_case_arithmetic_by_hand():
    p = small_case()
    assert p["tar_bytes_per_sample"] == 10_000
    assert p["shards"] == {"samples_per_shard": 10, "count": 100, "mb_per_shard": 0.1}

    # Curation: 4,000/100 + 2,000/10 + 1,000/50 = 260 core-seconds; 72 s on 2-core nodes -> ceil(260/144) = 2
    # nodes; 4 cores -> 65 s wall.
    c = p["curation"]
    assert [s["records"] for s in c["stages"]] == [4000, 2000, 1000, 1000]
    assert c["core_hours"] == pytest.approx(260 / 3600)
    assert (c["nodes"], c["cores_per_node"]) == (2, 2)
    assert c["wall_hours"] == pytest.approx(65 / 3600)
    assert [s["hours"] for s in c["stages"]] == pytest.approx([10 / 3600, 50 / 3600, 0.0, 5 / 3600])
    assert c["node_hours"] == pytest.approx(130 / 3600)
    assert c["cost"] == pytest.approx(130 / 3600 * 3.6)

    # Embedding: semdedup's 1,000 inputs at 100/s per GPU = 10 GPU-seconds = 10/8 node-seconds.
    e = p["embedding"]
    assert e["stages"] == ["semdedup"] and e["records"] == 1000
    assert e["gpu_hours"] == pytest.approx(10 / 3600)
    assert e["cost"] == pytest.approx(10 / 3600 / 8 * 36.0)

    # Training: 2,000 samples at 10 x 0.5 = 5/s per GPU within 36 s -> ceil(2000/180) = 12 GPUs -> 2 nodes of 8
    # = 16 GPUs -> 2000 / 80 = 25 s.
    t = p["training"]
    assert (t["samples_seen"], t["per_gpu"], t["gpus"], t["nodes"]) == (2000, 5.0, 16, 2)
    assert t["wall_hours"] == pytest.approx(25 / 3600)
    assert t["gpu_hours"] == pytest.approx(16 * 25 / 3600)
    assert t["cost"] == pytest.approx(2 * 25 / 3600 * 36.0)
    assert t["samples_per_s"] == 80.0
    assert t["node_read_mb_per_s"] == pytest.approx(8 * 5 * 10_000 / 1e6)
    assert t["tflops_per_gpu"] == pytest.approx(10 * 3 * FORWARD_GFLOP["ViT-B-32"] / 1000)

    # S3: download takes 200 core-s / 4 cores = 50 s: 2,000 candidates -> 40/s -> 4 img2dataset shards/s, each
    # 3 objects of one PUT (a 10 x 0.5 x 10,000 B tar); 1,000 images in 50 s would be 20 PUT/s as single objects.
    # The shard stage: 20 core-s / 4 = 5 s for 100 shards = 20 shards/s x 3 objects, reading its 1,000 images with
    # one ranged GET each = 200 GET/s. Training: 80 samples/s /
    # 10 per shard = 8 shard opens/s x (HEAD + one 50 MiB block). Start burst: 16 GPUs x 4 workers x 2.
    s3 = p["s3"]
    assert [(ph["phase"], ph["put_per_s"], ph["get_per_s"]) for ph in s3["phases"]] == [
        ("crawl: download", pytest.approx(12.0), 0.0), ("crawl: shard", pytest.approx(60.0), pytest.approx(200.0)),
        ("training", 0.0, pytest.approx(16.0))]
    assert s3["one_object_per_image_put_per_s"] == pytest.approx(20.0)
    assert s3["training_start_burst_gets"] == 128
    # The shard stage's reads go to _work/download/: counted apart from the shards/ prefixes.
    assert (s3["peak_put_per_s"], s3["peak_get_per_s"]) == (pytest.approx(60.0), 128)
    assert (s3["download_read_get_per_s"], s3["download_read_prefixes"]) == (pytest.approx(200.0), 1)
    assert (s3["prefixes"], s3["hex_digits"]) == (1, 0)

    b = p["bytes"]
    assert (b["tars"], b["parquet"], b["manifest"]) == (10_000_000, 150_000, 100 * P.MANIFEST_BYTES_PER_SHARD)
    assert b["work_download"] == 1000 * 10_000  # download's output, scaled to the target, at tar bytes per sample
    assert b["checkpoints"] == PARAMS["ViT-B-32"] * 12 * 2
    assert b["total"] == b["dataset"] + b["work_download"] + b["checkpoints"]
    cost = p["cost"]
    assert cost["total"] == pytest.approx(c["cost"] + e["cost"] + t["cost"])
    assert cost["storage_per_month"] == pytest.approx(b["total"] / 1e9)


def test_prefix_layout_when_the_rates_exceed_one_prefix():
    # At 1% of the limits one prefix takes 35 PUT/s and 55 GET/s: the shard stage's 60 PUT/s needs 2 -> one hex
    # digit; its 1,000 ranged image reads in 5 s (200 GET/s) need 4 prefixes' worth of _work/download/.
    p = P.plan(P.PlanInputs(pairs=1000, model="ViT-B-32", epochs=1, curation_hours=0.02, train_hours=1,
                            cpu_node_cores=2, gpus_per_node=1, loader_workers=1, image_bytes=7196, shard_mb=0.1,
                            download_shard_candidates=10, s3_headroom=0.01),
               CurationRates([StageRate("download", 2000, 1000, 10.0), StageRate("shard", 1000, 1000, 50.0)], "t"),
               GpuRate("ViT-B-32", 10.0, "g", "t"))
    assert p["s3"]["peak_put_per_s"] == pytest.approx(60.0) and p["s3"]["peak_get_per_s"] == 2
    assert (p["s3"]["prefixes"], p["s3"]["hex_digits"]) == (2, 1)
    assert p["s3"]["download_read_prefixes"] == 4
    assert "first 1 hex digit" in p["s3"]["layout"]
    assert P.prefixes_needed(60_000, 3500, 0.5) == 35 and P.hex_digits_for(35) == 2 and P.hex_digits_for(16) == 1
    assert P.put_requests(49 * P.MIB, P.S3FS_BLOCK) == 1
    assert P.put_requests(120 * P.MIB, 2 * P.S3FS_BLOCK) == 2 + 3  # create + 3 parts + complete
    assert P.get_requests(120 * P.MIB) == 1 + 3


def test_inputs_are_validated_naming_the_flag():
    with pytest.raises(PlanInputError, match="--train-hours"):
        P.PlanInputs(pairs=10, train_hours=0)
    with pytest.raises(PlanInputError, match="--scaling"):
        P.PlanInputs(pairs=10, scaling=1.5)
    assert P.parse_count("400M") == 400_000_000 and P.parse_count("1.28B") == 1_280_000_000
    assert P.parse_count("12_800") == 12_800
    with pytest.raises(PlanInputError, match="--rate nope"):
        override_rates(CurationRates([StageRate("shard", 1, 1, 1.0)], "t"), {"nope": 1.0})


def _curation_file(path, candidates: int, download_rate: float) -> None:
    stages = [{"stage": "extract", "seconds": 1, "input": candidates, "output": candidates // 2,
               "samples_per_s": 400.0, "samples_per_s_per_core": 200.0},
              {"stage": "download", "seconds": 1, "input": candidates // 2, "output": candidates // 4,
               "samples_per_s": 2 * download_rate, "samples_per_s_per_core": download_rate},
              {"stage": "clip_filter", "seconds": 0.01, "input": candidates // 4, "output": candidates // 4,
               "samples_per_s": 1e6, "samples_per_s_per_core": 5e5},
              {"stage": "shard", "seconds": 1, "input": candidates // 4, "output": candidates // 4,
               "samples_per_s": 100.0, "samples_per_s_per_core": 50.0}]
    path.write_text(json.dumps({"benchmark": "curation_scaling", "started": "2026-11-28T00:00:00+00:00",
                                "run": {"candidates_requested": candidates, "cores": 2, "stages": stages}}))


def test_rates_follow_the_benchmark_files(tmp_path):
    _curation_file(tmp_path / "curation_scaling-3000-x.json", 3000, 30.0)
    _curation_file(tmp_path / "curation_scaling-100000-x.json", 100000, 77.0)  # the largest run wins
    rates = curation_rates(tmp_path)
    assert "curation_scaling-100000-x.json" in rates.source
    assert [(s.stage, s.input, s.output, s.per_core) for s in rates.stages] == [
        ("extract", 100000, 50000, 200.0), ("download", 50000, 25000, 77.0), ("clip_filter", 25000, 25000, None),
        ("shard", 25000, 25000, 50.0)]

    # No GPU result: the reference H200 figure times the measured ZeRO-2/eager factor; ViT-L-14 scaled from the
    # measured model nearest in FLOPs (ViT-B-16) by the FLOPs ratio.
    assert gpu_rate("ViT-B-32", tmp_path).samples_per_s == pytest.approx(REFERENCE_GPU["ViT-B-32"] * ZERO2_OVER_EAGER)
    l14 = gpu_rate("ViT-L-14", tmp_path)
    assert l14.samples_per_s == pytest.approx(REFERENCE_GPU["ViT-B-16"] * ZERO2_OVER_EAGER * 41.1 / 175.3)
    assert "ViT-B-16" in l14.source
    # A GPU run of the project's ZeRO-2 step replaces the reference; a CPU smoke run (no GPU name) does not.
    (tmp_path / "train_gpu-a.json").write_text(json.dumps({
        "started_utc": "2026-11-28T01:00:00+00:00", "machine": {"gpu": "NVIDIA H100 80GB HBM3"},
        "models": {"ViT-B-16": {"configs": {"ours_zero2": {"samples_per_s": 1500.0}}}}}))
    (tmp_path / "train_gpu-tiny.json").write_text(json.dumps({
        "started_utc": "2026-11-29T01:00:00+00:00", "machine": {},
        "models": {"ViT-B-16": {"configs": {"ours_zero2": {"samples_per_s": 9.0}}}}}))
    measured = gpu_rate("ViT-L-14", tmp_path)
    assert measured.samples_per_s == pytest.approx(1500.0 * 41.1 / 175.3)
    assert measured.gpu == "NVIDIA H100 80GB HBM3" and "train_gpu-a.json" in measured.source
    with pytest.raises(PlanInputError, match="--gpu-rate"):
        gpu_rate("RN101", tmp_path)


def test_cli_json_and_table(tmp_path, capsys):
    _curation_file(tmp_path / "curation_scaling-10000-x.json", 10000, 40.0)
    assert P.main(["--pairs", "2.5k", "--model", "ViT-B-32", "--results", str(tmp_path), "--json",
                   "--rate", "download=80", "--samples-per-shard", "100"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["inputs"]["pairs"] == 2500 and p["shards"]["count"] == 25
    by = {s["stage"]: s for s in p["curation"]["stages"]}
    # 2,500 pairs from a funnel that keeps 2,500 of 10,000 candidates: 10,000 into extract, 5,000 into download.
    assert by["extract"]["records"] == 10000 and by["download"]["records"] == 5000
    assert by["download"]["per_core"] == 80.0 and "download=80" in p["sources"]["curation"]
    assert p["embedding"]["stages"] == ["clip_filter"]

    assert P.main(["--pairs", "400M", "--results", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    for heading in ("Shards", "Bytes stored", "Curation:", "Training:", "S3 requests", "Cost", "Assumptions"):
        assert heading in table
    assert P.main(["--pairs", "400M", "--model", "RN101", "--results", str(tmp_path)]) == 2
    assert "--gpu-rate" in capsys.readouterr().err


def test_pilot_manifest_replaces_funnel_and_sizes(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    _curation_file(results / "curation_scaling-10000-x.json", 10000, 40.0)
    version = tmp_path / "pilot" / "v1"
    (version / "shards").mkdir(parents=True)
    (version / "shards" / "000000.parquet").write_bytes(b"x" * 3000)
    (version / "shards" / "000001.parquet").write_bytes(b"x" * 1000)
    funnel = {"stages": [{"stage": "extract", "input": 900, "output": 600, "dropped": {"no_alt": 300}},
                         {"stage": "download", "input": 600, "output": 300, "dropped": {"http_404": 300}},
                         {"stage": "shard", "input": 300, "output": 300, "dropped": {}}]}
    write_manifest(str(version / "manifest.json"), Manifest(
        dataset="pilot", version="v1", total_samples=300, funnel=funnel, config_hash="h", code_version="c",
        upstream={}, created="2026-11-28T00:00:00+00:00",
        shards=[ShardInfo("shards/000000.tar", 200, 4_000_000, "s", "shards/000000.parquet"),
                ShardInfo("shards/000001.tar", 100, 2_000_000, "s", "shards/000001.parquet")]))
    assert P.main(["--pairs", "3000", "--model", "ViT-B-32", "--results", str(results), "--manifest", str(version),
                   "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["tar_bytes_per_sample"] == 20_000 and p["inputs"]["parquet_bytes"] == 4000 // 300
    assert [s["records"] for s in p["curation"]["stages"]] == [9000, 6000, 3000]
    assert "pilot/v1/manifest.json" in p["sources"]["curation"]
    assert math.isclose(p["bytes"]["tars"], 3000 * 20_000)
