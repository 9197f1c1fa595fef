"""Inline SVG charts drawn in Python: a time series against its band, and a heatmap.

No plotting library: the report is built anywhere edgewatch installs (the device too), and
the SVG is text inside the HTML, so the page needs nothing from the network.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from html import escape
from typing import List, Optional, Sequence, Tuple

__all__ = ["Mark", "heatmap", "line_chart"]

_W, _H = 520, 130  # chart size in px
_L, _R, _T, _B = 52, 8, 18, 20  # margins: axis labels left and bottom, title on top


@dataclass(frozen=True)
class Mark:
    """A shaded span on a chart: an alert (``alert``) or a monitoring gap (``gap``)."""

    start: float
    end: float
    label: str
    css: str  # "alert" | "gap"


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _clock(ts: float, span: float) -> str:
    return time.strftime("%H:%M:%S" if span < 3 * 3600 else "%m-%d %H:%M", time.gmtime(ts))


def _downsample(times: Sequence[float], values: Sequence[float],
                most: int) -> Tuple[List[float], List[float]]:
    """At most ``most`` points: the mean of consecutive buckets (charts stay small)."""
    if len(times) <= most:
        return list(times), list(values)
    step = len(times) / most
    ts, vs = [], []
    for i in range(most):
        a, b = int(i * step), max(int((i + 1) * step), int(i * step) + 1)
        chunk = [v for v in values[a:b] if math.isfinite(v)]
        ts.append(sum(times[a:b]) / (b - a))
        vs.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return ts, vs


def _polyline(xs: Sequence[float], ys: Sequence[float]) -> str:
    """SVG path data with a break at each missing value."""
    parts, pen = [], "M"
    for x, y in zip(xs, ys):
        if not math.isfinite(y):
            pen = "M"
            continue
        parts.append(f"{pen}{x:.1f},{y:.1f}")
        pen = "L"
    return " ".join(parts)


def line_chart(title: str, times: Sequence[float], values: Sequence[float],
               band: Optional[Tuple[float, float, float]], span: Tuple[float, float],
               marks: Sequence[Mark] = (), most: int = 400, css: str = "chart") -> str:
    """One feature over time: its window values, the reference band (p05..p95, median
    dashed), alert and gap spans shaded; ``span`` is the time axis (t0, t1)."""
    t0, t1 = span
    t1 = t1 if t1 > t0 else t0 + 1.0
    ts, vs = _downsample(times, values, most)
    finite = [v for v in vs if math.isfinite(v)] + (list(band) if band else [])
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    lo, hi = (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad  # >= 0 stays >= 0
    pw, ph = _W - _L - _R, _H - _T - _B

    def x(t: float) -> float:
        return _L + (t - t0) / (t1 - t0) * pw

    def y(v: float) -> float:
        return _T + (hi - v) / (hi - lo) * ph

    out = [f'<svg class="{css}" xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
           f'viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}">',
           f'<text class="title" x="{_L}" y="12">{escape(title)}</text>',
           f'<rect class="plot" x="{_L}" y="{_T}" width="{pw}" height="{ph}"/>']
    for m in marks:
        a, b = max(m.start, t0), min(m.end, t1)
        if b >= a:
            out.append(f'<rect class="{m.css}" x="{x(a):.1f}" y="{_T}" '
                       f'width="{max(x(b) - x(a), 2):.1f}" height="{ph}">'
                       f'<title>{escape(m.label)}</title></rect>')
    if band is not None:
        b_lo, b_med, b_hi = band
        out.append(f'<rect class="band" x="{_L}" y="{y(b_hi):.1f}" width="{pw}" '
                   f'height="{max(y(b_lo) - y(b_hi), 1):.1f}"><title>reference p05..p95: '
                   f'{_fmt(b_lo)}..{_fmt(b_hi)}</title></rect>')
        out.append(f'<line class="median" x1="{_L}" x2="{_L + pw}" y1="{y(b_med):.1f}" '
                   f'y2="{y(b_med):.1f}"/>')
    out.append(f'<path class="series" d="{_polyline([x(t) for t in ts], [y(v) for v in vs])}"/>')
    out += [f'<text class="axis" x="{_L - 4}" y="{_T + 8}" text-anchor="end">{_fmt(hi)}</text>',
            f'<text class="axis" x="{_L - 4}" y="{_T + ph}" text-anchor="end">{_fmt(lo)}</text>',
            f'<text class="axis" x="{_L}" y="{_H - 6}">{_clock(t0, t1 - t0)}</text>',
            f'<text class="axis" x="{_L + pw}" y="{_H - 6}" text-anchor="end">'
            f'{_clock(t1, t1 - t0)} UTC</text>', "</svg>"]
    return "\n".join(out)


def _text_px(text: str) -> int:
    """The width of 10 px bold sans-serif text, generously (6 px a character)."""
    return 6 * len(text)


def _colour(score: float, vmax: float) -> str:
    """White (0) through yellow to red (>= vmax); grey for no value."""
    if not math.isfinite(score):
        return "#eeeeee"
    f = min(max(score / vmax, 0.0), 1.0)
    g = int(255 - 200 * f) if f > 0.5 else 255
    b = int(255 * (1 - 2 * f)) if f < 0.5 else 0
    return f"#ff{g:02x}{b:02x}" if f > 0 else "#ffffff"


def heatmap(features: Sequence[str], edges: Sequence[float],
            matrix: Sequence[Sequence[float]], vmax: float, unit: str) -> str:
    """Features (rows) by time bins (columns, ``edges`` has one more entry than columns)."""
    cols = max(len(edges) - 1, 1)
    left, top, row_h = 120, 18, 14
    title = f"{unit} (white 0, red {vmax:g} or more; grey: no data)"
    width = min(max(cols * 8, 300, _text_px(title) + 8), 900)  # the title fits
    cell_w = (width - left - 8) / cols
    height = top + row_h * len(features) + 24
    span = (edges[-1] - edges[0]) if len(edges) > 1 else 1.0
    out = [f'<svg class="heatmap" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="drift heatmap">',
           f'<text class="title" x="4" y="12">{escape(title)}</text>']
    for r, name in enumerate(features):
        yy = top + r * row_h
        out.append(f'<text class="axis" x="{left - 4}" y="{yy + 10}" '
                   f'text-anchor="end">{escape(name)}</text>')
        for c in range(cols):
            v = matrix[r][c]
            out.append(f'<rect x="{left + c * cell_w:.1f}" y="{yy}" width="{cell_w + 0.3:.1f}" '
                       f'height="{row_h - 1}" fill="{_colour(v, vmax)}"><title>{escape(name)} '
                       f'{_clock(edges[c], span)}: {_fmt(v)}</title></rect>')
    yb = top + row_h * len(features) + 14
    if len(edges) > 1:
        out += [f'<text class="axis" x="{left}" y="{yb}">{_clock(edges[0], span)}</text>',
                f'<text class="axis" x="{width - 8}" y="{yb}" text-anchor="end">'
                f'{_clock(edges[-1], span)} UTC</text>']
    out.append("</svg>")
    return "\n".join(out)
