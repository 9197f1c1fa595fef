"""Run-time commands (MQTT ``cmd/<verb>``, the control socket): validate, dispatch, answer.

A command is a JSON object with a request ``id`` and the verb's fields::

    ack            {"id", "alert", "by"?}
    snooze         {"id", "alert" | "target", "until" (unix) | "duration" ("30m" or seconds), "by"?}
    disable        {"id", "target", "by"?}    a kind (e.g. "data_drift") or a feature name
    enable         {"id", "target", "by"?}
    set_threshold  {"id", "feature", "value", "metric"?, "by"?}
    rebaseline     {"id"}
    ping           {"id"}
    status         {"id"}
    samples        {"id", "alert", "want"?, "chunk_kb"?}   an alert's captured frames
                   (agent.remotesamples; only with [capture] remote = true)

Every answer is ``{"id", "verb", "ok", "result" | "error", "ts"}``; a malformed command gets
an error naming the problem and never reaches the :class:`ControlAPI`. ``by`` names who asked
(``user@host``; the CLIs default to the OS user and host); it is kept with the alert and shown
by every view.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Tuple

from .errors import CommandError

log = logging.getLogger(__name__)

__all__ = ["ControlAPI", "VERBS", "handle_command", "parse_duration"]

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_SNOOZE_S = 30 * 86400.0


class ControlAPI(Protocol):
    """What commands act on (the alert manager implements it); raises CommandError."""

    def ack(self, alert: str, by: Optional[str] = None) -> Dict[str, Any]:
        """Acknowledge an open alert by id."""

    def snooze(self, target: str, until: float, by: Optional[str] = None) -> Dict[str, Any]:
        """Silence an alert id, kind or feature until the unix time ``until``."""

    def disable(self, target: str, by: Optional[str] = None) -> Dict[str, Any]:
        """Stop alerting on a kind or feature."""

    def enable(self, target: str, by: Optional[str] = None) -> Dict[str, Any]:
        """Undo :meth:`disable`."""

    def set_threshold(self, feature: str, value: float, metric: Optional[str] = None,
                      by: Optional[str] = None) -> Dict[str, Any]:
        """Override the drift threshold of a feature (optionally for one metric)."""

    def rebaseline(self) -> Dict[str, Any]:
        """Start collecting a new reference from the coming frames."""

    def status(self) -> Dict[str, Any]:
        """The agent's current status summary."""

    def samples(self, alert: str, want: Optional[Any], chunk_kb: int) -> Dict[str, Any]:
        """An alert's samples list, or publish the ``want``-ed chunks of their files."""


