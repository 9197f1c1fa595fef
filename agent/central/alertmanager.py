"""Alerts handed to a real Alertmanager (``edgewatch central --alertmanager URL``), its v2 API.

Operators who run Alertmanager keep its routing, grouping, silences and inhibition for
edgewatch's alerts: the central posts them to ``<URL>/api/v2/alerts`` as Prometheus does.

- Each alert is identified by its labels: ``alertname="edgewatch_<kind>"``, ``device``,
  ``camera``, ``kind``, ``severity``, ``feature`` (those the alert has); its annotations are
  ``summary`` (the alert's message) and ``description`` (what, expected, timeframe:
  :func:`agent.central.formats.description`).
- A firing alert has ``startsAt`` (when it started) and an ``endsAt`` four intervals ahead,
  as Prometheus sends them: every open alert is posted again each ``interval_s``, and should
  the central stop (or lose its database), Alertmanager resolves them on its own rather than
  keep them firing forever.
- A resolved alert has ``endsAt`` (when it resolved); it is posted again for
  ``resolved_keep_s`` (15 minutes, as Prometheus) so that an Alertmanager that missed it, or
  restarted, still hears of the resolution.
- The state is read from the central's database (:meth:`CentralReader.alerts_changed`), so
  the sender keeps nothing of its own: between full posts, a change (the writer calls
  :meth:`AlertmanagerSender.wake`) sends what was received since the last post; a failed post
  is counted, logged once per change of state, and the next attempt (after a backoff
  doubling up to ``interval_s``) posts everything. Several workers on one database each post
  the same alerts: Alertmanager merges alerts with equal labels.

This runs on its own supervised thread (``edgewatch-central-alertmanager``) with its own read
connection: a slow or absent Alertmanager never holds up the writer.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..errors import ConfigError
from .formats import description, utc
from .notify import POST_ERRORS, DbSender, check_url, describe_error, post_json, redact

log = logging.getLogger(__name__)

__all__ = ["AlertmanagerSender", "alertmanager_alert", "api_url"]

_LABELS = ("device", "camera", "kind", "severity", "feature")
_BATCH = 500  # alerts per POST: a storm of thousands goes out in bounded requests
_RFC3339 = "%Y-%m-%dT%H:%M:%S.%fZ"
_API_SUFFIXES = ("/api/v2/alerts", "/api/v2")  # a URL given with the API path: its base is used


def api_url(url: str) -> str:
    """The v2 alerts endpoint under an Alertmanager base URL (a route prefix is kept).

    A URL that already ends in the API path (``/api/v2/alerts`` or ``/api/v2``) is taken for
    its base, with an INFO line, rather than posting to ``/api/v2/alerts/api/v2/alerts``.

    >>> api_url("http://am:9093/")
    'http://am:9093/api/v2/alerts'
    >>> api_url("http://am:9093/am/api/v2/alerts/")
    'http://am:9093/am/api/v2/alerts'
    """
    check_url(url, "--alertmanager")
    base = url.rstrip("/")
    for suffix in _API_SUFFIXES:
        if base.endswith(suffix):
            base = base[:-len(suffix)]
            log.info("--alertmanager %s ends in %s, which the central adds itself: posting to "
                     "the URL without it + /api/v2/alerts (give the base URL, e.g. "
                     "http://127.0.0.1:9093)", redact(url), suffix)
            break
    return base + "/api/v2/alerts"


def alertmanager_alert(row: Mapping[str, Any], now: float, hold_s: float) -> Dict[str, Any]:
    """One stored alert (a :meth:`CentralReader.alerts_changed` row) as Alertmanager's JSON.

    A firing alert ends ``hold_s`` from ``now`` unless posted again; a resolved one ended at
    its ``ends_at`` (never after ``now``, never before it started).
    """
    try:
        record = json.loads(row["payload"] or "{}")
    except ValueError:
        record = {}
    record = record if isinstance(record, dict) else {}
    labels = {"alertname": f"edgewatch_{row['kind'] or 'alert'}"}
    labels.update({k: str(row[k]) for k in _LABELS if row.get(k)})
    starts = float(row["starts_at"] or row["ts"] or row["received"])
    if row["state"] == "firing":
        ends = max(now + hold_s, starts)
    else:
        ends = min(float(row["ends_at"] or row["received"]), now)
    ends = max(ends, starts)  # Alertmanager refuses an end before the start
    summary = str(row["message"] or labels["alertname"])
    return {"labels": labels,
            "annotations": {"summary": summary, "description": description(record)},
            "startsAt": utc(starts, _RFC3339), "endsAt": utc(ends, _RFC3339)}


class AlertmanagerSender(DbSender):
    """Posts open and recently resolved alerts; its ``step`` runs under the supervisor."""

    def __init__(self, url: str, db_path: str, *, interval_s: float = 60.0,
                 timeout_s: float = 5.0, backoff_s: float = 1.0, resolved_keep_s: float = 900.0,
                 clock: Callable[[], float] = time.time) -> None:
        if not interval_s > 0:
            raise ConfigError(f"--alertmanager-interval must be > 0 seconds, got {interval_s}")
        super().__init__(db_path)
        self.url = api_url(url)
        self.interval_s, self.timeout_s, self.backoff_s = interval_s, timeout_s, backoff_s
        self.resolved_keep_s, self._clock = resolved_keep_s, clock
        self._next_full = 0.0  # monotonic time of the next full post
        self._since: Optional[float] = None  # received time of the last change posted
        self._failures_in_row = 0
        self.counts = {"posts": 0, "alerts_posted": 0, "failed_attempts": 0}

    def status(self) -> Dict[str, Any]:
        """Counters and whether posting is failing now."""
        return {**self.counts, "failing": self._failures_in_row > 0, "url": redact(self.url)}

    def step(self) -> None:
        """Post what changed (everything, each interval or after a failure), then wait."""
        now, mono = self._clock(), time.monotonic()
        full = self._since is None or mono >= self._next_full
        rows = self.reader().alerts_changed(0.0 if full else self._since or 0.0,
                                           now - self.resolved_keep_s)
        if rows or full:
            if self._post(rows, now):
                if full:
                    self._next_full = mono + self.interval_s
                if rows or self._since is None:
                    self._since = max([float(r["received"]) for r in rows] + [0.0])
                wait = max(0.0, self._next_full - time.monotonic())
            else:
                self._since, self._next_full = None, 0.0  # all again at the next attempt
                wait = min(self.backoff_s * 2.0 ** min(self._failures_in_row - 1, 30),
                           self.interval_s)
        else:
            wait = max(0.0, self._next_full - time.monotonic())
        self.sleep(wait)

    def _post(self, rows: List[Dict[str, Any]], now: float) -> bool:
        if not rows:
            return True  # nothing to tell (as Prometheus, which posts nothing then)
        hold = 4 * self.interval_s
        alerts = [alertmanager_alert(r, now, hold) for r in rows]
        try:
            for i in range(0, len(alerts), _BATCH):
                post_json(self.url, json.dumps(alerts[i:i + _BATCH]).encode(), self.timeout_s)
        except POST_ERRORS as exc:
            self.counts["failed_attempts"] += 1
            self._failures_in_row += 1
            if self._failures_in_row == 1:
                log.warning("alertmanager %s failing: %s (retrying; open alerts are re-sent "
                            "from the database)", redact(self.url), describe_error(exc))
            return False
        self.counts["posts"] += 1
        self.counts["alerts_posted"] += len(alerts)
        if self._failures_in_row:
            log.info("alertmanager %s taking alerts again", redact(self.url))
        self._failures_in_row = 0
        return True
