"""The report page: one self-contained HTML file (inline CSS and SVG, images as data: URIs)."""

from __future__ import annotations

import re
import time
from html import escape
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from ..card import when
from ..records import AlertTransition
from . import _svg
from ._data import ReportData, Thumb, band, drift_matrix, health_series, series

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:16px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}
.glance{display:flex;gap:24px;flex-wrap:wrap}.glance div{background:#f6f8fa;padding:8px 12px}
.charts{display:flex;flex-wrap:wrap;gap:8px}
svg text{font:10px sans-serif;fill:#444}svg text.title{font-weight:bold;fill:#222}
.plot{fill:#fff;stroke:#bbb}.band{fill:#2e7d32;fill-opacity:.15}
.median{stroke:#2e7d32;stroke-dasharray:4 3}.series{fill:none;stroke:#1565c0;stroke-width:1.5}
rect.alert{fill:#d32f2f;fill-opacity:.18}rect.gap{fill:#777;fill-opacity:.25}
.firing{color:#b71c1c;font-weight:bold}.resolved{color:#2e7d32}
.thumbs{display:flex;flex-wrap:wrap;gap:8px}.thumbs figure{margin:0;width:200px}
.thumbs img{width:200px;height:auto;border:1px solid #ccc;display:block}
.frame{position:relative}.boxes{position:absolute;left:0;top:0;width:100%;height:100%}
.boxes rect{fill:none;stroke:#00e676;stroke-width:.8;vector-effect:non-scaling-stroke}
.thumbs figcaption{font-size:11px}
.diag{background:#fff8e1;border-left:4px solid #f9a825;padding:6px 12px;margin:8px 0}
.card{background:#fafafa;padding:4px 16px;border:1px solid #eee}
"""


def _table(rows: Sequence[Sequence[Any]], head: Sequence[str]) -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _glance(data: ReportData) -> str:
    facts = data.facts
    model, ref = facts.model, facts.reference
    beat = data.heartbeats[-1].payload if data.heartbeats else {}
    firing = sum(a.state == "firing" for a in data.alerts)
    items = [("device", facts.device.get("id")), ("camera", facts.device.get("camera")),
             ("model", f"{model.get('path', '-')} (sha256 {str(model.get('sha256', '-'))[:12]})"),
             ("runtime", f"{model.get('runtime', '-')}, delegate {model.get('delegate') or 'none'}"),
             ("reference", "none" if ref is None else f"{ref.kind}: {ref.source} ({ref.frames} "
                                                      "frames)"),
             ("period", f"{when(data.span[0])} to {when(data.span[1])}"),
             ("alerts", f"{len(data.alerts)} ({firing} firing"
                        f"{' when it stopped' if data.stopped is not None else ''})"),
             ("monitoring", f"stopped at {when(data.stopped)}" if data.stopped is not None
              else (beat.get("monitoring") or {}).get("state", "-"))]
    return '<div class="glance">' + "".join(
        f"<div><b>{escape(k)}</b><br>{escape(str(v))}</div>" for k, v in items) + "</div>"


def _marks(data: ReportData) -> List[_svg.Mark]:
    end = data.span[1]
    marks = [_svg.Mark(a.starts_at, a.ends_at if a.ends_at is not None else end,
                       f"{a.kind}/{a.feature}: {a.message}", "alert") for a in data.alerts]
    return marks + [_svg.Mark(g.start, g.end, f"monitoring {g.state}", "gap") for g in data.gaps]


def charts(data: ReportData) -> str:
    """One chart per feature the windows carry: its window mean against the reference band."""
    if not data.windows:
        return "<p>No summary windows in this period (they are written every [store] " \
               "window_s).</p>"
    marks = _marks(data)
    out = []
    for feature in data.features:
        times, values = series(data.windows, feature)
        out.append(_svg.line_chart(feature, times, values, band(data.facts, feature), data.span,
                                   marks))
    legend = ("<p>Blue: each summary window's mean; green band: the reference's 5th to 95th "
              "percentile (dashed: its median); red: alerts; grey: monitoring off.</p>")
    return legend + '<div class="charts">' + "\n".join(out) + "</div>"


def heatmap(data: ReportData) -> str:
    """Drift over features and time."""
    names, edges, matrix, unit = drift_matrix(data)
    if not names:
        return "<p>No drift scores: no reference, or no windows in this period.</p>"
    vmax = 3.0 if unit.startswith("drift score") else 10.0
    return _svg.heatmap(names, edges, matrix, vmax, unit)


def _lifecycle(a: AlertTransition) -> str:
    parts = []
    if a.acknowledged:
        parts.append(f"acked by {a.acknowledged_by or '?'} at {when(a.acknowledged_at)}")
    if a.snoozed_until is not None:
        parts.append(f"snoozed by {a.snoozed_by or '?'} until {when(a.snoozed_until)}")
    return escape("; ".join(parts) or "-")


def alert_table(alerts: Sequence[AlertTransition]) -> str:
    """Every alert: when, what, expected, timeframe, state and lifecycle."""
    if not alerts:
        return "<p>No alerts in this period.</p>"
    rows = [[escape(when(a.starts_at)), f'<span class="{escape(a.state)}">{escape(a.state)}</span>'
             + (f"<br>{escape(when(a.ends_at))}" if a.ends_at is not None else ""),
             escape(f"{a.kind}/{a.severity}"), escape(a.feature), escape(a.message),
             escape(f"{when(a.window.start)} to {when(a.window.end)} ({a.window.frames} "
                    "frames)"), _lifecycle(a)] for a in alerts]
    head = ("started", "state", "kind", "feature", "message (what, expected)", "window tested",
            "lifecycle")
    return ("<p>Started: when the alert began; window tested: the frames its latest test "
            "(firing, repeat or resolve) looked at, so it can come later.</p>"
            + _table(rows, head))


def diagnoses(data: ReportData) -> str:
    """One diagnosis per episode, in words."""
    if not data.episodes:
        return "<p>No episodes: nothing to diagnose.</p>"
    out = []
    for ep, d in data.episodes:
        ids = ", ".join(i[:8] for i in ep.alert_ids)
        out.append(f'<div class="diag"><b>{escape(when(ep.start))}</b> ({escape(", ".join(ep.kinds))};'
                   f" alerts {escape(ids)})<br>{escape(d.summary)}<br><b>What to do:</b> "
                   f"{escape(d.action)}</div>")
    return "\n".join(out)


def _boxes(t: Thumb) -> str:
    """The model's detections over a thumbnail (boxes in 0..1 of the frame)."""
    rects = []
    for det in t.sample.detections:
        box = det.get("box")
        if isinstance(box, (list, tuple)) and len(box) == 4:
            x0, y0, x1, y1 = (float(v) * 100 for v in box)
            rects.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" '
                         f'height="{y1 - y0:.1f}"><title>score {float(det.get("score", 0)):.2f}'
                         "</title></rect>")
    if not rects:
        return ""
    return ('<svg class="boxes" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100" '
            f'preserveAspectRatio="none">{"".join(rects)}</svg>')


def _figure(reason: str, t: Thumb) -> str:
    s = t.sample
    if not t.uri:
        return (f"<figure><figcaption>{escape(s.path)}: {escape(t.problem or 'file missing')}"
                "</figcaption></figure>")
    top = max((float(d.get("score", 0)) for d in s.detections), default=None)
    score = "" if top is None else f", top score {top:.2f}"
    return (f'<figure><div class="frame"><img alt="{escape(reason)} sample {s.id}" '
            f'src="{t.uri}">{_boxes(t)}</div><figcaption>'
            f"{escape(' '.join(filter(None, (when(s.ts), s.kind, s.feature))) + score)}"
            "</figcaption>"
            "</figure>")


def thumbnails(data: ReportData) -> str:
    """Captured frames by reason: alert and unsure frames beside normal ones, with the
    model's boxes drawn over them."""
    off = ("<p><b>Capture is off</b> on this device ([capture] enabled = false): no frames "
           "are kept from now on. Turn it on to see and retrain on the frames alerts fire on."
           "</p>" if not data.capture else "")
    if not any(data.thumbs.values()):
        return off or "<p>No samples captured in this period ([capture] keeps frames when " \
                      "alerts fire).</p>"
    out = []
    for reason in ("alert", "unsure", "normal"):
        thumbs = data.thumbs.get(reason) or []
        if thumbs:
            figs = "".join(_figure(reason, t) for t in thumbs)
            out.append(f"<h3>{escape(reason)} frames</h3><div class=\"thumbs\">{figs}</div>")
    unshown = sum(not t.uri for ts in data.thumbs.values() for t in ts)
    note = f" {unshown} of them not shown (file missing or altered)." if unshown else ""
    return (off + "<p>Frames of each kind, spread over the period; boxes: the model's "
            f"detections.{note}</p>" + "\n".join(out))


#: A heartbeat key's unit suffix and how it reads.
_UNITS = (("_percent", "%"), ("_mb", "MB"), ("_ms", "ms"), ("_c", "°C"), ("_s", "s"))
_SECTIONS = {"host": "host", "queues": "store queue", "outbox": "outbox", "camera": "camera"}


def _measure(section: str, key: str, value: Any) -> Tuple[str, str]:
    """A heartbeat health value for people: ``("host: max temp", "61.5 °C")``, "-" when
    missing."""
    suffix, unit = next(((sx, u) for sx, u in _UNITS if key.endswith(sx)), ("", ""))
    words = key[:len(key) - len(suffix)].replace("_", " ")
    label = f"{_SECTIONS.get(section, section)}: {words}"
    if value is None or value == "":
        return label, "-"
    if isinstance(value, bool):
        return label, "yes" if value else "no"
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    return label, f"{shown} {unit}".strip() if isinstance(value, (int, float)) else shown


def health(data: ReportData) -> str:
    """The device's health at the last heartbeat, and monitoring gaps."""
    gaps = _table([[escape(when(g.start)), escape(when(g.end)), escape(g.state)]
                   for g in data.gaps], ("from", "to", "state")) if data.gaps else \
        "<p>No gaps: monitoring was on throughout (as far as heartbeats and events say).</p>"
    if not data.heartbeats:
        return "<p>No heartbeats in this period (a replay writes none).</p>" + gaps
    last = data.heartbeats[-1].payload
    marks = [_svg.Mark(g.start, g.end, f"monitoring {g.state}", "gap") for g in data.gaps]
    charts = "".join(_svg.line_chart(label, times, values, None, data.span, marks, css="hchart")
                     for label, times, values in health_series(data.heartbeats))
    rows: List[List[str]] = []
    for section in ("host", "queues", "outbox", "camera"):
        value = last.get(section)
        if isinstance(value, Mapping):
            rows += [[escape(label), escape(shown)] for label, shown in (
                _measure(section, str(k), v) for k, v in value.items()
                if not isinstance(v, (Mapping, list)))]
    return (f"<p>{len(data.heartbeats)} heartbeats; the last at {escape(when(last.get('ts')))}."
            f'</p><div class="charts">{charts}</div>' + _table(rows, ("measure", "value")) + gaps)


def markdown(text: str) -> str:
    """The card's Markdown as HTML (headings, tables, paragraphs, `code`: what it uses)."""
    out: List[str] = []
    rows: List[List[str]] = []

    def inline(s: str) -> str:
        return re.sub(r"`([^`]*)`", r"<code>\1</code>", escape(s))

    def flush() -> None:
        if rows:
            out.append(_table([[inline(c) for c in r] for r in rows[1:]], rows[0]))
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if not all(set(c) <= {"-"} and c for c in cells):
                rows.append(cells)
            continue
        flush()
        heading = re.match(r"(#+) (.*)", line)
        if heading:
            level = min(len(heading.group(1)) + 1, 6)
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(out)


def page(data: ReportData, generated: Optional[float] = None) -> str:
    """The whole report."""
    stamp = when(time.time() if generated is None else generated)
    sections = [("At a glance", _glance(data)), ("Diagnosis", diagnoses(data)),
                ("Image statistics and confidence over time", charts(data)),
                ("Drift over features and time", heatmap(data)),
                ("Alerts", alert_table(data.alerts)), ("Captured samples", thumbnails(data)),
                ("Device health and monitoring gaps", health(data)),
                ("Model card", f'<div class="card">{markdown(data.card)}</div>')]
    body = "\n".join(f'<section id="s{i}"><h2>{escape(t)}</h2>\n{html}</section>'
                     for i, (t, html) in enumerate(sections))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>edgewatch report: {escape(str(data.facts.device.get('id')))}</title>"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "img-src data:; style-src 'unsafe-inline'\">"
            f"<style>{_CSS}</style></head><body><h1>edgewatch report</h1>"
            f"<p>Generated {escape(stamp)} by edgewatch report.</p>\n{body}\n</body></html>\n")
