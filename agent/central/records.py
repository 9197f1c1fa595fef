"""What the central accepts from a device: typed, bounded records, or a counted refusal.

Any device may publish on its own topics, so every payload is hostile until proven
otherwise. Before parsing, a payload's size and JSON nesting depth are bounded; after
parsing, each field the central keeps is checked for type, range and length, and becomes a
field of a frozen dataclass (:class:`Heartbeat`, :class:`AlertTransition`,
:class:`CommandResult`). Everything else raises :class:`BadMessage`, whose ``reason`` is a
short key the central counts (``Central.status()["bad"]``) before skipping the message. No
other exception escapes :func:`parse`: a writer thread fed only parsed records cannot be
killed by a payload.

The device is the topic's: a payload naming another device is refused (``device_mismatch``),
so a device can only ever write its own rows.

>>> parse("edgewatch/v1", "edgewatch/v1/cam-a/heartbeat", b'{"seq": 1e400}')
Traceback (most recent call last):
...
agent.central.records.BadMessage: bad_field: seq must be an integer, got float
>>> parse("edgewatch/v1", "edgewatch/v1/cam-a/status", b"online")
Status(device='cam-a', online=True)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Union

__all__ = ["BadMessage", "REASONS", "Limits", "DEFAULT_LIMITS", "Status", "Heartbeat",
           "AlertTransition", "ClearedState", "CommandResult", "CommandSent", "Record", "parse", "load_json",
           "heartbeat_fps"]

REASONS = ("bad_topic", "too_large", "too_deep", "not_json", "not_object", "bad_field",
           "device_mismatch", "bad_status", "bad_schema")
#: Payload schema versions this central reads. Heartbeat 2 added mqtt.refused and
#: mqtt.last_refusal, 3 camera.fps, camera.dropped, drift_scores and the flat ``summary``;
#: the central keeps reading the older ones while devices upgrade (central first).
HEARTBEAT_SCHEMAS = (1, 2, 3)
ALERT_SCHEMAS = (1,)
_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_VERB_RE = re.compile(r"^[a-z_]{1,32}$")
_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_MAX_INT = 2**63 - 1  # what SQLite's INTEGER holds
_MAX_TS = 4102444800.0  # 2100-01-01: a time past this is a corrupt clock or a hostile value
_STATES = ("firing", "resolved")


class BadMessage(ValueError):
    """A payload the central refuses; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Bounds on what one message may be: bytes before parsing, nesting depth, text lengths."""

    max_bytes: int = 256 * 1024
    max_depth: int = 32
    max_text: int = 1000


@dataclass(frozen=True)
class Status:
    """A device's retained ``online``/``offline`` (its last will says ``offline``)."""

    device: str
    online: bool


@dataclass(frozen=True)
class Heartbeat:
    """The part of a heartbeat the central keeps; ``payload`` is the whole heartbeat as JSON."""

    device: str
    seq: int
    ts: Optional[float]
    interval_s: Optional[float]
    fps: Optional[float]
    temperature_c: Optional[float]
    payload: str
    worst_drift: Optional[float] = None  # summary.worst_drift (schema 3)
    outbox_depth: Optional[float] = None
    outbox_age_s: Optional[float] = None  # the oldest unsent message's age


@dataclass(frozen=True)
class AlertTransition:
    """One alert transition (or retained current state) of one device's alert."""

    device: str
    id: str
    fingerprint: str
    seq: int
    state: str
    transition: str
    kind: Optional[str]
    severity: Optional[str]
    feature: Optional[str]
    camera: Optional[str]
    message: Optional[str]
    ts: Optional[float]
    starts_at: Optional[float]
    ends_at: Optional[float]
    acknowledged: bool
    snoozed_until: Optional[float]
    payload: str


@dataclass(frozen=True)
class ClearedState:
    """An empty retained ``alerts/state/<fingerprint>``: the alert has resolved."""

    device: str
    fingerprint: str


@dataclass(frozen=True)
class CommandResult:
    """A device's answer to a command sent from the central or the fleet CLI."""

    device: str
    id: Optional[str]
    verb: Optional[str]
    ok: bool
    error: Optional[str]
    ts: Optional[float]
    payload: str


@dataclass(frozen=True)
class CommandSent:
    """A command an operator published to a device (seen on ``cmd/<verb>``)."""

    device: str
    id: str
    verb: str
    alert: Optional[str]
    requested_by: Optional[str]
    payload: str


DEFAULT_LIMITS = Limits()

Record = Union[Status, Heartbeat, AlertTransition, ClearedState, CommandResult, CommandSent]


