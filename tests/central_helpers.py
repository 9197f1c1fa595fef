"""Fixtures shared by the central's tests: a started Central, a webhook receiver, a query."""

from __future__ import annotations

import http.server
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from agent.central import Central


def query(db: Path, sql: str, *args: Any) -> List[Tuple[Any, ...]]:
    """Rows of ``sql`` on the SQLite file ``db``."""
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def heartbeat(device: str, seq: int, interval: float = 30.0) -> Dict[str, Any]:
    """The heartbeat fields the central relies on."""
    return {"schema": 1, "device": device, "seq": seq, "ts": time.time(), "interval_s": interval,
            "camera": {"state": "ok", "fps_in": 15.0, "fps_processed": 14.5},
            "host": {"max_temp_c": 61.0, "cpu_percent": 30.0}}


@pytest.fixture
def central_factory(tmp_path: Path) -> Iterator[Callable[..., Central]]:
    """``make(broker, **kw)``: a started Central on ``tmp_path/central.db``, subscribed."""
    made: List[Central] = []

    def make(broker: Any, **kw: Any) -> Central:
        kw.setdefault("keepalive", 5)
        kw.setdefault("group_wait_s", 0.0)  # notifications at once unless a test groups them
        central = Central(broker.host, broker.port, str(tmp_path / "central.db"), **kw)
        made.append(central)
        central.start()
        assert central.subscribed.wait(5), "central did not connect and subscribe"
        return central

    yield make
    for central in made:
        central.stop()


class Hook(http.server.BaseHTTPRequestHandler):
    """A webhook receiver that fails the first ``fail_first`` POSTs with HTTP 500."""

    received: List[Dict[str, Any]] = []
    fail_first = 0
    attempts = 0
    url = ""
    cond = threading.Condition()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with Hook.cond:
            Hook.attempts += 1
            if Hook.attempts <= Hook.fail_first:
                self.send_response(500)
                self.end_headers()
                return
            Hook.received.append(json.loads(body))
            Hook.cond.notify_all()
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass

    @classmethod
    def wait_for(cls, n: int, timeout: float = 10.0) -> List[Dict[str, Any]]:
        """The first ``n`` bodies received, waiting for them."""
        with cls.cond:
            assert cls.cond.wait_for(lambda: len(cls.received) >= n, timeout), cls.received
            return list(cls.received)


@pytest.fixture
def webhook() -> Iterator[type[Hook]]:
    """A local HTTP receiver; ``webhook.url``, ``.received``, ``.fail_first`` (default 1)."""
    Hook.received, Hook.fail_first, Hook.attempts = [], 1, 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Hook.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield Hook
    server.shutdown()
    server.server_close()

