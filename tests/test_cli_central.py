"""``edgewatch central`` and ``edgewatch fleet`` at the command-line boundary.

One spelling per idea, ``--config`` for the broker, output for people (escaped device text,
local times) and ``--json`` for machines, one-line errors with exit codes, a central that
says at once why it cannot reach the broker and keeps trying.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Dict

import broker as broker_fixtures
import central_helpers
import pytest
from helpers import DictControl, link_config, make_alert, wait

from agent.central import CentralStore
from agent.central.records import parse
from agent.cli import main
from agent.commands import handle_command
from agent.mqtt import MqttLink
from agent.store import Store

central_factory = central_helpers.central_factory

P = "edgewatch/v1"
REPO = Path(__file__).resolve().parent.parent


def start_central(*args: str) -> subprocess.Popen[str]:
    """``edgewatch central ARGS`` in its own process, with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "central", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def terminate(proc: subprocess.Popen[str]) -> int:
    """SIGTERM, wait, close the pipes; the exit code."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(10)
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def store_message(db: Path, device: str, kind: str, payload: Any) -> None:
    """Put one parsed message into the central database, as the central's writer would."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    record = parse(P, f"{P}/{device}/{kind}", data)
    store = CentralStore(str(db))
    try:
        with store.transaction():
            if kind == "alerts":
                store.put_alert(record, 1_700_000_100.0)  # type: ignore[arg-type]
            elif kind == "cmd/result":
                store.put_result(record, 1_700_000_101.0)  # type: ignore[arg-type]
            else:
                store.put_command(record, 1_700_000_100.0)  # type: ignore[arg-type]
    finally:
        store.close()


