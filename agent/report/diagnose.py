"""A diagnosis per episode, in words: what changed, how, and what to do about it.

Pure functions over what the agent measured (alerts and summary windows); no I/O, no clock.
An episode is a run of overlapping alerts. Its diagnosis answers the operator's questions
with the guide's criteria: retrain when performance drops or data drifts; when data changes
gradually, update the model incrementally; when it changed drastically, retrain fully; when
the camera is at fault, fix the camera; when the new normal is fine, rebaseline.

>>> ep = Episode(start=0.0, end=None, kinds=("data_drift",), shifts={"brightness": -30.0},
...              ramp_s=20.0, camera_faults=())
>>> d = diagnose(ep, now=3600.0)
>>> d.onset, d.course, d.cause, d.magnitude
('sudden', 'persistent', 'scene change', 'drastic')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..records import AlertTransition

__all__ = ["DRASTIC_SD", "SUDDEN_S", "TRANSIENT_S", "Diagnosis", "Episode", "diagnose",
           "episodes", "ramp_seconds"]

#: A change that reached its level within this many seconds (beyond the two summary windows a
#: step can straddle) is sudden; slower is gradual.
SUDDEN_S = 60.0
#: An episode over within this many seconds is transient; longer (or still open) persistent.
TRANSIENT_S = 600.0
#: A shift of this many robust standard deviations or more is drastic.
DRASTIC_SD = 6.0
#: Alerts that start less than this apart belong to one episode.
MERGE_S = 60.0

_CAMERA_WORDS = {"blur": "the image is blurred (dirty or fogged lens, lost focus)",
                 "black": "the image is black (covered lens, dead sensor, no light)",
                 "saturated": "the image is saturated (glare, exposure stuck)",
                 "frozen": "the image is frozen (the camera repeats one frame)",
                 "stall": "frames stopped arriving (cable, driver or stream)"}


@dataclass(frozen=True)
class Episode:
    """Overlapping alerts seen as one event, with how far each feature moved."""

    start: float
    end: Optional[float]  # None: still open
    kinds: Tuple[str, ...]
    shifts: Mapping[str, float]  # feature -> signed shift in robust SDs from the reference
    ramp_s: Optional[float]  # how long the change took to reach its level (None: unknown)
    camera_faults: Tuple[str, ...]  # camera_fault alert features: blur, black, frozen, ...
    alert_ids: Tuple[str, ...] = ()

    def top_features(self, n: int = 3) -> List[str]:
        """The ``n`` features that moved most."""
        return sorted(self.shifts, key=lambda f: -abs(self.shifts[f]))[:n]


@dataclass(frozen=True)
class Diagnosis:
    """The episode in words: onset, course, cause, magnitude, summary and what to do."""

    onset: str  # sudden | gradual | unknown
    course: str  # transient | persistent
    cause: str  # camera fault | scene change | model output | device
    magnitude: str  # drastic | moderate
    summary: str
    action: str


def _shifts(alert: AlertTransition) -> Dict[str, float]:
    """Signed robust-SD shift per feature a drift or anomaly alert names."""
    features = alert.observed.get("features")
    out: Dict[str, float] = {}
    if isinstance(features, Mapping):
        for name, obs in features.items():
            if not isinstance(obs, Mapping) or not isinstance(obs.get("effect"), (int, float)):
                continue
            ref = alert.expected.get(name)
            sign = 1.0
            if isinstance(ref, Mapping) and isinstance(obs.get("mean"), (int, float)):
                sign = 1.0 if float(obs["mean"]) >= float(ref.get("p50", ref.get("mean", 0))) \
                    else -1.0
            out[str(name)] = sign * abs(float(obs["effect"]))
    return out


def episodes(alerts: Sequence[AlertTransition], now: float) -> List[Episode]:
    """Group alerts that started together (each within MERGE_S of the previous start) into
    episodes, oldest first: an alert still open from an earlier episode does not swallow a
    new one (night, then a blurred lens, are two episodes).

    ``ramp_s`` is left None here; :func:`ramp_seconds` on the windows fills it in.
    """
    groups: List[List[AlertTransition]] = []
    for alert in sorted(alerts, key=lambda a: a.starts_at):
        if not groups or alert.starts_at > groups[-1][-1].starts_at + MERGE_S:
            groups.append([])
        groups[-1].append(alert)
    return [_episode(g) for g in groups]


def _episode(group: Sequence[AlertTransition]) -> Episode:
    shifts: Dict[str, float] = {}
    for alert in group:
        for name, value in _shifts(alert).items():
            if abs(value) > abs(shifts.get(name, 0.0)):
                shifts[name] = value
    open_ = any(a.ends_at is None for a in group)
    kinds = tuple(dict.fromkeys(a.kind for a in group))
    faults = tuple(dict.fromkeys(a.feature for a in group if a.kind == "camera_fault"))
    return Episode(start=min(a.starts_at for a in group),
                   end=None if open_ else max(float(a.ends_at or a.ts) for a in group),
                   kinds=kinds, shifts=shifts, ramp_s=None, camera_faults=faults,
                   alert_ids=tuple(a.id for a in group))


def ramp_seconds(times: Sequence[float], values: Sequence[float], band: Tuple[float, float],
                 start: float, horizon_s: float = 600.0) -> Optional[float]:
    """Seconds the series took to go from its last point inside ``band`` before ``start`` to
    90% of the level it settled at (the median excursion of the last third of the points up
    to ``start + horizon_s`` or the first missing value, a hole in the data); None when the
    series does not show it.

    >>> ramp_seconds([0, 60, 120, 180, 240], [10, 10, 20, 30, 40], (9, 11), 150)
    180.0
    >>> ramp_seconds([0, 60, 120, 180], [10, 40, 45, 40], (9, 11), 60)
    60.0
    """
    lo, hi = band
    inside = [t for t, v in zip(times, values) if t <= start and lo <= v <= hi]
    if not inside:
        return None
    t0 = inside[-1]
    after: List[Tuple[float, float]] = []
    centre = (lo + hi) / 2.0
    for t, v in zip(times, values):
        if t <= t0:
            continue
        if t > start + horizon_s or not math.isfinite(v):
            break
        after.append((t, abs(v - centre)))
    if not after:
        return None
    tail = sorted(e for _, e in after[-max(1, len(after) // 3):])
    level = tail[len(tail) // 2]
    reached = next(t for t, e in after if e >= 0.9 * level)
    return float(reached - t0)


def _classify(ep: Episode, now: float) -> Tuple[str, str, str, str]:
    onset = "unknown" if ep.ramp_s is None else ("sudden" if ep.ramp_s <= SUDDEN_S
                                                 else "gradual")
    lasted = (now if ep.end is None else ep.end) - ep.start
    course = "transient" if ep.end is not None and lasted < TRANSIENT_S else "persistent"
    if ep.camera_faults:
        cause = "camera fault"
    elif "data_drift" in ep.kinds or "anomaly" in ep.kinds:
        cause = "scene change"
    elif "prediction_drift" in ep.kinds:
        cause = "model output"
    else:
        cause = "device"
    big = max((abs(v) for v in ep.shifts.values()), default=0.0)
    magnitude = "drastic" if big >= DRASTIC_SD else "moderate"
    return onset, course, cause, magnitude


def _what(ep: Episode) -> str:
    if ep.camera_faults:
        return "; ".join(_CAMERA_WORDS.get(f, f"camera fault: {f}") for f in ep.camera_faults)
    ranked = sorted(ep.shifts.items(), key=lambda kv: -abs(kv[1]))[:4]
    if not ranked:
        return "alerts of kind " + ", ".join(ep.kinds)
    return ", ".join(f"{name} {'up' if v > 0 else 'down'} {abs(v):.1f} robust SDs"
                     for name, v in ranked) + (f" (+{len(ep.shifts) - 4} more features)"
                                               if len(ep.shifts) > 4 else "")


def _action(ep: Episode, onset: str, course: str, cause: str, magnitude: str) -> str:
    if cause == "camera fault":
        return ("Fix the camera: clean the lens, check focus, mounting, light and cable. "
                "The model needs no retraining for this.")
    if cause == "device":
        return "Check the device: CPU load, temperature, free disk and the camera's frame rate."
    if course == "transient":
        return ("No action needed: the scene went back to normal. If it recurs, collect the "
                "captured frames (edgewatch samples export) and add them to the training data.")
    predictions = "prediction_drift" in ep.kinds
    if onset == "gradual":
        return ("The data changed gradually: update the model incrementally, fine-tuning it on "
                "the captured frames once labelled (edgewatch samples export).")
    if magnitude == "drastic":
        return ("The data changed drastically: collect the captured frames, label them and "
                "retrain the model fully. If the model's predictions on them are still right, "
                "the new normal is fine: rebaseline instead (edgewatch baseline --rebuild).")
    return ("If the model's predictions on the captured frames are right, the new normal is "
            "fine: rebaseline (edgewatch baseline --rebuild). "
            + ("The model's outputs moved too: check them before deciding. " if predictions
               else "") + "Otherwise collect the frames and retrain.")


def diagnose(ep: Episode, now: float) -> Diagnosis:
    """The episode in words (``now`` ends an open episode's span)."""
    onset, course, cause, magnitude = _classify(ep, now)
    lasted = (now if ep.end is None else ep.end) - ep.start
    tense = "still open after" if ep.end is None else "lasted"
    lead = "A" if onset == "unknown" else onset.capitalize()
    summary = (f"{lead} {cause}, {course} ({tense} {_span(lasted)}), {magnitude}: "
               f"{_what(ep)}.")
    if onset == "unknown":
        summary += " (Onset unknown: no summary windows around its start.)"
    return Diagnosis(onset, course, cause, magnitude, summary,
                     _action(ep, onset, course, cause, magnitude))


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
