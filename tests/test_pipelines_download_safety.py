"""Acceptance of the download stage over the synthetic web's ground truth: every planted SSRF probe, robots.txt-
disallowed path, X-Robots-Tag opt-out, decompression bomb and corrupt file is dropped with the right reason,
and the server's own request log shows that nothing robots.txt or the SSRF guard forbids was ever requested.

The candidates are the truth file's image URLs, normalised as the extract stage writes them (no Spark needed:
extract's own tests cover that step). The SSRF probes that would leave this machine (the metadata address)
are refused before any connection; every other probe leads back to this server, whose log would show it."""

from __future__ import annotations

import io
import json
import os
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import layout, storage
from pipelines.engines import EngineConfig
from pipelines.funnel import StageCounts
from pipelines.stages import download
from pipelines.stages.html_images import make_uid
from pipelines.urls import normalize_url
from synthweb.config import WebConfig
from synthweb.corpus import ensure_corpus
from synthweb.probes import LINK_LOCAL_FORMS, SSRF_FORMS
from synthweb.server import serve

EXPECTED = {"ssrf": "ssrf_blocked", "robots_disallowed": "robots_disallowed", "noai": "opt_out",
            "decompression_bomb": "too_many_pixels", "truncated": "decode_error", "non_image": "decode_error",
            "dead_link": "http_404", "server_error": "http_5xx", "slow": "timeout"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def downloaded(ray_local, tmp_path_factory):
    """A 400-image corpus with every safety fault frequent, downloaded once; yields what the checks need."""
    tmp = tmp_path_factory.mktemp("safety")
    cfg = WebConfig(dir=str(tmp / "web"), port=_free_port(), sites=3, pages=40, images_per_page=10, ssrf=0.1,
                    robots_disallowed=0.06, noai=0.04, truncated=0.03, non_image=0.03, dead_link=0.03,
                    server_error=0.03, slow=0.01, slow_seconds=2.5, data_uri=0.0)
    corpus = ensure_corpus(cfg)
    truth = [json.loads(x) for x in Path(corpus.truth_path).read_text(encoding="utf-8").splitlines()]
    rows, by_uid = [], {}
    for r in truth:
        url = normalize_url(r["url"])
        uid = make_uid(url, r["alt"] or "")
        by_uid[uid] = r
        rows.append({"uid": uid, "url": url, "caption": r["alt"] or "", "page_url": r["page_url"],
                     "source": "synthweb-truth"})
    cands, out = str(tmp / "candidates"), str(tmp / "download")
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    storage.write_bytes(storage.join(cands, "part-00000.parquet"), buf.getvalue())
    layout.commit(cands, StageCounts("extract", input=len(rows), output=len(rows)))
    authority = f"{cfg.host}:{cfg.port}"
    dcfg = download.DownloadConfig(number_sample_per_shard=150, thread_count=8, timeout=1, sample_retries=1,
                                   retry_backoff=0.0, allow_private=[authority])
    log: list[dict] = []
    with serve(cfg, corpus, request_log=log):
        counts = download.run(dcfg, EngineConfig(), cands, out)
    results = {}
    for name in sorted(os.listdir(out)):
        if name.endswith(".parquet") and name[0].isdigit():
            for r in pq.read_table(os.path.join(out, name)).to_pylist():
                results[r["uid"]] = r
    return {"truth": by_uid, "results": results, "log": log, "counts": counts, "authority": authority}


def expected_reason(r: dict) -> str | None:
    faults = [k for k in r["planted"] if k in EXPECTED]
    return EXPECTED[faults[0]] if faults else None


def test_every_planted_fault_is_dropped_with_its_reason(downloaded):
    truth, results = downloaded["truth"], downloaded["results"]
    assert set(results) == set(truth)  # every candidate has its row (uid, reason) in a shard parquet
    wrong = {r["url"]: (expected_reason(r), results[uid]["reason"], results[uid]["error_message"])
             for uid, r in truth.items() if results[uid]["reason"] != expected_reason(r)}
    assert not wrong
    planted = {k for r in truth.values() for k in r["planted"]}
    assert set(EXPECTED) <= planted  # the corpus really planted every kind checked here
    forms = {r["form"] for r in truth.values() if "ssrf" in r["planted"]}
    assert len(forms) >= len(SSRF_FORMS) - 3 and forms & set(LINK_LOCAL_FORMS)
    assert {r["form"] for r in truth.values() if "robots_disallowed" in r["planted"]} == {"direct", "redirect"}
    counts = downloaded["counts"]
    assert counts.dropped["ssrf_blocked"] == sum("ssrf" in r["planted"] for r in truth.values())


def test_nothing_forbidden_was_requested(downloaded):
    truth, log, authority = downloaded["truth"], downloaded["log"], downloaded["authority"]
    requested = [e["path"] for e in log]
    forbidden = {p for r in truth.values() for p in r["never_requested"]}
    assert forbidden and not forbidden & set(requested)
    # No request ever arrived under another spelling of this server (2130706433, localhost, [::ffff:...]).
    assert {e["host"] for e in log} == {authority}
    assert all("witforge" in e["user_agent"] for e in log)
    # robots.txt: fetched before the images, once per worker process (Ray reuses a few), not per image.
    assert 1 <= requested.count("/robots.txt") <= 6
    assert requested.index("/robots.txt") < min(i for i, p in enumerate(requested) if p != "/robots.txt")


def test_successes_are_fetched_once_and_transient_failures_retried(downloaded):
    truth, results, log = downloaded["truth"], downloaded["results"], downloaded["log"]
    hits: dict[str, int] = {}
    for e in log:
        hits[e["path"]] = hits.get(e["path"], 0) + 1
    path = {uid: "/" + r["url"].split("/", 3)[3] for uid, r in truth.items() if "ssrf" not in r["planted"]}
    for uid, row in results.items():
        r = truth[uid]
        if row["status"] == "success":
            assert row["attempts"] == 1 and hits[path[uid]] == 1, r["url"]
        elif row["reason"] in ("http_5xx", "timeout"):
            assert row["attempts"] == 2 and hits[path[uid]] == 2, r["url"]
        elif row["reason"] in ("http_404", "opt_out", "decode_error", "too_many_pixels"):
            assert row["attempts"] == 1 and hits[path[uid]] == 1, r["url"]
