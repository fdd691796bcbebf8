"""`python -m pipelines.explain` on a real tiny build: a kept sample is traced from its WARC record to its shard
and key; samples dropped at download, filter and dedupe are reported with the stage, the reason and the stage's
detail; a stage added later (a `dropped.parquet` + `_COMMITTED.json` under `_work/`) is picked up as it is."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import explain, layout
from pipelines.funnel import StageCounts
from tests.pipelines_build_data import sample_uids, tiny_build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(ray_local, spark):
    return tiny_build()


def _rows(folder: str) -> list[dict]:
    out = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".parquet"):
            out += pq.read_table(os.path.join(folder, name)).to_pylist()
    return out


def _work(built, stage: str) -> str:
    return layout.work_uri(built.version, stage)


def test_kept_sample_traced_from_warc_to_shard(built, capsys):
    uid = sample_uids(built.manifest)[7]
    cand = next(r for r in _rows(_work(built, "candidates")) if r["uid"] == uid)
    report = explain.explain(built.version, uid)
    assert report["origin"] == {"warc": cand["source"], "page_url": cand["page_url"], "url": cand["url"],
                                "caption": cand["caption"]}
    assert report["origin"]["warc"].endswith(".warc.gz") and os.path.exists(report["origin"]["warc"])
    # Every committed stage under _work/, in pipeline order (later curation stages included), let it through.
    assert [s["stage"] for s in report["stages"]][:4] == ["extract", "download", "filter", "dedupe"]
    assert len(report["stages"]) == len(layout.stage_dirs(built.version))
    assert {s["verdict"] for s in report["stages"]} == {"passed"}
    out = report["outcome"]
    assert out["status"] == "kept" and out["key"] == uid
    with tarfile.open(out["shard"]) as tf:  # the named shard holds the sample under that key, at that index
        keys = list(dict.fromkeys(m.name.split(".", 1)[0] for m in tf.getmembers()))
    assert keys[out["index"]] == uid
    # The CLI, from the config as the build used it.
    assert explain.main([uid, "--config", built.config]) == 0
    text = capsys.readouterr().out
    assert re.search(rf"ended in +{re.escape(out['shard'])} key {uid}", text)
    assert cand["page_url"] in text and cand["url"] in text


def test_download_failure_names_the_error(built):
    failed = [r for r in _rows(_work(built, "download")) if r["status"] != "success"]
    assert failed
    funnel = json.load(open(os.path.join(built.version, "funnel.json")))["stages"]
    reasons = next(s["dropped"] for s in funnel if s["stage"] == "download")
    for row in failed[:3]:
        out = explain.explain(built.version, row["uid"])["outcome"]
        assert out["status"] == "dropped" and out["stage"] == "download"
        assert out["reason"] in reasons and out["detail"] == row["error_message"]


def test_filter_drop_has_detail_and_rejected_copy(built, capsys):
    dropped = [r for r in _rows(_work(built, "filtered")) if not r["keep"]]
    assert dropped
    for row in dropped:
        out = explain.explain(built.version, row["uid"])["outcome"]
        assert out["detail"]
        assert (out["stage"], out["reason"], out["detail"]) == ("filter", row["reason"], row["detail"])
        with tarfile.open(out["rejected"]) as tf:  # kept aside: image bytes, caption and the verdict
            members = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.name.startswith(row["uid"])}
        meta = json.loads(members[f"{row['uid']}.json"])
        assert (meta["reason"], meta["detail"]) == (row["reason"], row["detail"])
        assert members[f"{row['uid']}.txt"].decode() == row["caption"]
        images = [v for k, v in members.items() if not k.endswith((".json", ".txt"))]
        assert [len(v) for v in images] == ([row["bytes"]] if row["bytes"] is not None else [])
    assert explain.main([dropped[0]["uid"], "--version", built.manifest, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outcome"]["reason"] == dropped[0]["reason"]


def test_dedupe_drop_names_the_duplicate_it_lost_to(built, capsys):
    rows = pq.read_table(os.path.join(_work(built, "dedupe"), "dropped.parquet")).to_pylist()
    assert rows
    kept = set(sample_uids(built.manifest))
    for row in rows:
        out = explain.explain(built.version, row["uid"])["outcome"]
        assert (out["stage"], out["reason"], out["extra"]["dup_of"]) == ("dedupe", row["reason"], row["dup_of"])
        assert out["dup_of_outcome"]["status"] == ("kept" if row["dup_of"] in kept else "dropped")
    explain.main([rows[0]["uid"], "--config", built.config])
    assert re.search(rf"lost to +{rows[0]['dup_of']}, which ", capsys.readouterr().out)


def test_a_stage_added_later_is_picked_up(built, tmp_path):
    version = str(tmp_path / "v1")
    shutil.copytree(built.version, version)
    uid = sample_uids(built.manifest)[3]
    before = [s.stage for s in layout.stage_dirs(version)]
    stage = layout.work_uri(version, "zz_future")  # what a stage this code has never heard of would leave
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"uid": uid, "reason": "watermark", "detail": "p(watermark)=0.97",
                                          "model": "wm-v2"}]), sink)
    os.makedirs(stage)
    with open(os.path.join(stage, "dropped.parquet"), "wb") as f:
        f.write(sink.getvalue())
    layout.commit(stage, StageCounts("watermark_filter", input=1, output=0, dropped={"watermark": 1}))
    report = explain.explain(version, uid)
    assert [s["stage"] for s in report["stages"]] == before + ["watermark_filter"]
    out = report["outcome"]
    assert (out["status"], out["stage"], out["reason"], out["detail"]) == (
        "dropped", "watermark_filter", "watermark", "p(watermark)=0.97")
    assert out["extra"] == {"model": "wm-v2"}
    # Another kept sample passes the new stage (it only lists its drops) and still ends in its shard.
    other = sample_uids(built.manifest)[4]
    assert explain.explain(version, other)["stages"][-1]["verdict"] == "passed"


def test_unknown_uid_and_bad_input(built, capsys):
    report = explain.explain(built.version, "0" * 24)
    assert report["outcome"]["status"] == "unknown" and "not a candidate" in report["outcome"]["detail"]
    assert explain.main(["0" * 24, "--version", built.version]) == 1
    with pytest.raises(SystemExit) as exc:
        explain.main(["NOT-HEX", "--version", built.version])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        explain.main(["0" * 24, "--config", built.config, "pipeline.shard.samples_per_shard=many"])
    assert exc.value.code == 2 and "pipeline.shard.samples_per_shard" in capsys.readouterr().err
