"""Fixtures shared by the central's tests: a started Central, a webhook receiver, a query."""

from __future__ import annotations

import http.server
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from agent.central import Central
from agent.central._postgres import translate


def query(db: Path, sql: str, *args: Any) -> List[Tuple[Any, ...]]:
    """Rows of ``sql`` on the SQLite file ``db``."""
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


@dataclass
class CentralDb:
    """The central's database in a test: a SQLite file or a PostgreSQL database."""

    kind: str  # "sqlite" or "postgresql"
    target: str  # what --db takes

    def query(self, sql: str, *args: Any) -> List[Tuple[Any, ...]]:
        """Rows of ``sql`` (SQLite dialect, ``?`` placeholders) in its own transaction."""
        if self.kind == "sqlite":
            return query(Path(self.target), sql, *args)
        import psycopg

        with psycopg.connect(self.target, autocommit=True) as conn:
            cur = conn.execute(translate(sql), args)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []

    def script(self, sql: str) -> None:
        """Run several statements separated by ``;``."""
        for statement in sql.split(";"):
            if statement.strip():
                self.query(statement)

    def set_version(self, version: int) -> None:
        """Stamp the schema version as an older or newer edgewatch would have."""
        if self.kind == "sqlite":
            self.query(f"PRAGMA user_version={version}")
        else:
            self.query("CREATE TABLE IF NOT EXISTS schema_version (version INT NOT NULL)")
            self.query("DELETE FROM schema_version")
            self.query("INSERT INTO schema_version VALUES (?)", version)

    def version(self) -> int:
        """The schema version stamped in the database."""
        if self.kind == "sqlite":
            return int(self.query("PRAGMA user_version")[0][0])
        return int(self.query("SELECT max(version) FROM schema_version")[0][0])


@pytest.fixture(params=["sqlite", "postgresql"])
def central_db(request: pytest.FixtureRequest, tmp_path: Path) -> CentralDb:
    """The central's database, once on SQLite and once on PostgreSQL (a fresh database)."""
    if request.param == "sqlite":
        return CentralDb("sqlite", str(tmp_path / "central.db"))
    return CentralDb("postgresql", request.getfixturevalue("pg_url"))


def heartbeat(device: str, seq: int, interval: float = 30.0) -> Dict[str, Any]:
    """The heartbeat fields the central relies on."""
    return {"schema": 1, "device": device, "seq": seq, "ts": time.time(), "interval_s": interval,
            "camera": {"state": "ok", "fps_in": 15.0, "fps_processed": 14.5},
            "host": {"max_temp_c": 61.0, "cpu_percent": 30.0}}


@pytest.fixture
def central_factory(tmp_path: Path) -> Iterator[Callable[..., Central]]:
    """``make(broker, db=None, **kw)``: a started Central (on ``tmp_path/central.db`` unless
    ``db`` is given), subscribed."""
    made: List[Central] = []

    def make(broker: Any, db: Optional[str] = None, **kw: Any) -> Central:
        kw.setdefault("keepalive", 5)
        kw.setdefault("group_wait_s", 0.0)  # notifications at once unless a test groups them
        kw.setdefault("group_interval_s", 0.0)
        central = Central(broker.host, broker.port, db or str(tmp_path / "central.db"), **kw)
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

