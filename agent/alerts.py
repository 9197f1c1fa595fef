"""Alert lifecycle, like Alertmanager's: pending, firing, repeat, resolved.

Detectors (drift, rules, health) hand :class:`Observation` values to an
:class:`AlertManager`, which applies ``for`` durations (persistence), hysteresis
(``clear`` must hold for ``clear_for_s`` before resolving), one fingerprint per kind,
camera and feature, repeat notifications, inhibition of drift while a camera fault is
firing, and the operator's controls: acknowledge, snooze, disable/enable, thresholds.

Every transition becomes one alert record (see README) passed to ``emit``; the service
sends it to SQLite and MQTT. The manager does no I/O and reads no clock: ``now`` is
passed in, so replays with synthetic time behave exactly as live.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional

from .errors import CommandError

log = logging.getLogger(__name__)

KINDS = ("data_drift", "prediction_drift", "camera_fault", "anomaly", "performance",
         "device_health")
SEVERITIES = ("warning", "critical")
INHIBITED_BY_CAMERA_FAULT = ("data_drift", "prediction_drift", "anomaly")
SCHEMA = 1


@dataclass(frozen=True)
class Observation:
    """One detector's verdict on one feature at one evaluation."""

    kind: str
    feature: str
    metric: str
    value: float
    threshold: float
    breach: bool
    clear: bool
    summary: str
    severity: str = "warning"
    for_s: float = 0.0
    clear_for_s: float = 0.0
    expected: Dict[str, Any] = field(default_factory=dict)
    observed: Dict[str, Any] = field(default_factory=dict)
    window: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"alert kind {self.kind!r}: one of {', '.join(KINDS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r}: one of {', '.join(SEVERITIES)}")


def fingerprint(kind: str, camera: str, feature: str) -> str:
    """Stable identity of an alert condition: one per kind, camera and feature."""
    return hashlib.sha1(f"{kind}|{camera}|{feature}".encode()).hexdigest()[:16]


