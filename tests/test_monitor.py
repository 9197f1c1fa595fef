"""Monitor: fixed memory, warm-up lifecycle, class-mix drift, health controls, NaN robustness."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from agent.alerts import AlertManager
from agent.config import load_config
from agent.drift.reference import Reference
from agent.emulated import EmulatedFeed
from agent.errors import CommandError, ConfigError
from agent.health import HEALTH_FEATURES
from agent.hook import wrap
from agent.inference import Model, load_runtime
from agent.monitor import FEATURES, Monitor
from agent.observe import LAYOUT

MODEL = {"path": "m", "sha256": "s"}
Array = npt.NDArray[Any]
Outputs = Tuple[npt.NDArray[np.uint8], List[Array]]


class Sink:
    """Keeps what the monitor hands its sink."""

    def __init__(self) -> None:
        self.events: List[Tuple[str, str, Dict[str, Any]]] = []
        self.references: List[Reference] = []
        self.windows: List[Dict[str, Any]] = []

    def window(self, row: Dict[str, Any]) -> None:
        self.windows.append(row)

    def event(self, kind: str, message: str, data: Optional[Dict[str, Any]] = None) -> None:
        self.events.append((kind, message, data or {}))

    def reference_learned(self, reference: Reference) -> None:
        self.references.append(reference)

    def calibration_started(self, key: str, ts: float) -> None:
        self.events.append(("calibration_started", key, {"ts": ts}))

    def kinds(self) -> List[str]:
        return [kind for kind, _, _ in self.events]


def make_monitor(records: List[Dict[str, Any]], sink: Optional[Sink] = None,
                 output_spec: Any = None, **drift: Any) -> Monitor:
    cfg = load_config({"drift": {"warmup_s": 60, "window_frames": 300, "eval_interval_s": 2,
                                 "for_s": 4, "clear_for_s": 4, **drift},
                       "stats": {"capacity": 1024}})
    alerts = AlertManager(device="d", camera="c", model=MODEL,
                          emit=lambda t: records.append(t.to_dict()))
    return Monitor(cfg, alerts, model_info=MODEL, sink=sink, output_spec=output_spec)


def probs(rng: np.random.Generator, weights: List[float]) -> npt.NDArray[np.float32]:
    c = rng.choice(len(weights), p=weights)
    p = np.full(len(weights), 0.02, np.float32)
    p[c] = 1 - 0.02 * (len(weights) - 1)
    return p[None]


def feed_frames(mon: Monitor, feed: EmulatedFeed, first: int, last: int, t0: float) -> None:
    for i in range(first, last):
        mon.observe(feed.frame_at(i % 300), None, 0.001, ts=t0 + i / 30)


def test_ring_memory_is_fixed_after_start() -> None:
    mon = make_monitor([], enabled=False)
    frame = EmulatedFeed("stationary", seed=1, size=(160, 120)).read()
    assert frame is not None
    before = mon.nbytes
    for i in range(3000):
        mon.observe(frame, ts=1000 + i / 30)
    assert mon.nbytes == before == mon.ring.capacity * (len(FEATURES) * 4 + 8)  # + float64 ts
    assert mon.ring.count == 3000 and mon.ring.size == 1024
    assert mon.reference_status.state == "disabled" and mon.snapshot()["warmup"] is None


def test_warmup_learns_a_reference_then_rebaseline_learns_another() -> None:
    sink = Sink()
    mon = make_monitor([], sink, warmup_s=20, window_frames=64)
    feed = EmulatedFeed("stationary", seed=3, size=(160, 120))
    t0 = 1_000.0
    feed_frames(mon, feed, 0, 30 * 10, t0)
    snap = mon.snapshot()
    assert snap["warmup"]["state"] == "warming_up" and snap["warmup"]["frames"] == 300
    assert snap["reference"] is None and mon.reference is None
    feed_frames(mon, feed, 30 * 10, 30 * 25, t0)
    assert mon.reference is not None and mon.reference.origin == "warmup"
    assert sink.references == [mon.reference] and sink.kinds() == ["reference"]
    snap = mon.snapshot()
    assert snap["warmup"] is None and snap["reference"]["origin"] == "warmup"
    assert mon.nbytes == mon.ring.nbytes  # the warm-up buffer is freed
    evaluation = mon.last_evaluation
    assert evaluation is not None and evaluation.reference.state == "ready"
    assert {"black_frames", "frozen_frames"} <= {o.feature for o in evaluation.observations}
    assert not any(o.breach for o in evaluation.observations)
    first = mon.reference
    mon.restart_warmup()
    assert mon.reference is None and mon.reference_status.state == "warming_up"
    feed_frames(mon, feed, 30 * 25, 30 * 50, t0)
    assert mon.reference is not None and mon.reference is not first
    assert sink.kinds() == ["reference", "reference"]


def test_warmup_failure_is_an_event_and_a_state() -> None:
    sink = Sink()
    mon = make_monitor([], sink, warmup_s=10, window_frames=900)  # needs 1800 frames
    feed_frames(mon, EmulatedFeed("stationary", seed=4, size=(160, 120)), 0, 30 * 12, 1_000.0)
    assert mon.reference is None
    assert sink.kinds() == ["warmup_failed"]
    assert "need 1800" in sink.events[0][1] and "[drift] warmup_s" in sink.events[0][1]
    warmup = mon.snapshot()["warmup"]
    assert warmup["state"] == "failed" and "need 1800" in warmup["message"]
    assert mon.reference_status.state == "failed"


def test_unknown_drift_feature_is_a_clean_config_error() -> None:
    with pytest.raises(ConfigError, match="drift.features has unknown feature 'brightnes'"):
        make_monitor([], features=["brightnes"])


def test_class_mix_change_fires_prediction_drift() -> None:
    records: List[Dict[str, Any]] = []
    mon = make_monitor(records)
    feed = EmulatedFeed("stationary", seed=2, size=(160, 120))
    rng = np.random.default_rng(0)
    t0 = 1_000.0
    for i in range(30 * 120):  # 60 s warm-up, then 60 s of the same mix
        mon.observe(feed.frame_at(i % 300), [probs(rng, [0.5, 0.3, 0.2, 0.0])], 0.001, ts=t0 + i / 30)
    assert mon.reference is not None
    assert not [r for r in records if r["feature"] == "class_mix"]
    for i in range(30 * 120, 30 * 180):  # a class the model never predicted takes over
        mon.observe(feed.frame_at(i % 300), [probs(rng, [0.1, 0.1, 0.1, 0.7])], 0.001,
                    ts=t0 + i / 30)
    fired = [r for r in records if r["feature"] == "class_mix"]
    assert fired and fired[0]["kind"] == "prediction_drift"
    assert fired[0]["value"] > 0.15 and "class mix" in fired[0]["message"]
    assert fired[0]["ts"] - (t0 + 120) < 30


@pytest.mark.parametrize("feature", HEALTH_FEATURES)
def test_health_features_can_be_disabled_snoozed_and_given_a_threshold(feature: str) -> None:
    mon = make_monitor([])
    assert mon.control(lambda a: a.disable(feature, now=0.0))["disabled"] == feature
    assert mon.control(lambda a: a.snooze(feature, until=100.0))["snoozed"] == feature
    assert mon.control(lambda a: a.set_threshold(feature, 70.0))["threshold"] == 70.0
    with pytest.raises(CommandError, match="unknown kind or feature"):
        mon.control(lambda a: a.disable("temprature", now=0.0))


# ---- NaN robustness, with the real BlazeFace model ---------------------------------------
@pytest.fixture(scope="module")
def blazeface(model_path: Path, astronaut: Path) -> Outputs:
    """A real photo and the real model's outputs for it."""
    model = Model(model_path)
    frame = np.asarray(cv2.imread(str(astronaut)), np.uint8)
    outputs, _ = model(frame)
    return frame, [np.array(o) for o in outputs]


