"""Inline SVG charts for the dashboard, written directly (no plotting library, no JavaScript)."""

from __future__ import annotations

from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939")


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def _y_axis(x0: float, y0: float, height: float, width: float) -> list[str]:
    """Gridlines and labels for values 0..1 (every metric the dashboard plots is a fraction)."""
    out = []
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y0 + height * (1 - tick)
        out.append(f'<line x1="{_fmt(x0)}" y1="{_fmt(y)}" x2="{_fmt(x0 + width)}" y2="{_fmt(y)}" stroke="#ddd"/>')
        out.append(f'<text x="{_fmt(x0 - 4)}" y="{_fmt(y + 4)}" font-size="10" text-anchor="end">{tick:.2f}</text>')
    return out


def bar_chart(items: list[tuple[str, float | None, float | None]], title: str) -> str:
    """One bar per (label, value, chance); chance drawn as a red tick across the bar; value None = failed."""
    bar_w, gap, left, top, height = 34, 14, 44, 28, 180
    width = left + len(items) * (bar_w + gap) + gap
    svg_w = max(width, left + 7 * len(title))  # room for the title when there are few bars
    bottom = top + height
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{svg_w}" height="{bottom + 120}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    parts += _y_axis(left, top, height, width - left)
    for i, (label, value, chance) in enumerate(items):
        x = left + gap + i * (bar_w + gap)
        if value is None:
            parts.append(f'<text x="{_fmt(x + bar_w / 2)}" y="{_fmt(bottom - 4)}" font-size="10" fill="#b00" '
                         f'text-anchor="middle">failed</text>')
        else:
            h = height * max(0.0, min(1.0, value))
            parts.append(f'<rect x="{_fmt(x)}" y="{_fmt(bottom - h)}" width="{bar_w}" height="{_fmt(h)}" '
                         f'fill="{PALETTE[0]}"><title>{escape(label)}: {value:.3f}</title></rect>')
            parts.append(f'<text x="{_fmt(x + bar_w / 2)}" y="{_fmt(bottom - h - 3)}" font-size="9" '
                         f'text-anchor="middle">{value:.2f}</text>')
        if chance is not None:
            y = bottom - height * chance
            parts.append(f'<line x1="{_fmt(x - 3)}" y1="{_fmt(y)}" x2="{_fmt(x + bar_w + 3)}" y2="{_fmt(y)}" '
                         f'stroke="#d62728" stroke-width="2"><title>chance {chance:.3f}</title></line>')
        lx, ly = x + bar_w / 2, bottom + 8
        parts.append(f'<text x="{_fmt(lx)}" y="{_fmt(ly)}" font-size="10" text-anchor="end" '
                     f'transform="rotate(-50 {_fmt(lx)} {_fmt(ly)})">{escape(label)}</text>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{width}" y2="{bottom}" stroke="#333"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, x_label: str = "step") -> str:
    """One polyline per series of (x, y) points, y in 0..1, with a legend."""
    left, top, plot_w, height, legend_w = 44, 28, 420, 180, 170
    xs = sorted({x for pts in series.values() for x, _ in pts}) or [0.0]
    x_min, x_max = xs[0], xs[-1]
    span = (x_max - x_min) or 1.0
    bottom = top + height

    def px(x: float) -> float:
        return left + plot_w * (x - x_min) / span if x_max > x_min else left + plot_w / 2

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + plot_w + legend_w}" '
             f'height="{max(bottom + 40, top + 16 * len(series) + 10)}" role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    parts += _y_axis(left, top, height, plot_w)
    for x in xs:
        parts.append(f'<text x="{_fmt(px(x))}" y="{bottom + 14}" font-size="10" text-anchor="middle">{x:g}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{bottom + 30}" font-size="11" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    for i, (name, pts) in enumerate(sorted(series.items())):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{_fmt(px(x))},{_fmt(bottom - height * y)}" for x, y in sorted(pts))
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2">'
                     f'<title>{escape(name)}</title></polyline>')
        for x, y in pts:
            parts.append(f'<circle cx="{_fmt(px(x))}" cy="{_fmt(bottom - height * y)}" r="3" fill="{colour}"/>')
        ly = top + 16 * i
        parts.append(f'<rect x="{left + plot_w + 12}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{left + plot_w + 26}" y="{ly + 1}" font-size="10">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
