"""semdedup (Ray embeds, faiss clusters): SemDeDup (Abbas et al. 2023) on the image embeddings of a checkpoint.

CONTRACT (build.py calls it; Ray is already initialised by the caller):
    run(cfg: SemDedupConfig, in_uri: str, out_uri: str, download_uri: str) -> StageCounts
Input: `in_uri/keep.parquet`; the images are read from the download tars under `download_uri`. Skipped (input
passed through, the reason logged and in report.json) when cfg.checkpoint is "": the first model of a dataset
trains on the less-filtered version and curates the next. Output (pipelines.stages.curation): keep.parquet,
dropped.parquet (reason `semantic_duplicate`, dup_of = the better-ranked member of the pair, score = their
cosine similarity), report.json (checkpoint and digest, clusters, distribution of nearest-better similarities),
then layout.commit. The embeddings stay in <_work>/embeddings/ for clip_filter (pipelines.embed).

Method, as in the paper: embed every image (pipelines.embed: Ray actors, CPU or GPU), cluster the unit vectors
with spherical k-means (faiss; k = cfg.clusters, or n / cluster_size), and within each cluster rank members
best first, by the CLIP score of their own (image, caption) pair, then image area, then uid. A member is dropped
when its cosine similarity to any better-ranked member of its cluster exceeds cfg.threshold: of every pair above
the threshold the better one stays. Pairs split across clusters are missed (the paper accepts that for
tractability); the measured recall in tests/test_pipelines_semdedup.py includes that loss.

Scaling: embedding is the costly part and runs on the Ray cluster. k-means trains on at most
faiss' max_points_per_centroid (256) points per centroid, sampled with the seed. The per-cluster comparison is
O(cluster size^2) in blocks of 1024 columns on the driver, which holds n x d float32 (1M samples at d=512:
2 GB); beyond that the same function runs per cluster in Ray tasks over the embedding parts.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from pipelines.embed import EmbedConfig, check_embed_config, embed_samples
from pipelines.funnel import StageCounts
from pipelines.stages import curation

log = logging.getLogger(__name__)
STAGE = "semdedup"
REASON = "semantic_duplicate"
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


@dataclass
class SemDedupConfig(EmbedConfig):
    threshold: float = 0.95
    """Cosine similarity of two image embeddings above which the worse-ranked image is dropped (the paper's
    1 - epsilon). It depends on the model: set it from report.json's `nearest_better_similarity` quantiles of a
    first run. The 2-core demo model (128-d, 600 steps) packs the synthetic web tightly (median 0.967): on its
    5,812 dedupe survivors 0.95 drops 71%, 0.99 drops 5.5% (3.8% of the input joined to another scene), 0.995
    drops 0.7% (0.38%) (benchmarks/curation_on_synthweb.py)."""
    clusters: int = 0
    """k-means clusters; 0 = round(samples / cluster_size), at least 1."""
    cluster_size: int = 1000
    """Target mean cluster size when clusters is 0 (the pairwise work per cluster grows with its square)."""
    kmeans_iters: int = 20
    """k-means iterations."""
    seed: int = 0
    """Seed of the k-means initialisation and sampling."""

    def __post_init__(self) -> None:
        check_embed_config(self, STAGE)
        if not -1.0 <= self.threshold < 1.0:
            raise ValueError(f"pipeline.semdedup.threshold: {self.threshold} must be in [-1, 1)")
        if self.clusters < 0 or self.cluster_size < 1 or self.kmeans_iters < 1:
            raise ValueError("pipeline.semdedup: clusters must be >= 0, cluster_size and kmeans_iters >= 1")


def cluster(emb: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    """Spherical k-means assignment (one cluster id per row) of unit vectors."""
    import faiss

    n, d = emb.shape
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, np.int64)
    km = faiss.Kmeans(d, k, niter=iters, seed=seed, spherical=True, verbose=False)
    km.cp.min_points_per_centroid = 1  # small versions: no warning for < 39 points per centroid
    x = np.ascontiguousarray(emb, dtype=np.float32)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return assign[:, 0].astype(np.int64)


def nearest_better(emb: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For rows ordered best first: (index of the most similar EARLIER row, that similarity); row 0 gets (-1, -inf).

    Computed in column blocks so memory is O(m * block), not O(m^2).
    """
    m = len(emb)
    best_idx = np.full(m, -1, np.int64)
    best_sim = np.full(m, -np.inf, np.float32)
    for s in range(0, m, block):
        e = min(m, s + block)
        sims = emb[:e] @ emb[s:e].T  # (e, e - s): row i against column s + c
        sims[np.arange(e)[:, None] >= np.arange(s, e)[None, :]] = -np.inf  # only earlier rows count
        if e > 1:
            best_idx[s:e] = sims.argmax(axis=0)
            best_sim[s:e] = sims.max(axis=0)
    best_idx[best_sim == -np.inf] = -1
    return best_idx, best_sim


