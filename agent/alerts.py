"""Alert lifecycle, like Alertmanager's: pending, firing, repeat, resolved.

Detectors (drift, rules, health) hand :class:`~agent.records.Observation` values, one per
metric checked, breach or not, to an :class:`AlertManager`, which applies ``for`` durations
(persistence), hysteresis (``clear`` must hold for ``clear_for_s`` before resolving), one
fingerprint per kind, camera and feature, repeat notifications, inhibition of drift while a
camera fault is firing, and the operator's controls: acknowledge, snooze, disable/enable,
thresholds.

An alert has one id (a uuid4 hex); every view shows its first 12 characters
(:data:`SHORT_ID`), and every control takes the id, that prefix or the fingerprint. A
control records who asked (``by``) and, when it changes a firing alert (ack, snooze, a new
threshold), hands the alert's new record to ``update`` so the service republishes its
retained state: the device, the broker and the central then show the same thing.
Acknowledging or snoozing twice is the same as once.

Every transition becomes one :class:`~agent.records.AlertTransition` passed to ``emit``; the
service stores ``to_dict()`` of it in SQLite and sends it over MQTT. The manager does no I/O
and reads no clock: ``now`` is passed in, so replays with synthetic time behave exactly as live.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from .errors import CommandError
from .records import KINDS, SCHEMA, SEVERITIES, AlertTransition, Observation

__all__ = ["INHIBITED_BY_CAMERA_FAULT", "KINDS", "SCHEMA", "SEVERITIES", "SHORT_ID",
           "AlertManager", "AlertTransition", "Observation", "fingerprint", "short_id"]

log = logging.getLogger(__name__)

INHIBITED_BY_CAMERA_FAULT = ("data_drift", "prediction_drift", "anomaly")

PersistControl = Callable[[str, str, Optional[float], Optional[float]], None]
_Key = Tuple[str, str]  # (kind, feature): one tracked condition per manager (one camera)
SHORT_ID = 12  # characters of an alert id shown by every view and accepted by every control
_MIN_PREFIX = 6
_ID_LIKE = re.compile(r"^[0-9a-f]{6,40}$")


def short_id(alert_id: str) -> str:
    """The id as every view shows it (its first :data:`SHORT_ID` characters)."""
    return alert_id[:SHORT_ID]


def fingerprint(kind: str, camera: str, feature: str) -> str:
    """Stable identity of an alert condition: one per kind, camera and feature."""
    return hashlib.sha1(f"{kind}|{camera}|{feature}".encode()).hexdigest()[:16]


def _format_duration(seconds: float) -> str:
    """Human duration: ``45 s``, ``10 min``, ``2.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class _Firing:
    """A firing alert: its current record and the timers of its notifications."""

    record: AlertTransition
    clear_since: Optional[float] = None
    last_notified: float = 0.0
    notified_firing: bool = False


def _no_persist(kind: str, target: str, until: Optional[float], value: Optional[float]) -> None:
    """Controls kept in memory only (tests, benchmarks)."""


