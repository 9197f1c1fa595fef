"""Webhook notifications: checked URLs, bodies, and delivery from the central's database.

What the operator must hear about (an alert transition, a device going offline or coming
back) is written to the ``notifications`` table in the same transaction as the event itself,
so it survives a webhook outage and a central restart. :class:`WebhookSender` (the
``edgewatch-central-webhook`` thread) posts due notifications oldest first; a failed post is
retried with exponential backoff (``backoff_s`` doubling up to ``max_backoff_s``) until it
goes through or is older than ``expire_s``, and never dropped after a fixed number of tries.
Notifications of one group (``device/offline``, ``alert/firing/data_drift``, ...) that are
due together leave as one call (:func:`group_body`: a summary line listing the devices, then
each notification's text, and every body under ``notifications``), in the manner of
Alertmanager's ``group_by`` (:func:`alert_group`); the ingest side delays each by
``group_wait_s``, and by ``group_interval_s`` after its group last went out, so that a storm
is grouped. Several workers on one database each post only the notifications they claimed
(:meth:`~agent.central.store.CentralStore.claim`). A delivered notification is deleted.
Failures are logged once per change of state (failing, delivering again), with the URL
redacted: a webhook URL often is a secret token.

Each webhook has a format (``--webhook [FORMAT=]URL``, :data:`FORMATS`) and its own rows in
the ``notifications`` table (``target``: a hash of its URL), so one that fails holds up no
other. The stored body is the ``json`` format, with a Slack-compatible ``text``; ``slack``
and ``generic`` bodies are made from it when it is posted (:mod:`agent.central.formats`):

>>> redact("https://hooks.slack.com/services/T000/B000/XXXX")
'https://hooks.slack.com/…'
>>> check_url("file:///etc/passwd")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
agent.errors.ConfigError: --webhook must be an http:// or https:// URL ..., got 'file:///…' ...
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from .formats import generic_body, slack_body
from .records import AlertTransition
from .store import CentralReader, CentralStore, DeviceChange, Notification

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "WebhookTarget", "parse_webhook", "webhook_targets", "DbSender",
           "GROUP_LABELS", "POST_ERRORS", "HttpStatus", "post_json", "describe_error",
           "check_url", "redact", "webhook_body", "alert_body", "device_body",
           "alert_group", "check_group_by", "group_body", "WebhookSender"]

# What alert notifications can be grouped by (Alertmanager's group_by).
GROUP_LABELS = ("transition", "kind", "severity", "feature", "camera", "device")
DEFAULT_GROUP_BY = ("transition", "kind")
#: Webhook body formats (``--webhook FORMAT=URL``): the stored JSON, Slack's, a flat one.
FORMATS = ("json", "slack", "generic")

StoreOp = Callable[[CentralStore], Any]
RunInWriter = Callable[[StoreOp], Any]


def redact(url: str) -> str:
    """``scheme://host[:port]/…``: enough to tell which webhook, never its token."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    return f"{parts.scheme}://{host}{port}/…"


def check_url(url: str, flag: str = "--webhook") -> str:
    """``url`` when it is an http(s) URL with a host; a one-line :class:`ConfigError` if not."""
    try:
        parts = urllib.parse.urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # a bad port raises ValueError
    except ValueError:
        ok = False
    if not ok:
        shown = redact(url) if "://" in url else url.split("/", 1)[0][:60]
        raise ConfigError(f"{flag} must be an http:// or https:// URL with a host, got "
                          f"{shown!r} (check the URL)")
    return url


def webhook_body(record: Mapping[str, Any]) -> Dict[str, Any]:
    """The webhook JSON for one alert transition; ``text`` is what Slack shows."""
    sev = str(record.get("severity", "")).upper()
    text = (f"[{sev}] {record.get('device')}/{record.get('camera')} "
            f"{record.get('transition')}: {record.get('message')}")
    return {"text": text, "alert": dict(record)}


def alert_body(rec: AlertTransition) -> Dict[str, Any]:
    """The body for a stored transition; the device is the topic's, whatever the payload said."""
    return webhook_body({**json.loads(rec.payload), "device": rec.device})


def device_body(change: DeviceChange) -> Dict[str, Any]:
    """The body for a device going offline or coming back online."""
    state = "online" if change.online else "offline"
    return {"text": f"[{state.upper()}] {change.device}: {change.reason}",
            "device": {"device": change.device, "state": state, "reason": change.reason,
                       "ts": change.ts}}


def check_group_by(labels: Sequence[str]) -> Tuple[str, ...]:
    """``labels`` as a tuple; a :class:`ConfigError` naming the valid ones if one is not."""
    bad = [label for label in labels if label not in GROUP_LABELS]
    if bad or not labels:
        raise ConfigError(f"group_by: {bad[0] if bad else 'empty'!r} is not a label to group "
                          f"by (valid: {', '.join(GROUP_LABELS)})")
    return tuple(labels)


