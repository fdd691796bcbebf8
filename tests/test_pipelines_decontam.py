"""decontam stage: web copies of evaluation images (resized, re-encoded) are dropped and counted per evaluation
dataset; distinct corpus scenes are kept. Recall and false removals are measured and printed."""

from __future__ import annotations

import io
import json
import random
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.render import render_sample
from evaluation.tasks import get_dataset
from pipelines import layout
from pipelines.stages import decontam
from pipelines.stages.curation import read_dropped
from pipelines.stages.filter import FILTERED_SCHEMA
from pipelines.stages.fingerprints import FINGERPRINT_SCHEMA, fingerprint_rows
from pipelines.stages.images import inspect_image
from synthweb.scenes import render, sample_spec
from tests.pipelines_curation_data import jpeg

# A small suite: classification datasets the corpus can and cannot show, plus retrieval.
CFG = decontam.DecontamConfig(tasks=["shape", "colour", "shape_sketch", "shape_new_background", "retrieval"],
                              samples_per_class=3, retrieval_pairs=12, image_size=96, seed=1234)
COPIED = 8  # evaluation images of each dataset with web copies in the training rows


def _row(uid: str, data: bytes, tar: str) -> dict:
    v = inspect_image(data, max_pixels=10**8, min_side=8, max_aspect_ratio=10)
    return dict(uid=uid, key=uid[:9], src_tar=tar, url=f"http://h.invalid/{uid}.jpg", page_url="", source="t",
                caption="a scene", width=v.width, height=v.height, sha256=uid, phash=v.phash, colour_sig=v.colour_sig,
                lang="en", lang_score=1.0, keep=True, reason=None)


def _eval_samples() -> dict[str, list]:
    out = {}
    for name in CFG.dataset_names():
        ds = get_dataset(name)
        out[name] = ds.samples(CFG.retrieval_pairs if ds.kind == "retrieval" else CFG.samples_per_class, CFG.seed)
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory, ray_local, spark):
    """Training rows: 4 web copies (up-, down-scaled, re-encoded, cropped) of the first 8 evaluation images of
    every dataset, and distinct corpus scenes."""
    rng = random.Random(5)
    samples = _eval_samples()
    folder = tmp_path_factory.mktemp("decontam")
    tar = str(folder / "00000.tar")
    rows, copy_of, spec_of, images = [], {}, {}, {}

    def add(data: bytes) -> str:
        uid = f"{len(rows):06x}" + "de" * 5
        rows.append(_row(uid, data, tar))
        images[f"{uid[:9]}.jpg"] = data
        return uid

    for name, items in samples.items():
        for i, s in enumerate(items[:COPIED]):
            img = render_sample(s, CFG.image_size)
            for side, q in ((128, 85), (80, 70), (96, 50)):
                copy_of[add(jpeg(img.resize((side, side)), q))] = f"eval:{name}/{i}"
            copy_of[add(jpeg(img.crop((4, 4, 92, 92)), 80))] = f"eval:{name}/{i}"  # 4% cropped per side
    specs = {f"eval:{n}/{i}": s.spec for n, items in samples.items() for i, s in enumerate(items)}
    for i in range(150):
        spec = sample_spec(rng)
        spec_of[add(jpeg(render(spec, rng.choice(((96, 96), (128, 96))), seed=10_000 + i)))] = spec
    with tarfile.open(tar, "w") as tf:
        for name, data in images.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (folder / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=FILTERED_SCHEMA), folder / "in" / "keep.parquet")
    # As the dedupe stage leaves them: fingerprints of (here) every other row; the stage computes the rest.
    fps = fingerprint_rows(spark, rows[::2], CFG.zooms)
    pq.write_table(pa.Table.from_pylist(fps, schema=FINGERPRINT_SCHEMA), folder / "in" / "fingerprints.parquet")
    out = folder / "out"
    counts = decontam.run(spark, CFG, str(folder / "in"), str(out))
    return {"out": out, "counts": counts, "rows": rows, "copy_of": copy_of, "spec_of": spec_of, "specs": specs}


def test_copies_dropped_distinct_kept_and_measured(planted):
    out, copy_of = planted["out"], planted["copy_of"]
    dropped = {d["uid"]: d for d in read_dropped(str(out)).to_pylist()}
    recall = sum(u in dropped for u in copy_of) / len(copy_of)
    # A distinct corpus scene matched to an evaluation image of ANOTHER scene spec is a false removal; one of the
    # same spec (same shape, colour, layout, another render) is the procedural world's contamination.
    false = [u for u, d in dropped.items() if u in planted["spec_of"] and planted["spec_of"][u] != planted["specs"][d["dup_of"]]]
    same_scene = [u for u in dropped if u in planted["spec_of"]]
    print(f"decontam recall {recall:.3f} ({len(copy_of)} planted copies); false removals {len(false)} of "
          f"{len(planted['spec_of'])} distinct scenes; same-scene matches {len(same_scene) - len(false)}; "
          f"missed {sorted(copy_of[u] for u in copy_of if u not in dropped)}")
    assert recall >= 0.95
    assert len(false) / len(planted["spec_of"]) <= 0.01
    for u in copy_of:
        if u in dropped:
            assert dropped[u]["reason"] == "eval_overlap" and dropped[u]["dup_of"].startswith("eval:")
            assert 0 <= dropped[u]["score"] <= CFG.phash_max_distance
    keep = {r["uid"] for r in pq.read_table(out / "keep.parquet").to_pylist()}
    assert keep.isdisjoint(dropped) and len(keep) + len(dropped) == len(planted["rows"])
    assert layout.committed(str(out)).to_json() == planted["counts"].to_json()


def test_overlap_report_per_dataset(planted):
    overlap = json.loads((planted["out"] / "overlap.json").read_text())
    assert set(overlap["datasets"]) == set(CFG.dataset_names())
    for name, d in overlap["datasets"].items():
        n = CFG.retrieval_pairs if name == "retrieval" else CFG.samples_per_class * len(get_dataset(name).classes)
        assert d["eval_images"] == n
        # COPIED images of each dataset were copied; others may match same-scene corpus images
        assert COPIED * 0.75 <= d["with_near_duplicate"] <= n, (name, d)
        assert d["overlap"] == round(d["with_near_duplicate"] / n, 4)
    assert overlap["all"]["eval_images"] == sum(d["eval_images"] for d in overlap["datasets"].values())
    report = json.loads((planted["out"] / "report.json").read_text())
    assert report["drop"] is True and report["overlap"] == overlap["all"]


def test_report_only_mode_drops_nothing(tmp_path, planted, spark):
    cfg = decontam.DecontamConfig(**{**CFG.__dict__, "drop": False})
    folder = planted["out"].parent / "in"
    counts = decontam.run(spark, cfg, str(folder), str(tmp_path / "out"))
    assert counts.input == counts.output == len(planted["rows"]) and counts.dropped == {}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["matched_training_samples"] == sum(planted["counts"].dropped.values())


def test_disabled_and_bad_config(tmp_path, planted):
    counts = decontam.run(None, decontam.DecontamConfig(enabled=False), str(planted["out"].parent / "in"),
                          str(tmp_path / "off"))
    assert counts.dropped == {} and counts.input == counts.output
    with pytest.raises(ValueError, match="pipeline.decontam.tasks: unknown dataset 'imagenet'"):
        decontam.DecontamConfig(tasks=["imagenet"])
    with pytest.raises(ValueError, match="pipeline.decontam.phash_max_distance"):
        decontam.DecontamConfig(phash_max_distance=40)
