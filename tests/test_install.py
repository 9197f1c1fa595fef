"""scripts/install.sh in a throwaway prefix, and scripts/pull-logs.sh against a fake ssh/scp.

install.sh runs for real (files, modes, idempotence); only the pip step is skipped (--no-venv:
it needs the network) and, in prefix mode, useradd/systemctl are printed by the script itself
rather than run. pull-logs.sh needs a device over ssh, which does not exist here: SSH/SCP point
at small scripts that run the "remote" commands on this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # every test here runs the installer or a script

ROOT = Path(__file__).resolve().parents[1]
SERVICE_USER_EXISTS = subprocess.run(["id", "-u", "edgewatch"], capture_output=True).returncode == 0


@pytest.fixture()
def repo(tmp_path) -> Path:
    """A copy of the files install.sh reads; a placeholder default.toml if the real one is not
    written yet (the lead owns configs/default.toml)."""
    dest = tmp_path / "repo"
    (dest / "scripts").mkdir(parents=True)
    (dest / "systemd").mkdir()
    (dest / "configs").mkdir()
    shutil.copy2(ROOT / "scripts" / "install.sh", dest / "scripts" / "install.sh")
    shutil.copy2(ROOT / "systemd" / "edgewatch.service", dest / "systemd")
    default = ROOT / "configs" / "default.toml"
    if default.exists():
        shutil.copy2(default, dest / "configs" / "default.toml")
    else:
        (dest / "configs" / "default.toml").write_text("# placeholder default config\n")
    return dest


def install(repo: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(repo / "scripts" / "install.sh"), *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


def tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under root with its mode and content."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (
            stat.S_IMODE(p.stat().st_mode), p.read_bytes() if p.is_file() else b""
        )
        for p in sorted(root.rglob("*"))
    }


def test_install_into_prefix(repo, tmp_path):
    prefix = tmp_path / "root"
    proc = install(repo, "--prefix", str(prefix), "--no-venv")
    assert proc.returncode == 0, proc.stderr
    unit = prefix / "etc/systemd/system/edgewatch.service"
    config = prefix / "etc/edgewatch/edgewatch.toml"
    assert unit.read_bytes() == (repo / "systemd/edgewatch.service").read_bytes()
    assert config.read_bytes() == (repo / "configs/default.toml").read_bytes()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    # Prefix mode prints the system steps instead of running them.
    assert "would run: systemctl daemon-reload" in proc.stdout
    assert "would run: systemctl enable --now edgewatch" in proc.stdout
    if not SERVICE_USER_EXISTS:
        assert "would run: useradd --system" in proc.stdout
        assert subprocess.run(["id", "-u", "edgewatch"], capture_output=True).returncode != 0
    assert not (prefix / "opt/edgewatch/venv").exists()  # --no-venv
    # Nothing escaped the prefix: every file it wrote is one of these two.
    assert sorted(k for k, v in tree(prefix).items() if v[1]) == [
        "etc/edgewatch/edgewatch.toml", "etc/systemd/system/edgewatch.service",
    ]


def test_second_run_is_idempotent_and_keeps_an_edited_config(repo, tmp_path):
    prefix = tmp_path / "root"
    assert install(repo, "--prefix", str(prefix), "--no-venv").returncode == 0
    config = prefix / "etc/edgewatch/edgewatch.toml"
    config.write_text("# edited by the operator\n")
    before = tree(prefix)
    proc = install(repo, "--prefix", str(prefix), "--no-venv")
    assert proc.returncode == 0, proc.stderr
    assert tree(prefix) == before
    assert config.read_text() == "# edited by the operator\n"
    assert "kept existing config" in proc.stdout
    assert "unchanged" in proc.stdout
    # A changed unit in the repo is installed again.
    src_unit = repo / "systemd/edgewatch.service"
    src_unit.write_text(src_unit.read_text().replace("RestartSec=5", "RestartSec=7"))
    assert install(repo, "--prefix", str(prefix), "--no-venv").returncode == 0
    assert "RestartSec=7" in (prefix / "etc/systemd/system/edgewatch.service").read_text()


def test_dry_run_changes_nothing(repo, tmp_path):
    prefix = tmp_path / "root"
    proc = install(repo, "--prefix", str(prefix), "--no-venv", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert not prefix.exists()
    assert re.search(r"would run: install -m 0640 \S+default.toml \S+edgewatch.toml", proc.stdout)
    assert "nothing was changed" in proc.stdout

    assert install(repo, "--prefix", str(prefix), "--no-venv").returncode == 0
    before = tree(prefix)
    for args in (["--dry-run"], ["--dry-run", "--uninstall", "--purge"]):
        proc = install(repo, "--prefix", str(prefix), "--no-venv", *args)
        assert proc.returncode == 0, proc.stderr
        assert tree(prefix) == before
    assert "would run: rm -rf" in proc.stdout


def test_dry_run_without_prefix_touches_no_system_path(repo):
    # A real --dry-run as root on this machine: it must only print.
    unit = Path("/etc/systemd/system/edgewatch.service")
    existed = unit.exists()
    proc = install(repo, "--no-venv", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would run: install -m 0644" in proc.stdout
    assert unit.exists() == existed
    assert not proc.stdout.count("\n+ ")  # no command was executed


def test_uninstall_removes_unit_keeps_config_and_purge_removes_it(repo, tmp_path):
    prefix = tmp_path / "root"
    assert install(repo, "--prefix", str(prefix), "--no-venv").returncode == 0
    (prefix / "opt/edgewatch/venv/bin").mkdir(parents=True)  # stands in for a built venv
    (prefix / "var/lib/edgewatch").mkdir(parents=True)
    (prefix / "var/lib/edgewatch/edgewatch.db").write_bytes(b"data")

    proc = install(repo, "--prefix", str(prefix), "--uninstall")
    assert proc.returncode == 0, proc.stderr
    assert not (prefix / "etc/systemd/system/edgewatch.service").exists()
    assert not (prefix / "opt/edgewatch").exists()
    assert (prefix / "etc/edgewatch/edgewatch.toml").exists()
    assert (prefix / "var/lib/edgewatch/edgewatch.db").read_bytes() == b"data"
    assert "would run: systemctl disable --now edgewatch" in proc.stdout

    proc = install(repo, "--prefix", str(prefix), "--uninstall", "--purge")
    assert proc.returncode == 0, proc.stderr
    assert not (prefix / "etc/edgewatch").exists()
    assert not (prefix / "var/lib/edgewatch").exists()


def test_bad_options_fail_with_a_message(repo, tmp_path):
    for args, message in [
        (["--runtime", "onnx"], "--runtime must be one of"),
        (["--purge"], "--purge only makes sense with --uninstall"),
        (["--frobnicate"], "unknown option"),
    ]:
        proc = install(repo, "--prefix", str(tmp_path / "r"), *args)
        assert proc.returncode != 0
        assert message in proc.stderr
    missing = repo / "configs/default.toml"
    missing.unlink()
    proc = install(repo, "--prefix", str(tmp_path / "r"), "--no-venv")
    assert proc.returncode != 0 and "default config not found" in proc.stderr


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("arch", "py", "expected"),
    [
        ("x86_64", "3.11", "tflite-runtime"),
        ("aarch64", "3.9", "tflite-runtime"),
        ("aarch64", "3.12", "ai-edge-litert"),
        ("x86_64", "3.13", "ai-edge-litert"),
        ("armv7l", "3.11", "tflite-runtime"),
    ],
)
def test_runtime_choice_per_platform(repo, tmp_path, arch, py, expected):
    # Other boards cannot be had here: uname and python are stand-ins that report them.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_exe(bin_dir / "uname", f"#!/bin/sh\necho {arch}\n")
    fake_py = write_exe(bin_dir / "python-fake", f"#!/bin/sh\necho {py}\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = install(repo, "--show-runtime", "--python", str(fake_py), env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{expected} (Python {py} on {arch})"
    forced = install(repo, "--show-runtime", "--python", str(fake_py), "--runtime",
                     "ai-edge-litert", env=env)
    assert forced.stdout.startswith("ai-edge-litert ")


# --- pull-logs.sh ---------------------------------------------------------------------------

FAKE_SSH = """#!/bin/bash
# ssh stand-in: skip options, drop the target, run the command string here.
echo "ssh $*" >> "$FAKE_LOG"
while [ $# -gt 0 ]; do
    case "$1" in
        -[oplFiJ]) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
