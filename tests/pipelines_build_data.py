"""A real tiny dataset build shared by test_chain.py (the uninterrupted reference of the killed-build test) and
test_pipelines_explain.py: the synthetic web through `pipelines.build.main`, built once per test process.

Its config keeps rejected samples aside (pipeline.filter.keep_rejected) and cuts shards at 25 samples or 40 kB
of tar, whichever comes first, so both shard targets and the rejected tars are exercised end to end.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from conftest import free_port

from pipelines import storage
from pipelines.schema import load_manifest

TINY_MODEL = {"embed_dim": 16, "image_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 1,
              "vision_heads": 2, "vocab_size": 300, "context_length": 16, "text_width": 32, "text_layers": 1,
              "text_heads": 2}
MAX_SHARD_BYTES = 40_960
EVAL_TASKS = ["colour", "shape", "heldout_combo", "retrieval"]


def tiny_config(folder: Path, root: str, web_dir: str, port: int) -> str:
    """Write `folder/tiny.yaml`: 12 pages x 10 images of synthetic web, tiny model, tiny evaluation."""
    cfg = {
        "storage": {"root": root},
        "web": {"dir": web_dir, "pages": 12, "images_per_page": 10, "pages_per_warc": 4, "port": port,
                "slow": 0.0},
        # The synthetic web is served on loopback, which the downloader's SSRF guard refuses unless allowed.
        "pipeline": {"download": {"thread_count": 8, "allow_private": [f"127.0.0.1:{port}"]},
                     "filter": {"keep_rejected": True},
                     "shard": {"samples_per_shard": 25, "max_shard_bytes": MAX_SHARD_BYTES},
                     # Decontaminate against what this config evaluates, rendered as evaluation renders it.
                     "decontam": {"tasks": EVAL_TASKS, "samples_per_class": 2, "retrieval_pairs": 10,
                                  "image_size": 40}},
        "training": {"model": TINY_MODEL, "steps": 3, "batch_size": 8, "warmup_steps": 1, "log_every": 1,
                     "shuffle_buffer": 20},
        "evaluation": {"samples_per_class": 2, "retrieval_pairs": 10, "image_size": 40,
                       "tasks": EVAL_TASKS},
    }
    path = Path(folder) / "tiny.yaml"
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


@dataclass
class TinyBuild:
    config: str
    root: str
    version: str  # <root>/synthweb/v1
    manifest: str
    web_dir: str  # the synthetic web (reused by other builds that must see the same corpus)
    port: int


_CACHE: dict[str, TinyBuild] = {}


def tiny_build() -> TinyBuild:
    """Build once per process, in-process (needs the ray_local and spark fixtures active)."""
    if "build" not in _CACHE:
        from pipelines import build

        folder = Path(tempfile.mkdtemp(prefix="witforge-tiny-build-"))
        atexit.register(shutil.rmtree, folder, True)
        web_dir, port, root = str(folder / "web"), free_port(), str(folder / "data")
        config = tiny_config(folder, root, web_dir, port)
        assert build.main(["--config", config]) == 0
        version = os.path.join(root, "synthweb", "v1")
        _CACHE["build"] = TinyBuild(config, root, version, os.path.join(version, "manifest.json"), web_dir, port)
    return _CACHE["build"]
