"""clip_filter (Ray embeds): keep the top fraction of samples by CLIP score, DataComp-style.

CONTRACT (build.py calls it; Ray is already initialised by the caller):
    run(cfg: ClipFilterConfig, in_uri: str, out_uri: str, download_uri: str) -> StageCounts
Input: `in_uri/keep.parquet`; images from the download tars under `download_uri`. Skipped (input passed through,
the reason logged and in report.json) when cfg.checkpoint is "". Output (pipelines.stages.curation):
keep.parquet with a `clip_score` column, dropped.parquet (reason `clip_score` with the sample's score, or
`missing_member` for an image that cannot be read and so cannot be scored), report.json (the threshold used,
the score distribution: quantiles, mean, std, a histogram), then layout.commit.

The CLIP score of a sample is the cosine similarity of its image and caption embeddings under the checkpoint
(pipelines.embed; the embeddings semdedup computed with the same checkpoint are reused). DataComp's "CLIP score
(top 30%)" baseline keeps the best fraction of the pool rather than a fixed threshold (LAION's 0.28 is specific to
one OpenAI model): thresholds do not transfer between models, fractions do. Exactly round(n * keep_fraction)
samples are kept, ordered by score then uid, so ties cannot change the count; the threshold reported is the
lowest kept score.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from pipelines.embed import EmbedConfig, check_embed_config, embed_samples
from pipelines.funnel import StageCounts
from pipelines.stages import curation

log = logging.getLogger(__name__)
STAGE = "clip_filter"
QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.3, 0.5, 0.7, 0.75, 0.9, 0.95, 0.99, 1.0)


@dataclass
class ClipFilterConfig(EmbedConfig):
    keep_fraction: float = 0.3
    """Fraction of the scored samples to keep, best CLIP scores first (DataComp's best small/medium-scale
    CLIP-score baseline keeps 30%)."""
    histogram_bins: int = 20
    """Bins of the score histogram in report.json."""

    def __post_init__(self) -> None:
        check_embed_config(self, STAGE)
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"pipeline.clip_filter.keep_fraction: {self.keep_fraction} must be in (0, 1]")
        if self.histogram_bins < 1:
            raise ValueError(f"pipeline.clip_filter.histogram_bins: must be at least 1, got {self.histogram_bins}")


def top_fraction(uids: list[str], scores: np.ndarray, fraction: float) -> tuple[list[int], float | None]:
    """(indices kept, the lowest kept score): the best round(n * fraction) by score, ties by uid."""
    order = sorted(range(len(uids)), key=lambda i: (-scores[i], uids[i]))
    n_keep = min(len(uids), max(1, round(len(uids) * fraction))) if uids else 0
    kept = order[:n_keep]
    return kept, (float(scores[kept[-1]]) if kept else None)


def distribution(scores: np.ndarray, bins: int) -> dict:
    if not len(scores):
        return {}
    counts, edges = np.histogram(scores, bins=bins)
    return {"n": len(scores), "mean": round(float(scores.mean()), 5), "std": round(float(scores.std()), 5),
            "quantiles": {str(q): round(float(np.quantile(scores, q)), 5) for q in QUANTILES},
            "histogram": {"edges": [round(float(e), 5) for e in edges], "counts": counts.tolist()}}


def run(cfg: ClipFilterConfig, in_uri: str, out_uri: str, download_uri: str) -> StageCounts:
    if not cfg.checkpoint:
        return curation.skip(STAGE, in_uri, out_uri,
                             "pipeline.clip_filter.checkpoint is empty: no model to score with yet (the first "
                             "model trains on the less-filtered version; give its checkpoint to curate the next)")
    table = curation.read_survivors(in_uri)
    rows = table.select(["uid", "key", "src_tar", "caption"]).to_pylist()
    emb = embed_samples(rows, cfg, download_uri, out_uri)
    scores = emb.clip_score()
    kept, threshold = top_fraction(emb.uids, scores, cfg.keep_fraction)
    kept_set = set(kept)
    dropped = [{"uid": emb.uids[i], "reason": "clip_score", "score": float(scores[i])}
               for i in range(len(emb.uids)) if i not in kept_set]
    dropped += [{"uid": u, "reason": "missing_member"} for u in emb.missing]
    by_uid = dict(zip(emb.uids, scores.tolist()))
    column = pa.array([by_uid.get(u) for u in table.column("uid").to_pylist()], pa.float64())
    if "clip_score" in table.column_names:  # a version re-curated from another's survivors: the new score wins
        table = table.drop_columns(["clip_score"])
    table = table.append_column("clip_score", column)
    log.info("clip_filter: %d scored, kept %d (top %.0f%%), threshold %s", len(emb.uids), len(kept),
             100 * cfg.keep_fraction, threshold)
    report = {"settings": asdict(cfg), "checkpoint_step_dir": emb.checkpoint, "checkpoint_digest": emb.digest,
              "scored": len(emb.uids), "kept": len(kept), "threshold": threshold, "unreadable": len(emb.missing),
              "embedding_parts_reused": emb.reused_parts, "embedding_parts_computed": emb.computed_parts,
              "scores": distribution(scores, cfg.histogram_bins),
              "kept_scores": distribution(scores[kept], cfg.histogram_bins)}
    return curation.finish(STAGE, out_uri, table, dropped, report)
