"""The reference lifecycle: which reference, in which view, and never silently off (issue 9)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from conftest import toml_text

from agent.alerts import AlertManager
from agent.config import Config, load_config
from agent.emulated import EmulatedFeed
from agent.monitor import Monitor

MODEL = {"path": "/m.tflite", "sha256": "ab" * 32}


def monitor(records: List[Dict[str, Any]], **drift: Any) -> Monitor:
    cfg = load_config({"drift": {"eval_interval_s": 2, "for_s": 4, "clear_for_s": 4, **drift},
                       "stats": {"capacity": 1024}})
    alerts = AlertManager(device="d", camera="c", model=MODEL,
                          emit=lambda t: records.append(t.to_dict()))
    return Monitor(cfg, alerts, model_info=MODEL)


def feed(mon: Monitor, seconds: float, fps: float, t0: float = 1000.0, seed: int = 4) -> None:
    frames = EmulatedFeed("stationary", seed=seed, size=(160, 120))
    images = [frames.frame_at(i) for i in range(50)]
    for i in range(int(seconds * fps)):
        mon.observe(images[i % 50], None, 0.001, ts=t0 + i / fps)


def test_failed_warmup_is_a_monitoring_alert_that_says_why() -> None:
    """Bug 3: warmup_s = 20, window_frames = 150 at 10 fps left drift off with no alert."""
    records: List[Dict[str, Any]] = []
    mon = monitor(records, warmup_s=20, window_frames=150)
    feed(mon, 60, 10)
    state = mon.snapshot()["monitoring"]
    assert state["state"] == "off"
    assert "only 201 frames" in state["reason"] and "need 300" in state["reason"]
    assert "raise [drift] warmup_s or lower [drift] window_frames" in state["reason"]
    fired = [r for r in records if r["kind"] == "monitoring"]
    assert [r["transition"] for r in fired] == ["firing"]
    assert fired[0]["feature"] == "drift" and fired[0]["severity"] == "warning"
    assert "need 300" in fired[0]["message"] and 20 < fired[0]["ts"] - 1000 < 25


def test_monitoring_says_warming_up_then_active_and_the_alert_resolves() -> None:
    records: List[Dict[str, Any]] = []
    mon = monitor(records, warmup_s=20, window_frames=150)
    feed(mon, 5, 30)
    assert mon.snapshot()["monitoring"]["state"] == "warming_up"
    assert "learning a reference from the first 20 s" in mon.monitoring()["reason"]
    feed(mon, 40, 30, t0=1005.0)
    state = mon.monitoring()
    assert state["state"] == "active" and state["since"] is None
    assert state["reference"]["kind"] == "device" and state["reference"]["view"] == "frame"
    assert not [r for r in records if r["kind"] == "monitoring"]
    assert mon.reference is not None and mon.reference.view["kind"] == "frame"


def test_drift_alerts_say_which_reference() -> None:
    records: List[Dict[str, Any]] = []
    mon = monitor(records, warmup_s=20, window_frames=150)
    feed(mon, 30, 30)
    night = EmulatedFeed("night", seed=4, size=(160, 120), onset=0)
    for i in range(30 * 45):  # anomalies must hold [rules] outlier_for_s = 30 s
        mon.observe(night.frame_at(i % 50), None, 0.001, ts=1030 + i / 30)
    drift = [r for r in records if r["kind"] == "data_drift"]
    assert drift and drift[0]["reference"] == {"kind": "device", "origin": "warmup",
                                               "view": "frame"}
    assert "against the device reference" in drift[0]["message"]
    outliers = [r for r in records if r["kind"] == "anomaly"]  # robust z against the reference
    assert outliers and outliers[0]["reference"]["origin"] == "warmup"
    assert not [r for r in records if r["kind"] == "camera_fault" and r["reference"]]


def agent_config(tmp_path: Path, **drift: Any) -> Config:
    return load_config({"store": {"path": str(tmp_path / "agent.db"), "flush_interval_s": 0.2},
                        "health": {"enabled": False},
                        "drift": {"eval_interval_s": 2, "for_s": 4, "clear_for_s": 4, **drift}})


def test_status_and_heartbeat_say_drift_is_off_and_why(tmp_path: Path) -> None:
    """Bug 3: status and the heartbeat said "warming up" long after the warm-up failed."""
    from agent.cli._status import _lines, device_status
    from agent.service import Agent

    cfg = agent_config(tmp_path, warmup_s=20, window_frames=150)
    agent = Agent.start(cfg, model_info=MODEL, live=False)
    try:
        feed(agent.monitor, 60, 10)  # type: ignore[arg-type]
        beat = agent.heartbeat().to_dict()
    finally:
        agent.close()
    assert beat["monitoring"]["state"] == "off" and "need 300" in beat["monitoring"]["reason"]
    st = device_status(cfg.store.path, time.time())
    assert st["monitoring"]["state"] == "off"
    assert [a["feature"] for a in st["alerts_open"] if a["kind"] == "monitoring"] == ["drift"]
    st.update(retention_days=30.0, max_db_mb=512.0)
    line = [x for x in _lines(st, time.time()) if x.startswith("drift:")][0]
    assert line.startswith("drift:     off: warm-up collected only 201 frames") and "since" in line


def test_replay_shorter_than_the_warmup_says_drift_was_never_checked(
        tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(toml_text({"model": {"path": model_path}, "health": {"enabled": False},
                              "store": {"path": tmp_path / "r.db"}, "drift": {"warmup_s": 60}}))
    assert main(["replay", "emulated:stationary?seed=1&size=160x120&fps=10", "--config",
                 str(cfg), "--fps", "10", "--max-frames", "200", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "ended during warm-up (20 s of 60 s)" in result["unchecked"]["drift"]
    assert result["monitoring"]["state"] == "warming_up"
    assert "learning a reference from the first 60 s" in result["monitoring"]["reason"]


def save_training_reference(path: Path, *, with_input_view: bool = False) -> None:
    """300 independent frames of the stationary scene as a training baseline file."""
    import dataclasses

    from agent.drift.reference import build_reference
    from agent.monitor import FEATURES

    rows_from = monitor([], enabled=False)
    images = EmulatedFeed("stationary", seed=4, size=(160, 120))
    rows = []
    for i in range(300):
        rows_from.observe(images.frame_at(3 * i), None, 0.001, ts=1000 + i)
        rows.append(rows_from.ring.last(1)[1][0].copy())
    training = build_reference(
        np.vstack(rows), FEATURES, window_frames=150, eval_stride_frames=20, fps=10.0,
        model_sha256="", model_path="", origin="baseline", source="images/", created=5.0,
        kind="training", independent=True, view={"kind": "frame"})
    if with_input_view:  # a baseline file carries both views (the same rows serve here)
        training = dataclasses.replace(training, alt=dataclasses.replace(
            training, view={"kind": "input", "size": [128, 128]}))
    training.save(path)


def test_a_training_calibration_is_kept_in_sqlite_across_restarts(tmp_path: Path) -> None:
    from agent.service import Agent

    save_training_reference(tmp_path / "training.npz")
    cfg = agent_config(tmp_path, window_frames=150, calibration_s=60,
                       reference=str(tmp_path / "training.npz"))
    info = {"path": "", "sha256": ""}

    agent = Agent.start(cfg, model_info=info, live=False)
    try:
        feed(agent.monitor, 30, 10)  # type: ignore[arg-type]
        first = agent.monitor.monitoring()
    finally:
        agent.close()
    assert first["state"] == "calibrating" and first["reference"]["kind"] == "training"

    agent = Agent.start(cfg, model_info=info, live=False)  # restarted mid-calibration
    try:
        feed(agent.monitor, 1, 10, t0=1100.0)  # type: ignore[arg-type]
        resumed = agent.monitor.monitoring()
        feed(agent.monitor, 70, 10, t0=1101.0)  # type: ignore[arg-type]
        done = agent.monitor.monitoring()
    finally:
        agent.close()
    assert resumed["state"] == "calibrating" and resumed["since"] == first["since"]
    assert done["state"] == "active"

    agent = Agent.start(cfg, model_info=info, live=False)  # calibrated: kept
    try:
        assert agent.monitor.reference is not None and agent.monitor.reference.calibrated
        assert agent.monitor.reference.kind == "training"
    finally:
        agent.close()


def test_the_input_views_calibration_is_kept_across_restarts(tmp_path: Path) -> None:
    """wrap (the model-input view, set after the agent starts) recalibrated on every restart:
    the stored calibration was looked up under the file's first (frame) view only."""
    from agent.service import Agent

    save_training_reference(tmp_path / "training.npz", with_input_view=True)
    cfg = agent_config(tmp_path, window_frames=150, calibration_s=60,
                       reference=str(tmp_path / "training.npz"))
    info = {"path": "", "sha256": ""}
    agent = Agent.start(cfg, model_info=info, live=False)
    try:
        agent.monitor.set_view("input", (128, 128))
        feed(agent.monitor, 70, 10)  # type: ignore[arg-type]
        assert agent.monitor.monitoring()["state"] == "active"
    finally:
        agent.close()

    agent = Agent.start(cfg, model_info=info, live=False)  # restarted, as wrap does it
    try:
        agent.monitor.set_view("input", (128, 128))
        ref = agent.monitor.reference
        assert ref is not None and ref.calibrated and ref.view_kind == "input"
        feed(agent.monitor, 16, 10, t0=2000.0)  # type: ignore[arg-type]
        assert agent.monitor.monitoring()["state"] == "active"
    finally:
        agent.close()


