"""``edgewatch alerts``: against a running agent (control socket) and with no agent (offline)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from helpers import wait

from agent._sqlite import holder_info
from agent.cli import main
from agent.errors import StoreError
from agent.store import Reader, Store

_CONNECTS: List[str] = []
_WATCH = {"on": False}


def _audit(event: str, args: Any) -> None:
    if event == "sqlite3.connect" and _WATCH["on"]:
        _CONNECTS.append(str(args[0]))


sys.addaudithook(_audit)


def firing(db: Path, feature: str) -> List[Dict[str, Any]]:
    """Firing alerts of ``feature`` in ``db`` (none while the file is not there yet)."""
    if not db.exists():
        return []
    reader = Reader(str(db))
    try:
        return [a for a in reader.alerts(state="firing") if a["feature"] == feature]
    except StoreError:
        return []  # not migrated yet
    finally:
        reader.close_reader()



@pytest.mark.integration
def test_alerts_cli_talks_to_the_running_agent(tmp_path: Path, write_config: Any,
                                               capsys: Any) -> None:
    db = tmp_path / "live.db"
    cfg = write_config(tmp_path / "live.toml",
                       source={"uri": "emulated:black?seed=1&size=320x240&onset=0", "fps": 30},
                       store={"path": db, "flush_interval_s": 0.2},
                       rules={"black_for_s": 0.5, "window_s": 1.0},
                       drift={"eval_interval_s": 0.5})
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        fired = wait(lambda: firing(db, "black_frames"), timeout=60, what="black_frames firing")
        assert fired, "the black camera should have fired camera_fault/black_frames"
        alert_id = fired[0]["id"]
        assert holder_info(str(db)) == {"pid": proc.pid, "control_socket": f"{db}.sock"}
        assert main(["status", "--db", str(db)]) == 0
        assert capsys.readouterr().out.startswith(f"agent:     running (pid {proc.pid}), ")
        _WATCH["on"] = True
        assert main(["alerts", "list", "--db", str(db)]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0].split() == ["ID", "STATE", "SEVERITY", "KIND", "FEATURE",
                                               "SINCE", "FOR", "ACK", "SNOOZED", "MESSAGE"]
        assert alert_id[:12] in out
        assert main(["alerts", "ack", alert_id[:12], "--by", "ops@desk", "--db", str(db)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("ok: acknowledged " + alert_id[:12]) and "not running" not in out
        assert "by ops@desk" in out
        assert main(["alerts", "ack", alert_id[:12], "--by", "someone@else", "--db", str(db)]) == 0
        assert "by ops@desk" in capsys.readouterr().out  # idempotent: the first ack stands

        def listed_acked() -> bool:
            main(["alerts", "list", "--db", str(db)])
            return "ops@desk" in capsys.readouterr().out
        wait(listed_acked, what="alerts list shows who acknowledged")
        assert main(["alerts", "ack", "nope", "--db", str(db)]) == 7
        assert "no firing alert" in capsys.readouterr().err
        assert main(["alerts", "disable", "brightness", "--db", str(db)]) == 0
        assert main(["alerts", "set", "contrast", "0.5", "--db", str(db)]) == 0
        assert main(["alerts", "snooze", "anomaly", "--for", "30m", "--db", str(db)]) == 0
        assert main(["alerts", "snooze", "anomaly", "--for", "90d", "--db", str(db)]) == 7
        capsys.readouterr()
        _WATCH["on"] = False
        # The CLI opened the database read-only only: the agent is its one writer.
        assert _CONNECTS and all("mode=ro" in c for c in _CONNECTS), _CONNECTS
        controls = wait(lambda: {(c["kind"], c["target"])
                                       for c in Reader(str(db)).controls()} >= {
            ("ack", fired[0]["fingerprint"]), ("disable", "brightness"),
            ("threshold", "contrast"), ("snooze", "anomaly")}, 10)
        assert controls
        assert main(["alerts", "list", "--db", str(db), "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert isinstance(listed["alerts"][0]["ts"], float)  # machine values in --json
        conn = sqlite3.connect(db)
        verbs = wait(lambda: [r[0] for r in conn.execute(
            "SELECT verb FROM commands ORDER BY id")] if conn.execute(
            "SELECT count(*) FROM commands").fetchone()[0] >= 7 else None, 10)
        conn.close()
        assert verbs == ["ack", "ack", "ack", "disable", "set_threshold", "snooze", "snooze"]
    finally:
        _WATCH["on"] = False
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert not Path(f"{db}.sock").exists()


def test_alerts_cli_without_an_agent_applies_controls_like_the_agent(tmp_path: Path,
                                                                    capsys: Any) -> None:
    db = tmp_path / "off.db"
    with Store(str(db)) as st:
        st.put_alert({"schema": 1, "id": "a1b2c3d4e5f6a7b8", "fingerprint": "fp1", "seq": 4,
                      "transition": "firing", "state": "firing", "ts": 100.0,
                      "starts_at": 100.0, "ends_at": None, "device": "dev", "camera": "cam0",
                      "kind": "anomaly", "severity": "warning", "feature": "brightness",
                      "metric": "z", "value": 5.0, "threshold": 4.0, "expected": {},
                      "observed": {}, "window": {"start": 90.0, "end": 100.0, "frames": 300},
                      "model": {"path": "m", "sha256": "x"}, "message": "too dark",
                      "acknowledged": False, "snoozed_until": None})
    assert main(["alerts", "snooze", "data_drift", "--for", "1h", "--db", str(db)]) == 0
    assert "agent not running: saved in" in capsys.readouterr().out
    assert main(["alerts", "disable", "brightness", "--db", str(db)]) == 0
    assert "resolved a1b2c3d4e5f6" in capsys.readouterr().out
    assert main(["alerts", "enable", "contrast", "--db", str(db)]) == 7  # as the agent says
    assert "'contrast' is not disabled" in capsys.readouterr().err
    assert main(["alerts", "disable", "brightnes", "--db", str(db)]) == 7  # a typo: refused
    assert "unknown kind or feature 'brightnes'" in capsys.readouterr().err
    assert main(["alerts", "disable", "temperature", "--db", str(db)]) == 0  # device health
    reader = Reader(str(db))
    snooze = [c for c in reader.controls() if c["kind"] == "snooze"][0]
    assert 3500 < snooze["until"] - time.time() <= 3600
    assert ("disable", "brightness") in {(c["kind"], c["target"]) for c in reader.controls()}
    resolved = reader.alerts()[0]
    assert resolved["state"] == "resolved" and resolved["payload"]["seq"] == 5
    reader.close_reader()
    assert holder_info(str(db)) is None  # the CLI let go of the database


@pytest.mark.parametrize("argv", [["alerts", "list"], ["alerts", "disable", "blur"],
                                  ["status"], ["export", "--out", "x.db"]])
def test_a_typod_db_is_an_error_not_a_new_database(tmp_path: Path, capsys: Any, monkeypatch: Any,
                                                   argv: List[str]) -> None:
    db = tmp_path / "edgewatch.bd"
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--db", str(db)]) == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"database not found: {db}" in err and "--db" in err
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("content", [b"PK\x03\x04 a zip, not a database" * 50, "sqlite"])
@pytest.mark.parametrize("argv", [["alerts", "list"], ["alerts", "snooze", "blur"],
                                  ["status"], ["export", "--out", "out.db"]])
def test_a_foreign_file_is_one_line(tmp_path: Path, capsys: Any, monkeypatch: Any, content: Any,
                                    argv: List[str]) -> None:
    db = tmp_path / "foreign.db"
    if content == "sqlite":
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE photos (name TEXT)")
        conn.commit()
        conn.close()
    else:
        db.write_bytes(content)
    before = db.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--db", str(db)]) == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"not an edgewatch database: {db}" in err, err
    assert "free space" not in err and "Traceback" not in err
    assert db.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["foreign.db"]


@pytest.mark.integration
def test_a_read_only_database_is_one_line(tmp_path: Path) -> None:
    if not shutil.which("unshare") or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs a private mount namespace (unshare -m) for a read-only mount")
    ro = tmp_path / "ro"
    ro.mkdir()
    Store(str(ro / "h.db")).start().close()
    script = (f"mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} {ro} && "
              f"{sys.executable} -m agent.cli alerts disable blur --db {ro}/h.db; "
              f"echo rc=$?; {sys.executable} -m agent.cli alerts list --db {ro}/h.db")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, timeout=60)
    assert "rc=5" in proc.stdout and "no firing alerts" in proc.stdout  # reading still works
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"database is read-only: {ro}/h.db" in proc.stderr
    assert "mounted read-only" in proc.stderr and "free space" not in proc.stderr
