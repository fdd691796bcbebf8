"""Embed dataset samples with a CLIP checkpoint, on Ray: the shared step of semdedup and clip_filter.

    emb = embed_samples(rows, cfg, download_uri, out_uri)   # rows: uid, key, src_tar, caption
    emb.image, emb.text: (n, d) float32, L2-normalised; emb.clip_score(): their cosine; emb.missing: unreadable uids

One Ray actor per `num_cpus`/`num_gpus` slot loads the checkpoint once (training.checkpoint.load_clip: digest
checked, safetensors only) and embeds one download shard per call: it streams that shard's image members out of
the img2dataset tar (pipelines.stages.members), decodes them with PIL and runs the image and text towers in
batches. Actors rather than tasks because a model load per shard would dominate small shards, and a GPU worker
must hold one copy of the weights, not one per finished task.

Each shard's embeddings are published atomically as a part, `<_work>/embeddings/<digest[:16]>/<shard>.parquet`
(uid, image, text; image and text null for an image that cannot be read), keyed by the checkpoint's weights
digest: a rerun after a crash, or clip_filter after semdedup with the same checkpoint, reads the parts instead
of recomputing them; a part missing some uids is extended, never rewritten with different values.

torch and training/ are imported inside functions only: the pipeline's config can be parsed, and the other
stages run, without loading a model.
"""

from __future__ import annotations

import io
import logging
import math
import posixpath
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.stages.dedupe import publish_parquet
from pipelines.stages.members import read_members
from pipelines.storage import ray_task_options

log = logging.getLogger(__name__)


@dataclass
class EmbedConfig:
    """The embedding settings of a stage that uses a model (semdedup, clip_filter inherit these fields)."""

    checkpoint: str = ""
    """CLIP checkpoint (a step dir, or a run dir: its latest.json) to embed with; "" = no model yet: the stage is
    skipped. A dataset's first model is trained on the less-filtered version; its checkpoint curates the next one
    (DataComp's bootstrap)."""
    batch_size: int = 256
    """Images (and captions) per forward pass."""
    num_cpus: float = 1.0
    """CPUs Ray reserves for each embedding actor (also its torch thread count)."""
    num_gpus: float = 0.0
    """GPUs Ray reserves for each embedding actor; > 0 runs the model on CUDA."""
    actors: int = 0
    """Embedding actors; 0 = as many as the cluster's CPUs (or GPUs) allow, at most one per download shard."""


def check_embed_config(cfg: EmbedConfig, section: str) -> None:
    if cfg.batch_size < 1:
        raise ValueError(f"pipeline.{section}.batch_size: must be at least 1, got {cfg.batch_size}")
    if cfg.num_cpus <= 0 or cfg.num_gpus < 0 or cfg.actors < 0:
        raise ValueError(f"pipeline.{section}: num_cpus must be > 0, num_gpus and actors >= 0")


@dataclass
class Embeddings:
    uids: list[str]
    image: np.ndarray
    text: np.ndarray
    checkpoint: str
    """The resolved step dir the embeddings came from."""
    digest: str
    missing: list[str] = field(default_factory=list)
    """Uids whose image could not be read (no embedding; not in `uids`)."""
    reused_parts: int = 0
    computed_parts: int = 0

    def clip_score(self) -> np.ndarray:
        """Cosine similarity of each sample's image and caption embeddings (both are unit vectors)."""
        return np.einsum("nd,nd->n", self.image, self.text).astype(np.float64)


def resolve(checkpoint: str) -> tuple[str, str]:
    """(step dir URI, weights digest) of a checkpoint URI, without loading the weights."""
    from training.checkpoint import resolve_checkpoint

    uri = resolve_checkpoint(checkpoint)
    return uri, storage.read_json(storage.join(uri, "meta.json"))["digest"]


def cache_uri(out_uri: str, digest: str) -> str:
    """Beside the stage directories (<version>/_work/embeddings/...), shared by every stage using the weights."""
    return storage.join(posixpath.dirname(out_uri.rstrip("/")), "embeddings", digest[:16])


def _read_part(uri: str) -> dict[str, tuple[list[float] | None, list[float] | None]]:
    with storage.open_uri(uri) as f:
        t = pq.read_table(f)
    return {u: (i, x) for u, i, x in zip(t.column("uid").to_pylist(), t.column("image").to_pylist(),
                                         t.column("text").to_pylist())}


def _part_table(entries: dict[str, tuple], dim: int) -> pa.Table:
    vec = pa.list_(pa.float32(), dim)
    uids = sorted(entries)
    return pa.table({"uid": pa.array(uids, pa.string()),
                     "image": pa.array([entries[u][0] for u in uids], vec),
                     "text": pa.array([entries[u][1] for u in uids], vec)})