def test_a_new_model_keeps_image_drift_running_while_predictions_are_relearned() -> None:
    """Item 5: a reference for another model was refused, leaving the camera unwatched."""
    old = monitor([], warmup_s=20, window_frames=150)
    feed(old, 25, 30)
    reference = old.reference
    assert reference is not None and reference.model_sha256 == MODEL["sha256"]

    records: List[Dict[str, Any]] = []
    cfg = load_config({"drift": {"eval_interval_s": 2, "for_s": 4, "clear_for_s": 4,
                                 "warmup_s": 20, "window_frames": 150},
                       "stats": {"capacity": 1024}})
    alerts = AlertManager(device="d", camera="c", model=MODEL,
                          emit=lambda t: records.append(t.to_dict()))
    new_sha = "cd" * 32
    mon = Monitor(cfg, alerts, model_info={"path": "/m2.tflite", "sha256": new_sha},
                  reference=reference)
    feed(mon, 6, 30, t0=2000.0)
    state = mon.monitoring()
    assert state["state"] == "degraded" and "the model changed" in state["reason"]
    relearn = [r for r in records if r["feature"] == "prediction_reference"]
    assert relearn and relearn[0]["kind"] == "monitoring" and relearn[0]["state"] == "firing"
    dark = (EmulatedFeed("stationary", seed=4, size=(160, 120)).frame_at(0) // 10).astype(np.uint8)
    for i in range(30 * 10):  # night falls while the predictions are relearned
        mon.observe(dark, None, 0.001, ts=2006 + i / 30)
    assert [r for r in records if r["kind"] == "data_drift" and r["transition"] == "firing"]
    feed(mon, 30, 30, t0=2016.0)
    assert mon.reference is not None and mon.reference.model_sha256 == new_sha
    assert mon.monitoring()["state"] == "active"
    done = [r for r in records if r["feature"] == "prediction_reference"]
    assert done[-1]["transition"] == "resolved"
    # The image rows are still the old reference's.
    i = reference.index("brightness")
    assert np.array_equal(mon.reference.sketch[i], reference.sketch[i])


def test_a_new_model_file_keeps_the_stored_warmup_reference(tmp_path: Path) -> None:
    from agent.service import Agent

    cfg = agent_config(tmp_path, warmup_s=20, window_frames=150)
    agent = Agent.start(cfg, model_info=MODEL, live=False)
    try:
        feed(agent.monitor, 25, 30)  # type: ignore[arg-type]
        agent.heartbeat()
    finally:
        agent.close()
    agent = Agent.start(cfg, model_info={"path": "/m2.tflite", "sha256": "cd" * 32}, live=False)
    try:
        assert agent.monitor.reference is not None
        assert agent.monitor.reference.model_sha256 == MODEL["sha256"]
        feed(agent.monitor, 6, 30, t0=3000.0)  # type: ignore[arg-type]
        state = agent.monitor.monitoring()
    finally:
        agent.close()
    assert state["state"] == "degraded" and "the model changed" in state["reason"]


def test_a_baseline_of_jpeg_training_images_is_quiet_on_the_unchanged_scene() -> None:
    """JPEG training images (real users' training data) of the same scene shift saturation
    by about 2 robust SDs (chroma subsampling): data_drift fired on an unchanged scene. A real
    change (night) still fires and names brightness."""
    import cv2

    from agent.drift.reference import build_reference
    from agent.monitor import FEATURES

    measure = monitor([], enabled=False)
    scene = EmulatedFeed("stationary", seed=11, size=(160, 120), fps=10.0)
    rows = []
    for k, i in enumerate(np.random.default_rng(5).choice(36000, 300, replace=False).tolist()):
        ok, jpeg = cv2.imencode(".jpg", scene.frame_at(i), [cv2.IMWRITE_JPEG_QUALITY, 90])
        measure.observe(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), None, 0.001, ts=1000.0 + k)
        rows.append(measure.ring.last(1)[1][0].copy())
    training = build_reference(
        np.vstack(rows), FEATURES, window_frames=150, eval_stride_frames=20, fps=10.0,
        model_sha256="", model_path="", origin="baseline", source="images/", created=5.0,
        kind="training", independent=True, view={"kind": "frame"})

    records: List[Dict[str, Any]] = []
    mon = monitor(records, window_frames=150, calibration_s=60)
    mon.set_reference(training)
    camera = EmulatedFeed("night", seed=12, size=(160, 120), fps=10.0, onset=240.0)
    for i in range(3000):  # 60 s calibration, 180 s unchanged, then night
        mon.observe(camera.frame_at(i), None, 0.001, ts=2000.0 + i / 10)
        if i == 2399:
            assert mon.monitoring()["state"] == "active"
            assert [r["message"] for r in records if r["state"] == "firing"] == []
    drift = [r for r in records if r["kind"] == "data_drift" and r["state"] == "firing"]
    assert drift and drift[0]["observed"]["drifted"][0] == "brightness", drift
