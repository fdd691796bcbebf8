"""Evaluation with a transparent colour-oracle encoder: exact scores end to end, then the Ray orchestration
(results published, rerun skips, a failing dataset recorded as failed while the others succeed)."""

from __future__ import annotations

import csv
import io
import json
import sys

import numpy as np
import pytest
import ray.cloudpickle

from evaluation.config import EvalConfig
from evaluation.evaluate import evaluate_dataset
from evaluation.results import CheckpointRef, read_rows, result_uri
from evaluation.run import evaluate, table
from pipelines import storage
from pipelines.storage import StorageConfig
from synthweb.scenes import COLOURS

# The loader below is defined in this test module, which Ray workers cannot import: ship it by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
NAMES = list(COLOURS)
RGB = np.array([COLOURS[c] for c in NAMES], dtype=float)


class ColourOracle:
    """Image -> one-hot of the object's colour (the 2nd most common pixel value, nearest palette entry); text ->
    one-hot of the colour word it contains. `confuse` maps a seen colour to another; `fail_on` raises."""

    def __init__(self, confuse: dict[str, str] | None = None, fail_on: str = "", digest: str = "d" * 64) -> None:
        self.confuse, self.fail_on, self.digest = confuse or {}, fail_on, digest

    def encode_images(self, images):
        out = np.zeros((len(images), len(NAMES)))
        for i, im in enumerate(images):
            values, counts = np.unique(np.asarray(im).reshape(-1, 3), axis=0, return_counts=True)
            obj = values[np.argsort(-counts)[1]].astype(float)
            name = NAMES[int(np.argmin(((RGB - obj) ** 2).sum(axis=1)))]
            out[i, NAMES.index(self.confuse.get(name, name))] = 1.0
        return out

    def encode_texts(self, texts):
        out = np.zeros((len(texts), len(NAMES)))
        for i, t in enumerate(texts):
            if self.fail_on and self.fail_on in t:
                raise RuntimeError(f"oracle cannot read {t!r}")
            for j, c in enumerate(NAMES):
                if c in t.split():
                    out[i, j] = 1.0
        return out


class OracleLoader:
    def __init__(self, **kw) -> None:
        self.kw = kw

    def __call__(self, uri: str) -> ColourOracle:
        return ColourOracle(**self.kw)


def test_colour_oracle_scores_exactly():
    cfg = EvalConfig(samples_per_class=5, image_size=64)
    perfect = {r["metric"]: r for r in evaluate_dataset(ColourOracle(), "colour", cfg)}
    assert {m: r["value"] for m, r in perfect.items()} == {"top1": 1.0, "top5": 1.0, "mean_per_class_recall": 1.0}
    assert perfect["top1"]["chance"] == 1 / 8 and perfect["top5"]["chance"] == 5 / 8 and perfect["top1"]["n"] == 40
    # Orange seen as red: the orange class is always wrong, and ranked last (all other classes tie at 0).
    confused = {r["metric"]: r["value"] for r in evaluate_dataset(ColourOracle({"orange": "red"}), "colour", cfg)}
    assert confused == {"top1": 7 / 8, "top5": 7 / 8, "mean_per_class_recall": 7 / 8}


def _cfg(root: str, **kw) -> dict:
    ev = EvalConfig(tasks=["colour", "letter", "size"], samples_per_class=3, image_size=48, retrieval_pairs=10, **kw)
    return {"storage": StorageConfig(root=root), "evaluation": ev}


CKPT = CheckpointRef(uri="file:///nowhere/step_00000001", digest="d" * 64, step=1, model="oracle")


