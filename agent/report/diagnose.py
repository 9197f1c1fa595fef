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

__all__ = ["DRASTIC_SD", "LIGHT_SD", "SUDDEN_S", "TRANSIENT_S", "Diagnosis", "Episode", "diagnose",
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
    resolution_s: float = 0.0  # the summary windows' length: a step can take one of them
    notes: Tuple[str, ...] = ()  # what anomaly alerts said was anomalous

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


_SCENE_KINDS = ("data_drift", "prediction_drift", "anomaly")


def _joins(alert: AlertTransition, group: Sequence[AlertTransition]) -> bool:
    """Whether ``alert`` belongs to the episode ``group``: it started within MERGE_S of the
    last start, or it is drift or anomaly following a scene change still under way (the
    model's outputs follow the light with a lag: one episode, not a second "model output")."""
    if alert.starts_at <= group[-1].starts_at + MERGE_S:
        return True
    if alert.kind not in _SCENE_KINDS or any(a.kind == "camera_fault" for a in group):
        return False
    still_open = any(a.kind in _SCENE_KINDS and (a.ends_at is None or a.ends_at >= alert.starts_at)
                     for a in group)
    return still_open and alert.starts_at <= group[0].starts_at + TRANSIENT_S


def episodes(alerts: Sequence[AlertTransition], now: float) -> List[Episode]:
    """Group alerts into episodes, oldest first: alerts that started together (each within
    MERGE_S of the previous start), and drift or anomaly during a scene change still open
    (within TRANSIENT_S of its start); an alert still open from an earlier episode does not
    swallow a camera fault (night, then a blurred lens, are two episodes).

    ``ramp_s`` is left None here; :func:`ramp_seconds` on the windows fills it in.
    """
    groups: List[List[AlertTransition]] = []
    for alert in sorted(alerts, key=lambda a: a.starts_at):
        if not groups or not _joins(alert, groups[-1]):
            groups.append([])
        groups[-1].append(alert)
    return [_episode(g) for g in groups]


def _anomalous(alert: AlertTransition) -> str:
    """What an anomaly alert found, from its message (without the reference's provenance)."""
    text = alert.message.split(" [against", 1)[0].strip()
    return text.split(": ", 1)[-1] if ": " in text else text


def _episode(group: Sequence[AlertTransition]) -> Episode:
    shifts: Dict[str, float] = {}
    for alert in group:
        for name, value in _shifts(alert).items():
            if abs(value) > abs(shifts.get(name, 0.0)):
                shifts[name] = value
    open_ = any(a.ends_at is None for a in group)
    kinds = tuple(dict.fromkeys(a.kind for a in group))
    faults = tuple(dict.fromkeys(a.feature for a in group if a.kind == "camera_fault"))
    notes = tuple(dict.fromkeys(_anomalous(a) for a in group if a.kind == "anomaly"))
    return Episode(start=min(a.starts_at for a in group),
                   end=None if open_ else max(float(a.ends_at or a.ts) for a in group),
                   kinds=kinds, shifts=shifts, ramp_s=None, camera_faults=faults,
                   alert_ids=tuple(a.id for a in group), notes=notes)


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
    sudden = max(SUDDEN_S, ep.resolution_s)  # windows this long cannot time a faster change
    onset = "unknown" if ep.ramp_s is None else ("sudden" if ep.ramp_s <= sudden
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


#: A brightness shift of this many robust SDs or more leads the summary: the light changed.
LIGHT_SD = 3.0


def _what(ep: Episode) -> str:
    if ep.camera_faults:
        return "; ".join(_CAMERA_WORDS.get(f, f"camera fault: {f}") for f in ep.camera_faults)
    ranked = sorted(ep.shifts.items(), key=lambda kv: -abs(kv[1]))
    lead = ""
    light = ep.shifts.get("brightness", 0.0)
    if abs(light) >= LIGHT_SD:
        lead = f"the scene got {'brighter' if light > 0 else 'darker'} "
        ranked = [("brightness", light)] + [kv for kv in ranked if kv[0] != "brightness"]
    if not ranked:
        found = "; ".join(ep.notes)
        return found or "alerts of kind " + ", ".join(ep.kinds)
    words = ", ".join(f"{name} {'up' if v > 0 else 'down'} {abs(v):.1f} robust SDs"
                      for name, v in ranked[:4])
    more = f" (+{len(ranked) - 4} more features)" if len(ranked) > 4 else ""
    return f"{lead}({words}{more})" if lead else words + more


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


def _without_capture(action: str) -> str:
    """The advice for a device that keeps no frames ([capture] enabled = false)."""
    if "captured frames" not in action and "collect the frames" not in action:
        return action
    return (action.replace(" (edgewatch samples export)", "")
            .replace("the captured frames", "frames from this camera")
            + " Capture is off on this device: set [capture] enabled = true to keep the frames "
              "alerts fire on, or record them another way.")


def diagnose(ep: Episode, now: float, capture: bool = True) -> Diagnosis:
    """The episode in words (``now`` ends an open episode's span; ``capture``: whether the
    device keeps frames to retrain on)."""
    onset, course, cause, magnitude = _classify(ep, now)
    lasted = (now if ep.end is None else ep.end) - ep.start
    tense = "still open after" if ep.end is None else "lasted"
    lead = "A" if onset == "unknown" else onset.capitalize()
    summary = (f"{lead} {cause}, {course} ({tense} {_span(lasted)}), {magnitude}: "
               f"{_what(ep)}.")
    if onset == "unknown":
        summary += " (Onset unknown: no summary windows around its start.)"
    action = _action(ep, onset, course, cause, magnitude)
    return Diagnosis(onset, course, cause, magnitude, summary,
                     action if capture else _without_capture(action))


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
