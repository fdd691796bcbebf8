"""The dashboard page (index.html) and its data.json, rendered from a dashboard_stats.Summary.

The page works without its script: every number, chart and table is in the HTML; dashboard.js only adds a
filter box. Nothing is loaded from outside the site (the Content-Security-Policy says so to the browser).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from html import escape
from typing import Any

from evaluation.dashboard_stats import (FAILED, IMPROVED, INCOMPLETE, MISSING, OK, REGRESSION, SAME, SUITE, Average,
                                        Checkpoint, Delta, Result, Summary, compare_averages, compare_results,
                                        night_of)
from evaluation.svg import PALETTE, Point, trend_chart

CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'")


def _num(v: float | None, signed: bool = False) -> str:
    if v is None:
        return ""
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _cls(status: str) -> str:
    return "st-" + status.replace(" ", "-")


def _badge(status: str) -> str:
    return f'<span class="badge {_cls(status)}">{escape(status)}</span>'


def _short(digest: str) -> str:
    return f'<code title="{escape(digest)}">{escape(digest[:12])}</code>'


def _provenance_tip(r: Result) -> str:
    parts = [f"code {r.code_version or '?'}", f"config hash {r.config_hash or '?'}",
             f"dataset version {r.dataset_version or '?'}", f"Ray job {r.ray_job_id or '-'}", f"at {r.time or '?'}"]
    return ", ".join(parts)


def _table(table_id: str, header: list[str], body: list[str], caption: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    cap = f"<caption>{caption}</caption>" if caption else ""
    return (f'<table id="{table_id}" class="data">{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _row(cells: list[str], status: str = "", name: str = "", group: str = "") -> str:
    attrs = f' class="{_cls(status)}" data-status="{escape(status)}"' if status else ""
    attrs += f' data-name="{escape(name)}" data-group="{escape(group)}"' if name else ""
    return f"<tr{attrs}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


# ---- sections -------------------------------------------------------------------------------------------

def _versus(s: Summary) -> str:
    def who(c: Checkpoint) -> str:
        return f"<strong>{escape(c.label)}</strong> {_short(c.digest)} (night {escape(c.night)})"

    same = " The baseline is the candidate itself: every delta is zero." if s.baseline == s.candidate else ""
    return (f'<p class="versus">Candidate {who(s.candidate)} against the pinned baseline {who(s.baseline)} '
            f'<span class="spec">dashboard.baseline={escape(s.config.baseline)}</span>.{same}</p>')


def _cards(s: Summary) -> str:
    counts: dict[str, int] = defaultdict(int)
    for d in s.deltas:
        counts[d.status] += 1
    suite = s.averages[(s.candidate.digest, SUITE)]
    suite_delta = s.average_deltas[0]
    if suite.complete:
        suite_text = f"{suite.value:.3f}"
        sub = f"{_num(suite_delta.delta, True)} vs baseline" if suite_delta.delta is not None else suite_delta.status
    else:
        suite_text, sub = "incomplete", f"{suite.have} of {len(suite.datasets)} datasets"
    cards = [("suite", "Suite average", suite_text, sub, suite_delta.status),
             ("regressions", "Regressions", str(counts[REGRESSION]), "beyond tolerance",
              REGRESSION if counts[REGRESSION] else OK),
             ("failed", "Failed or missing", str(counts[FAILED] + counts[MISSING]), "evaluations",
              FAILED if counts[FAILED] + counts[MISSING] else OK),
             ("improved", "Improved", str(counts[IMPROVED]), "beyond tolerance", OK),
             ("same", "Within noise", str(counts[SAME]), "of " + str(len(s.deltas)) + " datasets", OK)]
    return '<div class="cards">' + "".join(
        f'<div class="card {_cls(status)}" id="card-{key}"><div class="card-label">{escape(label)}</div>'
        f'<div class="card-value">{escape(value)}</div><div class="card-sub">{escape(sub)}</div></div>'
        for key, label, value, sub, status in cards) + "</div>"


def _rule(s: Summary) -> str:
    c = s.config
    noise = (f", {c.noise_z:g} &times; the binomial standard error of the difference "
             f"(&radic;(p(1&minus;p)/n) per side, n = the dataset's sample count)" if c.noise_z else "")
    return (f'<p class="rule">A change counts when |&Delta;| &gt; max({c.tolerance:g}{noise}); smaller changes are '
            f'within noise. An average with a failed or missing dataset is <em>incomplete</em>: shown with what it '
            f'lacks (and the mean of what it has, in brackets), never compared and never taken over fewer '
            f"datasets. Headline metric: each dataset's main metric (top-1 for zero-shot, image&rarr;text R@1 for "
            f"retrieval, the registry's choice for external datasets).</p>")


def _comparison(s: Summary) -> str:
    body = []
    for d in s.deltas:
        cand = s.result(s.candidate.digest, d.name)
        base = s.result(s.baseline.digest, d.name)
        name = (f'<a href="#trend-{escape(d.name)}" title="{escape(_provenance_tip(cand))}">'
                f'{escape(d.name)}</a>')
        metric = cand.metric if cand.status == OK else base.metric
        body.append(_row([_badge(d.status), name, escape(s.group_of[d.name]), escape(metric),
                          _num(d.baseline), _num(d.candidate), _num(d.delta, True), _num(d.tolerance),
                          _num(cand.chance), str(cand.n or ""), f'<span class="note">{escape(d.note)}</span>'],
                         d.status, d.name, s.group_of[d.name]))
    header = ["status", "dataset", "group", "metric", "baseline", "candidate", "&Delta;", "tolerance", "chance",
              "n", "note"]
    return _table("comparison", header, body, "Per dataset, regressions first")


def _avg_text(a: Average) -> str:
    if a.complete:
        return _num(a.value)
    partial = f" ({_num(a.partial)})" if a.partial is not None else ""
    return f'<span class="incomplete">incomplete {a.have}/{len(a.datasets)}</span>{partial}'


def _averages(s: Summary) -> str:
    body = []
    for d in s.average_deltas:
        base = s.averages[(s.baseline.digest, d.name)]
        cand = s.averages[(s.candidate.digest, d.name)]
        body.append(_row([_badge(d.status), escape(d.name), str(len(cand.datasets)), _avg_text(base),
                          _avg_text(cand), _num(d.delta, True), _num(d.tolerance),
                          f'<span class="note">{escape(d.note)}</span>'], d.status, d.name, d.name))
    header = ["status", "scope", "datasets", "baseline", "candidate", "&Delta;", "tolerance", "note"]
    return _table("averages", header, body, "Suite and group averages")


def _colours(s: Summary) -> dict[str, str]:
    models = sorted({c.model for c in s.checkpoints})
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}


def _legend(s: Summary) -> str:
    swatches = "".join(
        f'<span class="swatch"><svg width="12" height="12" aria-hidden="true"><rect width="12" height="12" '
        f'fill="{colour}"/></svg> {escape(model or "model")}</span>' for model, colour in _colours(s).items())
    return (f'<p class="legend">{swatches} &middot; shaded band: baseline &plusmn; tolerance &middot; dotted red: '
            f'chance &middot; ring and column: candidate &middot; red &times;: failed &middot; grey circle: missing '
            f'&middot; hollow dashed circle: incomplete average (partial mean) &middot; vertical line: a new night</p>')


def _trends(s: Summary) -> str:
    cats = [str(c.step) for c in s.checkpoints]
    nights = [c.night for c in s.checkpoints]
    index = {c.digest: i for i, c in enumerate(s.checkpoints)}
    colours = _colours(s)
    highlight = index[s.candidate.digest]
    figures = []

    def figure(kind: str, name: str, group: str, status: str, title: str, svg: str) -> str:
        fig_id = f"trend-{name}" if kind == "dataset" else f"trend-average-{name}"  # a group may share a name
        return (f'<figure class="trend {_cls(status)}" id="{escape(fig_id)}" data-kind="{kind}" '
                f'data-name="{escape(name)}" data-group="{escape(group)}" data-status="{escape(status)}">{svg}'
                f'<figcaption>{_badge(status)} {escape(title)}</figcaption></figure>')

    for d in s.average_deltas:
        pts = []
        for c in s.checkpoints:
            a = s.averages[(c.digest, d.name)]
            kind = OK if a.complete else INCOMPLETE if a.partial is not None else FAILED
            tip = f"{c.label}, night {c.night}: " + (_num(a.value) if a.complete else f"incomplete ({_gaps_tip(a)})")
            pts.append(Point(index[c.digest], a.value if a.complete else a.partial, kind, c.model, tip))
        title = "suite average" if d.name == SUITE else f"group {d.name}"
        svg = trend_chart(title, cats, nights, pts, colours, d.baseline, d.tolerance, None, highlight,
                          f"{title}: mean headline metric by checkpoint")
        figures.append(figure("average", d.name, d.name, d.status, title, svg))
    for d in s.deltas:
        pts = []
        for c in s.checkpoints:
            r = s.result(c.digest, d.name)
            tip = f"{c.label}, night {c.night}: " + (
                _num(r.value) if r.status == OK else f"{r.status} {r.error}".strip())
            pts.append(Point(index[c.digest], r.value, r.status, c.model, tip))
        cand = s.result(s.candidate.digest, d.name)
        base = s.result(s.baseline.digest, d.name)
        chance = cand.chance if cand.chance is not None else base.chance
        svg = trend_chart(d.name, cats, nights, pts, colours, d.baseline, d.tolerance, chance, highlight,
                          f"{d.name}: {cand.metric or base.metric} by checkpoint")
        figures.append(figure("dataset", d.name, s.group_of[d.name], d.status, f"{d.name} ({s.group_of[d.name]})",
                              svg))
    return _legend(s) + '<div class="grid">' + "".join(figures) + "</div>"


def _gaps_tip(a: Average) -> str:
    parts = [f"failed {', '.join(a.failed)}"] if a.failed else []
    parts += [f"missing {', '.join(a.missing)}"] if a.missing else []
    return "; ".join(parts)


def _matrix(s: Summary) -> str:
    nights = s.nights()
    head1 = '<th rowspan="2">dataset</th><th rowspan="2">group</th>' + "".join(
        f'<th colspan="{len(cs)}" class="night">night {escape(n)}</th>' for n, cs in nights.items())
    head2 = ""
    for c in s.checkpoints:
        role = " (baseline)" if c == s.baseline else " (candidate)" if c == s.candidate else ""
        cls = "baseline-col" if c == s.baseline else "candidate-col" if c == s.candidate else ""
        head2 += (f'<th class="{cls}" title="{escape(c.digest)}">{escape(c.model or "model")}<br>'
                  f'step {c.step}{escape(role)}</th>')
    body = []
    for scope in [SUITE, *s.groups]:
        cells = []
        for c in s.checkpoints:
            a = s.averages[(c.digest, scope)]
            d = _avg_delta(s, c, scope)
            cells.append(f'<td class="{_cls(d)}" title="{escape(_gaps_tip(a))}">{_avg_text(a)}</td>')
        label = "suite average" if scope == SUITE else f"group {scope}"
        body.append(f'<tr class="avg-row" data-name="{escape(scope)}" data-group="{escape(scope)}"><th>'
                    f'{escape(label)}</th><td>{_plural(len(s.averages[(s.candidate.digest, scope)].datasets), "dataset")}</td>'
                    + "".join(cells) + "</tr>")
    for delta in s.deltas:
        name = delta.name
        cells = []
        for c in s.checkpoints:
            r = s.result(c.digest, name)
            status = compare_results(s.config, s.result(s.baseline.digest, name), r).status
            text = _num(r.value) if r.status == OK else r.status
            tip = f"{r.error} " if r.error else ""
            cells.append(f'<td class="{_cls(status)}" title="{escape(tip + _provenance_tip(r))}">{escape(text)}</td>')
        body.append(f'<tr data-name="{escape(name)}" data-group="{escape(s.group_of[name])}" '
                    f'data-status="{escape(delta.status)}"><th>{escape(name)}</th><td>{escape(s.group_of[name])}</td>'
                    + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table id="matrix" class="data"><caption>Headline metric of every checkpoint, '
            f'coloured by its change against the baseline</caption><thead><tr>{head1}</tr><tr>{head2}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _avg_delta(s: Summary, c: Checkpoint, scope: str) -> str:
    return compare_averages(s.config, s.averages[(s.baseline.digest, scope)], s.averages[(c.digest, scope)]).status


def _joined(values: list[str]) -> str:
    uniq = sorted({v for v in values if v})
    return escape(", ".join(uniq)) if uniq else "&ndash;"


def _nights(s: Summary) -> str:
    by_night: dict[str, list[Result]] = defaultdict(list)
    for r in s.results.values():
        by_night[night_of(r.time)].append(r)
    labels = {c.digest: c.label for c in s.checkpoints}
    body = []
    for night, rs in sorted(by_night.items(), reverse=True):
        failed = [r for r in rs if r.status == FAILED]
        ckpts = sorted({labels[r.digest] for r in rs})
        body.append(_row([escape(night), escape(", ".join(ckpts)), str(len(rs)), str(len(failed)),
                          _joined([r.code_version for r in rs]), _joined([r.ray_job_id for r in rs])],
                         FAILED if failed else ""))
    header = ["night (UTC)", "checkpoints evaluated", "evaluations", "failed", "code versions", "Ray job ids"]
    return _table("nights-table", header, body, "Newest night first")


def _versions(rs: list[Result]) -> str:
    by_version: dict[str, list[str]] = defaultdict(list)
    for r in rs:
        by_version[r.dataset_version or "?"].append(r.dataset)
    if len(by_version) == 1:
        v, ds = next(iter(by_version.items()))
        return escape(f"{v} (all {len(ds)})")
    return escape("; ".join(f"{v}: {', '.join(sorted(ds))}" for v, ds in sorted(by_version.items())))


def _provenance(s: Summary) -> str:
    body = []
    for c in reversed(s.checkpoints):
        rs = [r for (digest, _), r in s.results.items() if digest == c.digest]
        role = "baseline" if c == s.baseline else "candidate" if c == s.candidate else ""
        body.append(_row([escape(c.model), str(c.step), _short(c.digest), f"<code>{escape(c.uri)}</code>",
                          escape(c.night), escape(f"{c.first_time} .. {c.last_time}"),
                          _joined([r.code_version for r in rs]), str(len({r.config_hash for r in rs})),
                          _versions(rs), _joined([r.ray_job_id for r in rs]), escape(role)]))
    header = ["model", "step", "digest", "checkpoint", "night", "evaluated (UTC)", "code version",
              "config hashes", "dataset versions", "Ray job id", "role"]
    runs = []
    labels = {c.digest: c for c in s.checkpoints}
    for (digest, dataset), r in sorted(s.results.items(), key=lambda kv: (kv[1].time, kv[0][1]), reverse=True):
        c = labels[digest]
        runs.append(_row([escape(c.label), _short(digest), escape(dataset), escape(r.status), escape(r.metric),
                          _num(r.value), str(r.n), escape(r.dataset_version), f"<code>{escape(r.config_hash)}</code>",
                          escape(r.code_version), escape(r.ray_job_id or "-"), escape(r.time),
                          f'<span class="error">{escape(r.error)}</span>'],
                         r.status if r.status != OK else "", dataset, s.group_of.get(dataset, "")))
    run_header = ["checkpoint", "digest", "dataset", "status", "metric", "value", "n", "dataset version",
                  "config hash", "code version", "Ray job id", "time", "error"]
    return (_table("provenance-table", header, body, "One row per checkpoint, newest first")
            + f'<details id="runs"><summary>Every evaluation ({len(runs)}), newest first</summary>'
            + _table("runs-table", run_header, runs) + "</details>")


# ---- the page -------------------------------------------------------------------------------------------

def _page(title: str, assets: dict[str, str], body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{escape(title)}</title>"
            f'<link rel="icon" href="{assets["favicon.svg"]}" type="image/svg+xml">'
            f'<link rel="stylesheet" href="{assets["dashboard.css"]}">'
            f'<script src="{assets["dashboard.js"]}" defer></script></head>\n<body>\n{body}\n</body></html>\n')


def render_html(s: Summary | None, title: str, assets: dict[str, str], generated: str = "") -> str:
    """The page; `assets` maps a bundled asset's name to its published relative URL; `s` None = no results."""
    generated = generated or dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if s is None:
        return _page(title, assets, f"<header><h1>{escape(title)}</h1><p class=\"meta\">Generated {generated}."
                                    f"</p></header><main><p>No evaluation results yet: run "
                                    f"<code>python -m evaluation.run</code>.</p></main>")
    body = (f'<header><h1>{escape(title)}</h1><p class="meta">Generated {escape(generated)} from {s.rows} result '
            f'rows: {_plural(len(s.checkpoints), "checkpoint")} over {_plural(len(s.nights()), "night")}, '
            f'{_plural(len(s.datasets()), "dataset")} '
            f'({len(s.suite)} in the suite). Numbers for scripts: <a href="data.json">data.json</a>.</p>'
            f'<nav><a href="#compare">Against baseline</a> <a href="#trends">Trends</a> '
            f'<a href="#matrix-section">Every checkpoint</a> <a href="#nights">Nights</a> '
            f'<a href="#provenance">Provenance</a></nav><div id="controls"></div></header>\n<main>'
            f'<section id="summary">{_versus(s)}{_cards(s)}{_rule(s)}</section>\n'
            f'<section id="compare"><h2>Candidate against baseline</h2>{_comparison(s)}{_averages(s)}</section>\n'
            f'<section id="trends"><h2>Trends</h2>{_trends(s)}</section>\n'
            f'<section id="matrix-section"><h2>Every checkpoint</h2>{_matrix(s)}</section>\n'
            f'<section id="nights"><h2>Nights</h2>{_nights(s)}</section>\n'
            f'<section id="provenance"><h2>Provenance</h2>{_provenance(s)}</section></main>')
    return _page(title, assets, body)