class AlertManager:
    """Tracks conditions over time and emits alert transitions."""

    def __init__(
        self,
        *,
        device: str,
        camera: str,
        model: Mapping[str, Any],
        emit: Callable[[AlertTransition], None],
        repeat_interval_s: float = 3600.0,
        persist_control: Optional[PersistControl] = None,
        update: Optional[Callable[[AlertTransition], None]] = None,
    ) -> None:
        self.device = device
        self.camera = camera
        self.model: Dict[str, Optional[str]] = {k: model.get(k) for k in ("path", "sha256")}
        self._emit = emit
        self.repeat_interval_s = repeat_interval_s
        self._persist: PersistControl = persist_control or _no_persist
        self._update = update
        self._pending: Dict[_Key, float] = {}  # condition -> breaching since
        self._firing: Dict[_Key, _Firing] = {}
        self._seq = 0
        self._snoozed: Dict[str, float] = {}
        self._snoozed_by: Dict[str, Optional[str]] = {}
        self._acked: set[str] = set()
        self._disabled: set[str] = set()
        self._thresholds: Dict[str, float] = {}
        self._known: frozenset[str] = frozenset()

    def declare_features(self, features: Iterable[str]) -> None:
        """The features the detectors report, so that controls naming others are refused."""
        self._known = frozenset(features)

    @property
    def known_features(self) -> frozenset[str]:
        """Features a control may name (empty: any name is accepted)."""
        return self._known

    # ---- state restored from SQLite -------------------------------------------------
    def restore(self, open_alerts: Iterable[Mapping[str, Any]],
                controls: Iterable[Mapping[str, Any]], seq: int) -> None:
        """Reload firing alerts, controls and the sequence number after a restart."""
        self._seq = max(self._seq, int(seq))
        for data in open_alerts:
            rec = AlertTransition.from_dict(data)
            self._firing[(rec.kind, rec.feature)] = _Firing(
                record=rec, last_notified=rec.ts, notified_firing=True)
            if rec.snoozed_by is not None:
                self._snoozed_by[rec.fingerprint] = rec.snoozed_by
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

    def open_alerts(self) -> List[AlertTransition]:
        """Records of the alerts firing now."""
        return [f.record for f in self._firing.values()]

    def pending(self) -> Dict[Tuple[str, str], float]:
        """Conditions breaching but not yet firing: (kind, feature) -> since."""
        return dict(self._pending)

    def camera_fault_firing(self) -> bool:
        """True while a critical camera fault is firing (drift alerts are inhibited then).

        A warning-level fault (blur) does not inhibit: the model may still be degraded by
        it, and the operator should hear about the predictions too.
        """
        return any(f.record.kind == "camera_fault" and f.record.severity == "critical"
                   for f in self._firing.values())

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
    def update(self, observations: Iterable[Observation], now: float) -> List[AlertTransition]:
        """Apply one evaluation's observations; returns the transitions emitted."""
        out: List[AlertTransition] = []
        inhibit = self.camera_fault_firing()
        for obs in observations:
            if self.is_disabled(obs.kind, obs.feature):
                continue
            key = (obs.kind, obs.feature)
            firing = self._firing.get(key)
            if firing is not None:
                out.extend(self._update_firing(key, firing, obs, now))
            elif obs.breach:
                if inhibit and obs.kind in INHIBITED_BY_CAMERA_FAULT:
                    continue  # neither starts nor resets the wait
                since = self._pending.setdefault(key, now)
                if now - since >= obs.for_s:
                    del self._pending[key]
                    out.append(self._fire(key, obs, since, now))
            else:
                self._pending.pop(key, None)
        for rec in out:
            self._emit(rec)
        return out

    def _update_firing(self, key: _Key, firing: _Firing, obs: Observation,
                       now: float) -> List[AlertTransition]:
        """Update what is observed; resolve after ``clear_for_s`` of clear."""
        firing.record = dataclasses.replace(firing.record, value=float(obs.value),
                                            observed=obs.observed, window=obs.window)
        if obs.clear:
            if firing.clear_since is None:
                firing.clear_since = now
            if now - firing.clear_since >= obs.clear_for_s:
                return [self._resolve(key, now, obs.summary)]
        else:
            firing.clear_since = None
        return self._maybe_notify(firing, now)

    def tick(self, now: float) -> List[AlertTransition]:
        """Time-driven notifications without new observations (snooze ends, repeats)."""
        out: List[AlertTransition] = []
        for firing in list(self._firing.values()):
            out.extend(self._maybe_notify(firing, now))
        for rec in out:
            self._emit(rec)
        return out

    def _snoozed_until(self, rec: AlertTransition,
                       now: float) -> Tuple[Optional[float], Optional[str]]:
        for key in (rec.fingerprint, rec.id, rec.kind, rec.feature):
            until = self._snoozed.get(key)
            if until is not None and until > now:
                return until, self._snoozed_by.get(key)
        return None, None

    def _maybe_notify(self, firing: _Firing, now: float) -> List[AlertTransition]:
        rec = firing.record
        until, by = self._snoozed_until(rec, now)
        if until != rec.snoozed_until:
            firing.record = rec = dataclasses.replace(rec, snoozed_until=until,
                                                      snoozed_by=by if until else None)
        if until is not None:
            return []
        if not firing.notified_firing:
            return [self._transition(firing, "firing", now)]
        if rec.acknowledged:
            return []
        if now - firing.last_notified >= self.repeat_interval_s:
            return [self._transition(firing, "repeat", now)]
        return []

    def _fire(self, key: _Key, obs: Observation, since: float, now: float) -> AlertTransition:
        window = obs.window
        span = window.end - window.start
        # Set apart from the summary (which may end in advice): "... (over 30 s, 900 frames,
        # since 14:02:05)", or "(for 21 s, since ...)" for a state without frames.
        duration = _format_duration(max(span, 0.0))
        timeframe = (f" (over {duration}, {window.frames:,} frames" if window.frames
                     else f" (for {duration}")
        timeframe += ", since " + time.strftime("%H:%M:%S", time.localtime(since)) + ")"
        fp = fingerprint(obs.kind, self.camera, obs.feature)
        record = AlertTransition(
            id=uuid.uuid4().hex, fingerprint=fp, seq=0, transition="firing", state="firing",
            ts=now, starts_at=since, ends_at=None, device=self.device, camera=self.camera,
            kind=obs.kind, severity=obs.severity, feature=obs.feature, metric=obs.metric,
            value=float(obs.value), threshold=float(obs.threshold), expected=obs.expected,
            observed=obs.observed, window=window, model=dict(self.model),
            message=obs.summary + timeframe, acknowledged=fp in self._acked, snoozed_until=None,
            reference=obs.reference)
        firing = self._firing[key] = _Firing(record=record)
        notes = self._maybe_notify(firing, now)
        if notes:
            return notes[0]
        # snoozed: the alert is tracked and stored, but not notified yet
        return self._transition(firing, "firing", now, notify=False)

    def _resolve(self, key: _Key, now: float, summary: str) -> AlertTransition:
        firing = self._firing.pop(key)
        rec = firing.record
        firing.record = dataclasses.replace(
            rec, state="resolved", ends_at=now, message=f"resolved: {summary} (was: {rec.message})")
        self._acked.discard(rec.fingerprint)
        self._persist("ack", rec.fingerprint, None, None)
        return self._transition(firing, "resolved", now)

    def _transition(self, firing: _Firing, kind: str, now: float,
                    notify: bool = True) -> AlertTransition:
        self._seq += 1
        firing.record = dataclasses.replace(firing.record, seq=self._seq, transition=kind, ts=now,
                                            notify=notify)
        if notify:
            firing.last_notified = now
            firing.notified_firing = True
        return firing.record

    # ---- operator controls (the API behind the CLI and MQTT commands) -----------------
    def _find(self, alert: str) -> Tuple[_Key, _Firing]:
        found = self._match(alert)
        if found is None:
            raise CommandError(f"no firing alert with id or fingerprint {alert!r} on "
                               f"{self.device} (see edgewatch alerts list, or edgewatch fleet "
                               "alerts for which device has it)")
        return found

    def _match(self, alert: str) -> Optional[Tuple[_Key, _Firing]]:
        """The firing alert with this id, fingerprint or unique id prefix (>= 6 chars)."""
        for key, firing in self._firing.items():
            if alert in (firing.record.fingerprint, firing.record.id):
                return key, firing
        hits = [(k, f) for k, f in self._firing.items()
                if len(alert) >= _MIN_PREFIX and f.record.id.startswith(alert)]
        if len(hits) > 1:
            raise CommandError(f"alert id prefix {alert!r} matches {len(hits)} alerts "
                               "(give more characters)")
        return hits[0] if hits else None

    def _changed(self, firing: _Firing) -> None:
        """Hand a firing alert's new record to ``update`` (its retained state), if notified."""
        if self._update is not None and firing.notified_firing:
            self._update(firing.record)

    def ack(self, alert: str, by: Optional[str] = None,
            now: Optional[float] = None) -> Dict[str, Any]:
        """Acknowledge a firing alert: no repeats until it resolves (again: no change)."""
        _, firing = self._find(alert)
        rec = firing.record
        if not rec.acknowledged:
            self._acked.add(rec.fingerprint)
            firing.record = rec = dataclasses.replace(
                rec, acknowledged=True, acknowledged_by=by,
                acknowledged_at=time.time() if now is None else now)
            self._persist("ack", rec.fingerprint, None, 1.0)
            self._changed(firing)
        return {"acknowledged": short_id(rec.id), "fingerprint": rec.fingerprint,
                "by": rec.acknowledged_by, "at": rec.acknowledged_at}

    def snooze(self, target: str, until: float, by: Optional[str] = None,
               now: Optional[float] = None) -> Dict[str, Any]:
        """Silence notifications for an alert, kind or feature until a time."""
        target = self._control_target(target)
        self._snoozed[target] = float(until)
        self._snoozed_by[target] = by
        self._persist("snooze", target, float(until), None)
        stamp = time.time() if now is None else now
        for firing in self._firing.values():
            rec = firing.record
            if target in (rec.fingerprint, rec.kind, rec.feature):
                firing.record = dataclasses.replace(rec, snoozed_until=float(until),
                                                    snoozed_by=by)
                if until > stamp:
                    self._changed(firing)
        return {"snoozed": target, "until": float(until), "by": by}

    def disable(self, target: str, now: float, by: Optional[str] = None) -> Dict[str, Any]:
        """Disable a kind or a feature: alerts firing for it resolve, pending ones are dropped."""
        self._check_kind_or_feature(target)
        self._disabled.add(target)
        self._persist("disable", target, None, 1.0)
        resolved = []
        for key in [k for k in self._firing if target in k]:
            rec = self._resolve(key, now, f"disabled by {by or 'operator'}")
            self._emit(rec)
            resolved.append(short_id(rec.id))
        for key in [k for k in self._pending if target in k]:
            del self._pending[key]
        return {"disabled": target, "resolved": resolved, "by": by}

    def enable(self, target: str, by: Optional[str] = None) -> Dict[str, Any]:
        """Enable a kind or a feature again (a condition waits its full ``for`` again)."""
        if target not in self._disabled:
            raise CommandError(f"{target!r} is not disabled (disabled: "
                               f"{', '.join(sorted(self._disabled)) or 'none'})")
        self._disabled.discard(target)
        self._persist("disable", target, None, None)
        return {"enabled": target, "by": by}

    def set_threshold(self, feature: str, value: float, metric: str = "",
                      by: Optional[str] = None) -> Dict[str, Any]:
        """Override a feature's threshold at run time (persisted; firing alerts show it)."""
        if not value > 0:
            raise CommandError(f"threshold must be positive, got {value!r}")
        self._check_kind_or_feature(feature)
        key = f"{feature}:{metric}" if metric else feature
        self._thresholds[key] = float(value)
        self._persist("threshold", key, None, float(value))
        for firing in self._firing.values():
            rec = firing.record
            if rec.feature == feature and (not metric or rec.metric == metric):
                firing.record = dataclasses.replace(rec, threshold=float(value))
                self._changed(firing)
        return {"feature": feature, "metric": metric or None, "threshold": float(value),
                "by": by}

    def _check_kind_or_feature(self, target: str) -> None:
        if target in KINDS or not self._known or target in self._known:
            return
        close = difflib.get_close_matches(target, sorted(self._known) + list(KINDS), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise CommandError(f"unknown kind or feature {target!r} ({hint}kinds: "
                           f"{', '.join(KINDS)}; features: see edgewatch alerts list)")

    def _control_target(self, target: str) -> str:
        found = self._match(target)
        if found is not None:
            return found[1].record.fingerprint
        if target in KINDS or target in self._known:
            return target
        if _ID_LIKE.match(target):
            raise CommandError(f"no firing alert with id {target!r} on {self.device} (is it "
                               "another device's? see edgewatch fleet alerts)")
        self._check_kind_or_feature(target)
        return target
