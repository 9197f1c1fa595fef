"""Helpers shared by the hook and replay benchmarks: frames, model, monitor, figures.

Benchmarks print figures and PASS/FAIL beside each target; they never fail on timing.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from agent.alerts import AlertManager
from agent.config import Config, load_config
from agent.inference import Model, Tensor
from agent.monitor import Monitor, NullSink
from agent.sources import open_source
from agent.testdata import blazeface_model_path

FPS = 30.0
Frame = npt.NDArray[np.uint8]
# One interpreter thread: on a busy 2-core machine the 2-thread XNNPACK pool (the config
# default) stalls at its barriers, 30-350 ms a frame instead of ~2 ms, and swamps the figures.
THREADS = 1


def feed_uri(width: int, height: int, seed: int = 1) -> str:
    """The emulated stationary camera feed at ``width`` x ``height``."""
    return f"emulated:stationary?seed={seed}&size={width}x{height}"


def make_config(store_path: str, *, threads: int = THREADS, **sections: Dict[str, Any]) -> Config:
    """A config like the service's: the real BlazeFace model, MQTT off, store at ``store_path``."""
    data: Dict[str, Dict[str, Any]] = {
        "model": {"path": str(blazeface_model_path()), "num_threads": threads},
        "store": {"path": store_path},
        "drift": {"warmup_s": 60},
        "mqtt": {"enabled": False},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return load_config(data)


def load_model(config: Config) -> Model:
    """The model as the service loads it from ``config``."""
    return Model.from_config(config.model)


def build_monitor(config: Config, model: Model) -> Monitor:
    """A Monitor built as Agent.start builds it, with an AlertManager and a NullSink (no store)."""
    info = model.info()
    info["input_size"] = model.input_size
    alerts = AlertManager(device=config.device.id, camera=config.device.camera, model=info,
                          emit=lambda record: None,
                          repeat_interval_s=config.alerts.repeat_interval_s)
    return Monitor(config, alerts, model_info=info, sink=NullSink(),
                   output_spec=model.output_details, expected_fps=FPS)


def make_frames(uri: str, n: int) -> List[Frame]:
    """``n`` consecutive distinct frames of a finite-memory emulated feed."""
    source = open_source(uri)
    try:
        frames: List[Frame] = []
        for _ in range(n):
            frame = source.read()
            if frame is None:
                break
            frames.append(frame)
    finally:
        source.close()
    return frames


def precompute_outputs(model: Model,
                       frames: Sequence[Frame]) -> List[Tuple[List[Tensor], float]]:
    """``(outputs, latency_s)`` of the model for each frame (copies, safe to keep)."""
    return [([np.array(o, copy=True) for o in outs], lat)
            for outs, lat in (model(f) for f in frames)]


def us_stats(ns: npt.NDArray[np.int64]) -> Tuple[float, float]:
    """Median and p95 in microseconds of per-call nanosecond timings."""
    if ns.size == 0:
        return float("nan"), float("nan")
    med, p95 = np.percentile(ns, (50, 95))
    return float(med) / 1e3, float(p95) / 1e3


def verdict(ok: bool) -> str:
    """PASS or FAIL for a printed target."""
    return "PASS" if ok else "FAIL"


def rss_mb() -> float:
    """Resident memory of this process in MB (1e6 bytes)."""
    import psutil

    return psutil.Process().memory_info().rss / 1e6


def quiet(level: int = logging.WARNING, name: Optional[str] = None) -> None:
    """Keep the agent's INFO logs out of the figures."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if name:
        logging.getLogger(name).setLevel(level)


def machine_line() -> str:
    """CPU count and 1-minute load, so figures can be read against how busy the machine was."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return f"machine: {os.cpu_count()} CPUs, load average {load:.2f}"
