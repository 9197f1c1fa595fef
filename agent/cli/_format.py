"""Output for people: local times, durations, tables, progress, escaped text.

Every command prints through these helpers so that the whole CLI reads the same way:
times as local date-time with the zone, durations as ``2m 30s``, tables with a header row
and columns sized to their content, device-supplied text with control characters escaped.
``--json`` output bypasses them and keeps full machine values.

>>> duration(150)
'2m 30s'
>>> duration(0.25)
'0.2s'
>>> duration(90061)
'1d 1h 1m'
>>> print(table([{"id": "a1", "n": 3}, {"id": "b", "n": None}], ["id", "n"]))
ID  N
a1  3
b   -
>>> safe_text("ok\\x1b[31mred")
'ok\\\\x1b[31mred'
"""

from __future__ import annotations

import math
import sys
import time
from datetime import datetime
from typing import Any, Mapping, Optional, Sequence, TextIO

_CONTROL = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F]} | {
    i: f"\\x{i:02x}" for i in range(0x80, 0xA0)}


def safe_text(value: Any) -> str:
    """``str(value)`` with control characters (terminal escapes, newlines) made visible."""
    return str(value).translate(_CONTROL)


def local_time(ts: Optional[float], *, seconds: bool = True) -> str:
    """A unix time as local date-time with the zone: ``2026-11-30 14:02:05 UTC``."""
    if ts is None or not math.isfinite(ts):
        return "-"
    dt = datetime.fromtimestamp(ts).astimezone()
    return dt.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")


def duration(seconds: Optional[float]) -> str:
    """A duration for people: ``0.2s``, ``45s``, ``2m 30s``, ``3h 5m``, ``1d 1h 1m``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    sign, s = ("-" if seconds < 0 else ""), abs(float(seconds))
    if s < 10 and s != int(s):
        return f"{sign}{s:.1f}s"
    s = int(round(s))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        parts = [f"{days}d", f"{hours}h", f"{minutes}m"]
    elif hours:
        parts = [f"{hours}h", f"{minutes}m"]
    elif minutes:
        parts = [f"{minutes}m", f"{secs}s"]
    else:
        parts = [f"{secs}s"]
    return sign + " ".join(p for i, p in enumerate(parts) if i == 0 or not p.startswith("0"))


def ago(ts: Optional[float], now: Optional[float] = None) -> str:
    """How long ago a unix time was: ``2m 30s ago``."""
    if ts is None:
        return "-"
    return f"{duration((now if now is not None else time.time()) - ts)} ago"


def cell(value: Any) -> str:
    """One table cell: ``-`` for missing, compact numbers, escaped text."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return safe_text(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
          headers: Optional[Mapping[str, str]] = None) -> str:
    """Rows as a text table: a header row, columns sized to their content."""
    heads = [(headers or {}).get(c, c.upper()) for c in columns]
    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(h)] + [len(line[i]) for line in body]) for i, h in enumerate(heads)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip()
             for line in [heads, *body]]
    return "\n".join(lines)


class Progress:
    """Progress of a long job: a bar on a terminal, a line every ``every_s`` otherwise."""

    def __init__(self, label: str, total: Optional[int] = None, *, stream: Optional[TextIO] = None,
                 every_s: float = 5.0) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0 = time.monotonic()
        self._next = self._t0 + (0.2 if self.tty else every_s)
        self.done = 0

    def update(self, done: int, note: str = "") -> None:
        """Record progress; prints only when it is time to (cheap to call every frame)."""
        self.done = done
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + (0.2 if self.tty else self.every_s)
        self._print(now, note)

    def _print(self, now: float, note: str) -> None:
        elapsed = now - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(1.0, self.done / self.total)
            left = (self.total - self.done) / rate if rate > 0 else None
            head = f"{self.label}: {self.done}/{self.total} ({frac:.0%}, {rate:.0f}/s, {duration(left)} left)"
        else:
            frac, head = 0.0, f"{self.label}: {self.done} ({rate:.0f}/s, {duration(elapsed)})"
        text = f"{head} {note}".rstrip()
        if self.tty:
            bar = "#" * int(frac * 20) if self.total else ""
            line = f"[{bar:<20}] {text}" if self.total else text
            self.stream.write("\r" + line[:120].ljust(120))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line (on a terminal)."""
        if self.tty:
            self.stream.write("\r" + " " * 120 + "\r")
            self.stream.flush()