def format_duration(seconds: float) -> str:
    """Human duration: ``45 s``, ``10 min``, ``2.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class _Tracked:
    fp: str
    pending_since: Optional[float] = None
    clear_since: Optional[float] = None
    record: Optional[Dict[str, Any]] = None  # set while firing
    last_notified: float = 0.0
    notified_firing: bool = False


class AlertManager:
    """Tracks conditions over time and emits alert transitions."""

    def __init__(
        self,
        *,
        device: str,
        camera: str,
        model: Dict[str, Any],
        emit: Callable[[Dict[str, Any]], None],
        repeat_interval_s: float = 3600.0,
        persist_control: Optional[Callable[[str, str, Optional[float], Optional[float]], None]] = None,
    ) -> None:
        self.device = device
        self.camera = camera
        self.model = model
        self._emit = emit
        self.repeat_interval_s = repeat_interval_s
        self._persist = persist_control or (lambda kind, target, until, value: None)
        self._tracked: Dict[str, _Tracked] = {}
        self._seq = 0
        self._snoozed: Dict[str, float] = {}
        self._acked: set[str] = set()
        self._disabled: set[str] = set()
        self._thresholds: Dict[str, float] = {}
        # Features known to the detectors; the monitor fills it so controls can be checked.
        self.known_features: frozenset = frozenset()

    # ---- state restored from SQLite -------------------------------------------------
    def restore(self, open_alerts: Iterable[Dict[str, Any]], controls: Iterable[Dict[str, Any]],
                seq: int) -> None:
        """Reload firing alerts, controls and the sequence number after a restart."""
        self._seq = max(self._seq, int(seq))
        for rec in open_alerts:
            t = _Tracked(fp=rec["fingerprint"], pending_since=rec.get("starts_at"), record=dict(rec),
                         last_notified=float(rec.get("ts") or 0.0), notified_firing=True)
            self._tracked[t.fp] = t
        for row in controls:
            kind, target = row["kind"], row["target"]
            if kind == "snooze":
                self._snoozed[target] = float(row["until"])
            elif kind == "ack":
                self._acked.add(target)
            elif kind == "disable":
                self._disabled.add(target)
            elif kind == "threshold":
                self._thresholds[target] = float(row["value"])

    # ---- queries --------------------------------------------------------------------
    @property
    def seq(self) -> int:
        """Sequence number of the last transition emitted."""
        return self._seq

    def open_alerts(self) -> List[Dict[str, Any]]:
        """Records of the alerts firing now."""
        return [dict(t.record) for t in self._tracked.values() if t.record is not None]

    def camera_fault_firing(self) -> bool:
        """True while a critical camera fault is firing (drift alerts are inhibited then).

        A warning-level fault (blur) does not inhibit: the model may still be degraded by
        it, and the operator should hear about the predictions too.
        """
        return any(t.record is not None and t.record["kind"] == "camera_fault"
                   and t.record["severity"] == "critical" for t in self._tracked.values())

    def threshold_override(self, feature: str, metric: str = "") -> Optional[float]:
        """A threshold set at run time for ``feature`` (or ``feature:metric``), if any."""
        return self._thresholds.get(f"{feature}:{metric}", self._thresholds.get(feature))

    def is_disabled(self, kind: str, feature: str) -> bool:
        """True when the kind or the feature is disabled."""
        return kind in self._disabled or feature in self._disabled

    def controls(self) -> Dict[str, Any]:
        """The operator's controls in force (for status and heartbeats)."""
        return {"snoozed": dict(self._snoozed), "acknowledged": sorted(self._acked),
                "disabled": sorted(self._disabled), "thresholds": dict(self._thresholds)}

    # ---- evaluation -----------------------------------------------------------------
    def update(self, observations: Iterable[Observation], now: float) -> List[Dict[str, Any]]:
        """Apply one evaluation's observations; returns the transitions emitted."""
        out: List[Dict[str, Any]] = []
        inhibit = self.camera_fault_firing()
        for obs in observations:
            fp = fingerprint(obs.kind, self.camera, obs.feature)
            if self.is_disabled(obs.kind, obs.feature):
                continue
            t = self._tracked.setdefault(fp, _Tracked(fp=fp))
            if t.record is None:
                if obs.breach and not (inhibit and obs.kind in INHIBITED_BY_CAMERA_FAULT):
                    if t.pending_since is None:
                        t.pending_since = now
                    if now - t.pending_since >= obs.for_s:
                        out.append(self._fire(t, obs, now))
                elif obs.clear or not obs.breach:
                    t.pending_since = None
                if t.record is None and t.pending_since is None:
                    del self._tracked[fp]
                continue
            # firing: update what is observed, resolve after clear_for_s of clear
            t.record.update(value=float(obs.value), observed=obs.observed, window=obs.window)
            if obs.clear:
                t.clear_since = t.clear_since if t.clear_since is not None else now
                if now - t.clear_since >= obs.clear_for_s:
                    out.append(self._resolve(t, now, obs.summary))
                    continue
            else:
                t.clear_since = None
            out.extend(self._maybe_notify(t, now, obs.summary))
        for rec in out:
            self._emit(rec)
        return out

    def tick(self, now: float) -> List[Dict[str, Any]]:
        """Time-driven notifications without new observations (snooze ends, repeats)."""
        out: List[Dict[str, Any]] = []
        for t in list(self._tracked.values()):
            if t.record is not None:
                out.extend(self._maybe_notify(t, now, t.record["message"]))
        for rec in out:
            self._emit(rec)
        return out

    def _snoozed_until(self, rec: Dict[str, Any], now: float) -> Optional[float]:
        for key in (rec["fingerprint"], rec["id"], rec["kind"], rec["feature"]):
            until = self._snoozed.get(key)
            if until is not None and until > now:
                return until
        return None

    def _maybe_notify(self, t: _Tracked, now: float, summary: str) -> List[Dict[str, Any]]:
        rec = t.record
        assert rec is not None
        rec["snoozed_until"] = self._snoozed_until(rec, now)
        if rec["snoozed_until"] is not None:
            return []
        if not t.notified_firing:
            return [self._transition(t, "firing", now)]
        if rec["acknowledged"]:
            return []
        if now - t.last_notified >= self.repeat_interval_s:
            return [self._transition(t, "repeat", now)]
        return []

    def _fire(self, t: _Tracked, obs: Observation, now: float) -> Dict[str, Any]:
        since = t.pending_since if t.pending_since is not None else now
        window = dict(obs.window)
        span = float(window.get("end", now)) - float(window.get("start", since))
        frames = window.get("frames")
        timeframe = f" over {format_duration(max(span, 0.0))}"
        if frames:
            timeframe += f" ({int(frames):,} frames)"
        timeframe += " since " + time.strftime("%H:%M:%S", time.localtime(since))
        t.record = {
            "schema": SCHEMA,
            "id": uuid.uuid4().hex,
            "fingerprint": t.fp,
            "seq": 0,
            "transition": "firing",
            "state": "firing",
            "ts": now,
            "starts_at": since,
            "ends_at": None,
            "device": self.device,
            "camera": self.camera,
            "kind": obs.kind,
            "severity": obs.severity,
            "feature": obs.feature,
            "metric": obs.metric,
            "value": float(obs.value),
            "threshold": float(obs.threshold),
            "expected": obs.expected,
            "observed": obs.observed,
            "window": window,
            "model": {"path": self.model.get("path"), "sha256": self.model.get("sha256")},
            "message": obs.summary + timeframe,
            "acknowledged": t.fp in self._acked,
            "snoozed_until": None,
        }
        t.clear_since = None
        t.notified_firing = False
        notes = self._maybe_notify(t, now, obs.summary)
        if notes:
            return notes[0]
        # snoozed: the alert is tracked and stored, but not notified yet
        return self._transition(t, "firing", now, notify=False)

    def _resolve(self, t: _Tracked, now: float, summary: str) -> Dict[str, Any]:
        rec = t.record
        assert rec is not None
        rec["state"] = "resolved"
        rec["ends_at"] = now
        rec["message"] = f"resolved: {rec['message']} (now: {summary})"
        out = self._transition(t, "resolved", now)
        self._acked.discard(t.fp)
        self._persist("ack", t.fp, None, None)
        del self._tracked[t.fp]
        return out

    def _transition(self, t: _Tracked, kind: str, now: float, notify: bool = True) -> Dict[str, Any]:
        rec = t.record
        assert rec is not None
        self._seq += 1
        rec.update(seq=self._seq, transition=kind, ts=now)
        if notify:
            t.last_notified = now
            t.notified_firing = True
        out = dict(rec)
        out["notify"] = notify
        return out

    # ---- operator controls (the API behind the CLI and MQTT commands) -----------------
    def _find(self, alert: str) -> _Tracked:
        for t in self._tracked.values():
            if t.record is not None and alert in (t.fp, t.record["id"]):
                return t
        raise CommandError(f"no firing alert with id or fingerprint {alert!r} "
                           "(see edgewatch alerts list)")

    def ack(self, alert: str) -> Dict[str, Any]:
        """Acknowledge a firing alert: no repeats until it resolves."""
        t = self._find(alert)
        assert t.record is not None
        self._acked.add(t.fp)
        t.record["acknowledged"] = True
        self._persist("ack", t.fp, None, 1.0)
        return {"acknowledged": t.record["id"], "fingerprint": t.fp}

    def snooze(self, target: str, until: float) -> Dict[str, Any]:
        """Silence notifications for an alert, kind or feature until a time."""
        target = self._control_target(target)
        self._snoozed[target] = float(until)
        self._persist("snooze", target, float(until), None)
        return {"snoozed": target, "until": float(until)}

    def disable(self, target: str, now: float) -> Dict[str, Any]:
        """Disable a kind or a feature; alerts firing for it resolve."""
        self._check_kind_or_feature(target)
        self._disabled.add(target)
        self._persist("disable", target, None, 1.0)
        resolved = []
        for t in list(self._tracked.values()):
            rec = t.record
            if rec is not None and target in (rec["kind"], rec["feature"]):
                self._emit(self._resolve(t, now, "disabled by operator"))
                resolved.append(rec["id"])
            elif rec is None and target in t.fp:
                del self._tracked[t.fp]
        return {"disabled": target, "resolved": resolved}

    def enable(self, target: str) -> Dict[str, Any]:
        """Enable a kind or a feature again."""
        if target not in self._disabled:
            raise CommandError(f"{target!r} is not disabled (disabled: {sorted(self._disabled)})")
        self._disabled.discard(target)
        self._persist("disable", target, None, None)
        return {"enabled": target}

    def set_threshold(self, feature: str, value: float, metric: str = "") -> Dict[str, Any]:
        """Override a feature's threshold at run time (persisted)."""
        if not value > 0:
            raise CommandError(f"threshold must be positive, got {value!r}")
        self._check_kind_or_feature(feature)
        key = f"{feature}:{metric}" if metric else feature
        self._thresholds[key] = float(value)
        self._persist("threshold", key, None, float(value))
        return {"feature": feature, "metric": metric or None, "threshold": float(value)}

    def _check_kind_or_feature(self, target: str) -> None:
        if target in KINDS or not self.known_features or target in self.known_features:
            return
        raise CommandError(f"unknown kind or feature {target!r} (kinds: {', '.join(KINDS)}; "
                           f"features: {', '.join(sorted(self.known_features))})")

    def _control_target(self, target: str) -> str:
        for t in self._tracked.values():
            if t.record is not None and target == t.record["id"]:
                return t.fp
        if any(target == t.fp for t in self._tracked.values()):
            return target
        self._check_kind_or_feature(target)
        return target
