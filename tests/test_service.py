"""End to end: emulated camera -> real BlazeFace -> monitor -> alerts -> real SQLite.

Replays use synthetic timestamps, so minutes of video run in seconds and every window and
time-based rule behaves as it would live.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import cv2
import numpy as np
import pytest

from agent import Monitor, wrap
from agent.cli import main
from agent.config import load_config
from agent.errors import SourceError
from agent.loop import replay
from agent.sources import open_source

FAST = {"drift": {"warmup_s": 40, "window_frames": 300, "eval_interval_s": 2, "for_s": 6,
                  "clear_for_s": 10},
        "stats": {"capacity": 1024}, "store": {"flush_interval_s": 0.2, "window_s": 10},
        "health": {"enabled": False}}


def cfg_for(tmp_path: Path, model_path: Path, **extra: Any) -> Any:
    data: Dict[str, Any] = {k: dict(v) for k, v in FAST.items()}
    data["store"]["path"] = str(tmp_path / "h.db")
    data["model"] = {"path": str(model_path)}
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return load_config(data)


def alerts(db: Path) -> List[Dict[str, Any]]:
    conn = sqlite3.connect(db)
    rows = [json.loads(r[0]) for r in conn.execute("SELECT payload FROM alerts ORDER BY ts")]
    conn.close()
    return rows


def test_stationary_replay_writes_history_and_raises_no_alert(tmp_path: Path, model_path: Path) -> None:
    cfg = cfg_for(tmp_path, model_path)
    result = replay(cfg, open_source("emulated:stationary?seed=3&size=320x240&duration=100"), fps=30)
    assert result.frames == 3000
    db = sqlite3.connect(cfg.store.path)
    windows = db.execute("SELECT frames, summary FROM windows ORDER BY ts_start").fetchall()
    assert len(windows) >= 9 and all(w[0] == 300 for w in windows[:9])
    summary = json.loads(windows[0][1])
    assert {"brightness", "sharpness", "det_count", "top_score", "latency_ms"} <= set(summary)
    assert summary["det_count"]["p50"] >= 1  # the astronaut's face is found
    kinds = [e[0] for e in db.execute("SELECT kind FROM events")]
    assert "start" in kinds and "reference" in kinds and "stop" in kinds
    assert db.execute("SELECT count(*) FROM reference").fetchone()[0] == 1
    assert alerts(Path(cfg.store.path)) == []


@pytest.mark.parametrize("scenario, kind, feature", [
    ("night", "data_drift", "image"),
    ("black", "camera_fault", "black_frames"),
    ("frozen", "camera_fault", "frozen_frames"),
    ("bumped", "prediction_drift", "predictions"),
])
def test_scenarios_fire_the_right_alert_soon_after_onset(tmp_path: Path, model_path: Path,
                                                         scenario: str, kind: str, feature: str) -> None:
    cfg = cfg_for(tmp_path, model_path)
    onset = 60
    start = 1_700_000_000.0
    replay(cfg, open_source(f"emulated:{scenario}?seed=4&size=320x240&onset={onset}&duration=110"),
           fps=30, start_ts=start)
    fired = [a for a in alerts(Path(cfg.store.path)) if a["kind"] == kind and a["feature"] == feature]
    assert fired, f"no {kind}/{feature} alert for {scenario}"
    delay = fired[0]["ts"] - (start + onset)
    assert 0 <= delay <= 30, delay
    rec = fired[0]
    assert rec["message"] and "since" in rec["message"]
    assert rec["window"]["frames"] > 0 and rec["model"]["sha256"]
    if kind == "data_drift":
        assert "brightness" in rec["observed"]["drifted"]
        assert "brightness" in rec["message"]
    # nothing fired before the onset
    assert all(a["ts"] >= start + onset for a in alerts(Path(cfg.store.path)))


def test_warmup_reference_survives_restart(tmp_path: Path, model_path: Path) -> None:
    cfg = cfg_for(tmp_path, model_path)
    replay(cfg, open_source("emulated:stationary?seed=5&size=320x240&duration=50"), fps=30)
    replay(cfg, open_source("emulated:stationary?seed=6&size=320x240&duration=20"), fps=30)
    db = sqlite3.connect(cfg.store.path)
    assert db.execute("SELECT count(*) FROM reference").fetchone()[0] == 1  # reused, not relearned
    msgs = [r[0] for r in db.execute("SELECT message FROM events WHERE kind = 'start'")]
    assert "reference: warmup" in msgs[-1]
    # a reference learned with an older definition of the features is not reused
    db.execute("UPDATE reference SET features_version = 1")
    db.commit()
    replay(cfg, open_source("emulated:stationary?seed=7&size=320x240&duration=50"), fps=30)
    assert db.execute("SELECT count(*) FROM reference").fetchone()[0] == 2


def test_replay_cli_json_and_status(tmp_path: Path, model_path: Path, capsys: Any) -> None:
    db = tmp_path / "cli.db"
    code = main(["replay", "emulated:stationary?seed=2&size=320x240&duration=5", "--model",
                 str(model_path), "--db", str(db), "--fps", "30", "--json", "--start", "1000"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["frames"] == 150 and out["start_ts"] == 1000 and out["fps"] == 30
    assert out["db"] == str(db) and out["seconds"] > 0
    assert main(["status", "--db", str(db)]) == 0
    assert "not running" in capsys.readouterr().out


def test_video_file_written_by_the_test_is_replayed(tmp_path: Path, model_path: Path,
                                                    astronaut: Path) -> None:
    video = tmp_path / "clip.avi"
    img = cv2.resize(cv2.imread(str(astronaut)), (320, 240))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for i in range(40):
        writer.write(np.roll(img, i, axis=1))
    writer.release()
    cfg = cfg_for(tmp_path, model_path)
    result = replay(cfg, open_source(str(video)), max_frames=25)
    assert result.frames == 25 and result.fps == 10


def test_unreadable_source_is_a_clear_error(tmp_path: Path, model_path: Path, capsys: Any) -> None:
    with pytest.raises(SourceError, match="cannot open source"):
        open_source(str(tmp_path / "missing.mp4"))
    code = main(["replay", str(tmp_path / "missing.mp4"), "--model", str(model_path),
                 "--db", str(tmp_path / "x.db")])
    assert code == SourceError.exit_code
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgewatch: error: cannot open source") and "\n" not in err


def test_in_process_hook_and_wrap(tmp_path: Path, model_path: Path, astronaut: Path) -> None:
    from tflite_runtime.interpreter import Interpreter

    cfg = {"store": {"path": str(tmp_path / "hook.db"), "flush_interval_s": 0.2, "window_s": 1},
           "model": {"path": str(model_path)}, "health": {"enabled": False}}
    interp = Interpreter(model_path=str(model_path))
    interp.allocate_tensors()
    img = cv2.cvtColor(cv2.resize(cv2.imread(str(astronaut)), (128, 128)), cv2.COLOR_BGR2RGB)
    x = (img.astype(np.float32) / 127.5 - 1.0)[None]
    with Monitor.from_config(cfg) as monitor:
        wrapped = wrap(interp, monitor)
        assert wrapped is interp
        for _ in range(5):
            interp.set_tensor(interp.get_input_details()[0]["index"], x)
            interp.invoke()
        out = interp.get_tensor(interp.get_output_details()[1]["index"])
        assert out.shape == (1, 896, 1)  # the application sees the same outputs
        assert monitor.frames == 5
        snap = monitor.snapshot()
        assert snap["confidence"]["det_count"] >= 1
        assert snap["stats"]["brightness"] > 20
        # observe directly, without outputs
        monitor.observe(np.zeros((480, 640, 3), np.uint8), ts=time.time() + 2)
        assert monitor.frames == 6
    db = sqlite3.connect(tmp_path / "hook.db")
    assert db.execute("SELECT count(*) FROM windows").fetchone()[0] >= 1


RUN_SECTIONS: Dict[str, Dict[str, Any]] = {
    "source": {"uri": "emulated:stationary?seed=1&size=320x240", "fps": 30},
    "service": {"status_interval_s": 1},
}


@pytest.mark.integration
def test_run_stops_cleanly_on_sigterm(tmp_path: Path, write_config: Any) -> None:
    cfg = write_config(tmp_path / "run.toml", **RUN_SECTIONS,
                       store={"path": tmp_path / "run.db", "flush_interval_s": 0.5})
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        seen = ""
        while time.time() < deadline and "status: frames=" not in seen:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
        assert "status: frames=" in seen, seen
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=20)
        assert proc.returncode == 0, rest
        assert "stopping" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    db = sqlite3.connect(tmp_path / "run.db")
    kinds = [r[0] for r in db.execute("SELECT kind FROM events")]
    assert kinds[0] == "start" and kinds[-1] == "stop"


def test_every_command_has_help() -> None:
    from agent.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    names = set(sub.choices)
    assert {"run", "replay", "baseline", "alerts", "status", "export"} <= names
    for name, p in sub.choices.items():
        helps = [a.help for a in sub._choices_actions if a.dest == name]
        assert helps and helps[0], name
        for action in p._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for sname in action.choices:
                    assert [a.help for a in action._choices_actions if a.dest == sname][0], sname
            elif action.dest != "help":
                assert action.help, f"{name} {action.dest}"


@pytest.mark.integration
def test_sighup_reloads_or_keeps_the_old_config(tmp_path: Path, write_config: Any) -> None:
    cfg = write_config(tmp_path / "run.toml", **RUN_SECTIONS, store={"path": tmp_path / "hup.db"})
    good = cfg.read_text()
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: List[str] = []

    def wait_for(needle: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            if needle in line:
                return
        raise AssertionError(f"{needle!r} not logged; got {''.join(seen[-20:])}")

    try:
        wait_for("status: frames=")
        cfg.write_text(good + "\n[drift]\nwindow_frames = 'many'\n")
        proc.send_signal(signal.SIGHUP)
        wait_for("reload failed, keeping the old config")
        wait_for("status: frames=")  # still running on the old config
        cfg.write_text(good)
        proc.send_signal(signal.SIGHUP)
        wait_for("reloaded")
        wait_for("status: frames=")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_baseline_cli_builds_a_reference_that_replay_uses(tmp_path: Path, write_config: Any,
                                                           capsys: Any) -> None:
    ref = tmp_path / "ref.npz"
    cfg = write_config(tmp_path / "b.toml", drift={"window_frames": 300, "reference": ref},
                       store={"path": tmp_path / "b.db"})
    assert main(["baseline", "emulated:stationary?seed=1&size=320x240&duration=40", "--config",
                 str(cfg), "--out", str(ref), "--fps", "30"]) == 0
    assert "1200 frames" in capsys.readouterr().out and ref.stat().st_size < 1_000_000
    assert main(["replay", "emulated:night?seed=2&size=320x240&onset=10&duration=50",
                 "--config", str(cfg), "--json", "--start", "0"]) == 0
    found = alerts(tmp_path / "b.db")
    assert any(a["kind"] == "data_drift" for a in found)  # no warm-up needed: the file is used


@pytest.mark.parametrize("content, needle", [
    (None, "baseline"),                       # missing file
    (b"not a baseline", "corrupt"),           # corrupt file
])
def test_bad_baseline_file_is_one_clear_line(tmp_path: Path, model_path: Path, capsys: Any,
                                             content: Any, needle: str) -> None:
    ref = tmp_path / "ref.npz"
    if content is not None:
        ref.write_bytes(content)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[drift]\nreference = "{ref}"\n[health]\nenabled = false\n')
    code = main(["replay", "emulated:stationary?seed=1&size=320x240&duration=2", "--config",
                 str(cfg), "--model", str(model_path), "--db", str(tmp_path / "c.db")])
    err = capsys.readouterr().err.strip()
    assert code == 6, err
    assert err.startswith("edgewatch: error:") and needle in err.lower() and "\n" not in err


def test_baseline_for_another_model_keeps_image_drift_running(
        tmp_path: Path, model_path: Path, capsys: Any) -> None:
    """Issue 9: a retrained model is not a blind spot (it used to refuse the baseline)."""
    other = tmp_path / "other.tflite"
    other.write_bytes(model_path.read_bytes() + b"\0")  # same model, different file hash
    ref = tmp_path / "ref.npz"
    base = f'[model]\npath = "{other}"\n[drift]\nwindow_frames = 300\n[health]\nenabled = false\n'
    (tmp_path / "o.toml").write_text(base)
    assert main(["baseline", "emulated:stationary?seed=1&size=320x240&duration=25", "--config",
                 str(tmp_path / "o.toml"), "--out", str(ref)]) == 0
    (tmp_path / "m.toml").write_text(f'[model]\npath = "{model_path}"\n[drift]\nwindow_frames = 300\n'
                                     f'reference = "{ref}"\n[health]\nenabled = false\n')
    capsys.readouterr()
    code = main(["replay", "emulated:stationary?seed=1&size=320x240&duration=15", "--config",
                 str(tmp_path / "m.toml"), "--db", str(tmp_path / "m.db"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and "drift" not in result["unchecked"]
    assert result["monitoring"]["state"] == "degraded"
    assert "the model changed" in result["monitoring"]["reason"]
    assert "top_score" not in result["monitoring"]["features_off"]  # relearned, not missing


# ---- bugs of issue 8 -------------------------------------------------------------------
class StepClock:
    """The agent's clock, moved by the test: health alerts need minutes to fire and resolve."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def thermal_zone(root: Path, celsius: float) -> None:
    """Write one sysfs thermal zone (the hardware this machine lacks) at ``celsius``."""
    zone = root / "thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text(f"{int(celsius * 1000)}\n")


