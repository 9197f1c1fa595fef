"""Monitor: fixed memory, warm-up reference, and class-mix drift of a classifier's outputs."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from agent.alerts import AlertManager
from agent.config import load_config
from agent.emulated import EmulatedFeed
from agent.monitor import FEATURES, Monitor


def make_monitor(records: List[Dict[str, Any]], **drift: Any) -> Monitor:
    cfg = load_config({"drift": {"warmup_s": 60, "window_frames": 300, "eval_interval_s": 2,
                                 "for_s": 4, "clear_for_s": 4, **drift},
                       "stats": {"capacity": 1024}})
    alerts = AlertManager(device="d", camera="c", model={"path": "m", "sha256": "s"},
                          emit=lambda t: records.append(t.to_dict()))
    return Monitor(cfg, alerts, model_info={"path": "m", "sha256": "s"})


def probs(rng: np.random.Generator, weights: List[float]) -> np.ndarray:
    c = rng.choice(len(weights), p=weights)
    p = np.full(len(weights), 0.02, np.float32)
    p[c] = 1 - 0.02 * (len(weights) - 1)
    return p[None]


def test_ring_memory_is_fixed_after_start() -> None:
    mon = make_monitor([], enabled=False)
    frame = EmulatedFeed("stationary", seed=1, size=(160, 120)).read()
    assert frame is not None
    before = mon.nbytes
    for i in range(3000):
        mon.observe(frame, ts=1000 + i / 30)
    assert mon.nbytes == before == mon.ring.capacity * (len(FEATURES) * 4 + 8)  # + float64 ts
    assert mon.ring.count == 3000 and mon.ring.size == 1024


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
