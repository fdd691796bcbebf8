"""Recall and false removals of the curation stages, measured on the synthetic web's ground truth.

    export PYTHONPATH=$PWD NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0
    .venv/bin/python benchmarks/curation_on_synthweb.py --version data/synthweb/v1 [--checkpoint data/checkpoints/demo]

Reads a built version's filter output (`<version>/_work/filtered`) and the corpus' truth.jsonl (which image is a
planted exact or near duplicate of which, and every image's scene spec), then runs, into --out, dedupe ->
decontam -> caption_dedupe, and with a checkpoint semdedup (plus a threshold sweep on the same embeddings) and
clip_filter (plus planted mismatched captions). Ground truth:
- planted recall: a planted copy whose original also passed the filter is found when one of the two is dropped;
- a false removal joins two samples of different originals whose rendered scenes differ (scene spec fields the
  renderer ignores, e.g. the position of several objects, are left out); a removal joining two renders of the
  SAME scene is counted separately ("same scene"): the procedural world draws some scenes more than once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.engines import EngineConfig, init_ray, spark_session
from pipelines.stages import caption_dedupe, clip_filter, decontam, dedupe, semdedup
from pipelines.stages.curation import read_dropped


def rendered_spec(spec: dict) -> str:
    s = dict(spec)
    if s["kind"] == "glyph":
        for k in ("shape", "count", "style"):
            s.pop(k)
    elif s["count"] > 1:
        s.pop("position")
        s.pop("size")
    return json.dumps(s, sort_keys=True)


class Truth:
    def __init__(self, version: str, web_dir: str) -> None:
        corpus = storage.read_json(os.path.join(version, "manifest.json"))["upstream"]["web_corpus"]
        by_url = {}
        with open(os.path.join(web_dir, corpus, "truth.jsonl")) as f:
            for line in f:
                r = json.loads(line)
                by_url[r["url"]] = r
        filtered = os.path.join(version, "_work", "filtered")
        self.rows = {r["uid"]: r for name in sorted(os.listdir(filtered)) if name.endswith(".parquet")
                     for r in pq.read_table(os.path.join(filtered, name)).to_pylist() if r["keep"]}
        self.truth = {u: by_url[r["url"]] for u, r in self.rows.items()}
        self.uid_of_url = {r["url"]: u for u, r in self.rows.items()}

    def origin(self, uid: str) -> str:
        return self.uid_of_url.get(self.truth[uid]["dup_of"] or "", uid)

    def planted(self, present: set[str]) -> list[tuple[str, str, str]]:
        out = []
        for u in present:
            t = self.truth[u]
            o = self.uid_of_url.get(t["dup_of"] or "")
            if o in present:
                out.append((u, o, "exact_dup" if "exact_dup" in t["planted"] else "near_dup"))
        return out

    def measure(self, name: str, present: set[str], kept: set[str], dropped: list[dict], planted: bool = True) -> None:
        found: dict[str, list[int]] = {}
        for c, o, kind in self.planted(present):
            found.setdefault(kind, [0, 0])
            found[kind][0] += not ({c, o} <= kept)
            found[kind][1] += 1
        linked = [d for d in dropped if d.get("dup_of") in self.rows and self.origin(d["uid"]) != self.origin(d["dup_of"])]
        false = [d for d in linked if rendered_spec(self.truth[d["uid"]]["spec"])
                 != rendered_spec(self.truth[d["dup_of"]]["spec"])]
        recall = ", ".join(f"{k} {a}/{b} = {a / b:.3f}" for k, (a, b) in sorted(found.items())) or "-"
        print(f"[{name}] in {len(present)}, out {len(kept)}, dropped {len(dropped)}"
              + (f"; planted recall: {recall}" if planted else "") + f"; false removals {len(false)} ({len(false) / max(1, len(present)):.2%} of input); "
              f"same-scene removals {len(linked) - len(false)}")


def kept_and_dropped(stage_uri: str) -> tuple[set[str], list[dict]]:
    kept = set(pq.read_table(os.path.join(stage_uri, "keep.parquet")).column("uid").to_pylist())
    return kept, read_dropped(stage_uri).to_pylist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version", default="data/synthweb/v1")
    p.add_argument("--web-dir", default="data/web")
    p.add_argument("--checkpoint", default="", help="CLIP checkpoint for semdedup and clip_filter (optional)")
    p.add_argument("--out", default="/tmp/witforge-curation-truth/_work")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    truth = Truth(os.path.abspath(a.version), a.web_dir)
    storage.remove(a.out, recursive=True)
    init_ray(EngineConfig())
    spark = spark_session(EngineConfig())
    w = {s: os.path.join(a.out, s) for s in ("dedupe", "decontam", "caption_dedupe", "semdedup", "clip_filter")}
    download = os.path.join(os.path.abspath(a.version), "_work", "download")

    t = time.time()
    dedupe.run(spark, dedupe.DedupeConfig(), os.path.join(os.path.abspath(a.version), "_work", "filtered"), w["dedupe"])
    print(f"dedupe: {time.time() - t:.0f} s")
    kept, dropped = kept_and_dropped(w["dedupe"])
    truth.measure("dedupe", set(truth.rows), kept, dropped)

    decontam.run(spark, decontam.DecontamConfig(), w["dedupe"], w["decontam"])
    overlap = storage.read_json(os.path.join(w["decontam"], "overlap.json"))
    for name, d in overlap["datasets"].items():
        print(f"  decontam {name:22s} {d['with_near_duplicate']:4d} / {d['eval_images']:4d} evaluation images "
              f"have a near duplicate; {d['training_samples_matched']} training samples")
    truth.measure("decontam", kept, *kept_and_dropped(w["decontam"]), planted=False)

    caption_dedupe.run(spark, caption_dedupe.CaptionDedupeConfig(), w["dedupe"], w["caption_dedupe"])
    report = storage.read_json(os.path.join(w["caption_dedupe"], "report.json"))
    print("  caption_dedupe largest groups:", [(g["size"], g["caption"]) for g in report["largest_groups"][:8]])
    # Caption duplicates are different images with near-identical captions: "false" here means another scene.
    truth.measure("caption_dedupe", kept, *kept_and_dropped(w["caption_dedupe"]), planted=False)
    if not a.checkpoint:
        return

    cfg = semdedup.SemDedupConfig(checkpoint=a.checkpoint)
    semdedup.run(cfg, w["dedupe"], w["semdedup"], download)
    from pipelines.embed import embed_samples

    rows = [truth.rows[u] for u in sorted(kept)]
    emb = embed_samples(rows, cfg, download, w["semdedup"])  # the parts semdedup published: nothing recomputed
    scores = emb.clip_score()
    order = sorted(range(len(emb.uids)), key=lambda i: (-scores[i], -truth.rows[emb.uids[i]]["width"]
                                                        * truth.rows[emb.uids[i]]["height"], emb.uids[i]))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    k = max(1, round(len(emb.uids) / cfg.cluster_size))
    for threshold in (0.95, 0.97, 0.98, 0.99, 0.995):
        triples, _ = semdedup.semantic_duplicates(emb.image, rank, k, threshold, cfg.kmeans_iters, cfg.seed)
        drops = [{"uid": emb.uids[j], "dup_of": emb.uids[i]} for j, i, _ in triples]
        truth.measure(f"semdedup threshold {threshold}", kept, kept - {d["uid"] for d in drops}, drops)

    clip_filter.run(clip_filter.ClipFilterConfig(checkpoint=a.checkpoint), w["semdedup"], w["clip_filter"], download)
    report = storage.read_json(os.path.join(w["clip_filter"], "report.json"))
    print(f"  clip_filter threshold {report['threshold']:.4f} (top {report['settings']['keep_fraction']:.0%}); "
          f"score quantiles {report['scores']['quantiles']}")
    # Mismatched captions (10% planted: each image with another sample's caption) should score lowest.
    rng = np.random.default_rng(0)
    wrong = np.einsum("nd,nd->n", emb.image, emb.text[rng.permutation(len(emb.uids))])[: len(emb.uids) // 10]
    all_scores, bad = np.r_[scores, wrong], np.r_[np.zeros(len(scores), bool), np.ones(len(wrong), bool)]
    for frac in (0.3, 0.7, 0.9):
        keep = np.argsort(-all_scores, kind="stable")[: round(len(all_scores) * frac)]
        print(f"  clip score top {frac:.0%}: {bad[keep].sum()} of {len(wrong)} planted mismatched captions kept")


if __name__ == "__main__":
    main()
