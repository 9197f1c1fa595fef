"""``edgewatch status`` and ``alerts list`` output: for people, and full values in --json."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from agent.cli import main
from agent.cli._format import local_time
from agent.store import Store


def heartbeat(now: float, threads: bool = True) -> Dict[str, Any]:
    payload: Dict[str, Any] = {
        "interval_s": 30, "host": {"cpu_percent": 12.5, "memory_percent": None,
                                           "disk_free_mb": 76970.0},
        "model": {"path": "m.tflite", "sha256": None, "runtime": "ai_edge_litert",
                  "latency_ms": {"p50": 3.518, "p95": 4.2}},
        "camera": {"name": "cam0", "state": "ok", "frames": 100, "fps_processed": None},
        "outbox": {"depth": 0, "oldest_age_s": None, "dropped": 0}}
    if threads:
        payload["threads"] = {
            "edgewatch-store": {"alive": True, "critical": True, "failures": 2,
                                "consecutive": 0, "last_error": "WriterFault: disk",
                                "last_error_ts": now - 100},
            "edgewatch-capture": {"alive": False, "critical": True, "failures": 7,
                                  "consecutive": 7, "last_error": "SourceError: gone",
                                  "last_error_ts": now - 10}}
    return payload


def history(path: Path, threads: bool = True) -> Tuple[Path, float]:
    """A history with one heartbeat 150 s and one alert 90 s before the returned now."""
    now = time.time()
    with Store(str(path)) as st:
        st.put("heartbeats", {"seq": 1, "ts": now - 150, "payload": heartbeat(now, threads)})
        st.put_alert({"id": "abcdef1234567890", "fingerprint": "fp", "ts": now - 90,
                      "kind": "camera_fault", "severity": "critical", "state": "firing",
                      "feature": "black_frames", "message": "black\x1b[2J frames",
                      "starts_at": now - 90, "seq": 1})
    return path, now


def test_status_is_for_people(tmp_path: Path, capsys: Any) -> None:
    db, now = history(tmp_path / "h.db")
    assert main(["status", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "None" not in out and "{'" not in out and "\x1b" not in out  # no reprs, no escapes
    assert re.search(rf"last heartbeat 2m 3[0-2]s ago \({local_time(now - 150)}\)", out)
    assert "latency p50 3.518 ms, p95 4.2 ms" in out and "fps -" in out
    assert "disk free 75.2 GB," in out  # not 7.697e+04 MB
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("THREAD"))
    assert lines[header].split() == ["THREAD", "ALIVE", "CRITICAL", "FAILURES", "IN", "A", "ROW",
                                     "LAST", "ERROR", "WHEN"]
    capture = lines[header + 1]
    assert capture.split()[:5] == ["edgewatch-capture", "no", "yes", "7", "7"]
    assert capture.endswith(local_time(now - 10))
    # columns sized to their content: every row starts its second column at the same place
    starts = {line.index(line.split()[1], len(line.split()[0])) for line in lines[header:header + 3]}
    assert len(starts) == 1
    assert "abcdef123456  critical  camera_fault" in out and "black\\x1b[2J frames" in out


def test_status_without_thread_health_and_json_keeps_machine_values(tmp_path: Path,
                                                                    capsys: Any) -> None:
    db, now = history(tmp_path / "h.db", threads=False)
    assert main(["status", "--db", str(db)]) == 0
    assert "THREAD" not in capsys.readouterr().out
    assert main(["status", "--db", str(db), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["last_heartbeat_ts"] == now - 150  # unix seconds, full precision
    assert st["model"]["latency_ms"] == {"p50": 3.518, "p95": 4.2}
    assert st["alerts_open"][0]["starts_at"] == now - 90


def test_alerts_list_is_a_table_and_json_has_unix_seconds(tmp_path: Path, capsys: Any) -> None:
    db, now = history(tmp_path / "h.db")
    assert main(["alerts", "list", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "SEVERITY", "KIND", "FEATURE", "SINCE", "FOR",
                                "ACK", "SNOOZED", "MESSAGE"]
    assert local_time(now - 90) in lines[1] and re.search(" 1m 3[0-2]s ", lines[1])
    assert main(["alerts", "list", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["alerts"][0]["starts_at"] == now - 90


@pytest.mark.integration
def test_alerts_list_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    db = tmp_path / "many.db"
    with Store(str(db)) as st:
        for i in range(3000):  # far more than a pipe buffer holds
            st.put_alert({"id": f"a{i:06d}", "fingerprint": f"fp{i}", "ts": 1_700_000_000.0 + i,
                          "state": "firing", "kind": "anomaly", "severity": "warning",
                          "feature": "brightness", "message": "m" * 40, "seq": i})
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "alerts", "list", "--json",
                             "--limit", "5000", "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().strip() == b"{"  # `| head -1`
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert err == b""


def test_status_shows_the_fps_a_schema_3_heartbeat_measured(tmp_path: Path, capsys: Any) -> None:
    now = time.time()
    payload = heartbeat(now)
    payload["camera"].update(fps=24.5, dropped=3)
    with Store(str(tmp_path / "h.db")) as st:
        st.put("heartbeats", {"seq": 1, "ts": now - 5, "payload": payload})
    assert main(["status", "--db", str(tmp_path / "h.db")]) == 0
    assert "fps 24.5, dropped 3" in capsys.readouterr().out
