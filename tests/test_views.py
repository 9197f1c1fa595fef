"""Views and references on the user's paths (issue 9, bugs 1, 2 and 4), with the real model.

A baseline from ``edgewatch baseline`` measures both views (full frames and the model's input
tensor); ``wrap`` measures the input tensor by the config's ``input_range``; a folder of
training images is a reference whose thresholds are calibrated on the camera's frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import cv2
import numpy as np
import pytest
from conftest import toml_text

from agent.alerts import AlertManager
from agent.cli import main
from agent.config import load_config
from agent.drift.reference import Reference
from agent.emulated import EmulatedFeed
from agent.hook import tensor_to_bgr, wrap
from agent.inference import Model, file_sha256, load_runtime
from agent.monitor import Monitor

FPS = 10.0
SIZE = (160, 120)
DRIFT = {"window_frames": 150, "eval_interval_s": 2.0, "for_s": 4.0, "clear_for_s": 4.0,
         "warmup_s": 20.0, "calibration_s": 60.0}
Records = List[Dict[str, Any]]


def config_file(path: Path, model_path: Path, **drift: Any) -> Path:
    path.write_text(toml_text({"model": {"path": model_path}, "health": {"enabled": False},
                               "drift": {**DRIFT, **drift}}))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Dict[str, Path]:
    """A video-like baseline, a training-image folder of the same scene and one of another."""
    root = tmp_path_factory.mktemp("views")
    cfg = config_file(root / "edgewatch.toml", model_path)
    out = {"config": cfg}
    for name, scenario in (("same", "stationary"), ("other", "night")):
        folder = root / name
        folder.mkdir()
        feed = EmulatedFeed(scenario, seed=3, fps=FPS, size=SIZE, onset=0)
        for i in range(300):  # independent-ish images: every 3rd frame over 90 s
            cv2.imwrite(str(folder / f"{i:04d}.png"), feed.frame_at(3 * i))
        out[name] = root / f"{name}.npz"
        assert main(["baseline", str(folder), "--config", str(cfg), "--out",
                     str(out[name])]) == 0
    out["video"] = root / "video.npz"
    assert main(["baseline", f"emulated:stationary?seed=3&size=160x120&fps={FPS:g}",
                 "--config", str(cfg), "--fps", f"{FPS:g}", "--max-frames", "900",
                 "--out", str(out["video"])]) == 0
    return out


class Path_:
    """One user path at a synthetic clock: observe(frame) or wrap, the real model."""

    def __init__(self, model_path: Path, cfg: Path, reference: Optional[Reference],
                 use_wrap: bool) -> None:
        self.records: Records = []
        self.now = 1_000.0
        config = load_config(str(cfg))
        alerts = AlertManager(device="d", camera="c", model={},
                              emit=lambda t: self.records.append(t.to_dict()))
        info = {"path": str(model_path), "sha256": file_sha256(model_path)}
        self.model = Model.from_config(config.model)
        self.monitor = Monitor(config, alerts, model_info=info, reference=reference,
                               output_spec=self.model.output_details, clock=lambda: self.now)
        self.interp: Any = None
        if use_wrap:
            self.interp = load_runtime()[1](model_path=str(model_path))
            self.interp.allocate_tensors()
            wrap(self.interp, self.monitor)

    def feed(self, scenario: str, seconds: float, start: int = 0, onset: float = 0.0) -> None:
        feed = EmulatedFeed(scenario, seed=3, fps=FPS, size=SIZE, onset=onset)
        for i in range(start, start + int(seconds * FPS)):
            frame = feed.frame_at(i)
            if self.interp is not None:  # the application's own loop, wrapped
                self.interp.set_tensor(self.interp.get_input_details()[0]["index"],
                                       self.model.prepare(frame))
                self.interp.invoke()
            else:
                outputs, latency = self.model(frame)
                self.monitor.observe(frame, outputs, latency, ts=self.now)
            self.now += 1.0 / FPS

    def alerts(self, *kinds: str) -> Records:
        return [r for r in self.records if r["kind"] in kinds and r["transition"] == "firing"]


def test_wrap_with_a_baseline_is_silent_on_an_unchanged_scene(
        files: Dict[str, Path], model_path: Path) -> None:
    """Bug 1: the baseline measured full frames, wrap the 128x128 input: false alerts."""
    ref = Reference.load(files["video"])
    assert ref.view_kind == "frame" and ref.for_view("input").view["size"] == [128, 128]
    path = Path_(model_path, files["config"], ref, use_wrap=True)
    path.feed("stationary", 180, start=900)
    assert not path.alerts("data_drift", "anomaly", "monitoring", "prediction_drift")
    state = path.monitor.monitoring()
    assert state["state"] == "active", state
    assert state["reference"]["view"] == "input" and state["reference"]["kind"] == "training"


def test_wrap_with_a_frame_only_reference_says_it_is_off(
        files: Dict[str, Path], model_path: Path) -> None:
    frame_only = Reference.load(files["video"])
    legacy = Reference(**{k: getattr(frame_only, k) for k, f in
                          frame_only.__dataclass_fields__.items() if f.init and k != "alt"})
    path = Path_(model_path, files["config"], legacy, use_wrap=True)
    path.feed("stationary", 30)
    state = path.monitor.monitoring()
    assert state["state"] == "off" and "this path observes the model's input" in state["reason"]
    assert "edgewatch baseline" in state["reason"]
    assert not path.alerts("data_drift", "anomaly")
    path.feed("stationary", 10, start=300)
    fired = path.alerts("monitoring")
    assert fired and fired[0]["feature"] == "drift" and "rebuild" in fired[0]["message"]


@pytest.mark.parametrize("value", [230, 250])
def test_a_bright_frame_is_measured_by_the_input_range(tmp_path: Path, model_path: Path,
                                                       value: int) -> None:
    """Bug 2: a [-1, 1] input with no negative value was read as [0, 1]."""
    path = Path_(model_path, config_file(tmp_path / "c.toml", model_path), None, use_wrap=True)
    tensor = path.model.prepare(np.full((120, 160, 3), value, np.uint8))
    assert tensor.min() > 0  # a bright frame: nothing negative in [-1, 1]
    image = tensor_to_bgr(tensor, input_range=(-1.0, 1.0))
    assert image is not None and abs(float(image.mean()) - value) <= 1
    path.interp.set_tensor(path.interp.get_input_details()[0]["index"], tensor)
    path.interp.invoke()
    assert abs(path.monitor.snapshot()["stats"]["brightness"] - value) <= 1.5


def test_training_images_are_a_baseline_calibrated_on_the_camera(
        files: Dict[str, Path], model_path: Path) -> None:
    """Bug 4: 300 training images were refused (a baseline needed 2 x window_frames)."""
    ref = Reference.load(files["same"])
    assert ref.kind == "training" and not ref.calibrated and ref.frames == 300
    path = Path_(model_path, files["config"], ref, use_wrap=False)
    path.feed("stationary", 30)
    assert path.monitor.monitoring()["state"] == "calibrating"
    path.feed("stationary", 150, start=300)
    assert path.monitor.monitoring()["state"] == "active"
    assert not path.alerts("data_drift", "anomaly", "monitoring")
    path.feed("night", 60, start=1800, onset=0)
    night = path.alerts("data_drift")
    assert night and night[0]["reference"]["kind"] == "training"
    assert "against the training reference" in night[0]["message"]


def test_a_deployment_unlike_the_training_data_is_an_alert(
        files: Dict[str, Path], model_path: Path) -> None:
    path = Path_(model_path, files["config"], Reference.load(files["other"]), use_wrap=False)
    path.feed("stationary", 120)
    differs = path.alerts("data_drift")
    assert differs and differs[0]["reference"]["kind"] == "training"
    assert "brightness" in differs[0]["message"]
