"""Build a dataset version: extract -> download -> filter -> dedupe -> shard -> manifest.

    python -m pipelines.build --config configs/demo.yaml [section.key=value ...]

On a cluster: `ray job submit --working-dir . -- python -m pipelines.build --config configs/demo.yaml
storage.root=s3://bucket/prefix`. Prints the manifest's URI as the last line of stdout.

Every stage publishes its outputs atomically and marks itself committed last, so killing the build at any
point and rerunning it with the same config resumes: committed work is skipped, nothing is lost or duplicated.
The manifest is written last; a version without one does not exist.

Lineage of any sample: python -m pipelines.explain <uid> --config configs/demo.yaml
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys
import time

import yaml

from pipelines import layout, storage
from pipelines.build_config import PipelineConfig
from pipelines.config import config_hash, parse_cli
from pipelines.engines import init_ray, spark_session, stop_spark
from pipelines.funnel import StageCounts, render
from pipelines.schema import Manifest, load_manifest, manifest_uri, write_manifest
from pipelines.storage import StorageConfig
from pipelines.version import code_version

log = logging.getLogger("pipelines.build")


def _web_config_class():
    # The synthetic web is a stand-in for the internet, imported only when a config asks for it.
    from synthweb.config import WebConfig

    return WebConfig


def sections() -> dict[str, type]:
    return {"storage": StorageConfig, "web": _web_config_class(), "pipeline": PipelineConfig}


def _stage(name: str, uri: str, fn) -> StageCounts:
    done = layout.committed(uri)
    if done is not None:
        log.info("stage %s already committed at %s: skipped", name, uri)
        return done
    t0 = time.time()
    counts = fn()
    log.info("stage %s done in %.1fs: %d in, %d out", name, time.time() - t0, counts.input, counts.output)
    return counts


def build(cfg: dict) -> str:
    st: StorageConfig = cfg["storage"]
    pc: PipelineConfig = cfg["pipeline"]
    version = layout.version_uri(st.root, pc.dataset, pc.version)
    m_uri = manifest_uri(st.root, pc.dataset, pc.version)
    if storage.exists(m_uri):
        load_manifest(m_uri)  # fail loudly if what is there is not a manifest this code can read
        log.info("dataset version already built: %s", m_uri)
        return m_uri
    chash = config_hash({"web": cfg["web"], "pipeline": pc})
    storage.write_bytes(storage.join(version, "config.yaml"), yaml.safe_dump(cfg["_raw"], sort_keys=True).encode())

    upstream: dict = {"source": pc.source.kind}
    serve_web = contextlib.nullcontext()
    if pc.source.kind == "synthetic":
        from synthweb.corpus import ensure_corpus
        from synthweb.server import serve

        own = f"{cfg['web'].host}:{cfg['web'].port}"
        if own not in pc.download.allow_private:
            raise ValueError(f"pipeline.download.allow_private: {pc.download.allow_private} lacks {own!r}, where the "
                             "synthetic web is served (loopback addresses are refused unless allow-listed)")
        corpus = ensure_corpus(cfg["web"])
        warcs = corpus.warc_paths
        if pc.source.synthetic_format == "wat":
            from synthweb.wat import ensure_wats

            warcs = ensure_wats(corpus)
        upstream.update(web_corpus=corpus.corpus_id, **{pc.source.synthetic_format: warcs})
        serve_web = serve(cfg["web"])
    else:
        warcs = list(pc.source.warc if pc.source.kind == "warc" else pc.source.wat)
        upstream[pc.source.kind] = warcs

    from pipelines.stages import (
        balance,
        caption_dedupe,
        clip_filter,
        decontam,
        dedupe,
        download,
        extract,
        semdedup,
        shard,
    )
    from pipelines.stages import filter as filter_stage

    w = {s: layout.work_uri(version, s) for s in ("candidates", "balance", "download", "filtered", "dedupe",
                                                  "decontam", "caption_dedupe", "semdedup", "clip_filter")}
    from pyspark.sql import SparkSession

    own_spark = SparkSession.getActiveSession() is None  # stop only a session this build started
    spark = spark_session(pc.engine)
    try:
        stages = [_stage("extract", w["candidates"], lambda: extract.run(spark, pc.extract, warcs, w["candidates"]))]
        to_download = w["candidates"]
        if pc.balance.enabled:  # WIT/MetaCLIP curation before any image byte is fetched
            stages.append(_stage("balance", w["balance"],
                                 lambda: balance.run(spark, pc.balance, w["candidates"], w["balance"])))
            to_download = balance.candidates_uri(w["balance"])
        with serve_web:
            stages.append(_stage("download", w["download"],
                                 lambda: download.run(pc.download, pc.engine, to_download, w["download"])))
        init_ray(pc.engine)
        stages.append(_stage("filter", w["filtered"], lambda: filter_stage.run(pc.filter, w["download"], w["filtered"])))
        stages.append(_stage("dedupe", w["dedupe"], lambda: dedupe.run(spark, pc.dedupe, w["filtered"], w["dedupe"])))
        stages.append(_stage("decontam", w["decontam"],
                             lambda: decontam.run(spark, pc.decontam, w["dedupe"], w["decontam"])))
        stages.append(_stage("caption_dedupe", w["caption_dedupe"],
                             lambda: caption_dedupe.run(spark, pc.caption_dedupe, w["decontam"], w["caption_dedupe"])))
        # Model-based stages: pass-through (with the reason in their report) until a checkpoint is configured,
        # DataComp's bootstrap: the first model trains on the less-filtered set.
        stages.append(_stage("semdedup", w["semdedup"],
                             lambda: semdedup.run(pc.semdedup, w["caption_dedupe"], w["semdedup"], w["download"])))
        stages.append(_stage("clip_filter", w["clip_filter"],
                             lambda: clip_filter.run(pc.clip_filter, w["semdedup"], w["clip_filter"], w["download"])))
        t0 = time.time()
        shard_infos, shard_counts = shard.run(pc.shard, w["clip_filter"], w["download"], version)
        log.info("stage %s done in %.1fs: %d in, %d out", "shard", time.time() - t0, shard_counts.input,
                 shard_counts.output)
        stages.append(shard_counts)
    finally:
        if own_spark:
            stop_spark()

    funnel = {"stages": [s.to_json() for s in stages],
              "download_stats": storage.join(w["download"], "_stats", "summary.json")}  # by reason; by_host beside
    if pc.balance.enabled:  # per-entry counts before and after balancing (and where the full table is)
        funnel["balance"] = balance.report(w["balance"])
    storage.write_json(storage.join(version, "funnel.json"), funnel)
    manifest = Manifest(
        dataset=pc.dataset, version=pc.version, shards=shard_infos,
        total_samples=sum(s.samples for s in shard_infos), funnel=funnel, config_hash=chash,
        code_version=code_version(), upstream=upstream,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    write_manifest(m_uri, manifest)  # last: the version now exists
    print(render(stages))
    return m_uri


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli("python -m pipelines.build", __doc__.split("\n\n")[0], argv, sections())
    # Our progress at INFO; libraries at WARNING (py4j logs each retried gateway socket at INFO on the root logger).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("pipelines", "synthweb"):
        logging.getLogger(name).setLevel(logging.INFO)
    print(build(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