def parse_duration(value: Any) -> float:
    """Seconds from ``"90s"``, ``"30m"``, ``"1h"``, ``"2d"``, ``"45"`` or a number (> 0)."""
    if isinstance(value, bool):
        raise CommandError(f"duration must be like '30m', '1h' or seconds, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION_RE.match(value):
        number, unit = _DURATION_RE.match(value).groups()  # type: ignore[union-attr]
        seconds = float(number) * _UNITS[unit]
    else:
        raise CommandError(f"duration must be like '30m', '1h' or seconds, got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_SNOOZE_S:
        raise CommandError(f"duration must be between 0 and 30 days, got {value!r}")
    return seconds


# verb -> (required fields, optional fields)
_FIELDS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "ack": (("alert",), ("by",)),
    "snooze": ((), ("alert", "target", "until", "duration", "by")),
    "disable": (("target",), ("by",)),
    "enable": (("target",), ("by",)),
    "set_threshold": (("feature", "value"), ("metric", "by")),
    "rebaseline": ((), ()),
    "ping": ((), ()),
    "status": ((), ()),
    "samples": (("alert",), ("want", "chunk_kb")),
}
VERBS = tuple(_FIELDS)


def _text(request: Mapping[str, Any], key: str) -> str:
    value = request[key]
    if not isinstance(value, str) or not value.strip() or len(value) > 256:
        raise CommandError(f"'{key}' must be a non-empty string, got {value!r}")
    return value


def _number(request: Mapping[str, Any], key: str) -> float:
    value = request[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CommandError(f"'{key}' must be a finite number, got {value!r}")
    return float(value)


def _dispatch(verb: str, request: Mapping[str, Any], api: ControlAPI,
              now: float) -> Dict[str, Any]:
    required, optional = _FIELDS[verb]
    unknown = sorted(set(request) - {"id"} - set(required) - set(optional))
    if unknown:
        valid = ", ".join(("id",) + required + optional)
        raise CommandError(f"unknown field '{unknown[0]}' for {verb} (valid: {valid})")
    missing = [k for k in required if k not in request]
    if missing:
        raise CommandError(f"{verb} needs '{missing[0]}'")
    by = _text(request, "by") if "by" in request else None
    if verb == "ack":
        return api.ack(_text(request, "alert"), by=by)
    if verb == "snooze":
        targets = [k for k in ("alert", "target") if k in request]
        whens = [k for k in ("until", "duration") if k in request]
        if len(targets) != 1:
            raise CommandError("snooze needs exactly one of 'alert' or 'target'")
        if len(whens) != 1:
            raise CommandError("snooze needs exactly one of 'until' (unix time) or 'duration'")
        if whens[0] == "until":
            until = _number(request, "until")
            if until <= now:
                raise CommandError(f"'until' is in the past: {until} (now is {now:.0f})")
            if until - now > MAX_SNOOZE_S:
                raise CommandError("'until' is more than 30 days ahead")
        else:
            until = now + parse_duration(request["duration"])
        return api.snooze(_text(request, targets[0]), until, by=by)
    if verb == "disable":
        return api.disable(_text(request, "target"), by=by)
    if verb == "enable":
        return api.enable(_text(request, "target"), by=by)
    if verb == "set_threshold":
        metric = _text(request, "metric") if "metric" in request else None
        value = _number(request, "value")
        if value <= 0:
            raise CommandError(f"'value' must be > 0, got {value}")
        return api.set_threshold(_text(request, "feature"), value, metric, by=by)
    if verb == "rebaseline":
        return api.rebaseline()
    if verb == "ping":
        return {"pong": True}
    if verb == "samples":
        return api.samples(_text(request, "alert"), request.get("want"),
                           request.get("chunk_kb", 32))
    return api.status()


def handle_command(verb: str, payload: bytes, api: ControlAPI, *, max_bytes: int = 65536,
                   clock: Callable[[], float] = time.time) -> Dict[str, Any]:
    """Validate one command, call ``api`` and return the result dict (never raises)."""
    now = clock()
    answer: Dict[str, Any] = {"id": None, "verb": verb, "ok": False}
    try:
        if len(payload) > max_bytes:  # before any decoding
            raise CommandError(f"payload too large: {len(payload)} bytes (max {max_bytes})")
        try:
            request = json.loads(payload.decode("utf-8")) if payload else None
        except (UnicodeDecodeError, ValueError) as exc:
            raise CommandError(f"payload is not JSON: {exc}") from None
        if not isinstance(request, dict):
            raise CommandError(f"payload must be a JSON object, got {type(request).__name__}")
        rid = request.get("id")
        if isinstance(rid, (str, int)) and not isinstance(rid, bool) and len(str(rid)) <= 128:
            answer["id"] = rid
        if verb not in _FIELDS:
            raise CommandError(f"unknown verb {verb!r} (valid: {', '.join(VERBS)})")
        if "id" not in request:
            raise CommandError("missing 'id' (a request id echoed in the result)")
        if answer["id"] is None:
            raise CommandError(f"'id' must be a string or integer, got {rid!r}")
        result = _dispatch(verb, request, api, now)
        answer["ok"] = True
        answer["result"] = dict(result) if result is not None else {}
    except CommandError as exc:
        answer["error"] = str(exc).splitlines()[0] if str(exc) else "command rejected"
    except Exception as exc:  # noqa: BLE001 - the caller must still get an answer with its id
        log.exception("command %s failed", verb)
        answer["error"] = f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]
    answer["ts"] = now
    return answer
