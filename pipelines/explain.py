"""Explain one sample: where it came from, and where it ended or why and at which stage it was dropped.

    python -m pipelines.explain <uid> --config configs/demo.yaml [section.key=value ...]
    python -m pipelines.explain <uid> --version s3://bucket/prefix/synthweb/v1   (or that version's manifest.json)
    ... --json                                                                 (one JSON object instead of text)

Reads only what the stages persisted (no engine is started): every stage work dir under `<version>/_work/` is
found through its `_COMMITTED.json` and walked in commit (= pipeline) order (pipelines.layout.stage_dirs), then
the shard commit records / manifest. In each stage dir, every `*.parquet` directly inside is searched for the uid
and read by its columns, so a new stage needs no code here:
- `dropped.parquet`: its rows are the stage's drops: reason, detail and any other column (dedupe's dup_of);
  a stage that has one and does not list the uid let it through;
- a `keep` column (filter): keep false is a drop with `reason` and `detail`;
- a `status` column (the download's shard parquets): anything but "success" is a drop, with its `reason` column
  (or img2dataset's error_message classified as in the funnel) and the error message as detail;
- any other parquet holding the uid (extract's candidates, dedupe's keep.parquet) means the stage passed it.
A drop found in `<file>.parquet` next to a `rejected/<file>.tar` (filter.keep_rejected) names that tar. The
origin (WARC file, page URL, image URL, raw alt text) comes from the first row that has those columns.
Exit status: 0 when the uid is found (kept, dropped or still in progress), 1 when no stage knows it, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import posixpath
import sys
from typing import Any

import pyarrow.parquet as pq

from pipelines import layout, storage
from pipelines.schema import UID_RE, validate_uid

_ORIGIN = {"source": "warc", "page_url": "page_url", "url": "url", "caption": "caption"}
_BOOKKEEPING = {"uid", "reason", "detail", "keep", "status", "error_message"}


def _rows_for(parquet_uri: str, uid: str) -> list[dict]:
    """The rows of one parquet whose uid column equals `uid` (only the uid column is read for the search)."""
    with storage.open_uri(parquet_uri) as f:
        pf = pq.ParquetFile(f)
        if "uid" not in pf.schema_arrow.names:
            return []
        hits = [i for i, u in enumerate(pf.read(columns=["uid"]).column("uid").to_pylist()) if u == uid]
        if not hits:
            return []
        table = pf.read()
    return [table.slice(i, 1).to_pylist()[0] for i in hits]


def _download_reason(status: str, message: str | None) -> str:
    try:  # the funnel's own classification, so explain and funnel.json name a failure the same way
        from pipelines.stages.download import classify_error
    except ImportError:
        return status
    return classify_error(status, message)


def _scalar(v: Any) -> Any:
    return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)


def judge_stage(stage: layout.StageDir, uid: str) -> dict:
    """{"verdict": passed|dropped|absent, reason, detail, where, extra, rejected, origin} of one stage dir."""
    out: dict[str, Any] = {"stage": stage.stage, "dir": stage.dir, "verdict": "absent"}
    parquets = [u for u in storage.listdir(stage.uri) if u.endswith(".parquet")]
    has_dropped = any(posixpath.basename(u) == "dropped.parquet" for u in parquets)
    for uri in parquets:
        for row in _rows_for(uri, uid):
            name = posixpath.basename(uri)
            if "origin" not in out and all(k in row for k in _ORIGIN):
                out["origin"] = {v: row[k] for k, v in _ORIGIN.items()}
            dropped, reason, detail = False, None, None
            if name == "dropped.parquet" or ("keep" in row and not row["keep"]):
                dropped, reason, detail = True, row.get("reason"), row.get("detail")
            elif "status" in row and row["status"] != "success":  # the download's own reason column if it has one
                reason = row.get("reason") or _download_reason(row["status"], row.get("error_message"))
                dropped, detail = True, row.get("error_message")
            where = name + (f" (img2dataset key {row['key']})" if "status" in row and row.get("key") else "")
            if dropped:
                shown = row if name == "dropped.parquet" else {"attempts": row.get("attempts")}
                extra = {k: _scalar(v) for k, v in shown.items() if k not in _BOOKKEEPING and v is not None}
                out.update(verdict="dropped", reason=reason, detail=detail, where=where, extra=extra)
                rejected = storage.join(stage.uri, "rejected", name[: -len(".parquet")] + ".tar")
                if storage.exists(rejected):
                    out["rejected"] = rejected
                return out
            out.update(verdict="passed", where=where)
    if out["verdict"] == "absent" and has_dropped:
        out["verdict"] = "passed"  # the stage lists only what it dropped
    return out


def find_in_shards(version: str, uid: str) -> dict | None:
    """Where the uid ended: {"shard", "parquet", "key", "index", "samples"}, or a shard-stage drop, or None."""
    m_uri = storage.join(version, "manifest.json")
    records = [storage.read_json(u) for u in storage.listdir(layout.work_uri(version, layout.SHARD_RECORDS))
               if u.endswith(".json")]
    if storage.exists(m_uri):
        infos = storage.read_json(m_uri)["shards"]
    else:
        infos = [r["info"] for r in records]
    for rec in records:
        if uid in rec.get("missing", []):
            return {"verdict": "dropped", "reason": "missing_member", "where": rec["info"]["path"],
                    "detail": "its image was missing from the download tar when the shard was written"}
    for info in infos:
        with storage.open_uri(storage.join(version, info["parquet"])) as f:
            found = pq.read_table(f, columns=["uid"]).column("uid").to_pylist()
        if uid in found:
            return {"verdict": "kept", "shard": storage.join(version, info["path"]), "key": uid,
                    "parquet": storage.join(version, info["parquet"]), "index": found.index(uid),
                    "samples": info["samples"]}
    return None


def explain(version: str, uid: str, follow_dup: bool = True) -> dict:
    """The lineage of `uid` in the dataset version at `version` (a JSON-able dict; see the module docstring)."""
    version = version.rstrip("/").removesuffix("/manifest.json")
    report: dict[str, Any] = {"uid": uid, "version": version, "origin": None, "stages": [], "outcome": None}
    for stage in layout.stage_dirs(version):
        if stage.counts is None:
            report["outcome"] = {"status": "in_progress", "stage": stage.stage,
                                 "detail": f"stage dir {stage.uri} has no {layout.COMMIT_MARKER}: its stage has "
                                           f"not finished (rerun the build to resume)"}
            return report
        verdict = judge_stage(stage, uid)
        report["origin"] = report["origin"] or verdict.pop("origin", None)
        verdict.pop("origin", None)
        report["stages"].append(verdict)
        if verdict["verdict"] == "dropped":
            report["outcome"] = {"status": "dropped", **{k: verdict.get(k) for k in
                                                         ("stage", "reason", "detail", "where", "extra", "rejected")}}
            dup = (verdict.get("extra") or {}).get("dup_of")
            if follow_dup and isinstance(dup, str) and UID_RE.match(dup):  # a sample (not e.g. "eval:digit/195")
                report["outcome"]["dup_of_outcome"] = explain(version, dup, follow_dup=False)["outcome"]
            return report
        if verdict["verdict"] == "absent":
            first = len(report["stages"]) == 1
            report["outcome"] = {"status": "unknown" if first else "absent", "stage": stage.stage,
                                 "detail": f"no stage output of {stage.uri} mentions this uid"
                                           + (" (not a candidate of this version)" if first else "")}
            return report
    if not report["stages"]:
        report["outcome"] = {"status": "unknown", "detail": f"no committed stage under {version}/_work"}
        return report
    ended = find_in_shards(version, uid)
    if ended is None:
        built = storage.exists(storage.join(version, "manifest.json"))
        report["outcome"] = {"status": "absent" if built else "in_progress", "stage": "shard",
                             "detail": "in no shard of the manifest" if built else "not sharded yet"}
    elif ended["verdict"] == "dropped":
        ended.pop("verdict")
        report["outcome"] = {"status": "dropped", "stage": "shard", **ended}
    else:
        ended.pop("verdict")
        report["outcome"] = {"status": "kept", **ended}
    return report


def render(report: dict) -> str:
    lines = [f"sample {report['uid']} in {report['version']}"]
    width = max([10] + [len(s["stage"]) for s in report["stages"]])
    for label, key in (("WARC file", "warc"), ("page", "page_url"), ("image", "url"), ("alt text", "caption")):
        if report["origin"]:
            lines.append(f"  {label:<{width}} {report['origin'][key]}")
    for s in report["stages"]:
        extra = ", ".join(f"{k}={v}" for k, v in (s.get("extra") or {}).items())
        why = s.get("detail") or extra or "-"
        text = s["verdict"] if s["verdict"] != "dropped" else f"DROPPED {s['reason']}: {why}"
        lines.append(f"  {s['stage']:<{width}} {text}" + (f"  [{s['where']}]" if s.get("where") else ""))
    o = report["outcome"]
    if o["status"] == "kept":
        lines.append(f"  {'ended in':<{width}} {o['shard']} key {o['key']} (sample {o['index'] + 1} of {o['samples']})")
    elif o["status"] == "dropped":
        extra = ", ".join(f"{k}={v}" for k, v in (o.get("extra") or {}).items())
        lines.append(f"  {'dropped at':<{width}} {o['stage']}: {o['reason']}" + (f" ({extra})" if extra else ""))
        if o.get("rejected"):
            lines.append(f"  {'kept aside':<{width}} {o['rejected']} key {report['uid']}")
        if o.get("dup_of_outcome"):
            d = o["dup_of_outcome"]
            kept = d["status"] == "kept"
            fate = f"ended in {d['shard']} key {d['key']}" if kept else f"was {d['status']} at {d.get('stage')}"
            lines.append(f"  {'lost to':<{width}} {o['extra']['dup_of']}, which {fate}")
    else:
        lines.append(f"  {o['status']}: {o.get('detail', '')}")
    return "\n".join(lines)


def _version_from_args(args, parser) -> str:
    if args.version:
        return args.version
    from pipelines.build_config import PipelineConfig
    from pipelines.config import ConfigError, load_config
    from pipelines.storage import StorageConfig

    try:
        cfg = load_config(args.config, args.overrides, {"storage": StorageConfig, "pipeline": PipelineConfig})
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: config error: {exc}\n")
    return layout.version_uri(cfg["storage"].root, cfg["pipeline"].dataset, cfg["pipeline"].version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.explain", description=__doc__.split("\n\n")[0])
    parser.add_argument("uid", help="the sample's uid (24 hex digits; the WebDataset key in the shards)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the build's YAML config (its storage.root, pipeline.dataset/version)")
    where.add_argument("--version", help="the version prefix or its manifest.json URI, e.g. s3://b/p/synthweb/v1")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("overrides", nargs="*", help="dotted overrides with --config, e.g. storage.root=s3://b/p")
    args = parser.parse_args(argv)
    try:
        uid = validate_uid(args.uid)
    except ValueError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    report = explain(_version_from_args(args, parser), uid)
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    return 1 if report["outcome"]["status"] == "unknown" else 0


if __name__ == "__main__":
    sys.exit(main())
