"""Supervised background threads: every failure counted, reported, and acted on.

A background thread in edgewatch (capture, storage writer, MQTT network and outbox pump,
heartbeat, command worker, the central's writer and notifier) is a :class:`Worker` run by
a :class:`Supervisor`. The worker's body is a *step*: one unit of work that returns and is
called again. A step that raises is a failure: it is counted, logged once per
``log_interval_s`` (the first time with its traceback, then one line with the count, never
a traceback every second), and the step is retried after a backoff. A success resets the
run of consecutive failures.

A *critical* worker is one the agent cannot live without (the storage writer, say): after
``max_consecutive`` failures in a row the supervisor sets :attr:`Supervisor.fatal` and calls
``on_fatal``, and the service exits non-zero so that systemd restarts it. A thread that
dies anyway (a ``BaseException`` escaping the step) is noticed by :meth:`Supervisor.check`,
which the heartbeat calls, so a dead thread shows within one heartbeat.

:meth:`Supervisor.health` is the snapshot heartbeats and ``edgewatch status`` report::

    >>> sup = Supervisor()
    >>> calls = []
    >>> def step():
    ...     calls.append(1)
    ...     if len(calls) == 1:
    ...         raise ValueError("flaky")
    ...     sup.stop_event.set()
    >>> w = sup.spawn("edgewatch-example", step, interval_s=0.0, backoff_s=0.0)
    >>> w.join(5)
    >>> h = sup.health()["edgewatch-example"]
    >>> (h["failures"], h["consecutive"], h["last_error"])
    (1, 0, 'ValueError: flaky')
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

log = logging.getLogger(__name__)

Step = Callable[[], None]


@dataclass(frozen=True)
class WorkerHealth:
    """One worker's counters, as heartbeats and ``edgewatch status`` show them."""

    name: str
    alive: bool
    critical: bool
    failures: int
    consecutive: int
    last_error: Optional[str]
    last_error_ts: Optional[float]

    def to_dict(self) -> Dict[str, object]:
        """The JSON form (heartbeat ``threads`` entry)."""
        return {"alive": self.alive, "critical": self.critical, "failures": self.failures,
                "consecutive": self.consecutive, "last_error": self.last_error,
                "last_error_ts": self.last_error_ts}


class Worker:
    """One supervised thread running a step in a loop until the supervisor stops."""

    def __init__(self, supervisor: Supervisor, name: str, step: Step, *, interval_s: float,
                 backoff_s: float, critical: bool) -> None:
        self.name = name
        self.critical = critical
        self._sup = supervisor
        self._step = step
        self._interval = float(interval_s)
        self._backoff = float(backoff_s)
        self._lock = threading.Lock()
        self.failures = 0
        self.consecutive = 0
        self.last_error: Optional[str] = None
        self.last_error_ts: Optional[float] = None
        self._last_logged = float("-inf")
        self._unlogged = 0
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait for the thread to end."""
        self.thread.join(timeout)

    def health(self) -> WorkerHealth:
        """The worker's counters now."""
        with self._lock:
            return WorkerHealth(self.name, self.thread.is_alive(), self.critical, self.failures,
                                self.consecutive, self.last_error, self.last_error_ts)

    def _run(self) -> None:
        stop = self._sup.stop_event
        while not stop.is_set():
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - the supervisor's one catch-all: counted
                delay = self._failed(exc)
                if stop.wait(delay):
                    break
                continue
            self._succeeded()
            if self._interval and stop.wait(self._interval):
                break

    def _succeeded(self) -> None:
        if self.consecutive:
            with self._lock:
                self.consecutive = 0
            log.info("%s: working again after a failure", self.name)

    def _failed(self, exc: Exception) -> float:
        now = time.monotonic()
        with self._lock:
            self.failures += 1
            self.consecutive += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self.last_error_ts = time.time()
            consecutive = self.consecutive
        if now - self._last_logged >= self._sup.log_interval_s:
            first = self._last_logged == float("-inf")
            more = f" ({self._unlogged} more since the last report)" if self._unlogged else ""
            log.error("%s failed (%d in a row)%s: %s", self.name, consecutive, more,
                      self.last_error, exc_info=first)
            self._last_logged, self._unlogged = now, 0
        else:
            self._unlogged += 1
        if self.critical and consecutive >= self._sup.max_consecutive:
            self._sup.give_up(self, self.last_error or "")
        return float(min(self._backoff * 2.0 ** min(consecutive - 1, 6), self._sup.max_backoff_s))


class Supervisor:
    """Starts, watches and stops the workers of one process."""

    def __init__(self, *, max_consecutive: int = 10, log_interval_s: float = 60.0,
                 max_backoff_s: float = 30.0,
                 on_fatal: Optional[Callable[[str], None]] = None) -> None:
        self.max_consecutive = max_consecutive
        self.log_interval_s = log_interval_s
        self.max_backoff_s = max_backoff_s
        self.stop_event = threading.Event()
        self.fatal: Optional[str] = None
        self._on_fatal = on_fatal
        self._workers: List[Worker] = []
        self._noticed_dead: set[str] = set()

    def spawn(self, name: str, step: Step, *, interval_s: float = 0.0, backoff_s: float = 1.0,
              critical: bool = False) -> Worker:
        """Start a thread that calls ``step`` every ``interval_s`` until :meth:`stop`."""
        worker = Worker(self, name, step, interval_s=interval_s, backoff_s=backoff_s,
                        critical=critical)
        self._workers.append(worker)
        worker.thread.start()
        return worker

    def give_up(self, worker: Worker, reason: str) -> None:
        """A critical worker cannot go on: mark the process fatal and tell the owner."""
        if self.fatal is not None:
            return
        self.fatal = f"{worker.name} failed {worker.consecutive} times in a row: {reason}"
        log.critical("giving up: %s (exiting so that the service manager restarts edgewatch)",
                     self.fatal)
        if self._on_fatal is not None:
            self._on_fatal(self.fatal)

    def check(self) -> List[str]:
        """Names of workers whose thread has died while the supervisor runs (logged once each)."""
        if self.stop_event.is_set():
            return []
        dead = [w for w in self._workers if not w.thread.is_alive()]
        for w in dead:
            if w.name not in self._noticed_dead:
                self._noticed_dead.add(w.name)
                log.error("%s thread has died (last error: %s)", w.name, w.last_error)
                if w.critical:
                    self.give_up(w, "thread died")
        return [w.name for w in dead]

    def health(self) -> Dict[str, Dict[str, object]]:
        """Every worker's counters, by thread name."""
        return {w.name: w.health().to_dict() for w in self._workers}

    def failures(self) -> int:
        """Total failures of all workers."""
        return sum(w.health().failures for w in self._workers)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask every worker to stop and wait for them (each at most ``timeout``)."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for w in self._workers:
            w.join(max(0.0, deadline - time.monotonic()))