def alert_group(rec: AlertTransition, group_by: Sequence[str] = DEFAULT_GROUP_BY) -> str:
    """The group of an alert notification: ``alert/`` and its ``group_by`` labels' values
    (``alert/firing/data_drift`` by default)."""
    return "alert/" + "/".join(str(getattr(rec, label) or "-") for label in group_by)


def group_body(group: str, items: List[Tuple[str, Dict[str, Any]]], *,
               listed: int = 20) -> Dict[str, Any]:
    """One body for several notifications of one group: a summary, then each one's text.

    >>> b = group_body("device/offline", [(f"cam-{i}", {"text": f"[OFFLINE] cam-{i}: x"})
    ...                                   for i in range(3)])
    >>> print(b["text"])
    [OFFLINE] 3 devices: cam-0, cam-1, cam-2
    [OFFLINE] cam-0: x
    [OFFLINE] cam-1: x
    [OFFLINE] cam-2: x
    """
    devices = sorted({device for device, _ in items})
    named = ", ".join(devices[:listed]) + (f" (+{len(devices) - listed} more)"
                                           if len(devices) > listed else "")
    parts = group.split("/")
    what = parts[1].upper() if len(parts) > 1 else group.upper()
    if parts[0] == "alert" and len(parts) > 2:
        head = (f"[{what}] {'/'.join(parts[2:])}: {len(items)} alerts on {len(devices)} "
                f"devices: {named}")
    else:
        head = f"[{what}] {len(devices)} devices: {named}"
    texts = [str(body.get("text", "")) for _, body in items[:listed]]
    if len(items) > listed:
        texts.append(f"... and {len(items) - listed} more")
    return {"text": "\n".join([head, *texts]), "group": group, "count": len(items),
            "devices": devices, "notifications": [body for _, body in items]}


