"""What an alert says to people: what happened, what was expected, over which timeframe.

One description of an alert record (the README's alert JSON) shared by every output that
shows alerts to people: Alertmanager's ``description`` annotation and the chat formats of
the webhook. Times are UTC; numbers are shortened to 4 significant digits; nothing links
anywhere (a chat message is read on a phone, maybe outside the network).

>>> d = describe({"kind": "data_drift", "feature": "brightness", "metric": "ks", "value": 0.8,
...               "threshold": 0.26, "expected": {"brightness": {"mean": 118.2, "p05": 115}},
...               "window": {"start": 1764460915.0, "end": 1764460945.0, "frames": 900}})
>>> d["what"]
'data drift on brightness: ks 0.8 (threshold 0.26)'
>>> d["expected"]
'brightness: mean 118.2, p05 115'
>>> d["timeframe"]
'30 s (900 frames), 2025-11-30 00:01:55 to 00:02:25 UTC'
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Dict, Mapping, Optional, Sequence

__all__ = ["describe", "description", "utc", "GENERIC_KEYS", "GENERIC_VERSION", "generic_event",
           "generic_body", "slack_text", "slack_body"]

_MAX = 300  # characters of one rendered part: an alert's ``expected`` can list many features


def utc(ts: Any, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A unix time as UTC text, or ``?`` when it is not a number."""
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return "?"
    try:
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime(fmt)
    except (OverflowError, OSError, ValueError):
        return "?"


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}"


def _compact(value: Any) -> str:
    """``{"a": {"mean": 1}, "b": 2}`` as ``a: mean 1; b 2``, cut to a readable length."""
    if isinstance(value, Mapping):
        parts = []
        for key, item in value.items():
            if isinstance(item, Mapping):
                parts.append(f"{key}: " + ", ".join(f"{k} {_compact(v)}" for k, v in item.items()))
            else:
                parts.append(f"{key} {_compact(item)}")
        text = "; ".join(parts)
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_compact(v) for v in value)
    else:
        text = _num(value)
    return text if len(text) <= _MAX else text[:_MAX - 1] + "…"


def describe(record: Mapping[str, Any]) -> Dict[str, str]:
    """``what``, ``expected`` and ``timeframe`` of an alert record, as short lines of text."""
    kind = str(record.get("kind") or "alert").replace("_", " ")
    feature = record.get("feature")
    headline = what = f"{kind} on {feature}" if feature else kind
    measured = ""
    if record.get("metric") is not None and record.get("value") is not None:
        measured = f"{record['metric']} {_num(record['value'])}"
        if record.get("threshold") is not None:
            measured += f" (threshold {_num(record['threshold'])})"
        what += f": {measured}"
    expected = record.get("expected")
    window = record.get("window")
    window = window if isinstance(window, Mapping) else {}
    start, end = window.get("start"), window.get("end")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)):
        frames = window.get("frames")
        count = f" ({frames} frames)" if isinstance(frames, int) and frames else ""
        same_day = utc(start)[:10] == utc(end)[:10]
        timeframe = (f"{_num(round(end - start))} s{count}, {utc(start)} to "
                     f"{utc(end, '%H:%M:%S') if same_day else utc(end)} UTC")
    else:
        timeframe = f"since {utc(record.get('starts_at') or record.get('ts'))} UTC"
    return {"what": what, "headline": headline, "measured": measured or "-",
            "expected": _compact(expected) if expected else "-", "timeframe": timeframe}


def description(record: Mapping[str, Any]) -> str:
    """:func:`describe` as one paragraph (Alertmanager's ``description`` annotation)."""
    d = describe(record)
    return f"{d['what']}. Expected: {d['expected']}. Timeframe: {d['timeframe']}."


# -- webhook formats -------------------------------------------------------------------------
# A notification is kept in the database in the ``json`` form (``{"text", "alert"}`` or
# ``{"text", "device"}``, :mod:`agent.central.notify`); the other formats are made from it
# when it is posted, so one notification reaches several webhooks each in its own format.

