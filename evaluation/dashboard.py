"""The nightly evaluation dashboard: a static site built from every result row under <root>/eval/results/.

    python -m evaluation.dashboard --config configs/demo.yaml [dashboard.baseline=<digest|step|model:step|first|previous>
        dashboard.tolerance=0.01 dashboard.noise_z=2 dashboard.output=s3://bucket/site]

Publishes into <root>/dashboard/ (or dashboard.output), local or s3://: `assets/` (CSS, JS, icon; content-hashed
names, never overwritten), `data.json` (the same numbers, for scripts), then `index.html` last, so a reader
always gets a complete site: the old page with its old assets, or the new one. Serve it with
`python -m http.server -d data/dashboard` or as an S3 static website (objects carry their Content-Type).
Prints one line per regression or failure against the pinned baseline, then the page's URI.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import mimetypes
import sys
from pathlib import Path

from pipelines import storage
from pipelines.config import parse_cli
from pipelines.storage import StorageConfig
from evaluation.dashboard_config import DashboardConfig
from evaluation.dashboard_html import render_html, summary_json
from evaluation.dashboard_stats import FAILED, INCOMPLETE, MISSING, REGRESSION, Summary, summarize
from evaluation.results import all_rows

SITE = Path(__file__).with_name("site")
ASSETS = ("dashboard.css", "dashboard.js", "favicon.svg")
NO_CACHE = "no-cache"  # index.html and data.json change every night
IMMUTABLE = "public, max-age=31536000, immutable"  # an asset's name changes with its content


def publish(uri: str, data: bytes, cache_control: str) -> None:
    """Publish atomically (pipelines.storage); on S3 with the Content-Type a static website must serve."""
    content_type = mimetypes.guess_type(uri)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type in ("application/json", "application/javascript",
                                                            "image/svg+xml"):
        content_type += "; charset=utf-8"
    if uri.startswith("s3://"):
        fs, path = storage.filesystem(uri)
        fs.pipe_file(path, data, ContentType=content_type, CacheControl=cache_control)  # one PUT: atomic
    else:
        storage.write_bytes(uri, data)


def publish_assets(site: str) -> dict[str, str]:
    """Bundled asset name -> its relative URL under `site`, publishing any not there yet."""
    urls = {}
    for name in ASSETS:
        data = (SITE / name).read_bytes()
        stem, ext = name.rsplit(".", 1)
        rel = f"assets/{stem}.{hashlib.sha256(data).hexdigest()[:12]}.{ext}"
        uri = storage.join(site, rel)
        if not storage.exists(uri):
            publish(uri, data, IMMUTABLE)
        urls[name] = rel
    return urls


def site_root(root: str, cfg: DashboardConfig) -> str:
    return cfg.output or storage.join(root, "dashboard")


def build_dashboard(root: str, cfg: DashboardConfig) -> str:
    """Read every result row under `root`, publish the site, return the URI of its index.html."""
    return build_site(root, cfg)[0]


def build_site(root: str, cfg: DashboardConfig) -> tuple[str, Summary | None]:
    rows = all_rows(root)
    summary = summarize(rows, cfg) if rows else None
    site = site_root(root, cfg)
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    assets = publish_assets(site)
    publish(storage.join(site, "data.json"),
            (json.dumps(summary_json(summary, cfg.title, generated), indent=1) + "\n").encode(), NO_CACHE)
    index = storage.join(site, "index.html")
    publish(index, render_html(summary, cfg.title, assets, generated).encode(), NO_CACHE)
    return index, summary


def report(summary: Summary | None) -> list[str]:
    """One line per dataset or average needing attention, for the job log."""
    if summary is None:
        return ["no evaluation results yet"]
    head = (f"{summary.candidate.label} ({summary.candidate.digest[:12]}) vs baseline {summary.baseline.label} "
            f"({summary.baseline.digest[:12]})")
    attention = [d for d in summary.deltas if d.status in (REGRESSION, FAILED, MISSING)]
    attention += [d for d in summary.average_deltas if d.status in (REGRESSION, INCOMPLETE)]
    lines = [f"{d.status:<12} {d.name:<24} " + (f"{d.delta:+.3f} (tolerance {d.tolerance:.3f})"
                                                 if d.delta is not None and d.tolerance is not None else d.note)
             for d in attention]
    return [head + (f": {len(lines)} to look at" if lines else ": no regression, nothing failed")] + lines


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli("python -m evaluation.dashboard", __doc__.split("\n\n")[0], argv,
                    {"storage": StorageConfig, "dashboard": DashboardConfig})
    try:
        index, summary = build_site(cfg["storage"].root, cfg["dashboard"])
    except ValueError as exc:  # a baseline or candidate that names no checkpoint, a bad result file
        print(f"python -m evaluation.dashboard: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report(summary)))
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
