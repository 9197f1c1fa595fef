"""What the report shows, gathered from the database once: series, alerts, episodes, samples."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..card import CardFacts, card_facts, render_card
from ..confidence import CONFIDENCE_FEATURES
from ..config import Config
from ..history import Gap, HeartbeatRow, History, SummaryWindow, monitoring_gaps
from ..records import AlertTransition, Sample
from ..samplestore import read_samples, samples_dir
from ..stats import IMAGE_FEATURES
from .diagnose import Diagnosis, Episode, diagnose, episodes, ramp_seconds

#: Most thumbnails per reason (alert/unsure/normal), spread evenly: the file stays a few MB.
MAX_THUMBS = 24
#: Most columns of the drift heatmap.
HEATMAP_COLUMNS = 96


@dataclass(frozen=True)
class Thumb:
    """A captured frame ready to show: its sample and its JPEG as a data: URI ("" if gone)."""

    sample: Sample
    uri: str


@dataclass
class ReportData:
    """Everything the page shows."""

    span: Tuple[float, float]
    facts: CardFacts
    card: str
    windows: List[SummaryWindow]
    alerts: List[AlertTransition]
    heartbeats: List[HeartbeatRow]
    gaps: List[Gap]
    episodes: List[Tuple[Episode, Diagnosis]]
    thumbs: Dict[str, List[Thumb]] = field(default_factory=dict)
    features: Tuple[str, ...] = ()


def band(facts: CardFacts, feature: str) -> Optional[Tuple[float, float, float]]:
    """The reference's (p05, median, p95) of a feature, None without a reference for it."""
    ref = facts.reference
    if ref is None or feature not in ref.names:
        return None
    s = ref.summary(feature)
    vals = (float(s["p05"]), float(s["p50"]), float(s["p95"]))
    return vals if all(math.isfinite(v) for v in vals) else None


def series(windows: Sequence[SummaryWindow], feature: str,
           stat: str = "mean") -> Tuple[List[float], List[float]]:
    """(window end times, the statistic) of one feature; NaN where a window lacks it and
    after a hole in the windows (so a chart's line breaks there instead of bridging it)."""
    times: List[float] = []
    values: List[float] = []
    for prev, w in zip([None, *windows], windows):
        if prev is not None and w.ts_start - prev.ts_end > 3 * max(prev.ts_end - prev.ts_start,
                                                                   1.0):
            times.append(prev.ts_end)
            values.append(math.nan)
        times.append(w.ts_end)
        values.append(float(w.summary.get(feature, {}).get(stat, math.nan)))
    return times, values


#: The image statistic that shows each camera fault (its onset is read from it).
_FAULT_FEATURES = {"blur": "sharpness", "black": "brightness", "saturated": "overexposed",
                   "frozen": "diff"}


#: Device health over time from heartbeats: (label, section, key) of each chart.
HEALTH_SERIES = (("camera fps", "camera", "fps"), ("inference latency p50 (ms)", "model", "latency_ms"),
                 ("CPU %", "host", "cpu_percent"), ("memory %", "host", "memory_percent"),
                 ("temperature (°C)", "host", "max_temp_c"), ("disk free (MB)", "host", "disk_free_mb"))


def health_series(beats: Sequence[HeartbeatRow]) -> List[Tuple[str, List[float], List[float]]]:
    """(label, times, values) of each health measure the heartbeats carry."""
    out = []
    for label, section, key in HEALTH_SERIES:
        times, values = [], []
        for b in beats:
            part = b.payload.get(section)
            value = part.get(key) if isinstance(part, dict) else None
            if isinstance(value, dict):  # latency: {"p50": ..., "p95": ...}
                value = value.get("p50")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                times.append(b.ts)
                values.append(float(value))
        if values:
            out.append((label, times, values))
    return out