def health_config(tmp_path: Path, model_path: Path, **health: Any) -> Any:
    return cfg_for(tmp_path, model_path, health={"enabled": True, "interval_s": 3600,
                                                 "thermal_root": str(tmp_path / "thermal"),
                                                 **health})


def test_health_alert_fires_at_95c_and_resolves_after_ten_minutes_at_40c(
        tmp_path: Path, model_path: Path) -> None:
    from agent.service import Agent

    thermal_zone(tmp_path / "thermal", 95.0)
    clock = StepClock(1_700_000_000.0)
    cfg = health_config(tmp_path, model_path, for_s=60)
    agent = Agent.start(cfg, model_info={"path": str(model_path), "sha256": ""}, clock=clock)
    try:
        for _ in range(3):  # 95 °C for two minutes: pending, then firing after for_s
            agent.heartbeats.check_health()
            clock.now += 60
        thermal_zone(tmp_path / "thermal", 40.0)
        cooled = clock.now
        for _ in range(11):  # ten minutes at 40 °C
            agent.heartbeats.check_health()
            clock.now += 60
        open_now = [a["feature"] for a in agent.heartbeats.current().alerts_open]
    finally:
        agent.close()
    temp = [a for a in alerts(Path(cfg.store.path)) if a["feature"] == "temperature"]
    assert len(temp) == 1 and temp[0]["kind"] == "device_health", temp
    assert temp[0]["state"] == "resolved" and temp[0]["seq"] >= 2  # fired, then resolved
    assert "95.0 °C" in temp[0]["message"] and temp[0]["value"] == 40.0
    assert cooled + 60 <= temp[0]["ends_at"] < cooled + 600  # after for_s of clear readings
    assert "temperature" not in open_now


