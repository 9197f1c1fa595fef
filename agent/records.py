"""The records that cross a stage boundary: frozen dataclasses with typed fields.

Detectors (rules, drift, class mix, device health) return :class:`Observation` values, one
per metric they check, breach or not; one periodic evaluation of the monitor is an
:class:`Evaluation`; the alert manager turns observations into :class:`AlertTransition`
records, whose :meth:`AlertTransition.to_dict` is the JSON record of the README (what SQLite,
MQTT and the central receive). :class:`FeatureLayout` names the columns of the per-frame row,
so no module indexes a row by position.

This module imports nothing from the rest of the agent: every stage may use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

__all__ = [
    "FILE_REFERENCE",
    "KINDS",
    "MONITORING_STATES",
    "REFERENCE_STATES",
    "SCHEMA",
    "SEVERITIES",
    "TRANSITIONS",
    "AlertTransition",
    "Evaluation",
    "FeatureLayout",
    "Observation",
    "ReferenceStatus",
    "SAMPLE_REASONS",
    "Sample",
    "Window",
]

KINDS = ("data_drift", "prediction_drift", "camera_fault", "anomaly", "performance",
         "device_health", "monitoring")
SEVERITIES = ("warning", "critical")
TRANSITIONS = ("firing", "repeat", "resolved")
REFERENCE_STATES = ("disabled", "warming_up", "calibrating", "ready", "failed")
#: The heartbeat's ``monitoring.state``: is drift detection running, and if not, why.
MONITORING_STATES = ("active", "warming_up", "calibrating", "degraded", "off")
#: Why a frame was captured: an alert episode, an unsure model, or a normal frame for contrast.
SAMPLE_REASONS = ("alert", "unsure", "normal")
#: Key prefix (+ model sha256) of a baseline file's reference kept in a device's database.
FILE_REFERENCE = "file:"
#: Version of the alert JSON record.
SCHEMA = 1


@dataclass(frozen=True)
class Window:
    """The span of data an observation was made on (``frames`` is 0 for non-frame checks)."""

    start: float
    end: float
    frames: int

    def to_dict(self) -> dict[str, Any]:
        """``{"start": ..., "end": ..., "frames": ...}`` as in the alert record."""
        return {"start": self.start, "end": self.end, "frames": self.frames}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], default_ts: float = 0.0) -> Window:
        """The inverse of :meth:`to_dict`; a missing bound is ``default_ts``."""
        return cls(float(data.get("start", default_ts)), float(data.get("end", default_ts)),
                   int(data.get("frames") or 0))


@dataclass(frozen=True)
class Observation:
    """One detector's verdict on one metric at one evaluation, breach or not.

    ``breach`` starts (or keeps) a pending condition; ``clear`` counts towards resolving a
    firing alert (hysteresis: a value between the two keeps the current state).
    """

    kind: str
    feature: str
    metric: str
    value: float
    threshold: float
    breach: bool
    clear: bool
    summary: str
    window: Window
    severity: str = "warning"
    for_s: float = 0.0
    clear_for_s: float = 0.0
    expected: Mapping[str, Any] = field(default_factory=dict)
    observed: Mapping[str, Any] = field(default_factory=dict)
    #: The reference a drift observation is against: {"kind", "origin", "view"} or None.
    reference: Optional[Mapping[str, Any]] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"alert kind {self.kind!r}: one of {', '.join(KINDS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r}: one of {', '.join(SEVERITIES)}")
        if self.breach and self.clear:
            raise ValueError(f"observation {self.kind}/{self.feature}: breach and clear at once")


@dataclass(frozen=True)
class ReferenceStatus:
    """Where the drift reference stands: disabled, warming up, ready, or a failed warm-up."""

    state: str
    frames: int = 0  # reference frames when ready; warm-up frames collected otherwise
    origin: Optional[str] = None
    created: Optional[float] = None
    target_s: Optional[float] = None  # warm-up length
    message: str = ""  # why a warm-up failed

    def __post_init__(self) -> None:
        if self.state not in REFERENCE_STATES:
            raise ValueError(f"reference state {self.state!r}: one of "
                             f"{', '.join(REFERENCE_STATES)}")


@dataclass(frozen=True)
class Evaluation:
    """The result of one periodic evaluation of the monitor."""

    ts: float
    observations: tuple[Observation, ...]
    drift: Mapping[str, float]  # KS distance per feature of the last drift test
    drift_evaluated: bool  # a drift test ran in this evaluation
    reference: ReferenceStatus


_MODEL_KEYS = ("path", "sha256")


@dataclass(frozen=True)
class AlertTransition:
    """One alert transition (firing, repeat, resolved): the README's alert JSON record.

    ``notify`` is False for a transition stored but not notified (a snoozed alert firing).
    ``acknowledged_by``/``acknowledged_at`` and ``snoozed_by`` say who acted and when (the
    ``--by`` of the command; None when not given); ``snoozed_until`` says until when.
    """

    id: str
    fingerprint: str
    seq: int
    transition: str
    state: str
    ts: float
    starts_at: float
    ends_at: Optional[float]
    device: str
    camera: str
    kind: str
    severity: str
    feature: str
    metric: str
    value: float
    threshold: float
    expected: Mapping[str, Any]
    observed: Mapping[str, Any]
    window: Window
    model: Mapping[str, Optional[str]]
    message: str
    acknowledged: bool
    snoozed_until: Optional[float]
    notify: bool = True
    schema: int = SCHEMA
    acknowledged_by: Optional[str] = None
    acknowledged_at: Optional[float] = None
    snoozed_by: Optional[str] = None
    #: The reference the alert is against: {"kind": "training"|"device", "origin", "view"}.
    reference: Optional[Mapping[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (SQLite ``alerts.payload``, MQTT, central), without ``notify``."""
        return {
            "schema": self.schema, "id": self.id, "fingerprint": self.fingerprint,
            "seq": self.seq, "transition": self.transition, "state": self.state,
            "ts": self.ts, "starts_at": self.starts_at, "ends_at": self.ends_at,
            "device": self.device, "camera": self.camera, "kind": self.kind,
            "severity": self.severity, "feature": self.feature, "metric": self.metric,
            "value": self.value, "threshold": self.threshold,
            "expected": dict(self.expected), "observed": dict(self.observed),
            "window": self.window.to_dict(), "model": dict(self.model),
            "message": self.message, "acknowledged": self.acknowledged,
            "snoozed_until": self.snoozed_until, "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": self.acknowledged_at, "snoozed_by": self.snoozed_by,
            "reference": None if self.reference is None else dict(self.reference),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertTransition:
        """A record read back from SQLite (``notify`` is True: it was stored as such)."""
        ts = float(data["ts"])
        ends = data.get("ends_at")
        snoozed = data.get("snoozed_until")
        model = data.get("model") or {}
        return cls(
            id=str(data["id"]), fingerprint=str(data["fingerprint"]), seq=int(data["seq"]),
            transition=str(data["transition"]), state=str(data["state"]), ts=ts,
            starts_at=float(data.get("starts_at") or ts),
            ends_at=None if ends is None else float(ends),
            device=str(data["device"]), camera=str(data["camera"]), kind=str(data["kind"]),
            severity=str(data["severity"]), feature=str(data["feature"]),
            metric=str(data.get("metric", "")), value=float(data["value"]),
            threshold=float(data["threshold"]), expected=dict(data.get("expected") or {}),
            observed=dict(data.get("observed") or {}),
            window=Window.from_dict(data.get("window") or {}, ts),
            model={k: model.get(k) for k in _MODEL_KEYS}, message=str(data["message"]),
            acknowledged=bool(data.get("acknowledged", False)),
            snoozed_until=None if snoozed is None else float(snoozed),
            schema=int(data.get("schema", SCHEMA)),
            acknowledged_by=_optional_text(data.get("acknowledged_by")),
            acknowledged_at=_optional_float(data.get("acknowledged_at")),
            snoozed_by=_optional_text(data.get("snoozed_by")),
            reference=dict(data["reference"]) if data.get("reference") else None,
        )


def _optional_text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _optional_float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


@dataclass(frozen=True)
class FeatureLayout:
    """The named columns of a per-frame row: image statistics, confidence, then performance.

    >>> layout = FeatureLayout(("brightness",), ("top_score",), ("latency_ms", "frame_interval_ms"))
    >>> layout.names, layout.index("latency_ms"), layout.confidence
    (('brightness', 'top_score', 'latency_ms', 'frame_interval_ms'), 2, slice(1, 2, None))
    """

    image_features: tuple[str, ...]
    confidence_features: tuple[str, ...]
    perf_features: tuple[str, ...]

    def __post_init__(self) -> None:
        names = self.names
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique, got {names!r}")

    @property
    def names(self) -> tuple[str, ...]:
        """Every column name, in row order."""
        return self.image_features + self.confidence_features + self.perf_features

    @property
    def image(self) -> slice:
        """The image statistics' columns."""
        return slice(0, len(self.image_features))

    @property
    def confidence(self) -> slice:
        """The confidence summary's columns."""
        start = len(self.image_features)
        return slice(start, start + len(self.confidence_features))

    @property
    def perf(self) -> slice:
        """The performance columns (latency, frame interval)."""
        start = len(self.image_features) + len(self.confidence_features)
        return slice(start, start + len(self.perf_features))

    def index(self, name: str) -> int:
        """The column of one feature (KeyError naming the valid ones)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown feature {name!r} (valid: {', '.join(self.names)})") from None


@dataclass(frozen=True)
class Sample:
    """One captured frame: a row of the ``samples`` table with its JSON columns decoded.

    ``path`` is relative to the samples folder; ``detections`` are the model's own
    ``{"box": [x0, y0, x1, y1] (0..1), "score": s, "class": c}`` where the decoder yields boxes.
    """

    id: int
    ts: float
    camera: str
    reason: str
    alert_id: Optional[str]
    kind: Optional[str]
    feature: Optional[str]
    path: str
    sha256: str
    bytes: int
    width: int
    height: int
    stats: Mapping[str, Optional[float]] = field(default_factory=dict)
    confidence: Mapping[str, Optional[float]] = field(default_factory=dict)
    detections: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.reason not in SAMPLE_REASONS:
            raise ValueError(f"sample reason {self.reason!r}: one of {', '.join(SAMPLE_REASONS)}")