def _with_ramp(ep: Episode, windows: Sequence[SummaryWindow], facts: CardFacts) -> Episode:
    """The episode with ``ramp_s``: the median over its top features of how long each took to
    reach its new level, less the two windows a step can straddle."""
    features = ep.top_features() or [_FAULT_FEATURES[f] for f in ep.camera_faults
                                      if f in _FAULT_FEATURES]
    spans = [w.ts_end - w.ts_start for w in windows]
    window_s = sorted(spans)[len(spans) // 2] if spans else 0.0
    ramps = []
    for feature in features:
        ref_band = band(facts, feature)
        if ref_band is not None:
            times, values = series(windows, feature)
            ramp = ramp_seconds(times, values, (ref_band[0], ref_band[2]), ep.start,
                                horizon_s=max(600.0, 10 * window_s))
            if ramp is not None:
                ramps.append(max(0.0, ramp - 2 * window_s))
    if not ramps:
        return ep
    ramp_s = sorted(ramps)[len(ramps) // 2]
    return Episode(ep.start, ep.end, ep.kinds, ep.shifts, ramp_s, ep.camera_faults,
                   ep.alert_ids)


def _thumbs(db_path: str, config: Config, span: Tuple[float, float]) -> Dict[str, List[Thumb]]:
    folder = samples_dir(config) if config.store.path == db_path else samples_dir(db_path)
    kept: Dict[str, List[Thumb]] = {}
    for sample in read_samples(db_path, since=span[0], until=span[1]):
        kept.setdefault(sample.reason, []).append(Thumb(sample, ""))
    for reason, thumbs in kept.items():
        shown = []
        step = max(1.0, len(thumbs) / MAX_THUMBS)
        for t in (thumbs[int(i * step)] for i in range(min(len(thumbs), MAX_THUMBS))):
            file = folder / t.sample.path
            uri = ("data:image/jpeg;base64," + base64.b64encode(file.read_bytes()).decode()
                   if file.is_file() else "")
            shown.append(Thumb(t.sample, uri))
        kept[reason] = shown
    return kept


def gather(config: Config, db_path: str, since: Optional[float], until: Optional[float],
           now: float) -> ReportData:
    """Read the database (read-only) and compute what the report shows."""
    facts = card_facts(config, db_path)
    with History(db_path) as history:
        first, last = history.span()
        t0 = since if since is not None else (first if first is not None else now)
        t1 = until if until is not None else (last if last is not None else now)
        windows = history.windows(t0, t1)
        alerts = history.alerts(t0, t1)
        beats = history.heartbeats(t0, t1)
        gaps = monitoring_gaps(beats, history.events(t0, t1), t1, windows)
    end = t1  # an open episode lasts up to the last thing recorded (a replay's clock is its own)
    eps = [_with_ramp(ep, windows, facts) for ep in episodes(alerts, end)]
    present = {name for w in windows for name in w.summary}
    features = tuple(f for f in IMAGE_FEATURES + CONFIDENCE_FEATURES if f in present)
    return ReportData(span=(t0, t1), facts=facts, card=render_card(facts), windows=windows,
                      alerts=alerts, heartbeats=beats, gaps=gaps,
                      episodes=[(ep, diagnose(ep, end)) for ep in eps],
                      thumbs=_thumbs(db_path, config, (t0, t1)), features=features)


def drift_matrix(data: ReportData) -> Tuple[List[str], List[float], List[List[float]], str]:
    """(features, bin edges, rows of scores, what the score is) for the heatmap.

    The heartbeats' ``drift_scores`` (distance / threshold at each drift test, >= 1 over its
    threshold) when they carry them; else each window's shift from the reference median in
    robust standard deviations (what the alerts' "moved N robust SDs" says).
    """
    beats = [b for b in data.heartbeats if b.drift_scores]
    t0, t1 = data.span
    cols = max(1, min(HEATMAP_COLUMNS, len(data.windows) or HEATMAP_COLUMNS))
    edges = [t0 + (t1 - t0) * i / cols for i in range(cols + 1)]
    if beats:
        names = sorted({f for b in beats for f in b.drift_scores})
        points = [(b.ts, b.drift_scores) for b in beats]
        unit = "drift score: distance / threshold"
    else:
        names = [f for f in data.features if band(data.facts, f) is not None]
        ref = data.facts.reference
        points = []
        for w in data.windows:
            row = {}
            for f in names:
                mean = w.summary.get(f, {}).get("mean")
                scale = float(ref.scale[ref.index(f)]) if ref is not None else 0.0
                if ref is not None and mean is not None and scale > 0:
                    row[f] = abs(float(mean) - float(ref.median[ref.index(f)])) / scale
            points.append((w.ts_end, row))
        unit = "shift from the reference median, robust SDs"
    return names, edges, _bin(names, edges, points), unit


def _bin(names: Sequence[str], edges: Sequence[float],
         points: Sequence[Tuple[float, Any]]) -> List[List[float]]:
    """The largest value of each feature in each time bin (NaN for an empty bin)."""
    cols = len(edges) - 1
    width = (edges[-1] - edges[0]) or 1.0
    out = [[math.nan] * cols for _ in names]
    for ts, values in points:
        c = min(max(int((ts - edges[0]) / width * cols), 0), cols - 1)
        for r, name in enumerate(names):
            v = values.get(name)
            if v is not None and math.isfinite(v) and not v <= out[r][c]:
                out[r][c] = float(v)
    return out
