"""The owned loop under systemd and MQTT: notify protocol, watchdog on stalls, a broker end to end."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

from agent.config import load_config
from agent.emulated import EmulatedFeed
from agent.loop import replay, run
from agent.notify import Notifier
from agent.sources import open_source


class StallingSource:
    """A live source that delivers frames, then hangs like a dead camera driver.

    A physical camera cannot be hung on purpose here, so an emulated feed stands in and
    ``read()`` blocks once ``stall`` is set.
    """

    fps: Optional[float] = 30.0
    name = "stalling"
    live = True

    def __init__(self) -> None:
        self.feed = EmulatedFeed("stationary", seed=1, size=(320, 240))
        self.stall = threading.Event()
        self.closed = threading.Event()

    def read(self) -> Optional[np.ndarray]:
        if self.stall.is_set():
            self.closed.wait()
            return None
        time.sleep(1 / 30)
        return self.feed.read()

    def close(self) -> None:
        self.closed.set()


def test_ready_watchdog_stops_when_the_loop_stalls_then_stopping(tmp_path: Path, model_path: Path) -> None:
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.2)
    received: List[tuple] = []

    def drain(until: float) -> None:
        while time.monotonic() < until:
            try:
                received.append((time.monotonic(), sock.recv(4096).decode()))
            except socket.timeout:
                pass

    cfg = load_config({"model": {"path": str(model_path)},
                       "store": {"path": str(tmp_path / "n.db"), "flush_interval_s": 0.2},
                       "health": {"enabled": False}, "service": {"status_interval_s": 1}})
    notifier = Notifier(sock_path, watchdog_usec=400_000)
    source = StallingSource()
    stop = threading.Event()
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("code", run(
        cfg, notifier=notifier, stop=stop, source=source)))
    t.start()
    try:
        drain(time.monotonic() + 3)
        msgs = [m for _, m in received]
        assert any(m.startswith("READY=1") for m in msgs)
        assert any(m.startswith("STATUS=") for m in msgs)
        assert sum(m == "WATCHDOG=1" for m in msgs) >= 3
        source.stall.set()
        stalled_at = time.monotonic() + 0.3
        drain(time.monotonic() + 2.5)
        late = [m for when, m in received if when > stalled_at and m == "WATCHDOG=1"]
        assert late == [], "watchdog pings must stop while no frame is processed"
    finally:
        stop.set()
        t.join(timeout=20)
        drain(time.monotonic() + 0.5)
        notifier.close()
        sock.close()
    assert result.get("code") == 0
    assert any(m.startswith("STOPPING=1") for _, m in received)


@pytest.mark.integration
def test_replay_publishes_alerts_and_heartbeats_and_answers_commands(
        tmp_path: Path, model_path: Path, broker: Any, listeners: Any) -> None:
    device = "cam-e2e"
    base = f"edgewatch/v1/{device}"
    sub = listeners(broker, [f"{base}/#"])
    sub.wait_connected()
    cfg = load_config({
        "device": {"id": device},
        "model": {"path": str(model_path)},
        "store": {"path": str(tmp_path / "m.db"), "flush_interval_s": 0.2, "window_s": 10},
        "drift": {"warmup_s": 40, "window_frames": 300, "eval_interval_s": 2, "for_s": 6},
        "stats": {"capacity": 1024}, "health": {"enabled": False},
        "mqtt": {"enabled": True, "host": broker.host, "port": broker.port,
                 "heartbeat_interval_s": 1.0, "keepalive": 5},
    })
    replay(cfg, open_source("emulated:black?seed=2&size=320x240&onset=50&duration=70"), fps=30)
    msgs = sub.wait_for(lambda ms: any(m.topic == f"{base}/alerts" for m in ms), timeout=15)
    alerts = [json.loads(m.payload) for m in msgs if m.topic == f"{base}/alerts"]
    black = [a for a in alerts if a["feature"] == "black_frames"]
    assert black and black[0]["transition"] == "firing" and black[0]["device"] == device
    assert {"id", "fingerprint", "seq", "kind", "severity", "message", "window", "expected",
            "observed", "model"} <= set(black[0])
    status = [m.payload.decode() for m in msgs if m.topic == f"{base}/status"]
    assert status[0] == "online" and status[-1] == "offline"  # published at clean shutdown
    # every alert written to SQLite was delivered: the outbox is empty
    import sqlite3

    db = sqlite3.connect(tmp_path / "m.db")
    assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    stored = db.execute("SELECT count(*) FROM alerts").fetchone()[0]
    assert stored == len({a["id"] for a in alerts})


class OutageSource:
    """An emulated night feed that stops the broker mid-replay and restarts it later.

    It paces frames a little so the MQTT link notices the outage, and at the end holds the
    last read until the outbox has drained (or a timeout), so delivery is checked live.
    """

    fps: Optional[float] = 30.0
    name = "outage"
    live = False

    def __init__(self, broker: Any, db: Path, stop_at: int, start_at: int, total: int) -> None:
        self.feed = EmulatedFeed("night", seed=3, size=(320, 240), onset=40)
        self.broker, self.db = broker, db
        self.stop_at, self.start_at, self.total = stop_at, start_at, total
        self.i = 0
        self.alerts_while_down = 0

    def _outbox(self) -> int:
        import sqlite3

        conn = sqlite3.connect(self.db)
        try:
            return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        finally:
            conn.close()

    def read(self) -> Optional[np.ndarray]:
        if self.i == self.stop_at:
            self.broker.stop()
        if self.i == self.start_at:
            self.alerts_while_down = self._outbox()
            self.broker.start()
        if self.i >= self.total:
            deadline = time.monotonic() + 30
            while self._outbox() and time.monotonic() < deadline:
                time.sleep(0.2)
            return None
        self.i += 1
        if self.stop_at <= self.i < self.start_at:
            time.sleep(0.002)  # the outage lasts a few seconds of wall time
        return self.feed.read()

    def close(self) -> None:
        """Nothing to release."""


@pytest.mark.integration
def test_broker_outage_mid_replay_loses_no_alert(tmp_path: Path, model_path: Path, broker: Any,
                                                 listeners: Any) -> None:
    import sqlite3

    device = "cam-outage"
    sub = listeners(broker, [f"edgewatch/v1/{device}/alerts"], client_id="ops-outage",
                    persistent=True)
    sub.wait_connected()
    db = tmp_path / "o.db"
    cfg = load_config({
        "device": {"id": device}, "model": {"path": str(model_path)},
        "store": {"path": str(db), "flush_interval_s": 0.2},
        "drift": {"warmup_s": 30, "window_frames": 300, "eval_interval_s": 2, "for_s": 4,
                  "clear_for_s": 4},
        "stats": {"capacity": 1024}, "health": {"enabled": False},
        "mqtt": {"enabled": True, "host": broker.host, "port": broker.port, "keepalive": 5,
                 "reconnect_min_s": 1, "reconnect_max_s": 2},
    })
    source = OutageSource(broker, db, stop_at=900, start_at=2400, total=2700)
    replay(cfg, source, fps=30)
    assert source.alerts_while_down > 0, "alerts must have been queued while the broker was down"
    conn = sqlite3.connect(db)
    stored = sorted(json.loads(r[0])["seq"] for r in conn.execute("SELECT payload FROM alerts"))
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    every = set(range(1, max(stored) + 1))  # every transition, not only each alert's last
    msgs = sub.wait_for(lambda ms: {json.loads(m.payload)["seq"] for m in ms} >= every,
                        timeout=20)
    seqs = [json.loads(m.payload)["seq"] for m in msgs]
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == sorted(first_seen)  # in order (QoS 1 may repeat one)


# ---- supervised threads ------------------------------------------------------------------
class FailingSource:
    """A camera whose driver raises: every read, or every ``every``-th one.

    A physical camera cannot be made to fail on purpose here, so an emulated feed stands in
    and ``read()`` raises the way a broken driver binding does.
    """

    fps: Optional[float] = 30.0
    name = "failing"
    live = True

    def __init__(self, every: int = 1) -> None:
        self.feed = EmulatedFeed("stationary", seed=1, size=(320, 240))
        self.every = every
        self.reads = 0

    def read(self) -> Optional[np.ndarray]:
        self.reads += 1
        if self.reads % self.every == 0:
            raise RuntimeError("driver crashed")
        time.sleep(1 / 60)
        return self.feed.read()

    def close(self) -> None:
        """Nothing to release."""


def supervised_config(tmp_path: Path, model_path: Path) -> Any:
    return load_config({"model": {"path": str(model_path)},
                        "source": {"reconnect_initial_s": 0.01, "reconnect_max_s": 1},
                        "store": {"path": str(tmp_path / "s.db"), "flush_interval_s": 0.2},
                        "health": {"enabled": False},
                        "service": {"heartbeat_interval_s": 1, "status_interval_s": 0}})


def stored_heartbeats(db: Path) -> List[Dict[str, Any]]:
    import sqlite3

    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return [json.loads(r[0]) for r in conn.execute("SELECT payload FROM heartbeats")]
    except sqlite3.OperationalError:  # the agent has not created its tables yet
        return []
    finally:
        conn.close()


def test_a_failing_capture_step_is_counted_and_reported_in_the_heartbeat(
        tmp_path: Path, model_path: Path) -> None:
    cfg = supervised_config(tmp_path, model_path)
    stop = threading.Event()
    result: Dict[str, int] = {}
    t = threading.Thread(target=lambda: result.setdefault("code", run(
        cfg, stop=stop, source=FailingSource(every=5))))
    t.start()
    try:
        deadline = time.monotonic() + 60
        failing: List[Dict[str, Any]] = []
        while not failing and time.monotonic() < deadline:
            failing = [h for h in stored_heartbeats(Path(cfg.store.path))
                       if h["threads"].get("edgewatch-capture", {}).get("failures", 0) >= 1]
            time.sleep(0.1)  # polling the database for the real condition
    finally:
        stop.set()
        t.join(timeout=30)
    assert failing, "no heartbeat reported the capture's failures"
    capture = failing[-1]["threads"]["edgewatch-capture"]
    assert capture["alive"] and capture["critical"]
    assert capture["last_error"] == "RuntimeError: driver crashed"
    assert failing[-1]["camera"]["frames"] > 0  # frames kept flowing between failures
    assert failing[-1]["camera"]["dropped"] >= capture["failures"]  # each failed read lost one
    assert result["code"] == 0


def test_a_critical_thread_that_keeps_failing_makes_run_exit_non_zero(
        tmp_path: Path, model_path: Path, caplog: Any) -> None:
    cfg = supervised_config(tmp_path, model_path)
    with caplog.at_level("ERROR"):
        code = run(cfg, source=FailingSource(every=1), stop=threading.Event())
    assert code != 0
    why = [r.getMessage() for r in caplog.records if "edgewatch-capture failed" in r.getMessage()
           and "in a row" in r.getMessage() and r.levelname in ("CRITICAL", "ERROR")]
    assert any("RuntimeError: driver crashed" in m for m in why), caplog.text
    assert "restarts edgewatch" in caplog.text


# The thread's death is the point: pytest would otherwise turn it into an error.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_thread_shows_in_the_next_heartbeat(tmp_path: Path, model_path: Path,
                                                   caplog: Any) -> None:
    from agent.service import Agent

    cfg = supervised_config(tmp_path, model_path)
    agent = Agent.start(cfg, model_info={"path": str(model_path), "sha256": ""})
    try:
        def dies() -> None:
            raise SystemExit("a library called sys.exit() in a worker")

        worker = agent.supervisor.spawn("edgewatch-doomed", dies)
        worker.join(10)
        before = agent.heartbeats.current().threads
        with caplog.at_level("ERROR"):
            agent.heartbeats.step()  # the next heartbeat tick
        beat = agent.heartbeat()
    finally:
        agent.close()
    assert before["edgewatch-doomed"]["alive"] is False
    assert beat.threads["edgewatch-doomed"]["alive"] is False
    assert beat.threads["edgewatch-heartbeat"]["alive"] is True
    assert "edgewatch-doomed thread has died" in caplog.text
    stored = stored_heartbeats(Path(cfg.store.path))
    assert stored and stored[-1]["threads"]["edgewatch-doomed"]["alive"] is False


def test_the_heartbeat_is_a_typed_record_with_the_json_keys_it_always_had(
        tmp_path: Path, model_path: Path) -> None:
    from agent.heartbeat import Heartbeat
    from agent.service import Agent

    cfg = supervised_config(tmp_path, model_path)
    agent = Agent.start(cfg, model_info={"path": str(model_path), "sha256": "abc"})
    try:
        beat = agent.heartbeat()
    finally:
        agent.close()
    assert isinstance(beat, Heartbeat)
    keys = {"schema", "device", "agent_version", "seq", "ts", "interval_s", "uptime_s", "model",
            "camera", "stats", "confidence", "drift", "reference", "warmup", "alerts_open",
            "host", "agent", "queues", "outbox", "mqtt"}
    payload = beat.to_dict()
    assert set(payload) == keys | {"threads", "errors", "monitoring", "drift_scores", "summary"}
    assert {"edgewatch-heartbeat", "edgewatch-store", "edgewatch-control"} <= set(payload["threads"])
    assert payload["errors"] == {"bad_frames": 0, "hook_errors": 0, "last_hook_error": None}
    assert json.loads(json.dumps(payload)) == payload


@pytest.mark.parametrize("warmup_s, warned", [(10, True), (40, False)])
def test_a_warm_up_too_short_for_its_windows_is_said_at_start_in_one_line(
        tmp_path: Path, model_path: Path, caplog: pytest.LogCaptureFixture, warmup_s: int,
        warned: bool) -> None:
    """15 fps x 10 s = 150 frames < 2 x 300: said at start, before any frame (not 20 s later)."""
    cfg = load_config({"model": {"path": str(model_path)},
                       "store": {"path": str(tmp_path / "w.db")}, "health": {"enabled": False},
                       "drift": {"warmup_s": warmup_s, "window_frames": 300}})
    source = open_source("emulated:stationary?seed=1&size=160x120&fps=15")
    with caplog.at_level(logging.WARNING, logger="agent.loop"):
        replay(cfg, source, max_frames=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "agent.loop"]
    if not warned:
        assert lines == []
        return
    assert lines == ["drift: the warm-up cannot learn a reference: [drift] warmup_s 10 s x 15 fps "
                     "= 150 frames, fewer than the 600 a reference needs (2 x [drift] "
                     "window_frames 300): raise [drift] warmup_s to at least 40 s or lower "
                     "[drift] window_frames to at most 75"]
