"""A static HTML dashboard of every evaluation result under <root>/eval/results/.

    python -m evaluation.dashboard --config configs/demo.yaml [dashboard.output=/tmp/index.html]

One self-contained page (inline CSS and SVG; no CDN, no JavaScript): checkpoints with their provenance, the
primary score per dataset against chance for each model's latest checkpoint, the primary score by step when a
model has several checkpoints, and a table per dataset. Failed evaluations are shown as failed. The page is
published atomically through pipelines.storage; its URI is printed.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections import defaultdict
from html import escape
from typing import Any

from pipelines import storage
from pipelines.config import parse_cli
from pipelines.storage import StorageConfig
from evaluation.config import DashboardConfig
from evaluation.results import PRIMARY, all_rows
from evaluation.svg import bar_chart, line_chart

CSS = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}th{background:#f3f3f3}
tr.failed td{background:#fde2e2;color:#900}code{font-size:12px}.num{text-align:right}"""


def _num(v: Any) -> str:
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else escape(str(v))


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for i, cells in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _primary(rows: list[dict]) -> dict[str, dict]:
    """dataset -> its primary-metric row (or its failed row) among `rows` of one checkpoint."""
    out = {}
    for r in rows:
        if r["status"] == "failed" or r["metric"] == PRIMARY.get(r["task"]):
            out[r["dataset"]] = r
    return out


def _checkpoints(rows: list[dict]) -> dict[str, list[dict]]:
    by_digest: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_digest[r["digest"]].append(r)
    return by_digest


def _provenance_section(by_digest: dict[str, list[dict]]) -> str:
    body = []
    for digest, rows in sorted(by_digest.items(), key=lambda kv: (kv[1][0]["model"], kv[1][0]["step"])):
        first = rows[0]
        failed = sum(r["status"] == "failed" for r in rows)
        body.append([escape(first["model"]), _num(first["step"]), f"<code>{escape(digest[:16])}</code>",
                     f"<code>{escape(first['checkpoint'])}</code>",
                     escape(", ".join(sorted({r["code_version"] for r in rows}))),
                     str(len({r["dataset"] for r in rows})), str(failed)])
    return "<h2>Checkpoints</h2>" + _table(
        ["model", "step", "digest", "checkpoint", "code version", "datasets", "failed"], body)


def _charts(by_digest: dict[str, list[dict]]) -> str:
    by_model: dict[str, list[list[dict]]] = defaultdict(list)
    for rows in by_digest.values():
        by_model[rows[0]["model"]].append(rows)
    parts = ["<h2>Scores</h2>"]
    for model, ckpts in sorted(by_model.items()):
        ckpts.sort(key=lambda rs: rs[0]["step"])
        latest = _primary(ckpts[-1])
        items = [(ds, None if r["status"] == "failed" else r["value"], r.get("chance"))
                 for ds, r in sorted(latest.items())]
        parts.append(bar_chart(items, f"{model or 'model'} step {ckpts[-1][0]['step']}: top-1 (retrieval: "
                                      f"image->text R@1) vs chance (red)"))
        if len(ckpts) > 1:
            series: dict[str, list[tuple[float, float]]] = defaultdict(list)
            for rows in ckpts:
                for ds, r in _primary(rows).items():
                    if r["status"] == "ok":
                        series[ds].append((float(r["step"]), float(r["value"])))
            parts.append(line_chart(dict(series), f"{model or 'model'}: top-1 by step"))
    return "\n".join(parts)


def _dataset_tables(rows: list[dict]) -> str:
    by_ds: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_ds[r["dataset"]].append(r)
    parts = ["<h2>Datasets</h2>"]
    header = ["metric", "value", "chance", "n", "checkpoint", "step", "digest", "code version", "config hash",
              "time", "error"]
    for ds, ds_rows in sorted(by_ds.items()):
        ds_rows.sort(key=lambda r: (r["model"], r["step"], r["task"], r["metric"]))
        cells = [[escape("FAILED" if r["status"] == "failed" else r["metric"]), _num(r["value"]), _num(r["chance"]),
                  _num(r["n"]), f"<code>{escape(r['checkpoint'])}</code>", _num(r["step"]),
                  f"<code>{escape(r['digest'][:12])}</code>", escape(r["code_version"]), escape(r["config_hash"]),
                  escape(r["time"]), escape(r.get("error") or "")] for r in ds_rows]
        version = ds_rows[0].get("dataset_version", "")
        parts.append(f"<h3 id=\"{escape(ds)}\">{escape(ds)} <small>(version {escape(str(version))})</small></h3>")
        parts.append(_table(header, cells, ["failed" if r["status"] == "failed" else "" for r in ds_rows]))
    return "\n".join(parts)


def render_html(rows: list[dict], title: str) -> str:
    """The whole page for `rows` (result rows as written by evaluation.run)."""
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    head = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1><p>Generated {now} from {len(rows)} result rows.</p>")
    if not rows:
        return head + "<p>No evaluation results yet: run <code>python -m evaluation.run</code>.</p></body></html>\n"
    by_digest = _checkpoints(rows)
    return "\n".join([head, _provenance_section(by_digest), _charts(by_digest), _dataset_tables(rows),
                      "</body></html>\n"])


def build_dashboard(root: str, cfg: DashboardConfig) -> str:
    """Read every result row under `root`, publish the page, return its URI."""
    out = cfg.output or storage.join(root, "dashboard", "index.html")
    storage.write_bytes(out, render_html(all_rows(root), cfg.title).encode())
    return out


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli("python -m evaluation.dashboard", __doc__.split("\n\n")[0], argv,
                    {"storage": StorageConfig, "dashboard": DashboardConfig})
    print(build_dashboard(cfg["storage"].root, cfg["dashboard"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
