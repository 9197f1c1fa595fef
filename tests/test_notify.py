"""The sd_notify client against real Unix datagram sockets (a path one and an abstract one)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from agent.notify import Notifier


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _recv_all(sock: socket.socket) -> list[str]:
    """Every datagram waiting on ``sock``."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


@pytest.fixture()
def server(tmp_path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd's notify socket."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    try:
        yield sock, path
    finally:
        sock.close()


def test_messages_reach_the_socket_from_env(server, monkeypatch):
    sock, path = server
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    with Notifier() as n:
        assert n.enabled
        assert n.watchdog_interval_s is None
        assert n.ready(status="loading\nmodel") is True
        assert n.status("42 fps")
        assert n.stopping()
        assert n.reloading()
        assert n.extend_timeout(2.5)
        assert n.watchdog() is False  # no watchdog armed: nothing sent
    msgs = _recv_all(sock)
    assert msgs[0] == "READY=1\nSTATUS=loading model"
    assert msgs[1] == "STATUS=42 fps"
    assert msgs[2] == "STOPPING=1"
    assert msgs[3].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert int(msgs[3].split("=")[-1]) > 0
    assert msgs[4] == "EXTEND_TIMEOUT_USEC=2500000"
    assert len(msgs) == 5


def test_abstract_socket(monkeypatch):
    name = "edgewatch-test-" + uuid.uuid4().hex
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        n = Notifier()
        assert n.ready()
        n.close()
        assert _recv_all(sock) == ["READY=1"]
    finally:
        sock.close()


def test_watchdog_is_rate_limited_to_half_the_interval(server):
    sock, path = server
    clock = FakeClock()
    n = Notifier(path, watchdog_usec=10_000_000, clock=clock)
    assert n.watchdog_interval_s == 10.0
    sent = 0
    for _ in range(1000):  # a burst of frames in the same instant: one ping
        sent += n.watchdog()
    assert sent == 1
    clock.now += 4.9
    assert n.watchdog() is False
    clock.now += 0.1  # half the interval since the first ping
    assert n.watchdog() is True
    n.close()
    assert _recv_all(sock) == ["WATCHDOG=1", "WATCHDOG=1"]


def test_watchdog_env_respects_watchdog_pid(server, monkeypatch):
    _, path = server
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier(path).watchdog_interval_s == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # inherited from a parent
    assert Notifier(path).watchdog_interval_s is None
    monkeypatch.delenv("WATCHDOG_PID")
    assert Notifier(path).watchdog_interval_s == 30.0


def test_without_notify_socket_everything_is_a_quiet_noop(monkeypatch, caplog):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier(watchdog_usec=1_000_000)
    assert not n.enabled
    with caplog.at_level(logging.DEBUG, logger="agent.notify"):
        assert n.ready("x") is False
        assert n.watchdog() is False
        assert n.stopping() is False
    assert caplog.records == []
    assert n.sent == 0


def test_send_errors_are_logged_once_and_never_raised(tmp_path, caplog):
    n = Notifier(str(tmp_path / "nobody-listens.sock"), watchdog_usec=1_000_000)
    with caplog.at_level(logging.WARNING, logger="agent.notify"):
        for _ in range(5):
            assert n.status("hello") is False
    n.close()
    assert len(caplog.records) == 1
    assert "systemd notify failed" in caplog.records[0].getMessage()
    assert n.sent == 0


def test_rejects_a_nonpositive_watchdog():
    with pytest.raises(ValueError, match="watchdog_usec"):
        Notifier("/nonexistent", watchdog_usec=0)