def test_ray_run_publishes_rows_skips_done_and_records_failures(ray_local, tmp_path):
    root = str(tmp_path / "root")
    first = evaluate(_cfg(root), OracleLoader(fail_on="the letter"), [CKPT])
    assert sorted(first.evaluated) == [(CKPT.digest, "colour"), (CKPT.digest, "size")]
    assert first.failed == [(CKPT.digest, "letter")]

    colour = read_rows(result_uri(root, CKPT.digest, "colour"))
    assert {r["metric"]: r["value"] for r in colour} == {"top1": 1.0, "top5": 1.0, "mean_per_class_recall": 1.0}
    for r in colour:
        assert r["status"] == "ok" and r["checkpoint"] == CKPT.uri and r["step"] == 1 and r["n"] == 24
        assert r["model"] == "oracle" and r["dataset"] == "colour" and r["task"] == "zeroshot"
        assert r["code_version"] and len(r["config_hash"]) == 16 and r["time"]
    (failed,) = read_rows(result_uri(root, CKPT.digest, "letter"))
    assert failed["status"] == "failed" and failed["value"] is None
    assert "RuntimeError: oracle cannot read 'the letter A'" in failed["error"]
    assert "FAILED" in table(first.rows)
    # CLIP_benchmark-format files for the pairs that succeeded, none for the failure; the CSV keeps all three.
    cb = storage.read_json(f"{root}/eval/clip_benchmark/{CKPT.digest}/colour.json")
    assert cb == {"dataset": "colour", "model": "oracle", "pretrained": CKPT.uri, "task": "zeroshot_classification",
                  "metrics": {"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0}, "language": "en"}
    assert not storage.exists(f"{root}/eval/clip_benchmark/{CKPT.digest}/letter.json")
    csv_rows = list(csv.DictReader(io.StringIO(storage.read_bytes(first.reports).decode())))
    assert {(r["dataset"], r["status"]) for r in csv_rows} == {("colour", "ok"), ("size", "ok"), ("letter", "failed")}
    assert len(csv_rows) == len(first.rows)
    # Nothing half-written is left beside the results.
    names = sorted(p.name for p in (tmp_path / "root" / "eval" / "results" / CKPT.digest).iterdir())
    assert names == ["colour.jsonl", "letter.jsonl", "size.jsonl"]

    # Rerun: done pairs are skipped (files untouched), the failed one is retried and now succeeds.
    before = storage.read_bytes(result_uri(root, CKPT.digest, "colour"))
    second = evaluate(_cfg(root), OracleLoader(), [CKPT])
    assert sorted(second.skipped) == [(CKPT.digest, "colour"), (CKPT.digest, "size")]
    assert second.evaluated == [(CKPT.digest, "letter")] and not second.failed
    assert storage.read_bytes(result_uri(root, CKPT.digest, "colour")) == before
    assert all(r["status"] == "ok" for r in read_rows(result_uri(root, CKPT.digest, "letter")))

    # Changing what a dataset contains (its seed) invalidates its results: they are recomputed.
    third = evaluate(_cfg(root, seed=99), OracleLoader(), [CKPT])
    assert len(third.evaluated) == 3 and not third.skipped


def test_results_on_s3(ray_local, s3_bucket):
    root = f"{s3_bucket}/witforge"
    cfg = _cfg(root)
    cfg["evaluation"].tasks = ["colour"]
    out = evaluate(cfg, OracleLoader(), [CKPT])
    assert out.evaluated == [(CKPT.digest, "colour")]
    rows = [json.loads(line) for line in storage.read_bytes(result_uri(root, CKPT.digest, "colour")).splitlines()]
    assert {r["metric"]: r["value"] for r in rows}["top1"] == 1.0
    assert evaluate(cfg, OracleLoader(), [CKPT]).skipped == [(CKPT.digest, "colour")]


def test_wrong_digest_is_a_failure_not_a_silent_result(ray_local, tmp_path):
    cfg = _cfg(str(tmp_path))
    cfg["evaluation"].tasks = ["size"]
    out = evaluate(cfg, OracleLoader(digest="e" * 64), [CKPT])
    assert out.failed == [(CKPT.digest, "size")]
    assert "expected " + CKPT.digest in out.rows[0]["error"]


@pytest.mark.parametrize("bad", ["evaluation.num_cpus=0", "evaluation.tasks=[nope]"])
def test_cli_rejects_bad_config(tmp_path, bad, capsys):
    from evaluation.run import main

    path = tmp_path / "c.yaml"
    path.write_text(f"storage:\n  root: {tmp_path}\n")
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(path), bad])
    assert exc.value.code == 2
    assert bad.split("=")[0] in capsys.readouterr().err


def _fake_step(root: str, step: int, steps: int) -> str:
    uri = storage.join(root, "checkpoints", "oracle", f"step_{step:08d}")
    storage.write_json(storage.join(uri, "meta.json"), {"digest": f"{step:064x}", "step": step, "steps": steps,
                                                        "run": "oracle"})
    return uri


class MetaOracleLoader:
    """The colour oracle, carrying the digest its step dir's meta.json states (as a real load would)."""

    def __call__(self, uri: str) -> ColourOracle:
        return ColourOracle(digest=storage.read_json(storage.join(uri, "meta.json"))["digest"])