@dataclass(frozen=True)
class WebhookTarget:
    """One webhook: its URL and the format of the bodies it is sent (:data:`FORMATS`)."""

    url: str
    format: str = "json"

    @property
    def key(self) -> str:
        """The ``target`` of its notifications in the database: a hash, never the URL
        (often a secret token)."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:16]


def parse_webhook(text: str, flag: str = "--webhook") -> WebhookTarget:
    """``[FORMAT=]URL`` as a :class:`WebhookTarget`; a one-line :class:`ConfigError` if bad.

    >>> parse_webhook("slack=https://hooks.slack.com/services/T/B/X").format
    'slack'
    >>> parse_webhook("https://example.com/hook?a=b").format
    'json'
    """
    head, sep, rest = text.partition("=")
    if sep and "/" not in head and ":" not in head:
        if head not in FORMATS:
            raise ConfigError(f"{flag} has an unknown format {head[:20]!r} in FORMAT=URL (valid: "
                              f"{', '.join(FORMATS)})")
        return WebhookTarget(check_url(rest, flag), head)
    return WebhookTarget(check_url(text, flag))


def webhook_targets(texts: Sequence[str], flag: str = "--webhook") -> Tuple[WebhookTarget, ...]:
    """Each ``[FORMAT=]URL`` parsed; a URL given twice is refused."""
    targets = tuple(parse_webhook(t, flag) for t in texts)
    urls = [t.url for t in targets]
    for url in urls:
        if urls.count(url) > 1:
            raise ConfigError(f"{flag} gives the same URL {redact(url)} twice (one format "
                              "per webhook)")
    return targets


class DbSender:
    """What a sender thread shares: a lazily opened read connection and a wake-up event."""

    def __init__(self, db_path: str) -> None:
        self._db_path = db_path
        self._reader: Optional[CentralReader] = None
        self._wake = threading.Event()

    def reader(self) -> CentralReader:
        """The read connection (opened on first use, in the sender's thread)."""
        if self._reader is None:
            self._reader = CentralReader(self._db_path)
        return self._reader

    def wake(self) -> None:
        """Look at the database now (something new was committed)."""
        self._wake.set()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when woken."""
        self._wake.wait(seconds)
        self._wake.clear()

    def close(self) -> None:
        """Close the read connection."""
        self._wake.set()
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class WebhookSender(DbSender):
    """Posts due notifications from the database; its ``step`` runs under the supervisor.

    ``keys`` are the database ``target`` values it delivers (its own, and ``''`` for the
    first webhook: notifications queued before there were several).
    """

    def __init__(self, url: str, db_path: str, run_in_writer: RunInWriter, *,
                 fmt: str = "json", keys: Sequence[str] = ("",),
                 timeout_s: float = 5.0, backoff_s: float = 1.0, max_backoff_s: float = 300.0,
                 expire_s: float = 86400.0, poll_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        if expire_s <= 0 or backoff_s <= 0 or max_backoff_s < backoff_s:
            raise ConfigError("webhook expiry and backoff must be > 0 and max >= backoff")
        if fmt not in FORMATS:
            raise ConfigError(f"webhook format {fmt!r}: one of {', '.join(FORMATS)}")
        super().__init__(db_path)
        self.url, self.format, self.keys = check_url(url), fmt, tuple(keys)
        self._run = run_in_writer
        self.timeout_s, self.backoff_s, self.max_backoff_s = timeout_s, backoff_s, max_backoff_s
        self.expire_s, self.poll_s, self._clock = expire_s, poll_s, clock
        self._failing = False
        # sent: webhook calls that went through; notifications_sent: what they carried.
        self.counts = {"sent": 0, "notifications_sent": 0, "failed_attempts": 0, "expired": 0}

    def status(self) -> Dict[str, Any]:
        """Counters and whether the webhook is failing now."""
        return {**self.counts, "failing": self._failing, "url": redact(self.url),
                "format": self.format}

    def step(self) -> None:
        """Deliver what is due, expire what is too old, then wait for more (or ``poll_s``)."""
        reader = self.reader()
        now = self._clock()
        expired = int(self._run(lambda s: s.expire(now - self.expire_s)) or 0)
        if expired:
            self.counts["expired"] += expired
            log.warning("webhook %s: %d notification(s) undelivered for %.0f s expired",
                        redact(self.url), expired, self.expire_s)
        groups: Dict[str, List[Notification]] = {}
        for note in reader.due_notifications(now, targets=self.keys):
            groups.setdefault(note.group, []).append(note)
        for notes in groups.values():
            self._deliver(notes)
        due = reader.next_due(self.keys)
        self.sleep(self.poll_s if due is None else min(self.poll_s, max(0.0, due - self._clock())))

    def _body(self, group: str, notes: List[Notification]) -> str:
        """The body in this webhook's format (stored bodies are the ``json`` format)."""
        if self.format == "json":
            return notes[0].body if len(notes) == 1 else json.dumps(
                group_body(group, [(n.device, json.loads(n.body)) for n in notes]))
        bodies = [json.loads(n.body) for n in notes]
        if self.format == "generic":
            return json.dumps(generic_body(group, bodies))
        head = None if len(notes) == 1 else group_body(
            group, [(n.device, b) for n, b in zip(notes, bodies)])["text"].split("\n")[0]
        return json.dumps(slack_body(head, bodies))

    def _deliver(self, notes: List[Notification]) -> None:
        # Several workers may see the same due notifications: each posts only what it claimed.
        hold = self._clock() + max(30.0, 3 * self.timeout_s)
        notes = list(self._run(lambda s: s.claim(notes, hold)))
        if not notes:
            return
        ids, group = [n.id for n in notes], notes[0].group
        body = self._body(group, notes)
        try:
            self._post(body.encode())
        except POST_ERRORS as exc:
            self.counts["failed_attempts"] += 1
            tries = max(n.attempts for n in notes)
            delay = min(self.backoff_s * 2.0 ** min(tries, 30), self.max_backoff_s)
            error = describe_error(exc)
            self._run(lambda s: s.retry_later(ids, self._clock() + delay, error))
            if not self._failing:
                self._failing = True
                log.warning("webhook %s failing: %s (notifications are kept and retried)",
                            redact(self.url), error)
            return
        # Counted before the commit that removes them, so whoever sees them gone sees them counted.
        self.counts["sent"] += 1
        self.counts["notifications_sent"] += len(notes)
        sent_at = self._clock()
        self._run(lambda s: s.delivered(ids, group, sent_at))
        if self._failing:
            self._failing = False
            log.info("webhook %s delivering again", redact(self.url))

    def _post(self, data: bytes) -> None:
        post_json(self.url, data, self.timeout_s)


class HttpStatus(Exception):
    """The server answered, but not with 2xx."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}" + (f": {detail}" if detail else ""))


#: What a failed POST raises: retried, never fatal.
POST_ERRORS = (OSError, ValueError, http.client.HTTPException, HttpStatus)


def post_json(url: str, data: bytes, timeout_s: float) -> None:
    """POST JSON to ``url``; :data:`POST_ERRORS` unless the answer is 2xx."""
    # http.client, not urllib: the connection is closed on every path (urllib leaves the
    # socket of a timed-out or refused response to the garbage collector).
    parts = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "", parts.port, timeout=timeout_s)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = resp.read(300)
        if not 200 <= resp.status < 300:
            detail = answer.decode("utf-8", "replace").strip().splitlines()
            raise HttpStatus(resp.status, resp.reason, detail[0][:200] if detail else "")
    finally:
        conn.close()


def describe_error(exc: BaseException) -> str:
    """A failed POST's reason in a few words."""
    if isinstance(exc, HttpStatus):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"
