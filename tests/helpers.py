"""Helpers shared by more than one test file (fixtures live in conftest.py and broker.py).

- ``wait``: poll a real condition until it holds, or fail naming it;
- alert records, a device MQTT config, the outbox, and a device link in its own process
  (``start_link_process``/``kill9``) for the MQTT and central tests;
- ``DictControl``: a small in-memory ControlAPI for the command tests;
- ``ar1``: seeded autocorrelated series like slowly changing image statistics.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, TypeVar

import numpy as np
import numpy.typing as npt
from broker import Broker
from scipy.signal import lfilter

from agent.errors import CommandError
from agent.mqtt import MqttConfig, alert_outbox_messages, topics
from agent.store import Store

REPO = Path(__file__).resolve().parents[1]


T = TypeVar("T")

def wait(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something true (returned) or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


def ar1(seed: int, frames: int, features: int, rho: float = 0.98) -> npt.NDArray[np.float32]:
    """Seeded AR(1) series with unit marginal variance, float32 like the ring buffer."""
    noise = np.random.default_rng(seed).normal(size=(frames, features)) * math.sqrt(1 - rho**2)
    return np.asarray(lfilter([1.0], [1.0, -rho], noise, axis=0), dtype=np.float32)


# -- the device's MQTT link -----------------------------------------------------------------


def make_alert(seq: int, *, device: str = "dev1", state: str = "firing",
               fingerprint: str = "00aa11bb22cc33dd", alert_id: str = "") -> Dict[str, Any]:
    """A schema-1 alert record as the alert manager makes them."""
    now = 1_700_000_000.0 + seq
    return {
        "schema": 1, "id": alert_id or f"a{seq:04x}", "fingerprint": fingerprint, "seq": seq,
        "transition": "firing" if state == "firing" else "resolved", "state": state,
        "ts": now, "starts_at": now, "ends_at": None if state == "firing" else now,
        "device": device, "camera": "cam0", "kind": "data_drift", "severity": "warning",
        "feature": "brightness", "metric": "psi", "value": 0.4, "threshold": 0.25,
        "expected": {"mean": 120.0}, "observed": {"mean": 60.0},
        "window": {"start": now - 60, "end": now, "frames": 600},
        "model": {"path": "m.tflite", "sha256": "ab"}, "message": f"brightness drifted #{seq}",
        "acknowledged": False, "snoozed_until": None,
    }


def link_config(broker: Broker, device: str = "dev1", **kw: Any) -> MqttConfig:
    """An enabled config pointing at the test broker, with fast timings."""
    base: Dict[str, Any] = dict(enabled=True, host=broker.host, port=broker.port,
                                device_id=device, keepalive=5, reconnect_min_s=1,
                                reconnect_max_s=1)
    base.update(kw)
    return MqttConfig(**base)


def put_alerts(store: Store, records: List[Dict[str, Any]], device: str = "dev1") -> None:
    """Write alert transitions with their outbox rows, as the alert manager does."""
    t = topics("edgewatch/v1", device)
    for record in records:
        store.put_alert(record, alert_outbox_messages(t, record))


def outbox_depth(store: Store) -> int:
    """Messages waiting in the device's outbox."""
    with store.read() as conn:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


_LINK_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from agent.mqtt import MqttConfig, MqttLink, alert_outbox_messages, topics
    from agent.store import Store
    sys.path.insert(0, {tests!r})
    from helpers import make_alert
    store = Store({db!r}, flush_interval_s=0.1).start()
    cfg = MqttConfig(enabled=True, host="127.0.0.1", port={port}, device_id={device!r},
                     keepalive={keepalive}, reconnect_min_s=1, reconnect_max_s=1)
    link = MqttLink(cfg, store)
    link.start()
    t = topics("edgewatch/v1", {device!r})
    for seq in range({first}, {last}):
        rec = make_alert(seq, device={device!r})
        store.put_alert(rec, alert_outbox_messages(t, rec))
    while True:
        with store.read() as conn:
            n = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        if n >= {expect_depth} and (link.connected or not {need_connected}):
            break
        time.sleep(0.05)
    print("ready", n, flush=True)
    time.sleep(600)
""")


def start_link_process(tmp_path: Path, broker: Broker, *, first: int = 0, last: int = 0,
                       keepalive: int = 2, need_connected: bool = True,
                       expect_depth: int = 0, device: str = "dev1") -> subprocess.Popen[str]:
    """A separate Python process running a Store + MqttLink; waits for its 'ready' line."""
    script = _LINK_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"),
                                 db=str(tmp_path / f"{device}.db"), port=broker.port,
                                 device=device,
                                 keepalive=keepalive, first=first, last=last,
                                 need_connected=need_connected, expect_depth=expect_depth)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("ready"):
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise AssertionError(f"link process did not start: {line!r} {err[-2000:]}")
    return proc


def kill9(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` as a power cut would (SIGKILL) and reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


# -- commands ---------------------------------------------------------------------------------

_KINDS = {"data_drift", "prediction_drift", "camera_fault", "anomaly", "performance"}
_FEATURES = {"brightness", "contrast", "blur"}


class DictControl:
    """A tiny in-memory ControlAPI (the real one is the AlertManager)."""

    def __init__(self) -> None:
        self.alerts: Dict[str, Dict[str, Any]] = {"a1": {"acknowledged": False}}
        self.snoozed: Dict[str, float] = {}
        self.disabled: Set[str] = set()
        self.thresholds: Dict[Tuple[str, Optional[str]], float] = {}
        self.rebaselines = 0
        self.calls: List[str] = []

    def _target(self, target: str) -> str:
        if target not in _KINDS | _FEATURES | set(self.alerts):
            raise CommandError(f"unknown target: {target} (a kind, a feature or an alert id)")
        return target

    def ack(self, alert: str, by: Optional[str] = None) -> Dict[str, Any]:
        self.calls.append("ack")
        if alert not in self.alerts:
            raise CommandError(f"unknown alert: {alert}")
        self.alerts[alert]["acknowledged"] = True
        return {"alert": alert, "acknowledged": True}

    def snooze(self, target: str, until: float, by: Optional[str] = None) -> Dict[str, Any]:
        self.calls.append("snooze")
        self.snoozed[self._target(target)] = until
        return {"target": target, "until": until}

    def disable(self, target: str, by: Optional[str] = None) -> Dict[str, Any]:
        self.calls.append("disable")
        self.disabled.add(self._target(target))
        return {"target": target, "enabled": False}

    def enable(self, target: str, by: Optional[str] = None) -> Dict[str, Any]:
        self.calls.append("enable")
        self.disabled.discard(self._target(target))
        return {"target": target, "enabled": True}

    def set_threshold(self, feature: str, value: float, metric: Optional[str] = None,
                      by: Optional[str] = None) -> Dict[str, Any]:
        self.calls.append("set_threshold")
        if feature not in _FEATURES:
            raise CommandError(f"unknown feature: {feature}")
        self.thresholds[(feature, metric)] = value
        return {"feature": feature, "metric": metric, "value": value}

    def rebaseline(self) -> Dict[str, Any]:
        self.calls.append("rebaseline")
        self.rebaselines += 1
        return {"rebaseline": "started"}

    def status(self) -> Dict[str, Any]:
        self.calls.append("status")
        return {"open_alerts": len(self.alerts)}