class Embedder:
    """A Ray actor holding one loaded checkpoint."""

    def __init__(self, checkpoint_uri: str, device: str, threads: int) -> None:
        import torch

        from training.checkpoint import load_clip

        torch.set_num_threads(max(1, threads))
        self.clip = load_clip(checkpoint_uri, device)

    def embed_part(self, part_uri: str, tar_uri: str, rows: list[dict], batch_size: int) -> dict:
        from PIL import Image

        entries = _read_part(part_uri) if storage.exists(part_uri) else {}
        todo = [r for r in rows if r["uid"] not in entries]
        members = read_members(tar_uri, {r["key"] for r in todo})
        images, readable, unreadable = [], [], []
        for r in todo:
            try:
                img = Image.open(io.BytesIO(members[r["key"]]))
                img.load()
                images.append(img.convert("RGB"))
                readable.append(r)
            except Exception as exc:  # KeyError (not in the tar) or any decoder error: no embedding, said so
                log.warning("%s: %s unreadable (%s: %s)", tar_uri, r["uid"], type(exc).__name__, exc)
                unreadable.append(r["uid"])
        img_emb = self.clip.encode_images(images, batch_size)
        txt_emb = self.clip.encode_texts([r["caption"] for r in readable], batch_size)
        for r, i, t in zip(readable, img_emb, txt_emb):
            entries[r["uid"]] = (i.tolist(), t.tolist())
        for uid in unreadable:
            entries[uid] = (None, None)
        publish_parquet(part_uri, _part_table(entries, self.clip.config.embed_dim))
        return {"part": part_uri, "embedded": len(readable), "unreadable": len(unreadable)}


def _actor_count(cfg: EmbedConfig, jobs: int) -> int:
    import ray

    if cfg.actors:
        return min(cfg.actors, jobs)
    res = ray.cluster_resources()
    slots = res.get("GPU", 0) / cfg.num_gpus if cfg.num_gpus else res.get("CPU", 1) / cfg.num_cpus
    return max(1, min(jobs, math.floor(slots)))


def _compute(jobs: list[tuple[str, str, list[dict]]], cfg: EmbedConfig, checkpoint_uri: str) -> None:
    import ray
    from ray.util import ActorPool

    device = "cuda" if cfg.num_gpus else "cpu"
    # A killed actor is restarted (model reloaded) and its in-flight part recomputed: parts publish atomically.
    actor = ray.remote(Embedder).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, max_restarts=2,
                                         max_task_retries=2, **ray_task_options())
    actors = [actor.remote(checkpoint_uri, device, int(cfg.num_cpus)) for _ in range(_actor_count(cfg, len(jobs)))]
    try:
        pool = ActorPool(actors)
        for res in pool.map_unordered(lambda a, job: a.embed_part.remote(*job, cfg.batch_size), jobs):
            log.info("embedded %s: %d images, %d unreadable", res["part"], res["embedded"], res["unreadable"])
    finally:
        for a in actors:
            ray.kill(a)


def embed_samples(rows: list[dict], cfg: EmbedConfig, download_uri: str, out_uri: str) -> Embeddings:
    """Image and caption embeddings of `rows` (uid, key, src_tar, caption) with cfg.checkpoint; Ray must be up."""
    checkpoint_uri, digest = resolve(cfg.checkpoint)
    cache = cache_uri(out_uri, digest)
    by_tar: dict[str, list[dict]] = {}
    for r in rows:
        # The tar is looked up under download_uri (not the URI the filter saw): the version may have moved.
        by_tar.setdefault(posixpath.basename(r["src_tar"]), []).append(r)
    jobs, parts = [], {}
    for tar_name, group in sorted(by_tar.items()):
        part = storage.join(cache, tar_name.rsplit(".", 1)[0] + ".parquet")
        parts[part] = group
        have = _read_part(part) if storage.exists(part) else {}
        missing = [{"uid": r["uid"], "key": r["key"], "caption": r["caption"]} for r in group if r["uid"] not in have]
        if missing:
            jobs.append((part, storage.join(download_uri, tar_name), missing))
    if jobs:
        _compute(jobs, cfg, checkpoint_uri)
    uids, image, text, unreadable = [], [], [], []
    for part, group in parts.items():
        got = _read_part(part)
        for r in group:
            img, txt = got[r["uid"]]
            if img is None:
                unreadable.append(r["uid"])
                continue
            uids.append(r["uid"])
            image.append(img)
            text.append(txt)
    shape = (len(uids), len(image[0]) if image else 0)
    return Embeddings(uids=uids, image=np.asarray(image, np.float32).reshape(shape),
                      text=np.asarray(text, np.float32).reshape(shape), checkpoint=checkpoint_uri, digest=digest,
                      missing=sorted(unreadable), reused_parts=len(parts) - len(jobs), computed_parts=len(jobs))