def semantic_duplicates(emb: np.ndarray, rank: np.ndarray, k: int, threshold: float, iters: int = 20,
                        seed: int = 0) -> tuple[list[tuple[int, int, float]], dict]:
    """(dropped row, better row it duplicates, similarity) triples, and statistics.

    `rank[i]` is row i's position in the global best-first order (0 = best): within a cluster the better-ranked
    member of a pair above `threshold` stays.
    """
    assign = cluster(emb, k, iters, seed)
    out: list[tuple[int, int, float]] = []
    nearest: list[np.ndarray] = []
    sizes = np.bincount(assign)
    for c in np.flatnonzero(sizes):
        members = np.flatnonzero(assign == c)
        members = members[np.argsort(rank[members], kind="stable")]
        idx, sim = nearest_better(emb[members])
        nearest.append(sim[idx >= 0])
        for j in np.flatnonzero(sim > threshold):
            out.append((int(members[j]), int(members[idx[j]]), float(sim[j])))
    sims = np.concatenate(nearest) if nearest else np.zeros(0, np.float32)
    stats = {"clusters": int((sizes > 0).sum()),
             "cluster_size": {"min": int(sizes[sizes > 0].min()), "median": float(np.median(sizes[sizes > 0])),
                              "max": int(sizes.max())} if len(assign) else {},
             "nearest_better_similarity": {str(q): round(float(np.quantile(sims, q)), 4) for q in QUANTILES}
             if len(sims) else {}}
    return sorted(out), stats


def run(cfg: SemDedupConfig, in_uri: str, out_uri: str, download_uri: str) -> StageCounts:
    if not cfg.checkpoint:
        return curation.skip(STAGE, in_uri, out_uri,
                             "pipeline.semdedup.checkpoint is empty: no model to embed with yet (the first model "
                             "trains on the less-filtered version; give its checkpoint to curate the next)")
    table = curation.read_survivors(in_uri)
    rows = table.select(["uid", "key", "src_tar", "caption", "width", "height"]).to_pylist()
    emb = embed_samples(rows, cfg, download_uri, out_uri)
    by_uid = {r["uid"]: r for r in rows}
    scores = emb.clip_score()
    # Best first: CLIP score of the sample's own pair, then image area, then uid.
    order = sorted(range(len(emb.uids)), key=lambda i: (-scores[i], -by_uid[emb.uids[i]]["width"] *
                                                        by_uid[emb.uids[i]]["height"], emb.uids[i]))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    k = cfg.clusters or max(1, round(len(emb.uids) / cfg.cluster_size))
    triples, stats = (semantic_duplicates(emb.image, rank, k, cfg.threshold, cfg.kmeans_iters, cfg.seed)
                      if emb.uids else ([], {}))
    dropped = [{"uid": emb.uids[j], "reason": REASON, "dup_of": emb.uids[i], "score": sim} for j, i, sim in triples]
    log.info("semdedup: %d embedded (%d unreadable kept), %d clusters, %d semantic duplicates dropped",
             len(emb.uids), len(emb.missing), stats.get("clusters", 0), len(dropped))
    report = {"settings": asdict(cfg), "checkpoint_step_dir": emb.checkpoint, "checkpoint_digest": emb.digest,
              "embedded": len(emb.uids), "unreadable_kept": len(emb.missing), "embedding_parts_reused":
              emb.reused_parts, "embedding_parts_computed": emb.computed_parts, **stats}
    return curation.finish(STAGE, out_uri, table, dropped, report)