def spoil(outputs: List[Array], which: str, value: float) -> List[Array]:
    out = [o.copy() for o in outputs]
    scores = next(i for i, o in enumerate(out) if o.shape[-1] == 1)
    if which == "all_scores":
        out[scores][...] = value
    elif which == "one_score":
        out[scores].reshape(-1)[7] = value
    else:  # the regressors of the best candidate
        best = int(np.argmax(out[scores].reshape(-1)))
        out[1 - scores][0, best, :] = value
    return out


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["all_scores", "one_score", "regressors"])
def test_nan_outputs_are_counted_and_marked_missing(
        blazeface: Outputs, which: str, value: float) -> None:
    frame, outputs = blazeface
    mon = make_monitor([], output_spec=outputs)
    mon.observe(frame, outputs, 0.004, ts=1_000.0)
    assert mon.snapshot()["confidence"]["top_score"] is not None and mon.bad_frames == 0
    mon.observe(frame, spoil(outputs, which, value), 0.004, ts=1_000.1)
    snap = mon.snapshot()
    assert mon.bad_frames == 1 and set(snap["confidence"].values()) == {None}
    assert snap["stats"]["brightness"] is not None  # the image statistics are unaffected
    mon.observe(frame, outputs, 0.004, ts=1_000.2)
    assert mon.frames == 3 and mon.snapshot()["confidence"]["top_score"] is not None


