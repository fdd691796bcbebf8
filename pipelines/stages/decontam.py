"""decontam (Ray renders, Spark joins): drop training samples that near-duplicate an evaluation image, and
report the overlap per evaluation dataset.

CONTRACT (build.py calls it; Ray is already initialised by the caller):
    run(spark, cfg: DecontamConfig, in_uri: str, out_uri: str) -> StageCounts
Input: `in_uri/keep.parquet` (the dedupe survivors). Output (pipelines.stages.curation): keep.parquet,
dropped.parquet (reason `eval_overlap`, dup_of `eval:<dataset>/<index>` of the closest evaluation image,
score = its pHash distance), report.json, and `overlap.json`: per evaluation dataset, how many of its images have
a near duplicate in this stage's input (the CLIP paper's overlap analysis, Radford et al. 2021 section 5), and
how many training samples match it. Then layout.commit.

The evaluation suite is rendered exactly as evaluation/ renders it (evaluation.tasks + evaluation.render, same
datasets, seed, samples per class and image size: the fields below must equal the `evaluation` section), one Ray
task per dataset, and fingerprinted as the dedupe stage fingerprints training images (zoomed pHashes, 256-bit
pHash, 8x8 thumbnail: pipelines.stages.fingerprints; the training side is read from the dedupe stage's
fingerprints.parquet, and computed for any sample it lacks). Matches come from dedupe's banded join and checks
(dedupe.near_matches, same rule and defaults): no training x evaluation all-pairs comparison. evaluation/ is
imported lazily (config check, Ray tasks), so `pipelines` does not depend on `evaluation` when this stage is off.

Notes: the scenes are procedural, so a training image showing the same scene as an evaluation image (same
shape, colour and layout, another render) can match it as a re-encoded copy would; that is contamination in this
world and is counted as such. Measured: web copies of evaluation images (rescaled, re-encoded, 4% cropped) are
found at 97.5% with no corpus scene of another spec dropped (tests/test_pipelines_decontam.py; the misses are
low-contrast scenes, blue on light blue, whose pHash bits are unstable); on the synthetic web's 5,812 dedupe
survivors, 7 of the 1,880 evaluation images (0.37%) have a near duplicate (benchmarks/curation_on_synthweb.py).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from pipelines import storage
from pipelines.funnel import StageCounts
from pipelines.stages import curation
from pipelines.stages.dedupe import DedupeConfig, near_matches
from pipelines.stages.fingerprints import (
    DEFAULT_ZOOMS,
    FINGERPRINT_SCHEMA,
    fingerprint,
    fingerprint_rows,
    read_fingerprints,
)
from pipelines.storage import ray_task_options

log = logging.getLogger(__name__)
STAGE = "decontam"
REASON = "eval_overlap"


@dataclass
class DecontamConfig:
    enabled: bool = True
    """Run the check at all (False: the stage passes its input through and says so in report.json)."""
    drop: bool = True
    """Drop the matching training samples; False only measures and reports the overlap (what the CLIP paper did)."""
    tasks: list[str] = field(default_factory=list)
    """Evaluation datasets to check against (names from evaluation.tasks.DATASETS); empty = all of them."""
    samples_per_class: int = 20
    """Must equal evaluation.samples_per_class: the images checked are the ones evaluation renders."""
    retrieval_pairs: int = 200
    """Must equal evaluation.retrieval_pairs."""
    image_size: int = 96
    """Must equal evaluation.image_size."""
    seed: int = 1234
    """Must equal evaluation.seed."""
    phash_max_distance: int = 6
    """Near-duplicate rule, as pipeline.dedupe's (same defaults): candidate views within this many 64-bit pHash
    bits..."""
    fine_max_distance: int = 40
    """...256-bit pHashes within this many bits..."""
    thumb_max_diff: float = 4.0
    """...and 8x8 RGB thumbnails within this mean difference (0-255)."""
    zooms: list[float] = field(default_factory=lambda: list(DEFAULT_ZOOMS))
    """Views fingerprinted per image (see pipeline.dedupe.zooms): a training copy that crops an evaluation image
    by a few percent still matches."""

    def __post_init__(self) -> None:
        try:
            self.rule()
        except ValueError as exc:  # same bounds as dedupe's, reported under this section
            raise ValueError(str(exc).replace("pipeline.dedupe.", "pipeline.decontam.")) from None
        if self.enabled:
            from evaluation.tasks import DATASETS  # only when the stage is on: see the module docstring

            unknown = [t for t in self.tasks if t not in DATASETS]
            if unknown:
                raise ValueError(f"pipeline.decontam.tasks: unknown dataset {unknown[0]!r} "
                                 f"(known: {', '.join(DATASETS)})")
        for name in ("samples_per_class", "retrieval_pairs", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"pipeline.decontam.{name}: must be at least 1, got {getattr(self, name)}")

    def rule(self) -> DedupeConfig:
        return DedupeConfig(phash_max_distance=self.phash_max_distance, fine_max_distance=self.fine_max_distance,
                            thumb_max_diff=self.thumb_max_diff, zooms=list(self.zooms))

    def dataset_names(self) -> list[str]:
        from evaluation.tasks import DATASETS

        return list(self.tasks) or [n for n, d in DATASETS.items() if d.kind != "linear_probe"]


def fingerprint_dataset(name: str, cfg_dict: dict) -> list[dict]:
    """Render one evaluation dataset as evaluation/ does and fingerprint each image (a Ray task)."""
    from evaluation.render import render_sample
    from evaluation.tasks import get_dataset

    cfg = DecontamConfig(**cfg_dict)
    ds = get_dataset(name)
    n = cfg.retrieval_pairs if ds.kind == "retrieval" else cfg.samples_per_class
    out = []
    for i, sample in enumerate(ds.samples(n, cfg.seed)):
        for fp in fingerprint(render_sample(sample, cfg.image_size), cfg.zooms):
            out.append({"uid": f"eval:{name}/{i}", "dataset": name, **dict(zip(FINGERPRINT_SCHEMA.names[1:], fp))})
    return out


def eval_fingerprints(cfg: DecontamConfig) -> list[dict]:
    import ray

    task = ray.remote(fingerprint_dataset).options(**ray_task_options())
    names = cfg.dataset_names()
    return [fp for part in ray.get([task.remote(n, asdict(cfg)) for n in names]) for fp in part]


def overlap_report(evals: list[dict], matches: list[tuple[str, str, int]]) -> dict:
    """Per dataset: evaluation images, how many have >= 1 near duplicate in training, training samples matched."""
    per: dict[str, dict] = {}
    for e in evals:
        per.setdefault(e["dataset"], {"images": set(), "with_near_duplicate": set(), "training_samples": set()})
        per[e["dataset"]]["images"].add(e["uid"])
    dataset_of = {e["uid"]: e["dataset"] for e in evals}
    for train_uid, eval_uid, _ in matches:
        d = per[dataset_of[eval_uid]]
        d["with_near_duplicate"].add(eval_uid)
        d["training_samples"].add(train_uid)
    out = {name: {"eval_images": len(d["images"]), "with_near_duplicate": len(d["with_near_duplicate"]),
                  "overlap": round(len(d["with_near_duplicate"]) / len(d["images"]), 4),
                  "training_samples_matched": len(d["training_samples"])}
           for name, d in sorted(per.items())}
    total_eval = sum(d["eval_images"] for d in out.values())
    total_hit = sum(d["with_near_duplicate"] for d in out.values())
    return {"datasets": out, "all": {"eval_images": total_eval, "with_near_duplicate": total_hit,
                                     "overlap": round(total_hit / total_eval, 4) if total_eval else 0.0,
                                     "training_samples_matched": len({m[0] for m in matches})}}


def run(spark, cfg: DecontamConfig, in_uri: str, out_uri: str) -> StageCounts:
    if not cfg.enabled:
        return curation.skip(STAGE, in_uri, out_uri, "pipeline.decontam.enabled is false")
    table = curation.read_survivors(in_uri)
    rows = table.select(["uid", "key", "src_tar"]).to_pylist()
    fps = read_fingerprints(in_uri, {r["uid"] for r in rows}, cfg.zooms)
    have = {f["uid"] for f in fps}
    fps += fingerprint_rows(spark, [r for r in rows if r["uid"] not in have], cfg.zooms)
    evals = eval_fingerprints(cfg)
    matches = near_matches(spark, fps, cfg.rule(), others=evals)
    overlap = overlap_report(evals, matches)
    storage.write_json(storage.join(out_uri, "overlap.json"), overlap)
    for name, d in overlap["datasets"].items():
        log.info("decontam %s: %d of %d evaluation images have a near duplicate in training (%d samples)",
                 name, d["with_near_duplicate"], d["eval_images"], d["training_samples_matched"])
    closest: dict[str, tuple[int, str]] = {}
    for train_uid, eval_uid, dist in matches:  # the closest evaluation image, ties by its id: deterministic
        closest[train_uid] = min(closest.get(train_uid, (dist, eval_uid)), (dist, eval_uid))
    dropped = [{"uid": u, "reason": REASON, "dup_of": e, "score": float(d)} for u, (d, e) in closest.items()]
    report = {"drop": cfg.drop, "settings": asdict(cfg), "overlap": overlap["all"],
              "matched_training_samples": len(closest)}
    return curation.finish(STAGE, out_uri, table, dropped if cfg.drop else [], report)