#: Keys of one event of the ``generic`` format, always all present (null when not known).
GENERIC_KEYS = ("event", "status", "device", "camera", "kind", "severity", "feature", "metric",
                "value", "threshold", "alert_id", "fingerprint", "summary", "what", "expected",
                "timeframe", "starts_at", "ends_at", "ts", "acknowledged", "reason")
GENERIC_VERSION = 1
_SLACK_BLOCK = 3000  # characters of a Slack section block


def _iso(ts: Any) -> Optional[str]:
    text = utc(ts, "%Y-%m-%dT%H:%M:%SZ")
    return None if text == "?" else text


def generic_event(body: Mapping[str, Any]) -> Dict[str, Any]:
    """One stored notification body as a flat ``generic`` event (:data:`GENERIC_KEYS`)."""
    out: Dict[str, Any] = dict.fromkeys(GENERIC_KEYS)
    rec, dev = body.get("alert"), body.get("device")
    if isinstance(rec, Mapping):
        d = describe(rec)
        out.update({k: rec.get(k) for k in ("device", "camera", "kind", "severity", "feature",
                                             "metric", "value", "threshold", "fingerprint",
                                             "ts")})
        out.update(event="alert", status=rec.get("transition"), alert_id=rec.get("id"),
                   summary=rec.get("message"), what=d["what"], expected=d["expected"],
                   timeframe=d["timeframe"], starts_at=_iso(rec.get("starts_at")),
                   ends_at=_iso(rec.get("ends_at")),
                   acknowledged=bool(rec.get("acknowledged")))
    elif isinstance(dev, Mapping):
        out.update(event="device", status=dev.get("state"), device=dev.get("device"),
                   reason=dev.get("reason"), ts=dev.get("ts"), starts_at=_iso(dev.get("ts")),
                   summary=body.get("text"))
    return out


def generic_body(group: str, bodies: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """The ``generic`` format: a versioned envelope around flat events (one or a group)."""
    return {"version": GENERIC_VERSION, "source": "edgewatch", "group": group,
            "count": len(bodies), "events": [generic_event(b) for b in bodies]}


def _slack_escape(text: Any) -> str:
    # Slack's mrkdwn: & < > escaped, so a device's text can neither link nor mention anyone.
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(body: Mapping[str, Any]) -> str:
    """A readable message for one notification: what, expected, timeframe, device/camera."""
    rec, dev = body.get("alert"), body.get("device")
    if isinstance(rec, Mapping):
        d = describe(rec)
        sev = str(rec.get("severity") or "").upper()
        where = f"{rec.get('device')}/{rec.get('camera')}" if rec.get("camera") else \
            str(rec.get("device"))
        # The device's own sentence first; the raw measure after it, labelled.
        lines = [f"*[{sev}] {d['headline']}* on {where} ({rec.get('transition')})",
                 str(rec.get("message") or ""), f"Measured: {d['measured']}",
                 f"Expected: {d['expected']}", f"Timeframe: {d['timeframe']}"]
        return "\n".join(_slack_escape(line) for line in lines if line)
    if isinstance(dev, Mapping):
        return _slack_escape(f"*[{str(dev.get('state')).upper()}]* {dev.get('device')}: "
                             f"{dev.get('reason')} (at {utc(dev.get('ts'))} UTC)")
    return _slack_escape(body.get("text", ""))


def slack_body(head: Optional[str], bodies: Sequence[Mapping[str, Any]],
               listed: int = 20) -> Dict[str, Any]:
    """A Slack incoming-webhook body: ``text`` (and one section block) for one notification,
    or a ``head`` line then each notification's message for a group."""
    texts = [slack_text(b) for b in bodies[:listed]]
    if len(bodies) > listed:
        texts.append(f"… and {len(bodies) - listed} more")
    text = "\n\n".join(([_slack_escape(head)] if head else []) + texts)
    short = text if len(text) <= _SLACK_BLOCK else text[:_SLACK_BLOCK - 1] + "…"
    return {"text": text, "blocks": [{"type": "section",
                                      "text": {"type": "mrkdwn", "text": short}}]}