def load_json(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Dict[str, Any]:
    """A JSON object from ``payload``, its size and nesting depth checked before parsing."""
    if len(payload) > limits.max_bytes:
        raise BadMessage("too_large", f"{len(payload)} bytes (max {limits.max_bytes})")
    depth = 0
    for m in _STRUCTURE.finditer(payload):
        c = m.group()
        if c in (b"[", b"{"):
            depth += 1
            if depth > limits.max_depth:
                raise BadMessage("too_deep", f"JSON nested deeper than {limits.max_depth}")
        elif c in (b"]", b"}"):
            depth -= 1
    try:
        value = json.loads(payload, parse_constant=_null)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadMessage("not_json", str(exc)[:200]) from None
    if not isinstance(value, dict):
        raise BadMessage("not_object", f"expected a JSON object, got {type(value).__name__}")
    return value


def _null(name: str) -> None:
    # NaN and Infinity (Python's json writes them) are "no value"; an overflowing literal
    # such as 1e400 still parses to inf, and the field checks refuse it.
    return None


def parse(prefix: str, topic: str, payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Record:
    """The typed record for one message on ``<prefix>/<device>/...``, or :class:`BadMessage`."""
    head = prefix + "/"
    device, _, kind = topic[len(head):].partition("/") if topic.startswith(head) else ("", "", "")
    if not _ID_RE.match(device):
        raise BadMessage("bad_topic", f"no valid device id in topic {topic[:200]!r}")
    if kind == "status":
        text = payload.decode("utf-8", errors="replace").strip()
        if text not in ("online", "offline"):
            raise BadMessage("bad_status", f"status must be online or offline, got {text[:40]!r}")
        return Status(device, text == "online")
    if kind.startswith("alerts/state/") and not payload:
        return ClearedState(device, _ident("fingerprint", kind[len("alerts/state/"):]))
    state_fp = kind[len("alerts/state/"):] if kind.startswith("alerts/state/") else None
    verb = kind[4:] if kind.startswith("cmd/") and kind != "cmd/result" else None
    if state_fp is None and verb is None and kind not in ("heartbeat", "alerts", "cmd/result"):
        raise BadMessage("bad_topic", f"unknown topic {topic[:200]!r}")
    if verb is not None and not _VERB_RE.match(verb):
        raise BadMessage("bad_topic", f"bad command verb in topic {topic[:200]!r}")
    obj = load_json(payload, limits)
    claimed = obj.get("device")
    if claimed is not None and claimed != device:
        raise BadMessage("device_mismatch",
                         f"payload claims device {str(claimed)[:130]!r} on {device}'s topic")
    if kind == "heartbeat":
        _schema(obj, "heartbeat", HEARTBEAT_SCHEMAS)
        return _heartbeat(device, obj)
    if kind == "cmd/result":
        return _result(device, obj, limits)
    if verb is not None:
        return _command(device, verb, obj)
    _schema(obj, "alert", ALERT_SCHEMAS)
    record = _alert(device, obj, limits)
    if state_fp is not None and state_fp != record.fingerprint:
        raise BadMessage("bad_field", "retained state's topic and fingerprint differ")
    return record


def _schema(obj: Mapping[str, Any], what: str, known: tuple[int, ...]) -> None:
    """A payload's ``schema`` (1 when absent: the first devices sent none) must be known."""
    value = obj.get("schema", 1)
    if value not in known or isinstance(value, bool):
        raise BadMessage("bad_schema", f"{what} schema {str(value)[:20]} is not one this "
                         f"central reads ({', '.join(map(str, known))}): upgrade the central "
                         "first, then the devices")


def heartbeat_fps(hb: Mapping[str, Any]) -> Any:
    """The frames per second a heartbeat reports: ``summary.fps`` (schema 3), else ``camera``'s."""
    summary, camera = hb.get("summary"), hb.get("camera")
    summary = summary if isinstance(summary, dict) else {}
    camera = camera if isinstance(camera, dict) else {}
    for value in (summary.get("fps"), camera.get("fps"), camera.get("fps_processed"),
                  camera.get("fps_in")):
        if value is not None:
            return value
    return None


def _section(hb: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``hb[key]``: an object, or {} when absent (anything else is refused)."""
    value = hb.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadMessage("bad_field", f"{key} must be an object, got {type(value).__name__}")
    return value


def _heartbeat(device: str, hb: Mapping[str, Any]) -> Heartbeat:
    host = hb.get("host")
    host = host if isinstance(host, dict) else {}
    summary, outbox = _section(hb, "summary"), _section(hb, "outbox")
    return Heartbeat(
        device=device, seq=_int(hb, "seq"), ts=_time(hb, "ts"),
        interval_s=_positive(hb, "interval_s"),
        fps=_number("camera.fps", heartbeat_fps(hb)),
        temperature_c=_number("host.max_temp_c", host.get("max_temp_c")),
        payload=_dump(hb), worst_drift=_number("summary.worst_drift", summary.get("worst_drift")),
        outbox_depth=_number("outbox.depth", outbox.get("depth")),
        outbox_age_s=_number("outbox.oldest_age_s", outbox.get("oldest_age_s")))


def _alert(device: str, rec: Mapping[str, Any], limits: Limits) -> AlertTransition:
    state = _text(rec, "state", 16, required=True)
    if state not in _STATES:
        raise BadMessage("bad_field", f"state must be firing or resolved, got {state[:20]!r}")
    n = limits.max_text
    return AlertTransition(
        device=device, id=_ident("id", rec.get("id")),
        fingerprint=_ident("fingerprint", rec.get("fingerprint")), seq=_int(rec, "seq"),
        state=state, transition=_text(rec, "transition", 32, required=True),
        kind=_text(rec, "kind", 64), severity=_text(rec, "severity", 32),
        feature=_text(rec, "feature", 128), camera=_text(rec, "camera", 128),
        message=_text(rec, "message", n), ts=_time(rec, "ts"),
        starts_at=_time(rec, "starts_at"), ends_at=_time(rec, "ends_at"),
        acknowledged=_bool(rec, "acknowledged"), snoozed_until=_time(rec, "snoozed_until"),
        payload=_dump(_who_checked(rec)))


def _who_checked(rec: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record, once who acknowledged or snoozed it (shown by ``fleet alerts``) is bounded."""
    _text(rec, "acknowledged_by", 128)
    _text(rec, "snoozed_by", 128)
    _time(rec, "acknowledged_at")
    return rec


def _request_id(value: Any) -> str:
    # The device echoes the id it was sent, a string or an integer.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INT:
        return str(value)
    return _ident("id", value)


def _result(device: str, res: Mapping[str, Any], limits: Limits) -> CommandResult:
    rid = res.get("id")
    return CommandResult(
        device=device, id=None if rid is None else _request_id(rid),
        verb=_text(res, "verb", 64), ok=_bool(res, "ok"),
        error=_text(res, "error", limits.max_text), ts=_time(res, "ts"), payload=_dump(res))


def _command(device: str, verb: str, cmd: Mapping[str, Any]) -> CommandSent:
    alert = cmd.get("alert", cmd.get("target"))
    return CommandSent(
        device=device, id=_request_id(cmd.get("id")), verb=verb,
        alert=None if alert is None else _ident("alert", alert),
        requested_by=_text(cmd, "by", 128), payload=_dump(cmd))


# -- field checks -------------------------------------------------------------------------------

def _ident(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise BadMessage("bad_field", f"{key} must be 1-128 of A-Z a-z 0-9 . _ : -, got {shown!r}")
    return value


def _int(d: Mapping[str, Any], key: str) -> int:
    value = d.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadMessage("bad_field", f"{key} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= _MAX_INT:
        raise BadMessage("bad_field", f"{key} out of range 0..2**63-1")
    return value


def _number(key: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadMessage("bad_field", f"{key} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and abs(value) <= 1e15):  # also bounds huge ints
        raise BadMessage("bad_field", f"{key} out of range")
    return float(value)


def _time(d: Mapping[str, Any], key: str) -> Optional[float]:
    value = _number(key, d.get(key))
    if value is not None and not 0 <= value <= _MAX_TS:
        raise BadMessage("bad_field", f"{key} is not a plausible unix time")
    return value


def _positive(d: Mapping[str, Any], key: str) -> Optional[float]:
    value = _number(key, d.get(key))
    if value is not None and not 0 < value <= 365 * 86400:
        raise BadMessage("bad_field", f"{key} must be > 0 and at most a year")
    return value


def _text(d: Mapping[str, Any], key: str, max_len: int, *, required: bool = False) -> Any:
    value = d.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadMessage("bad_field", f"{key} must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise BadMessage("bad_field", f"{key} longer than {max_len} characters")
    return value


def _bool(d: Mapping[str, Any], key: str) -> bool:
    value = d.get(key, False)
    if not isinstance(value, bool):
        raise BadMessage("bad_field", f"{key} must be true or false, got {type(value).__name__}")
    return value


def _dump(obj: Mapping[str, Any]) -> str:
    # Re-serialised from the checked object: the stored copy is valid, finite JSON.
    try:
        return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except ValueError:
        raise BadMessage("bad_field", "a number in the payload is out of range") from None