shift
exec bash -c "$*"
"""

FAKE_SCP = """#!/bin/bash
# scp stand-in: copy host:path to a local path.
echo "scp $*" >> "$FAKE_LOG"
src="${@: -2:1}"; dst="${@: -1}"
cp -- "${src#*:}" "$dst"
"""

FAKE_EDGEWATCH = """#!{python}
# 'edgewatch export' stand-in (the CLI's export command is tested with the CLI): writes a
# small real SQLite file at --out.
import argparse, sqlite3
p = argparse.ArgumentParser()
p.add_argument("cmd"); p.add_argument("--db"); p.add_argument("--out")
p.add_argument("--no-samples", action="store_true")  # the script copies them itself
a = p.parse_args()
assert a.cmd == "export" and a.no_samples, a
if a.db == "/missing.db":
    raise SystemExit("database not found: " + a.db)
con = sqlite3.connect(a.out)
con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, message TEXT)")
con.execute("INSERT INTO events (message) VALUES (?)", ("exported from " + a.db,))
con.commit(); con.close()
"""


@pytest.fixture()
def fake_remote(tmp_path):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    env = {
        **os.environ,
        "SSH": f"{write_exe(bin_dir / 'ssh', FAKE_SSH)} -o BatchMode=yes",
        "SCP": str(write_exe(bin_dir / "scp", FAKE_SCP)),
        "EDGEWATCH_BIN": str(write_exe(bin_dir / "edgewatch",
                                       FAKE_EDGEWATCH.format(python=sys.executable))),
        "FAKE_LOG": str(log),
    }
    return env, log


def remote_tmp_of(log: Path) -> str:
    m = re.search(r"--out (/tmp/edgewatch-\d{8}T\d{6}Z-\d+\.db)", log.read_text())
    assert m, log.read_text()
    return m.group(1)


def test_pull_logs_copies_the_export_and_cleans_up(fake_remote, tmp_path):
    env, log = fake_remote
    out_dir = tmp_path / "pulled"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts/pull-logs.sh"), "pi@camera-3.local", str(out_dir)],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert path.parent == out_dir
    assert re.fullmatch(r"camera-3\.local-\d{8}T\d{6}Z\.db", path.name)
    with sqlite3.connect(path) as con:
        rows = con.execute("SELECT message FROM events").fetchall()
    con.close()
    assert rows == [("exported from /var/lib/edgewatch/edgewatch.db",)]
    calls = log.read_text()
    assert "ssh -o BatchMode=yes pi@camera-3.local" in calls
    remote_tmp = remote_tmp_of(log)
    assert f"rm -f -- {remote_tmp}" in calls
    assert not Path(remote_tmp).exists()


def test_pull_logs_brings_the_samples_along(fake_remote, tmp_path):
    from agent.samplestore import samples_dir

    env, _ = fake_remote
    device = tmp_path / "device-samples"
    (device / "20231114").mkdir(parents=True)
    jpeg = device / "20231114" / "1700000000000-alert-abc.jpg"
    jpeg.write_bytes(b"\xff\xd8 a frame")
    jpeg.chmod(0o640)
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts/pull-logs.sh"), "pi@cam", str(tmp_path / "pulled")],
        capture_output=True, text=True, timeout=60, env={**env, "EDGEWATCH_SAMPLES": str(device)},
    )
    assert proc.returncode == 0, proc.stderr
    db = Path(proc.stdout.strip())
    pulled = samples_dir(db) / "20231114" / jpeg.name
    assert samples_dir(db) == db.with_name(db.stem + "-samples")
    assert pulled.read_bytes() == jpeg.read_bytes() and pulled.stat().st_mode & 0o777 == 0o640
    assert f"samples in {samples_dir(db)}" in proc.stderr


def test_pull_logs_fails_cleanly_when_export_fails(fake_remote, tmp_path):
    env, log = fake_remote
    env = {**env, "EDGEWATCH_DB": "/missing.db"}
    out_dir = tmp_path / "pulled"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts/pull-logs.sh"), "pi@cam", str(out_dir)],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert proc.returncode != 0
    assert "edgewatch export failed on pi@cam" in proc.stderr
    assert list(out_dir.iterdir()) == []
    assert "rm -f --" in log.read_text()  # the remote temp file is removed anyway
    assert not Path(remote_tmp_of(log)).exists()


def test_pull_logs_usage():
    proc = subprocess.run(["bash", str(ROOT / "scripts/pull-logs.sh")], capture_output=True,
                          text=True, timeout=10)
    assert proc.returncode == 2 and "usage:" in proc.stderr


# --- configs/mosquitto -------------------------------------------------------------------------


class _Endpoint:
    """Where the example broker listens (what broker.Listener needs)."""

    host = "127.0.0.1"

    def __init__(self, port: int) -> None:
        self.port = port


@pytest.fixture()
def example_broker(tmp_path):
    """Mosquitto started from configs/mosquitto/mosquitto.conf and acl as shipped; only file
    paths and the port are rewritten to this test's."""
    from broker import free_port, make_password_file, make_tls_files, require_mosquitto

    exe = require_mosquitto()
    tls = make_tls_files(tmp_path / "certs")
    passwd = make_password_file(tmp_path / "edgewatch.passwd",
                                {"dev1": "pw1", "dev2": "pw2", "central": "pwc"})
    acl = tmp_path / "edgewatch.acl"
    shutil.copy(ROOT / "configs/mosquitto/acl", acl)
    port = free_port()
    conf = (ROOT / "configs/mosquitto/mosquitto.conf").read_text()
    for old, new in [
        ("/etc/mosquitto/edgewatch.passwd", str(passwd)),
        ("/etc/mosquitto/edgewatch.acl", str(acl)),
        ("/etc/mosquitto/certs/ca.crt", str(tls["cafile"])),
        ("/etc/mosquitto/certs/server.crt", str(tls["certfile"])),
        ("/etc/mosquitto/certs/server.key", str(tls["keyfile"])),
        ("\nlistener 8883\n", f"\nlistener {port} 127.0.0.1\n"),
    ]:
        assert old in conf, old
        conf = conf.replace(old, new)
    log = tmp_path / "mosquitto.log"
    conf += f"log_dest file {log}\nlog_type all\n"
    if os.geteuid() == 0:
        # As root, mosquitto drops to user "mosquitto", which cannot read this test's 0700
        # tmp dir; on a real broker the files are chowned to mosquitto (see the header).
        conf += "user root\n"
    (tmp_path / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen([exe, "-c", str(tmp_path / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not listen"
                time.sleep(0.05)
        yield _Endpoint(port), tls["cafile"]
    finally:
        proc.kill()
        proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


@pytest.mark.integration
def test_example_broker_config_enforces_tls_passwords_and_acl(example_broker):
    import paho.mqtt.client as mqtt
    from broker import Listener

    endpoint, ca = example_broker
    made: list[Listener] = []

    def client(user, password, topics=()):
        c = Listener(endpoint, list(topics), username=user, password=password, ca_file=ca)
        made.append(c)
        return c

    try:
        central = client("central", "pwc", ["edgewatch/v1/#"])
        dev1 = client("dev1", "pw1", ["edgewatch/v1/dev1/cmd/+"])
        dev2 = client("dev2", "pw2", ["edgewatch/v1/dev1/cmd/#"])  # snooping on dev1: refused
        for c in (central, dev1, dev2):
            c.wait_connected()

        allowed = ["edgewatch/v1/dev1/status", "edgewatch/v1/dev1/heartbeat",
                   "edgewatch/v1/dev1/alerts", "edgewatch/v1/dev1/alerts/state/00ff",
                   "edgewatch/v1/dev1/cmd/result"]
        refused = ["edgewatch/v1/dev1/cmd/ack",     # a device cannot command (itself)
                   "edgewatch/v1/dev2/status",      # nor speak for another device
                   "edgewatch/v1/other/alerts"]
        for topic in refused + allowed:  # one connection, in order: refused ones come first
            dev1.publish(topic, b"x")
        got = central.wait_for(lambda m: {x.topic for x in m} >= set(allowed))
        assert not {m.topic for m in got} & set(refused)

        central.publish("edgewatch/v1/dev1/cmd/ack", b"{}")
        central.publish("edgewatch/v1/dev1/alerts", b"spoof")  # central cannot fake alerts
        dev1.wait_for(lambda m: any(x.topic == "edgewatch/v1/dev1/cmd/ack" for x in m))
        central.publish("edgewatch/v1/dev1/cmd/marker", b"{}")
        dev1.wait_for(lambda m: any(x.topic.endswith("/marker") for x in m))
        assert dev2.messages == []
        assert [m.payload for m in central.on("edgewatch/v1/dev1/alerts")] == [b"x"]
    finally:
        for c in made:
            c.close()

    # No anonymous or wrong-password logins, and no plain TCP on the TLS port.
    for user, password in [(None, None), ("dev1", "wrong")]:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.tls_set(ca_certs=str(ca))
        if user:
            c.username_pw_set(user, password)
        c.connect(endpoint.host, endpoint.port, keepalive=5)
        codes: list = []
        c.on_connect = lambda cl, ud, flags, reason, props=None, codes=codes: codes.append(reason)
        deadline = time.monotonic() + 5
        while not codes and time.monotonic() < deadline:
            c.loop(0.1)
        c.disconnect()
        assert codes and codes[0].is_failure, (user, codes)
    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    plain.connect(endpoint.host, endpoint.port, keepalive=5)  # TCP itself connects
    results = [plain.loop(0.1) for _ in range(30)]
    plain.disconnect()
    assert mqtt.MQTT_ERR_CONN_LOST in results or mqtt.MQTT_ERR_NO_CONN in results, results
