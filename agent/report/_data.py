"""What the report shows, gathered from the database once: series, alerts, episodes, samples."""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..card import CardFacts, card_facts, render_card
from ..confidence import CONFIDENCE_FEATURES
from ..config import Config
from ..history import Event, Gap, HeartbeatRow, History, SummaryWindow, monitoring_gaps
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
    """A captured frame ready to show: its sample and its JPEG as a data: URI ("" when
    missing or altered: ``problem`` says which)."""

    sample: Sample
    uri: str
    problem: str = ""  # why there is no image: "file missing", "file altered ..."


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
    stopped: Optional[float] = None  # the agent's last stop, when nothing was recorded after
    capture: bool = True  # whether the device keeps frames ([capture] enabled)


def _capturing(config: Config, beats: Sequence[HeartbeatRow]) -> bool:
    """Whether the device captures frames: its last heartbeat says (a capture queue or none),
    else the config's [capture] enabled."""
    if beats and isinstance(beats[-1].payload.get("queues"), dict):
        return beats[-1].payload["queues"].get("capture") is not None
    return bool(config.capture.enabled)


def _stopped(events: Sequence[Event], beats: Sequence[HeartbeatRow],
             windows: Sequence[SummaryWindow]) -> Optional[float]:
    """When the agent stopped, if its last start/stop event is a stop and no heartbeat or
    window came after it (the period ends with the agent not running)."""
    marks = [e for e in events if e.kind in ("start", "stop")]
    if not marks or marks[-1].kind != "stop":
        return None
    later = [b.ts for b in beats] + [w.ts_end for w in windows]
    return marks[-1].ts if all(t <= marks[-1].ts for t in later) else None


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


def _episode_shifts(ep: Episode, windows: Sequence[SummaryWindow], facts: CardFacts,
                    end: float) -> Dict[str, float]:
    """The alerts' shifts, each widened to the largest the windows show over the whole
    episode (an alert reports the first drift test; the light may go on fading)."""
    ref = facts.reference
    shifts = dict(ep.shifts)
    if ref is None:
        return shifts
    inside = [w for w in windows if w.ts_end > ep.start and w.ts_start <= (ep.end or end)]
    for name in ref.names:
        scale = float(ref.scale[ref.index(name)])
        means = [w.summary.get(name, {}).get("mean") for w in inside]
        moved = [(float(m) - float(ref.median[ref.index(name)])) / scale for m in means
                 if m is not None and math.isfinite(m) and scale > 0]
        widest = max(moved, key=abs, default=0.0)
        if abs(widest) > abs(shifts.get(name, 0.0)) and (name in shifts or abs(widest) >= 3):
            shifts[name] = widest
    return shifts


def _with_ramp(ep: Episode, windows: Sequence[SummaryWindow], facts: CardFacts,
               end: float) -> Episode:
    """The episode with its size over its whole span and ``ramp_s``: the median over its top
    features of how long each took to reach its new level, less the one window a step can
    straddle (``resolution_s``: a change within about a window cannot be timed closer)."""
    ep = replace(ep, shifts=_episode_shifts(ep, windows, facts, end))
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
                ramps.append(max(0.0, ramp - window_s))
    if not ramps:
        return replace(ep, resolution_s=window_s)
    return replace(ep, ramp_s=sorted(ramps)[len(ramps) // 2], resolution_s=window_s)


def _load(file: Path, sample: Sample) -> Thumb:
    """The thumbnail of a sample: its JPEG as a data: URI, none when the file is missing or
    altered since capture (its sha256 differs: not the frame the sample describes; the
    export refuses it too)."""
    if not file.is_file():
        return Thumb(sample, "", "file missing")
    data = file.read_bytes()
    if sample.sha256 and hashlib.sha256(data).hexdigest() != sample.sha256:
        return Thumb(sample, "", "file altered since capture (sha256 differs), not shown")
    return Thumb(sample, "data:image/jpeg;base64," + base64.b64encode(data).decode())


def _thumbs(db_path: str, config: Config, span: Tuple[float, float]) -> Dict[str, List[Thumb]]:
    folder = samples_dir(config) if config.store.path == db_path else samples_dir(db_path)
    kept: Dict[str, List[Thumb]] = {}
    for sample in read_samples(db_path, since=span[0], until=span[1]):
        kept.setdefault(sample.reason, []).append(Thumb(sample, ""))
    for reason, thumbs in kept.items():
        shown = []
        step = max(1.0, len(thumbs) / MAX_THUMBS)
        for t in (thumbs[int(i * step)] for i in range(min(len(thumbs), MAX_THUMBS))):
            shown.append(_load(folder / t.sample.path, t.sample))
        kept[reason] = shown
    return kept


def _period(history: History, db_path: str, since: Optional[float], until: Optional[float],
            now: float) -> Tuple[float, float]:
    """From the first to the last thing recorded within [since, until] (windows, alerts,
    events, heartbeats, samples): an alert or a stop after the last window still counts."""
    first, last = history.span(since, until)
    taken = [s.ts for s in read_samples(db_path, since=since, until=until)]
    starts = [t for t in (first, min(taken, default=None)) if t is not None]
    ends = [t for t in (last, max(taken, default=None)) if t is not None]
    t0 = min(starts) if starts else (since if since is not None else now)
    t1 = max(ends) if ends else (until if until is not None else now)
    return t0, max(t0, t1)


def gather(config: Config, db_path: str, since: Optional[float], until: Optional[float],
           now: float) -> ReportData:
    """Read the database (read-only) and compute what the report shows."""
    facts = card_facts(config, db_path)
    with History(db_path) as history:
        t0, t1 = _period(history, db_path, since, until, now)
        windows = history.windows(t0, t1)
        alerts = history.alerts(t0, t1)
        beats = history.heartbeats(t0, t1)
        events = history.events(t0, t1)
        gaps = monitoring_gaps(beats, events, t1, windows)
    end = t1  # an open episode lasts up to the last thing recorded (a replay's clock is its own)
    eps = [_with_ramp(ep, windows, facts, end) for ep in episodes(alerts, end)]
    capture = _capturing(config, beats)
    present = {name for w in windows for name in w.summary}
    features = tuple(f for f in IMAGE_FEATURES + CONFIDENCE_FEATURES if f in present)
    return ReportData(span=(t0, t1), facts=facts, card=render_card(facts), windows=windows,
                      alerts=alerts, heartbeats=beats, gaps=gaps,
                      episodes=[(ep, diagnose(ep, end, capture)) for ep in eps],
                      thumbs=_thumbs(db_path, config, (t0, t1)), features=features,
                      stopped=_stopped(events, beats, windows), capture=capture)


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
