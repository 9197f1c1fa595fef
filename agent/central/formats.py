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
from typing import Any, Dict, Mapping

__all__ = ["describe", "description", "utc"]

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
    what = f"{kind} on {feature}" if feature else kind
    if record.get("metric") is not None and record.get("value") is not None:
        what += f": {record['metric']} {_num(record['value'])}"
        if record.get("threshold") is not None:
            what += f" (threshold {_num(record['threshold'])})"
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
    return {"what": what, "expected": _compact(expected) if expected else "-",
            "timeframe": timeframe}


def description(record: Mapping[str, Any]) -> str:
    """:func:`describe` as one paragraph (Alertmanager's ``description`` annotation)."""
    d = describe(record)
    return f"{d['what']}. Expected: {d['expected']}. Timeframe: {d['timeframe']}."