def test_gpu_load_path_from_the_config_is_read(tmp_path: Path, model_path: Path) -> None:
    from agent.service import Agent

    load = tmp_path / "gpu_load"
    load.write_text("750\n")  # per-mille, as the Jetson's sysfs file
    thermal_zone(tmp_path / "thermal", 50.0)
    cfg = health_config(tmp_path, model_path, gpu_load_path=str(load))
    agent = Agent.start(cfg, model_info={"path": str(model_path), "sha256": ""})
    try:
        agent.heartbeats.check_health()
        beat = agent.heartbeat()
    finally:
        agent.close()
    assert beat.host["gpu_percent"] == 75.0
    assert beat.host["max_temp_c"] == 50.0


class AgentProcess:
    """``edgewatch run`` in a child process, read line by line from its log."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.seen: List[str] = []

    def wait_for(self, needle: str, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        assert self.proc.stderr is not None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.seen.append(line)
            if needle in line:
                return line
        raise AssertionError(f"{needle!r} not logged; got {''.join(self.seen[-20:])}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=20)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.mark.integration
def test_reload_keeps_the_command_line_overrides(tmp_path: Path, model_path: Path,
                                                 write_config: Any) -> None:
    cfg = write_config(tmp_path / "run.toml", **RUN_SECTIONS,
                       model={"path": tmp_path / "missing.tflite"},
                       store={"path": tmp_path / "from-file.db"})
    db = tmp_path / "from-cli.db"
    agent = AgentProcess("--config", str(cfg), "--db", str(db), "--model", str(model_path),
                         "--source", "emulated:night?seed=2&size=320x240")
    try:
        first = agent.wait_for("running: source")
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait_for("reloaded")
        second = agent.wait_for("running: source")
        agent.wait_for("status: frames=")
        assert agent.stop() == 0
    finally:
        agent.kill()
    for line in (first, second):
        assert "emulated:night" in line and str(db) in line and str(model_path) in line, line
    assert not (tmp_path / "from-file.db").exists()


@pytest.mark.integration
def test_reload_naming_a_missing_model_keeps_the_old_config(tmp_path: Path,
                                                            write_config: Any) -> None:
    cfg = write_config(tmp_path / "run.toml", **RUN_SECTIONS, store={"path": tmp_path / "m.db"})
    good = cfg.read_text()
    agent = AgentProcess("--config", str(cfg))
    try:
        agent.wait_for("status: frames=")
        cfg.write_text(good.replace(str(Path(good.split('"')[1])), str(tmp_path / "nope.tflite")))
        agent.proc.send_signal(signal.SIGHUP)
        line = agent.wait_for("reload failed, keeping the old config")
        assert "model not found" in line and "nope.tflite" in line
        agent.wait_for("status: frames=")  # still running on the old config and model
        assert agent.stop() == 0
    finally:
        agent.kill()


# ---- long jobs: progress and a summary of what was and was not checked -------------------------
def test_replay_summary_says_drift_was_never_checked_during_warm_up(
        tmp_path: Path, model_path: Path, capsys: Any) -> None:
    args = ["replay", "emulated:stationary?seed=2&size=320x240&duration=5", "--model",
            str(model_path), "--db", str(tmp_path / "w.db"), "--fps", "30"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "replayed 150 frames (5s of video at 30 fps)" in out
    assert "checked: rules" in out
    assert "drift was never checked: the replay ended during warm-up (5 s of 300 s)" in out
    assert main([*args, "--json"]) == 0
    facts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert facts["unchecked"] == {"drift": "the replay ended during warm-up (5 s of 300 s)"}
    assert facts["reference"] is None and facts["frames"] == 150


def test_replay_with_a_reference_checks_drift_and_reports_progress(tmp_path: Path,
                                                                   model_path: Path) -> None:
    cfg = cfg_for(tmp_path, model_path)
    seen: List[int] = []
    result = replay(cfg, open_source("emulated:stationary?seed=3&size=320x240&duration=60"),
                    fps=30, on_frame=seen.append)
    assert seen == list(range(1, 1801))  # every frame reaches the progress callback
    assert result.unchecked == {} and result.reference == "warmup"


def test_baseline_without_out_is_a_usage_error(tmp_path: Path, model_path: Path,
                                               capsys: Any) -> None:
    code = main(["baseline", "emulated:stationary?seed=1&size=320x240&duration=2", "--model",
                 str(model_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("edgewatch: error:") and "--out" in err and "\n" not in err


def test_an_agent_that_cannot_start_releases_what_it_opened(tmp_path: Path,
                                                            model_path: Path) -> None:
    import threading as _threading

    from agent.errors import BaselineError
    from agent.service import Agent

    info = {"path": str(model_path), "sha256": ""}
    before = {t.name for t in _threading.enumerate()}
    bad = cfg_for(tmp_path, model_path, drift={"reference": str(tmp_path / "missing.npz")})
    with pytest.raises(BaselineError):
        Agent.start(bad, model_info=info)
    assert {t.name for t in _threading.enumerate() if t.is_alive()} <= before  # no thread left
    agent = Agent.start(cfg_for(tmp_path, model_path), model_info=info)  # the database is free
    agent.close()


def test_a_replay_too_short_for_one_evaluation_says_so(tmp_path: Path, model_path: Path) -> None:
    cfg = cfg_for(tmp_path, model_path)
    result = replay(cfg, open_source("emulated:stationary?seed=3&size=320x240"), fps=30,
                    max_frames=10)
    assert result.unchecked["rules"] == "the replay was shorter than one evaluation interval " \
                                        "(0.3 s of 1 s)"
    assert "warm-up" in result.unchecked["drift"]
