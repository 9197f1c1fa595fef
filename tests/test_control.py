"""The control socket: a real Unix socket, a real AlertManager behind it, real SQLite locks."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any, Dict, List

import pytest

from agent._sqlite import AgentLockedError, holder_info
from agent.alerts import AlertManager
from agent.config import load_config
from agent.control import AgentUnavailable, ControlServer, control_request, send, socket_path
from agent.errors import CommandError, ConfigError
from agent.store import Store


class Api:
    """The operator API of a bare AlertManager (what the agent's Controls delegate to)."""

    def __init__(self) -> None:
        self.alerts = AlertManager(device="d", camera="c", model={}, emit=lambda r: None)

    def ack(self, alert: str, by: Any = None) -> Dict[str, Any]:
        return self.alerts.ack(alert, by)

    def snooze(self, target: str, until: float, by: Any = None) -> Dict[str, Any]:
        return self.alerts.snooze(target, until, by)

    def disable(self, target: str, by: Any = None) -> Dict[str, Any]:
        return self.alerts.disable(target, 0.0, by)

    def enable(self, target: str, by: Any = None) -> Dict[str, Any]:
        return self.alerts.enable(target, by)

    def set_threshold(self, feature: str, value: float, metric: Any = None,
                      by: Any = None) -> Dict[str, Any]:
        return self.alerts.set_threshold(feature, value, metric or "", by)

    def rebaseline(self) -> Dict[str, Any]:
        return {"rebaseline": "warm-up started"}

    def status(self) -> Dict[str, Any]:
        return {"running": True}


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "ctl.sock")


def test_server_answers_one_json_line_per_request(sock_path: str) -> None:
    recorded: List[Any] = []
    server = ControlServer(sock_path, Api(), record=lambda *a: recorded.append(a)).start()
    try:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660  # the operators' group
        assert control_request(sock_path, "disable", {"target": "anomaly"}) == {
            "ok": True, "result": {"disabled": "anomaly", "resolved": [], "by": None}}
        answer = control_request(sock_path, "enable", {"target": "blur"})
        assert answer["ok"] is False and "'blur' is not disabled" in answer["error"]
        answer = control_request(sock_path, "snooze", {"target": "anomaly", "duration": "x"})
        assert answer["ok"] is False and "duration must be like" in answer["error"]
        assert control_request(sock_path, "status", {}) == {"ok": True,
                                                            "result": {"running": True}}
        assert [r[0] for r in recorded] == ["disable", "enable", "snooze", "status"]
        with socket.socket(socket.AF_UNIX) as raw:  # several lines on one connection
            raw.connect(sock_path)
            raw.sendall(b'{not json\n["x"]\n{"verb": "ping", "payload": {}}\n')
            with raw.makefile("rb") as reader:
                answers = [json.loads(reader.readline()) for _ in range(3)]
        assert "not JSON" in answers[0]["error"]
        assert "request must be" in answers[1]["error"]
        assert answers[2] == {"ok": True, "result": {"pong": True}}
        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(sock_path)
            raw.sendall(b"x" * 70000)  # no newline, over the 64 KiB limit
            with raw.makefile("rb") as reader:
                assert "request longer than 65536 bytes" in json.loads(reader.readline())["error"]
        assert control_request(sock_path, "ping", {})["ok"]  # still serving
    finally:
        server.close()
    assert not os.path.exists(sock_path)  # removed at close
    with pytest.raises(AgentUnavailable, match="no agent listens"):
        control_request(sock_path, "ping", {})


def test_a_stale_socket_from_a_crash_is_replaced(sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)  # bound, never listening, then abandoned: what a crash leaves
    stale.close()
    with pytest.raises(AgentUnavailable):
        control_request(sock_path, "ping", {})
    server = ControlServer(sock_path, Api()).start()
    try:
        assert control_request(sock_path, "ping", {})["ok"]
        with pytest.raises(ConfigError, match="another process listens"):
            ControlServer(sock_path, Api()).start()  # a live one is never taken over
    finally:
        server.close()


def test_a_file_that_is_not_a_socket_is_refused(sock_path: str) -> None:
    Path(sock_path).write_text("precious")
    with pytest.raises(ConfigError, match="not a socket"):
        ControlServer(sock_path, Api()).start()
    assert Path(sock_path).read_text() == "precious"


def test_socket_path_defaults_and_length(tmp_path: Path) -> None:
    cfg = load_config({"store": {"path": str(tmp_path / "h.db")}})
    assert socket_path(cfg, {}) == str(tmp_path / "h.db") + ".sock"
    assert socket_path(cfg, {"RUNTIME_DIRECTORY": "/run/edgewatch"}) == \
        "/run/edgewatch/edgewatch.sock"
    cfg = load_config({"service": {"control_socket": "/run/x.sock"}})
    assert socket_path(cfg, {"RUNTIME_DIRECTORY": "/run/edgewatch"}) == "/run/x.sock"
    deep = load_config({"store": {"path": "/var/" + "d" * 120 + "/h.db"}})
    with pytest.raises(ConfigError, match=r"too long for a Unix socket .*control_socket"):
        socket_path(deep, {})
    with pytest.raises(ConfigError, match="control_socket"):
        load_config({"service": {"control_socket": "/" + "s" * 200}})


def test_the_running_store_holds_the_database(tmp_path: Path) -> None:
    db = str(tmp_path / "h.db")
    assert holder_info(db) is None
    store = Store(db).start()
    try:
        store.advertise(control_socket="/run/x.sock")
        assert holder_info(db) == {"pid": os.getpid(), "control_socket": "/run/x.sock"}
        with pytest.raises(AgentLockedError, match=f"pid {os.getpid()}"):
            Store(db, lock_wait_s=0.1).start()
    finally:
        store.close()
    assert holder_info(db) is None
    Store(db, lock_wait_s=0.0).start().close()  # free again


def test_send_reports_an_agent_that_holds_the_database_but_does_not_answer(tmp_path: Path
                                                                        ) -> None:
    cfg = load_config({"store": {"path": str(tmp_path / "h.db")}})
    store = Store(cfg.store.path).start()  # holds the lock; nothing listens
    try:
        with pytest.raises(CommandError, match=r"holds .*h\.db but does not answer on "
                                               r".*h\.db\.sock"):
            send(cfg, "disable", {"target": "blur"}, timeout=0.3)
        server = ControlServer(str(tmp_path / "elsewhere.sock"), Api()).start()
        try:
            store.advertise(control_socket=server.path)  # where it listens is advertised
            assert send(cfg, "disable", {"target": "blur"})["result"]["disabled"] == "blur"
        finally:
            server.close()
    finally:
        store.close()
    with pytest.raises(AgentUnavailable, match="rebaseline needs the running agent"):
        send(cfg, "rebaseline", {})