# ---- data.json ------------------------------------------------------------------------------------------

def _delta_json(d: Delta) -> dict[str, Any]:
    return {"name": d.name, "status": d.status, "baseline": d.baseline, "candidate": d.candidate, "delta": d.delta,
            "tolerance": d.tolerance, "note": d.note}


def _ckpt_json(c: Checkpoint) -> dict[str, Any]:
    return {"digest": c.digest, "model": c.model, "step": c.step, "checkpoint": c.uri, "night": c.night,
            "first_time": c.first_time, "last_time": c.last_time}


def summary_json(s: Summary | None, title: str, generated: str) -> dict[str, Any]:
    """What the page shows, for scripts (alerting on regressions, other dashboards)."""
    if s is None:
        return {"title": title, "generated": generated, "checkpoints": []}
    return {
        "title": title, "generated": generated, "rows": s.rows,
        "baseline": _ckpt_json(s.baseline), "candidate": _ckpt_json(s.candidate),
        "rule": {"tolerance": s.config.tolerance, "noise_z": s.config.noise_z},
        "suite": s.suite, "groups": s.groups,
        "regressions": [d.name for d in s.deltas if d.status == REGRESSION],
        "deltas": [_delta_json(d) for d in s.deltas],
        "average_deltas": [_delta_json(d) for d in s.average_deltas],
        "checkpoints": [_ckpt_json(c) for c in s.checkpoints],
        "averages": [{"digest": digest, "scope": scope, "value": a.value, "partial": a.partial,
                      "complete": a.complete, "failed": list(a.failed), "missing": list(a.missing)}
                     for (digest, scope), a in s.averages.items()],
        "results": [{"digest": r.digest, "dataset": r.dataset, "group": s.group_of.get(r.dataset, ""),
                     "status": r.status, "metric": r.metric, "value": r.value, "chance": r.chance, "n": r.n,
                     "dataset_version": r.dataset_version, "config_hash": r.config_hash,
                     "code_version": r.code_version, "ray_job_id": r.ray_job_id, "time": r.time, "error": r.error}
                    for r in s.results.values()],
    }