def test_watch_evaluates_each_new_checkpoint_until_the_final_step(ray_local, tmp_path):
    from training.config import TrainConfig
    from evaluation.watch import WatchConfig, watch

    root = str(tmp_path / "root")
    cfg = {**_cfg(root), "training": TrainConfig(run="oracle"), "watch": WatchConfig(poll_s=5)}
    cfg["evaluation"].tasks = ["colour"]
    _fake_step(root, 1, 3)
    # "Training" writes steps 2 and 3 while the watcher sleeps; the clock only moves when it sleeps.
    now = [0.0]
    later = [lambda: _fake_step(root, 2, 3), lambda: None, lambda: _fake_step(root, 3, 3)]

    def sleep(s: float) -> None:
        now[0] += s
        later.pop(0)()

    seen = []
    results = watch(cfg, MetaOracleLoader(), on_checkpoint=lambda ref, _r: seen.append(ref.step),
                    clock=lambda: now[0], sleep=sleep)
    assert seen == [1, 2, 3] and not later
    assert [r.evaluated for r in results] == [[(f"{s:064x}", "colour")] for s in (1, 2, 3)]
    assert all(storage.exists(result_uri(root, f"{s:064x}", "colour")) for s in (1, 2, 3))

    # A restarted watcher re-evaluates nothing and still stops at the final step.
    again = watch(cfg, MetaOracleLoader(), clock=lambda: now[0], sleep=sleep)
    assert [r.evaluated for r in again] == [[], [], []] and all(r.skipped for r in again)


def test_watch_gives_up_after_the_idle_timeout(tmp_path):
    from training.config import TrainConfig
    from evaluation.watch import WatchConfig, watch

    cfg = {**_cfg(str(tmp_path)), "training": TrainConfig(run="nothing"),
           "watch": WatchConfig(poll_s=10, idle_timeout_s=35)}
    now, naps = [0.0], []

    def sleep(s: float) -> None:
        naps.append(s)
        now[0] += s

    assert watch(cfg, OracleLoader(), clock=lambda: now[0], sleep=sleep) == []
    assert naps == [10, 10, 10, 10]  # 40 s >= 35 s idle: stop at the fifth look


def _write_colour_folder(root, colours: list[str], per_class: int = 2) -> None:
    """An image-folder layout (evaluation.adapters): grey images with a square of the class's colour."""
    from PIL import Image

    root.mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(colours) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c} thing.\n")
    for label, colour in enumerate(colours):
        folder = root / "test" / str(label)
        folder.mkdir(parents=True)
        for i in range(per_class):
            im = Image.new("RGB", (32, 32), (128, 128, 128))
            im.paste(tuple(COLOURS[colour]), (8 + i, 8, 20 + i, 20))
            im.save(folder / f"{i}.png")


def test_external_datasets_run_beside_the_procedural_suite(ray_local, tmp_path):
    """A registry dataset read from <external_root>/<name>/ (image-folder layout, the data's own class names and
    templates) is one more Ray task: scored exactly, rows carry its group and main metric, reruns skip it."""
    root = str(tmp_path / "root")
    _write_colour_folder(tmp_path / "root" / "evalsets" / "imagenet1k", ["red", "green", "blue"])
    cfg = _cfg(root, external=["imagenet1k"])
    cfg["evaluation"].tasks = ["colour"]
    out = evaluate(cfg, OracleLoader(), [CKPT])
    assert sorted(out.evaluated) == [(CKPT.digest, "colour"), (CKPT.digest, "imagenet1k")] and not out.failed
    rows = {r["metric"]: r for r in read_rows(result_uri(root, CKPT.digest, "imagenet1k"))}
    assert rows["top1"]["value"] == 1.0 and rows["top1"]["main"] and rows["top1"]["n"] == 6
    assert rows["top1"]["task"] == "zeroshot" and rows["top1"]["group"] == "imagenet-robustness"
    assert rows["top1"]["dataset_version"] == "ext1"
    cb = storage.read_json(f"{root}/eval/clip_benchmark/{CKPT.digest}/imagenet1k.json")
    assert cb["task"] == "zeroshot_classification" and cb["metrics"]["acc1"] == 1.0
    assert evaluate(cfg, OracleLoader(), [CKPT]).skipped == [(CKPT.digest, "colour"), (CKPT.digest, "imagenet1k")]
    # A missing dataset folder is a failed row naming the path; the suite still finishes.
    cfg["evaluation"].external = ["imagenet1k", "cifar10"]
    out = evaluate(cfg, OracleLoader(), [CKPT])
    assert out.failed == [(CKPT.digest, "cifar10")] and "cifar10" in out.rows[-1]["error"]


def test_external_config_is_checked():
    with pytest.raises(ValueError, match="evaluation.external: unknown dataset 'nope'"):
        EvalConfig(external=["nope"])
    with pytest.raises(ValueError, match="unknown suite"):
        EvalConfig(external=["suite:nope"])
    assert len(EvalConfig(external=["suite:datacomp"], procedural=False).dataset_names()) == 38
