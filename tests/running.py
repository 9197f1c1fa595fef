"""An agent kept open while a feed runs through the real model, for tests that read it live.

``replay`` closes its agent when the feed ends; the heartbeat and metrics tests need the
agent still running (heartbeat tick, metrics server) once the feed has reached a condition:
:func:`feed_until` starts one as ``replay`` does and drives frames until ``until(agent)``
holds (checked every few frames) or the feed ends. The caller closes the agent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from agent.config import Config, load_config
from agent.inference import Model
from agent.loop import drive, source_losses, synthetic_times
from agent.service import Agent
from agent.sources import open_source

#: Seconds of frame time, as test_service's FAST: a warm-up reference in 40 s, then tests.
FAST: Dict[str, Dict[str, Any]] = {
    "drift": {"warmup_s": 40, "window_frames": 300, "eval_interval_s": 2, "for_s": 6,
              "clear_for_s": 10},
    "stats": {"capacity": 1024}, "store": {"flush_interval_s": 0.2, "window_s": 10},
    "health": {"enabled": False}, "service": {"heartbeat_interval_s": 1.0}}
_CHECK_EVERY = 25  # frames between checks of the condition


def fast_config(db: str, model_path: str, **extra: Dict[str, Any]) -> Config:
    """The FAST config on database ``db`` with the real model, plus ``extra`` sections."""
    data: Dict[str, Dict[str, Any]] = {k: dict(v) for k, v in FAST.items()}
    data["store"]["path"] = db
    data["model"] = {"path": model_path}
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return load_config(data)


@dataclass
class Fed:
    """A running agent and what was fed to it."""

    agent: Agent
    model: Model
    frames: int
    seconds: float


def feed_until(config: Config, uri: str, until: Callable[[Agent], bool], *, fps: float = 30.0,
               max_frames: Optional[int] = None, start_ts: float = 1_700_000_000.0,
               model: Optional[Model] = None) -> Fed:
    """Start an agent and replay ``uri`` into it until ``until(agent)``; the agent stays open."""
    model = model or Model.from_config(config.model)
    source = open_source(uri)
    agent = Agent.start(config, model_info=model.info(), output_spec=model.output_details,
                        expected_fps=fps, live=False)
    agent.heartbeats.source_losses = lambda: source_losses(source)
    seen = [0]

    def keep_going() -> bool:
        seen[0] += 1
        return seen[0] % _CHECK_EVERY != 0 or not until(agent)

    t0 = time.perf_counter()
    try:
        frames = drive(synthetic_times(source, start_ts, fps, max_frames, keep_going), model,
                       agent.monitor.observe)
    except BaseException:
        agent.close()
        raise
    finally:
        source.close()
    return Fed(agent, model, frames, time.perf_counter() - t0)