def test_device_text_is_escaped_and_json_keeps_machine_values(tmp_path, capsys) -> None:
    db = tmp_path / "central.db"
    hostile = {**make_alert(1, device="cam-a"), "message": "drift\x1b[2J\x1b[31mPWNED\n"}
    store_message(db, "cam-a", "alerts", hostile)
    assert main(["fleet", "--db", str(db), "alerts"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "drift\\x1b[2J\\x1b[31mPWNED\\x0a" in out
    header = out.splitlines()[0].split()
    assert header[:4] == ["DEVICE", "ALERT", "KIND", "SEVERITY"] and "ACK" in header
    assert main(["fleet", "alerts", "--db", str(db), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["starts_at"] == hostile["starts_at"] and rows[0]["acknowledged"] is False
    assert rows[0]["message"] == hostile["message"]


def test_fleet_commands_shows_commands_and_their_results(tmp_path, capsys) -> None:
    db = tmp_path / "central.db"
    store_message(db, "cam-a", "cmd/ack", {"id": "r1", "alert": "a0001"})
    store_message(db, "cam-a", "cmd/snooze", {"id": "r2", "alert": "a0002", "duration": 60})
    store_message(db, "cam-a", "cmd/result", {"id": "r1", "verb": "ack", "ok": False,
                                               "error": "unknown alert: a0001"})
    assert main(["fleet", "commands", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TIME", "DEVICE", "VERB", "ALERT", "BY", "RESULT"]
    assert "snooze" in lines[1] and lines[1].endswith("pending")  # newest first
    assert "ack" in lines[2] and "failed: unknown alert: a0001" in lines[2]
    assert main(["fleet", "commands", "--db", str(db), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["ok"]) for r in rows] == [("r2", None), ("r1", False)]


def test_one_shot_fleet_command_to_a_closed_port_is_one_line(capsys) -> None:
    port = broker_fixtures.free_port()
    code = main(["fleet", "ack", "cam-a", "a1", "--broker", "127.0.0.1", "--port", str(port)])
    err = capsys.readouterr().err.strip()
    assert code == 7 and "\n" not in err
    assert err.startswith(f"edgewatch: error: cannot reach broker mqtt://127.0.0.1:{port}: "
                          "Connection refused")


def test_fleet_reads_the_broker_from_the_device_config(broker, tmp_path, write_config,
                                                       capsys) -> None:
    cfg = write_config(tmp_path / "dev.toml", mqtt={"host": broker.host, "port": broker.port})
    assert main(["fleet", "ack", "ghost", "a1", "--config", str(cfg), "--timeout", "1"]) == 7
    assert "no result from ghost within 1 s" in capsys.readouterr().err
    closed = broker_fixtures.free_port()
    assert main(["fleet", "ack", "ghost", "a1", "--config", str(cfg), "--port", str(closed),
                 "--timeout", "1"]) == 7  # a flag overrides the file
    assert f"127.0.0.1:{closed}" in capsys.readouterr().err
    assert main(["fleet", "ack", "ghost", "a1"]) == 2
    assert "give --broker HOST" in capsys.readouterr().err


def test_password_from_env_or_file_against_a_broker_that_wants_one(
        broker_factory, tmp_path, monkeypatch, capsys) -> None:
    pw = broker_fixtures.make_password_file(tmp_path / "passwd", {"ops": "s3cret"})
    secure = broker_factory(password_file=pw)
    base = ["fleet", "ack", "ghost", "a1", "--broker", secure.host, "--port", str(secure.port),
            "--username", "ops", "--timeout", "1"]
    monkeypatch.setenv("EW_PW", "s3cret")
    assert main([*base, "--password-env", "EW_PW"]) == 7
    assert "no result from ghost" in capsys.readouterr().err  # connected and subscribed
    (tmp_path / "pwfile").write_text("wrong\n")
    assert main([*base, "--password-file", str(tmp_path / "pwfile")]) == 7
    assert "refused the connection" in capsys.readouterr().err
    assert main([*base, "--password-env", "EW_UNSET_VARIABLE"]) == 2
    assert "EW_UNSET_VARIABLE is not set" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["file:///etc/passwd", "htps://hooks.example/x", "hooks.example"])
def test_central_refuses_a_webhook_that_is_not_http(tmp_path, url: str, capsys) -> None:
    code = main(["central", "--broker", "127.0.0.1", "--db", str(tmp_path / "c.db"),
                 "--webhook", url])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "must be an http:// or https:// URL" in err
    assert not (tmp_path / "c.db").exists()


@pytest.mark.integration
def test_central_says_at_once_it_cannot_reach_the_broker_and_keeps_trying(
        broker_factory, tmp_path) -> None:
    later = broker_factory(start=False)
    proc = start_central("--broker", later.host, "--port", str(later.port), "--db",
                         str(tmp_path / "c.db"), "--offline-after", "60")
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert f"cannot reach broker mqtt://127.0.0.1:{later.port}: Connection refused " \
               "(retrying every 1-60 s)" in line
        later.start()
        while "connected to" not in line:  # the retry finds the broker once it is up
            line = proc.stderr.readline()
            assert line, "central exited"
        assert proc.poll() is None
    finally:
        assert terminate(proc) == 0


@pytest.mark.integration
def test_fleet_ack_from_the_cli_shows_in_fleet_commands(broker, tmp_path, central_factory,
                                                         capsys) -> None:
    central_factory(broker)
    db = tmp_path / "central.db"
    store = Store(str(tmp_path / "dev1.db"), flush_interval_s=0.2).start()
    link = MqttLink(link_config(broker), store,
                    command_handler=partial(handle_command, api=DictControl()))
    try:
        link.start()
        wait(lambda: link.connected, what="device connected")
        broker.wait_suback("dev1")  # the link's cmd/+ subscription
        common = ["--broker", broker.host, "--port", str(broker.port), "--timeout", "5"]
        assert main(["fleet", "ack", "dev1", "a1", "--by", "ops@desk", *common]) == 0
        assert capsys.readouterr().out.strip() == "dev1: ok: alert a1; acknowledged True"
        wait(
            lambda: central_helpers.query(db, "SELECT r.ok FROM commands c JOIN "
                                          "command_results r USING (device, id)") == [(1,)],
            what="command and result recorded")
        assert main(["fleet", "commands", "--db", str(db), "--json"]) == 0
        [row] = json.loads(capsys.readouterr().out)
        assert (row["device"], row["verb"], row["alert"], row["ok"]) == ("dev1", "ack", "a1",
                                                                         True)
        assert row["requested_by"] == "ops@desk"
        assert main(["fleet", "commands", "--db", str(db)]) == 0
        assert "ops@desk" in capsys.readouterr().out
    finally:
        link.close()
        store.close()


def test_client_certificate_for_fleet_and_central(broker_factory, tmp_path, capsys) -> None:
    files = broker_fixtures.make_tls_files(tmp_path / "tls")
    tls = broker_factory(**files)
    tls_args = ["--broker", tls.host, "--port", str(tls.port), "--tls-ca", str(files["cafile"]),
                "--tls-cert", str(files["certfile"]), "--tls-key", str(files["keyfile"])]
    assert main(["fleet", "ack", "ghost", "a1", "--timeout", "1", *tls_args]) == 7
    assert "no result from ghost within 1 s" in capsys.readouterr().err  # TLS session up
    assert main(["fleet", "ack", "ghost", "a1", "--timeout", "1", *tls_args[:-2]]) == 2
    assert "certificate and its key go together" in capsys.readouterr().err


def test_fleet_shows_the_centrals_own_health(tmp_path, capsys) -> None:
    db = tmp_path / "central.db"
    store = CentralStore(str(db))
    with store.transaction():
        store.put_status({"ts": time.time() - 3, "connected": True, "dropped": 0,
                          "bad": {"bad_field": 2, "too_deep": 1},
                          "threads": {"edgewatch-central-webhook": {
                              "alive": True, "failures": 4, "last_error": "OSError: \x1b[1m"}}})
    store.close()
    assert main(["fleet", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "(no devices seen yet)" in out and "broker connected" in out
    assert "bad messages skipped: 3 (bad_field 2, too_deep 1)" in out
    assert "thread edgewatch-central-webhook: alive, 4 failures, last: OSError: \\x1b[1m" in out
    assert main(["fleet", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["central"]["bad"] == {"bad_field": 2,
                                                                     "too_deep": 1}


def write_central_config(path: Path, central: Dict[str, Any], mqtt: Dict[str, Any]) -> Path:
    from conftest import toml_text

    path.write_text(toml_text({"central": central, "mqtt": mqtt}))
    return path


@pytest.mark.parametrize("central, mqtt, words", [
    ({"dbx": "c.db"}, {}, "unknown key 'central.dbx' (valid keys: db, webhook"),
    ({"webhook": "file:///etc/passwd"}, {}, "central.webhook: must be an http:// or https://"),
    ({"keep_history_days": 0}, {}, "central.keep_history_days: must be > 0"),
    ({}, {"prot": "5"}, "unknown key 'mqtt.prot'"),
])
def test_a_bad_central_config_is_one_line_naming_file_and_key(tmp_path, capsys, central,
                                                              mqtt, words: str) -> None:
    cfg = write_central_config(tmp_path / "central.toml", central, mqtt)
    assert main(["central", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(cfg) in err and words in err


@pytest.mark.integration
def test_central_runs_from_its_config_file_and_fleet_reads_it(broker, tmp_path, capsys,
                                                              listeners) -> None:
    db = tmp_path / "from-config.db"
    cfg = write_central_config(tmp_path / "central.toml",
                               {"db": str(db), "keep_history_days": 7},
                               {"host": broker.host, "port": broker.port, "protocol": "5"})
    proc = start_central("--config", str(cfg))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == (f"central: following edgewatch/v1/+ on "
                                f"mqtt://127.0.0.1:{broker.port} into {db}")
        pub = listeners(broker, [])
        pub.wait_connected()
        alert = make_alert(1, device="cam-a")  # retained: the central gets it once subscribed
        pub.publish(f"edgewatch/v1/cam-a/alerts/state/{alert['fingerprint']}",
                    json.dumps(alert), retain=True)
        wait(lambda: central_helpers.query(db, "SELECT count(*) FROM alerts") == [(1,)],
             what="alert stored in the configured database")
    finally:
        assert terminate(proc) == 0
    assert main(["fleet", "alerts", "--config", str(cfg), "--json"]) == 0
    assert [r["device"] for r in json.loads(capsys.readouterr().out)] == ["cam-a"]
