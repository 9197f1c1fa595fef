"""The systemd notify protocol (sd_notify) over a Unix datagram socket, with no dependency.

systemd passes ``NOTIFY_SOCKET`` (and ``WATCHDOG_USEC``/``WATCHDOG_PID`` when the unit sets
``WatchdogSec=``) to a ``Type=notify`` service. Without ``NOTIFY_SOCKET`` every call is a quiet
no-op, so the agent runs the same under systemd, in a terminal or in tests.

The watchdog ping is meant to be called from the frame loop *after* a frame was processed: a
hung camera or interpreter then stops the pings and systemd restarts the service.
``watchdog()`` rate-limits itself, so calling it every frame costs one clock read and a compare.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)

__all__ = ["Notifier"]


def _env_watchdog_usec() -> Optional[int]:
    """WATCHDOG_USEC from the environment, if it is meant for this process (sd_watchdog_enabled)."""
    raw = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not raw:
        return None
    if pid and pid != str(os.getpid()):
        # The variable was inherited from a parent service: the watchdog is not ours.
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return None
    return usec if usec > 0 else None


class Notifier:
    """Sends sd_notify messages (READY, STATUS, WATCHDOG, STOPPING, RELOADING) to systemd."""

    def __init__(
        self,
        socket_path: Optional[str] = None,
        watchdog_usec: Optional[int] = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        path = os.environ.get("NOTIFY_SOCKET", "") if socket_path is None else socket_path
        if watchdog_usec is None:
            watchdog_usec = _env_watchdog_usec()
        if watchdog_usec is not None and watchdog_usec <= 0:
            raise ValueError(f"watchdog_usec must be a positive integer, got {watchdog_usec!r}")
        self._address: Optional[str] = None
        if path:
            # A leading '@' names a socket in the Linux abstract namespace.
            self._address = "\0" + path[1:] if path.startswith("@") else path
        self._watchdog_s: Optional[float] = (
            watchdog_usec / 1_000_000 if watchdog_usec is not None else None
        )
        self._clock = clock
        self._next_ping = float("-inf")
        self._sock: Optional[socket.socket] = None
        self._error_logged = False
        self._sent = 0

    @property
    def enabled(self) -> bool:
        """True when a notify socket is configured (the process runs under Type=notify)."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> Optional[float]:
        """The systemd watchdog timeout in seconds, or None when no watchdog is armed."""
        return self._watchdog_s

    @property
    def sent(self) -> int:
        """How many datagrams were sent successfully."""
        return self._sent

    def ready(self, status: Optional[str] = None) -> bool:
        """Tell systemd start-up (or a reload) has finished, optionally with a status line."""
        fields = ["READY=1"]
        if status is not None:
            fields.append("STATUS=" + _one_line(status))
        return self.notify("\n".join(fields))

    def status(self, text: str) -> bool:
        """Set the free-form status line shown by ``systemctl status``."""
        return self.notify("STATUS=" + _one_line(text))

    def watchdog(self) -> bool:
        """Ping the watchdog, at most once per half interval; True when a ping was sent."""
        if self._watchdog_s is None or self._address is None:
            return False
        now = self._clock()
        if now < self._next_ping:
            return False
        # Schedule the next ping even if this send fails, so a broken socket is not retried
        # (and logged) on every frame.
        self._next_ping = now + self._watchdog_s / 2
        return self.notify("WATCHDOG=1")

    def stopping(self, status: Optional[str] = None) -> bool:
        """Tell systemd the service is shutting down."""
        fields = ["STOPPING=1"]
        if status is not None:
            fields.append("STATUS=" + _one_line(status))
        return self.notify("\n".join(fields))

    def reloading(self) -> bool:
        """Tell systemd a configuration reload started; call ``ready()`` when it is done."""
        # MONOTONIC_USEC is required by Type=notify-reload (systemd >= 253), ignored before.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask systemd for more time to start or stop (EXTEND_TIMEOUT_USEC), e.g. a model load."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def notify(self, message: str) -> bool:
        """Send one raw sd_notify message; False (logged once) when it cannot be sent."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            if not self._error_logged:
                self._error_logged = True
                log.warning(
                    "systemd notify failed: %s (%s); further errors are not logged",
                    self._address.replace("\0", "@"),
                    exc,
                )
            return False
        self._sent += 1
        return True

    def close(self) -> None:
        """Close the socket; later calls reopen it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_line(text: str) -> str:
    """Status lines are newline-separated fields: keep one line."""
    return " ".join(str(text).split())
