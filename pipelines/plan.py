"""Capacity plan for a dataset and training run at internet scale, from the rates this project measured.

    python -m pipelines.plan --pairs 400M --model ViT-L-14 --epochs 32 [--train-hours 336 --curation-hours 120]
    python -m pipelines.plan --pairs 400M --manifest s3://bucket/witforge/pilot/v1 --json     # a pilot's funnel

From a target (final image/text pairs, model, epochs) and the measured rates (pipelines/plan_rates.py: per-stage
samples/s/core and the funnel from benchmarks/results/curation_scaling-*.json, per-GPU training samples/s from
train_gpu-*.json or the reference H200 figures) it prints: shard count and size; bytes stored (shards, parquet,
manifest, the download work copy, checkpoints); S3 request rates while crawling and training against the
per-prefix limits and the key layout that stays under them; CPU nodes for curation and GPU nodes for training
within the target wall times; node-hours and cost. Prices and per-sample sizes are inputs with defaults that
are assumptions, listed under "assumptions" in the output. runbooks/procedures/capacity-planning.md explains
every line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pipelines.plan_rates import (
    FORWARD_GFLOP,
    PARAMS,
    RESULTS_DIR,
    CurationRates,
    GpuRate,
    PlanInputError,
    curation_rates,
    gpu_rate,
    override_rates,
    with_funnel,
)

MB = 1_000_000
MIB = 2**20
S3_PUT_LIMIT = 3500  # PUT/COPY/POST/DELETE per second per partitioned prefix (AWS S3 performance guidelines)
S3_GET_LIMIT = 5500  # GET/HEAD per second per partitioned prefix
S3FS_BLOCK = 50 * MIB  # s3fs 2026.9 default_block_size: one ranged GET on read, one multipart part on write
TAR_MEMBER_OVERHEAD = 512 + 256  # a member's 512-byte header plus, on average, half a 512-byte padding block
MEMBERS_PER_SAMPLE = 3  # <uid>.jpg, <uid>.txt, <uid>.json
MANIFEST_BYTES_PER_SHARD = 220  # one ShardInfo in manifest.json (indent-2 JSON; data/synthweb/v1: 1,099 B / 5)
OBJECTS_PER_DOWNLOAD_SHARD = 3  # img2dataset's NNNNN.tar, NNNNN.parquet, NNNNN_stats.json
OBJECTS_PER_SHARD = 3  # shards/NNNNNN.tar, shards/NNNNNN.parquet, _work/shard/NNNNNN.json (commit record)
CHECKPOINT_BYTES_PER_PARAM = 12  # model.safetensors (fp32) + optimizer.safetensors (two fp32 AdamW moments)


@dataclass
class PlanInputs:
    """The target and the assumptions; every field is a --flag of the same name (dashes for underscores)."""

    pairs: int
    """Final image/text pairs in the dataset version (after every curation stage)."""
    model: str = "ViT-L-14"
    """A training.model.preset name (sets the GPU rate, FLOPs and checkpoint size)."""
    epochs: float = 32.0
    """Passes over the dataset (samples seen = pairs x epochs; the CLIP paper: 32 epochs of 400M)."""
    curation_hours: float = 120.0
    """Target wall time of the dataset build (its stages run one after the other)."""
    train_hours: float = 336.0
    """Target wall time of training."""
    cpu_node_cores: int = 32
    """Cores (Ray CPUs) per curation node."""
    gpus_per_node: int = 8
    """GPUs per training node (one Ray Train worker each)."""
    cpu_node_price: float = 1.36
    """$/hour of a CPU node (assumed: a 32-vCPU on-demand instance list price; use your own)."""
    gpu_node_price: float = 55.04
    """$/hour of a GPU node (assumed: an 8x H100 on-demand instance list price; use your own)."""
    image_bytes: int = 35_000
    """Mean JPEG bytes per sample (assumed: DataComp CommonPool, 450 TB / 12.8B samples; the download stage keeps
    originals (resize_mode no), so measure yours: --manifest of a pilot build replaces this)."""
    meta_bytes: int = 500
    """Caption (.txt) + metadata (.json) bytes per sample (the demo's shards: 43 + 456)."""
    parquet_bytes: int = 150
    """Per-shard parquet bytes per sample (the demo's shards: 149 KB per 1,000 rows)."""
    sample_bytes: int = 0
    """Tar bytes per sample; 0: image_bytes + meta_bytes + 3 tar headers and paddings."""
    shard_mb: float = 256.0
    """Target tar size (MB); sets samples per shard unless samples_per_shard is given."""
    samples_per_shard: int = 0
    """pipeline.shard.samples_per_shard; 0: derived from shard_mb."""
    download_shard_candidates: int = 1000
    """pipeline.download.number_sample_per_shard: candidates per img2dataset shard."""
    loader_workers: int = 4
    """training.loader_workers per GPU rank (benchmarks/train_gpu.py used 4)."""
    checkpoints_kept: int = 10
    """Step dirs kept under <root>/checkpoints/<run>/ (nothing deletes old ones by itself)."""
    scaling: float = 0.925
    """Multi-node scaling efficiency of training (assumed: NeMo CLIP on 16 H100 nodes, 14.8x of 16x)."""
    embed_per_gpu: float = 2500.0
    """Images/s per GPU for the model stages' CLIP embedding, when they are costed on GPUs (assumed:
    clip-retrieval's published ViT-B/32 inference rate, resize-bound; not measured here)."""
    s3_headroom: float = 0.5
    """Plan for this fraction of the per-prefix request limits (S3 adds capacity gradually; 503 SlowDown meanwhile)."""
    s3_price_gb_month: float = 0.023
    """$/GB-month of S3 Standard (assumed list price)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "model":
                continue
            floor_zero = f.name in ("sample_bytes", "samples_per_shard", "loader_workers", "checkpoints_kept")
            if value < 0 or (value == 0 and not floor_zero):
                raise PlanInputError(f"--{f.name.replace('_', '-')}: must be {'>= 0' if floor_zero else '> 0'}, "
                                     f"got {value}")
        for name in ("scaling", "s3_headroom"):
            if getattr(self, name) > 1:
                raise PlanInputError(f"--{name.replace('_', '-')}: a fraction in (0, 1], got {getattr(self, name)}")

    def tar_bytes_per_sample(self) -> int:
        return self.sample_bytes or self.image_bytes + self.meta_bytes + MEMBERS_PER_SAMPLE * TAR_MEMBER_OVERHEAD


def put_requests(size: float, single_put_below: float) -> int:
    """PUT-class requests to write one object of `size` bytes with s3fs: one PUT below the single-upload limit,
    else CreateMultipartUpload + one UploadPart per block + CompleteMultipartUpload."""
    return 1 if size < single_put_below else 2 + math.ceil(size / S3FS_BLOCK)


def get_requests(size: float) -> int:
    """GET-class requests to stream one object with s3fs: a HEAD at open, then one ranged GET per block."""
    return 1 + math.ceil(size / S3FS_BLOCK)


def prefixes_needed(rate: float, limit: float, headroom: float) -> int:
    return max(1, math.ceil(rate / (limit * headroom)))


def hex_digits_for(prefixes: int) -> int:
    """Leading hex digits of a hash that give at least `prefixes` distinct prefixes."""
    digits = 0
    while 16**digits < prefixes:
        digits += 1
    return digits


def plan(inp: PlanInputs, cur: CurationRates, gpu: GpuRate) -> dict[str, Any]:
    """The whole plan as one JSON-able dict (what --json prints)."""
    per_sample = inp.tar_bytes_per_sample()
    per_shard = inp.samples_per_shard or max(1, math.floor(inp.shard_mb * MB / per_sample))
    shards = math.ceil(inp.pairs / per_shard)
    shard_bytes = per_shard * per_sample

    # Curation: each stage sees pairs x (its input / the final output) records of the measured funnel.
    final = cur.final_output()
    stages = [{"stage": s.stage, "records": inp.pairs * s.input / final, "kept": s.output / s.input if s.input else 1.0,
               "per_core": s.per_core} for s in cur.stages]
    for s in stages:
        s["core_hours"] = s["records"] / s["per_core"] / 3600 if s["per_core"] else 0.0
    core_hours = sum(s["core_hours"] for s in stages)
    cpu_nodes = max(1, math.ceil(core_hours / (inp.cpu_node_cores * inp.curation_hours)))
    cores = cpu_nodes * inp.cpu_node_cores
    for s in stages:
        s["hours"] = s["core_hours"] / cores
    curation_wall = core_hours / cores
    curation = {"stages": stages, "core_hours": core_hours, "nodes": cpu_nodes, "cores_per_node": inp.cpu_node_cores,
                "wall_hours": curation_wall, "node_hours": cpu_nodes * curation_wall,
                "cost": cpu_nodes * curation_wall * inp.cpu_node_price}
    by_stage = {s["stage"]: s for s in stages}

    # Model stages measured as pass-through: one CLIP embedding of their input on GPUs (semdedup and clip_filter
    # share it: pipelines/embed.py caches the parts by checkpoint digest).
    unmeasured = [s for s in stages if s["per_core"] is None]
    embedding = None
    if unmeasured:
        gpu_hours = unmeasured[0]["records"] / inp.embed_per_gpu / 3600
        embedding = {"stages": [s["stage"] for s in unmeasured], "records": unmeasured[0]["records"],
                     "per_gpu": inp.embed_per_gpu, "gpu_hours": gpu_hours,
                     "node_hours": gpu_hours / inp.gpus_per_node,
                     "cost": gpu_hours / inp.gpus_per_node * inp.gpu_node_price}

    # Training.
    seen = inp.pairs * inp.epochs
    per_gpu = gpu.samples_per_s * inp.scaling
    gpus_needed = math.ceil(seen / (per_gpu * inp.train_hours * 3600))
    gpu_nodes = math.ceil(gpus_needed / inp.gpus_per_node)
    gpus = gpu_nodes * inp.gpus_per_node
    train_wall = seen / (gpus * per_gpu) / 3600
    global_rate = gpus * per_gpu
    gflop = 3 * FORWARD_GFLOP[inp.model] if inp.model in FORWARD_GFLOP else None  # training = 3 x forward
    training = {"samples_seen": seen, "per_gpu_measured": gpu.samples_per_s, "per_gpu": per_gpu, "gpu": gpu.gpu,
                "gpus": gpus, "nodes": gpu_nodes, "wall_hours": train_wall, "gpu_hours": gpus * train_wall,
                "node_hours": gpu_nodes * train_wall, "cost": gpu_nodes * train_wall * inp.gpu_node_price,
                "samples_per_s": global_rate, "node_read_mb_per_s": inp.gpus_per_node * per_gpu * per_sample / MB,
                "tflops_per_gpu": gpu.samples_per_s * gflop / 1000 if gflop else None}

    # S3 requests: the write peaks are the download (img2dataset shards) and the shard stage; the read peak is
    # training (every rank streams whole shards).
    s3 = _s3(inp, by_stage, cores, shards, per_shard, per_sample, gpus, global_rate)

    pairs_bytes = inp.pairs * per_sample
    dl = by_stage.get("download")
    downloaded = dl["records"] * dl["kept"] if dl else 0.0
    stored = {"tars": pairs_bytes, "parquet": inp.pairs * inp.parquet_bytes,
              "manifest": shards * MANIFEST_BYTES_PER_SHARD}
    stored["dataset"] = stored["tars"] + stored["parquet"] + stored["manifest"]
    stored["work_download"] = downloaded * per_sample
    stored["checkpoints"] = PARAMS.get(inp.model, 0) * CHECKPOINT_BYTES_PER_PARAM * inp.checkpoints_kept
    stored["total"] = stored["dataset"] + stored["work_download"] + stored["checkpoints"]

    cost = {"curation": curation["cost"], "embedding": embedding["cost"] if embedding else 0.0,
            "training": training["cost"]}
    cost["total"] = sum(cost.values())
    cost["storage_per_month"] = stored["total"] / 1e9 * inp.s3_price_gb_month
    return {
        "inputs": asdict(inp), "tar_bytes_per_sample": per_sample,
        "sources": {"curation": cur.source, "gpu": gpu.source},
        "shards": {"samples_per_shard": per_shard, "count": shards, "mb_per_shard": shard_bytes / MB},
        "bytes": stored, "curation": curation, "embedding": embedding, "training": training, "s3": s3, "cost": cost,
        "assumptions": _assumptions(inp, embedding is not None, final / cur.stages[0].input),
    }


def _s3(inp: PlanInputs, by_stage: dict[str, dict], cores: int, shards: int, per_shard: int, per_sample: int,
        gpus: int, global_rate: float) -> dict[str, Any]:
    shard_bytes = per_shard * per_sample
    phases = []
    per_image = 0.0
    if "download" in by_stage and by_stage["download"]["core_hours"]:
        dl = by_stage["download"]
        seconds = dl["core_hours"] * 3600 / cores
        shards_per_s = dl["records"] / seconds / inp.download_shard_candidates
        tar = inp.download_shard_candidates * dl["kept"] * per_sample  # img2dataset streams it (S3File)
        puts = put_requests(tar, S3FS_BLOCK) + (OBJECTS_PER_DOWNLOAD_SHARD - 1)
        phases.append({"phase": "crawl: download", "put_per_s": shards_per_s * puts, "get_per_s": 0.0})
        per_image = dl["records"] * dl["kept"] / seconds
    if "shard" in by_stage and by_stage["shard"]["core_hours"]:
        seconds = by_stage["shard"]["core_hours"] * 3600 / cores
        puts = put_requests(shard_bytes, 2 * S3FS_BLOCK) + (OBJECTS_PER_SHARD - 1)  # the tar goes by put_file
        # Reads: one ranged GET per image out of the download tars (at the offsets the filter recorded).
        phases.append({"phase": "crawl: shard", "put_per_s": shards / seconds * puts,
                       "get_per_s": shards / seconds * per_shard})
    phases.append({"phase": "training", "put_per_s": 0.0,
                   "get_per_s": global_rate / per_shard * get_requests(shard_bytes)})
    # At start (and after every restart) each loader worker of each rank opens a shard at once: a HEAD and its
    # first block, within about a second.
    burst = gpus * max(1, inp.loader_workers) * 2
    peak_put = max(p["put_per_s"] for p in phases)
    # The shard stage's GETs read _work/download/, not shards/: they size that prefix's layout, not this one.
    reads = next((p["get_per_s"] for p in phases if p["phase"] == "crawl: shard"), 0.0)
    peak_get = max([p["get_per_s"] for p in phases if p["phase"] != "crawl: shard"] + [burst])
    prefixes = max(prefixes_needed(peak_put, S3_PUT_LIMIT, inp.s3_headroom),
                   prefixes_needed(peak_get, S3_GET_LIMIT, inp.s3_headroom))
    digits = hex_digits_for(prefixes)
    layout = ("<root>/<dataset>/<version>/shards/NNNNNN.tar: one prefix is enough" if digits == 0 else
              f"<root>/<dataset>/<version>/shards/<h>/NNNNNN.tar, h = the first {digits} hex digit(s) of "
              f"sha256('NNNNNN'): {16**digits} prefixes (the shard stage writes shards/NNNNNN.tar today; the "
              "manifest records each shard's path, so readers need no change)")
    return {"limits": {"put_per_s": S3_PUT_LIMIT, "get_per_s": S3_GET_LIMIT, "headroom": inp.s3_headroom},
            "phases": phases, "training_start_burst_gets": burst, "peak_put_per_s": peak_put,
            "peak_get_per_s": peak_get,
            "one_object_per_image_put_per_s": per_image,
            "prefixes": prefixes, "hex_digits": digits, "layout": layout,
            "download_read_get_per_s": reads,
            "download_read_prefixes": prefixes_needed(reads, S3_GET_LIMIT, inp.s3_headroom) if reads else 0}


def _assumptions(inp: PlanInputs, embedding: bool, kept: float) -> list[str]:
    out = [
        (f"funnel: {kept:.1%} of the candidates entering the first stage become pairs, as in the measured build "
         "(Sources); the synthetic web keeps far more than the real one: pass --manifest of a pilot build"),
        ("curation stages run one after the other and scale linearly with cores (rates per core as measured on a "
         "2-core VM; benchmarks/curation_scaling.py at 10k/30k/100k checks the linearity)"),
        ("download is bound by waiting on servers, not CPU: its per-core rate is img2dataset's Ray layout "
         "(one task per core, pipeline.download.thread_count threads); override with --rate download=<n>"),
        (f"training: one GPU's samples/s (Sources) x scaling {inp.scaling:g} across nodes; decode on the GPU "
         "(nvJPEG, 10,428 images/s measured on an H200), so node CPUs are not the limit"),
        f"sizes: {inp.tar_bytes_per_sample():,} tar bytes per sample"
        + ("" if inp.sample_bytes else f" = image {inp.image_bytes:,} + caption/metadata {inp.meta_bytes:,} + "
           f"{MEMBERS_PER_SAMPLE} x {TAR_MEMBER_OVERHEAD} tar header and padding"),
        (f"prices: CPU node ${inp.cpu_node_price:g}/h, GPU node ${inp.gpu_node_price:g}/h, S3 "
         f"${inp.s3_price_gb_month:g}/GB-month (list prices assumed; pass yours)"),
        (f"S3: plan for {inp.s3_headroom:.0%} of {S3_PUT_LIMIT:,} PUT/s and {S3_GET_LIMIT:,} GET/s per prefix; "
         f"s3fs {S3FS_BLOCK // MIB} MiB blocks (one GET per block read, multipart above it)"),
    ]
    if embedding:
        out.append(f"model stages (semdedup, clip_filter) passed data through in the measurement: costed as one "
                   f"CLIP embedding on GPUs at {inp.embed_per_gpu:g} images/s per GPU (published figure)")
    return out


def parse_count(text: str) -> int:
    """400M, 1.28B, 12.8e9, 400_000_000 -> an int."""
    t = text.strip().replace("_", "").replace(",", "")
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}.get(t[-1:].lower(), 1)
    try:
        value = float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (e.g. 400M, 1.28B, 400000000)") from None
    return round(value)


def _rate_override(text: str) -> tuple[str, float]:
    stage, sep, value = text.partition("=")
    try:
        if not sep or float(value) <= 0:
            raise ValueError
        return stage, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected stage=<positive samples/s/core>") from None


def measured_from_manifest(uri: str) -> tuple[list[dict], int, int | None, str]:
    """From a built version (its prefix or manifest.json URI): the funnel stages, the mean tar bytes per sample,
    the mean parquet bytes per sample (from up to 16 shards' parquets) and the manifest's URI."""
    from pipelines import storage
    from pipelines.schema import load_manifest

    m_uri = uri if uri.endswith(".json") else storage.join(uri, "manifest.json")
    manifest = load_manifest(m_uri)
    if not manifest.total_samples:
        raise PlanInputError(f"--manifest {m_uri}: the version holds no sample")
    version = m_uri.rsplit("/", 1)[0]
    tar_bytes = round(sum(s.bytes for s in manifest.shards) / manifest.total_samples)
    sampled = manifest.shards[:16]
    parquet = None
    if sampled:
        sizes = []
        for s in sampled:
            fs, path = storage.filesystem(storage.join(version, s.parquet))
            sizes.append(fs.size(path))
        parquet = round(sum(sizes) / sum(s.samples for s in sampled))
    return manifest.funnel["stages"], tar_bytes, parquet, m_uri


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.plan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults, docs = PlanInputs(pairs=1), _field_docs()
    p.add_argument("--pairs", type=parse_count, required=True, help="final image/text pairs, e.g. 400M")
    for f in fields(PlanInputs):
        if f.name == "pairs":
            continue
        kind = type(getattr(defaults, f.name))
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=getattr(defaults, f.name),
                       help=docs.get(f.name))
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="benchmark results folder to read rates from")
    p.add_argument("--manifest", default="", help="a pilot build's version prefix or manifest.json URI: its funnel, "
                   "tar and parquet bytes per sample replace the benchmark's funnel and the size defaults")
    p.add_argument("--rate", type=_rate_override, action="append", default=[], metavar="STAGE=N",
                   help="override a stage's samples/s/core (repeatable), e.g. --rate download=100")
    p.add_argument("--gpu-rate", type=float, default=0.0,
                   help="training samples/s of one GPU for --model (replaces the measured/scaled figure)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    return p


def _field_docs() -> dict[str, str]:
    """PlanInputs' attribute docstrings (Python keeps none at run time), read from this file for --help."""
    import ast


    tree = ast.parse(Path(__file__).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PlanInputs")
    docs, last = {}, None
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            last = node.target.id
        elif last and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docs[last] = " ".join(str(node.value.value).split())
            last = None
    return docs


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(PlanInputs)}
    try:
        rates = curation_rates(args.results)
        if args.manifest:
            funnel, tar_bytes, parquet, m_uri = measured_from_manifest(args.manifest)
            rates = with_funnel(rates, funnel, m_uri)
            values["sample_bytes"] = values["sample_bytes"] or tar_bytes
            if parquet is not None:
                values["parquet_bytes"] = parquet
        rates = override_rates(rates, dict(args.rate))
        inp = PlanInputs(**values)
        gpu = (GpuRate(inp.model, args.gpu_rate, "given", "--gpu-rate") if args.gpu_rate > 0 else
               gpu_rate(inp.model, args.results))
        result = plan(inp, rates, gpu)
    except (PlanInputError, FileNotFoundError, ValueError) as exc:
        print(f"plan error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        from pipelines.plan_render import render

        print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
