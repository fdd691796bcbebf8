"""Inline SVG trend charts for the dashboard, drawn on the server (no plotting library, no script).

Colours are presentation attributes and classes, never `style=""`, so the page's Content-Security-Policy
(style-src 'self') holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
           "#393b79", "#637939", "#843c39")


@dataclass(frozen=True)
class Point:
    x: int
    """Index into the chart's categories (a checkpoint in evaluation order)."""
    y: float | None
    kind: str
    """ok, failed, missing or incomplete (y is then the partial mean)."""
    series: str
    """The line it belongs to (a model)."""
    title: str
    """Tooltip."""


def _f(v: float) -> str:
    return f"{v:.1f}"


def _ticks(lo: float, hi: float) -> list[float]:
    span = hi - lo
    step = next(s for s in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0) if span / s <= 5)
    first = -(-lo // step) * step
    return [round(first + i * step, 6) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _y_range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = max(0.02, (hi - lo) * 0.12)
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad) if hi <= 1.0 else hi + pad
    if hi - lo < 0.05:  # a flat series: widen downwards when it sits at the top of 0..1
        lo, hi = (max(0.0, hi - 0.05), hi) if hi >= 1.0 else (lo, lo + 0.05)
    return lo, hi


def trend_chart(title: str, categories: list[str], nights: list[str], points: list[Point],
                colours: dict[str, str], reference: float | None = None, band: float | None = None,
                chance: float | None = None, highlight: int | None = None, label: str = "") -> str:
    """One small multiple: a line per series over the categories, failures as red crosses on the x axis.

    `reference` +- `band` is the baseline and its tolerance (a shaded band); `chance` a dotted red line;
    `highlight` the candidate's category (a ring); nights change where `nights[i] != nights[i-1]`."""
    left, right, top, plot_h, bottom_pad = 36, 10, 22, 104, 34
    n = max(1, len(categories))
    step_w = max(16.0, min(70.0, 330.0 / n))
    plot_w = step_w * n
    width, height = left + plot_w + right, top + plot_h + bottom_pad
    values = [p.y for p in points if p.y is not None and p.kind in ("ok", "incomplete")]
    values += [v for v in (reference, chance) if v is not None]
    if reference is not None and band:
        values += [reference - band, reference + band]
    lo, hi = _y_range(values or [0.0, 1.0])

    def px(i: int) -> float:
        return left + step_w * (i + 0.5)

    def py(v: float) -> float:
        return top + plot_h * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))

    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{_f(width)}" height="{height}" '
            f'viewBox="0 0 {_f(width)} {height}" role="img" aria-label="{escape(label or title)}">'),
           f'<text x="{left}" y="14" class="chart-title">{escape(title)}</text>']
    for t in _ticks(lo, hi):
        y = py(t)
        out.append(f'<line x1="{left}" y1="{_f(y)}" x2="{_f(left + plot_w)}" y2="{_f(y)}" class="gridline"/>')
        out.append(f'<text x="{left - 4}" y="{_f(y + 3)}" class="tick" text-anchor="end">{t:.2f}</text>')
    for i in range(1, len(nights)):
        if nights[i] != nights[i - 1]:
            x = left + step_w * i
            out.append(f'<line x1="{_f(x)}" y1="{top}" x2="{_f(x)}" y2="{top + plot_h}" class="night-edge">'
                       f'<title>night {escape(nights[i])}</title></line>')
    if reference is not None:
        if band:
            y0, y1 = py(reference + band), py(reference - band)
            out.append(f'<rect x="{left}" y="{_f(y0)}" width="{_f(plot_w)}" height="{_f(max(0.5, y1 - y0))}" '
                       f'class="band"><title>baseline {reference:.3f} +- {band:.3f}</title></rect>')
        out.append(f'<line x1="{left}" y1="{_f(py(reference))}" x2="{_f(left + plot_w)}" y2="{_f(py(reference))}" '
                   f'class="baseline"><title>baseline {reference:.3f}</title></line>')
    if chance is not None and lo <= chance <= hi:
        out.append(f'<line x1="{left}" y1="{_f(py(chance))}" x2="{_f(left + plot_w)}" y2="{_f(py(chance))}" '
                   f'class="chance"><title>chance {chance:.3f}</title></line>')
    if highlight is not None:
        out.append(f'<rect x="{_f(left + step_w * highlight)}" y="{top}" width="{_f(step_w)}" height="{plot_h}" '
                   f'class="candidate-col"><title>candidate</title></rect>')
    def yv(p: Point) -> float:
        return py(p.y if p.y is not None else lo)

    for series in sorted({p.series for p in points}):
        colour = colours.get(series, PALETTE[0])
        mine = sorted((p for p in points if p.series == series), key=lambda p: p.x)
        segments: list[list[Point]] = [[]]
        for p in mine:  # a line never bridges a failed or missing evaluation
            if p.kind == "ok":
                segments[-1].append(p)
            elif segments[-1]:
                segments.append([])
        for seg in segments:
            if len(seg) > 1:
                coords = " ".join(f"{_f(px(q.x))},{_f(yv(q))}" for q in seg)
                out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p in mine:
            x, tip = px(p.x), f"<title>{escape(p.title)}</title>"
            if p.kind == "ok":
                ring = (f'<circle cx="{_f(x)}" cy="{_f(yv(p))}" r="6" fill="none" stroke="{colour}" '
                        f'stroke-width="1.5"/>') if p.x == highlight else ""
                out.append(f'<circle cx="{_f(x)}" cy="{_f(yv(p))}" r="3" fill="{colour}">{tip}</circle>{ring}')
            elif p.kind == "incomplete":
                out.append(f'<circle cx="{_f(x)}" cy="{_f(yv(p))}" r="3.5" fill="#fff" stroke="{colour}" '
                           f'stroke-dasharray="2 1.5" class="incomplete-mark">{tip}</circle>')
            elif p.kind == "failed":
                y = top + plot_h - 5
                out.append(f'<path d="M{_f(x - 4)},{_f(y - 4)}L{_f(x + 4)},{_f(y + 4)}M{_f(x - 4)},{_f(y + 4)}'
                           f'L{_f(x + 4)},{_f(y - 4)}" class="failed-mark">{tip}</path>')
            else:
                out.append(f'<circle cx="{_f(x)}" cy="{_f(top + plot_h - 5)}" r="3" class="missing-mark">'
                           f'{tip}</circle>')
    every = max(1, -(-len(categories) // 8))
    for i, cat in enumerate(categories):
        if i % every == 0 or i == highlight:
            out.append(f'<text x="{_f(px(i))}" y="{top + plot_h + 13}" class="tick" text-anchor="middle">'
                       f'{escape(cat)}</text>')
    out.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{_f(left + plot_w)}" y2="{top + plot_h}" class="axis"/>')
    out.append(f'<text x="{_f(left + plot_w / 2)}" y="{height - 4}" class="tick" text-anchor="middle">'
               f'step (checkpoints in evaluation order)</text>')
    out.append("</svg>")
    return "\n".join(out)