def test_wrapped_invoke_never_raises_into_the_application(
        model_path: Path, blazeface: Outputs) -> None:
    _, interpreter_cls, _ = load_runtime()
    interpreter = interpreter_cls(model_path=str(model_path))
    interpreter.allocate_tensors()
    mon = make_monitor([])
    wrap(interpreter, mon)
    inp = interpreter.get_input_details()[0]
    good = np.zeros(inp["shape"], np.float32)
    interpreter.set_tensor(inp["index"], good)
    assert interpreter.invoke() is None
    assert mon.frames == 1 and mon.bad_frames == 0 and mon.errors == 0
    for value in (np.nan, np.inf):
        spoilt = good.copy()
        spoilt[0, 10:20, 10:20, :] = value
        interpreter.set_tensor(inp["index"], spoilt)
        assert interpreter.invoke() is None
    snap = mon.snapshot()
    assert mon.frames == 3 and mon.bad_frames == 2 and mon.errors == 0
    assert set(snap["stats"].values()) == {None}  # the input had no measurable image

    # An observation that fails outright (a decoder for another model) is counted, not raised.
    broken = make_monitor([], output_spec=[np.zeros((1, 10), np.float32)])
    wrap(interpreter, broken)
    interpreter.set_tensor(inp["index"], good)
    assert interpreter.invoke() is None
    assert broken.errors == 1 and broken.bad_frames == 1
    assert "ValueError" in broken.snapshot()["last_hook_error"]


def test_layout_names_every_column_once() -> None:
    assert LAYOUT.names == FEATURES
    assert FEATURES[LAYOUT.perf] == ("latency_ms", "frame_interval_ms")
    assert FEATURES[LAYOUT.image][0] == "brightness" and FEATURES[LAYOUT.confidence][0] == "top_score"


def test_a_non_finite_timestamp_is_refused_with_its_value() -> None:
    mon = make_monitor([])
    frame = EmulatedFeed("stationary", seed=1, size=(160, 120)).frame_at(0)
    with pytest.raises(ValueError, match="ts must be a finite unix time.*nan"):
        mon.observe(frame, ts=float("nan"))
    assert mon.frames == 0


def test_stall_is_judged_on_arrival_not_on_the_callers_clock() -> None:
    """observe(ts=...) on a clock behind the wall clock fired camera_fault/stalled at once."""
    import time

    records: List[Dict[str, Any]] = []
    cfg = load_config({"rules": {"stall_s": 0.5}, "drift": {"enabled": False}})
    alerts = AlertManager(device="d", camera="c", model=MODEL,
                          emit=lambda t: records.append(t.to_dict()))
    mon = Monitor(cfg, alerts, model_info=MODEL)
    frames = EmulatedFeed("stationary", seed=1, size=(64, 48))
    t0 = time.time() - 3600  # a replayed hour-old recording
    for i in range(30):
        mon.observe(frames.frame_at(i), None, 0.001, ts=t0 + i / 30)
        mon.check_stall(time.time())
    assert not [r for r in records if r["feature"] == "stalled"]

    deadline = time.monotonic() + 10.0  # frames stop arriving: the real stall still fires
    while not [r for r in records if r["feature"] == "stalled" and r["state"] == "firing"]:
        assert time.monotonic() < deadline, "no stall alert 10 s after the last frame"
        time.sleep(0.05)  # polling the real condition (the clock passing stall_s)
        mon.check_stall(time.time())
