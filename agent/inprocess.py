"""The in-process hook: a whole agent (history, alerts, MQTT) behind one ``observe`` call.

For an application that owns its inference loop::

    from agent import Monitor, wrap
    with Monitor.from_config("edgewatch.toml") as monitor:
        interpreter = wrap(interpreter, monitor)   # every invoke() is observed
        ...                                        # or monitor.observe(frame, outputs)

This module sits after the service in the data flow (it starts an :class:`~agent.service.Agent`),
so the monitor itself never imports the service.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from .config import Config, load_config
from .inference import file_sha256
from .monitor import Monitor as FrameMonitor
from .service import Agent

__all__ = ["InProcessMonitor"]

ConfigSource = Union[Config, str, "os.PathLike[str]", Mapping[str, Any], None]


class InProcessMonitor:
    """A started agent seen from the application: observe frames, read a snapshot, close."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    @classmethod
    def from_config(cls, source: ConfigSource = None, *,
                    model_path: Optional[str] = None) -> InProcessMonitor:
        """Start an agent from a config path, dict or :class:`Config` (defaults when None)."""
        config = source if isinstance(source, Config) else load_config(source)
        path = model_path or config.model.path
        info: Dict[str, Any] = {"path": path, "sha256": ""}
        if path and os.path.isfile(path):
            info["sha256"] = file_sha256(Path(path))
        return cls(Agent.start(config, model_info=info))

    @property
    def config(self) -> Config:
        """The configuration the agent runs with."""
        return self._agent.config

    @property
    def monitor(self) -> FrameMonitor:
        """The per-frame monitor inside the agent."""
        return self._agent.monitor

    @property
    def frames(self) -> int:
        """Frames observed so far."""
        return self._agent.monitor.frames

    def observe(self, frame: Optional[npt.NDArray[np.uint8]],
                outputs: Optional[Sequence[npt.NDArray[Any]]] = None,
                latency_s: Optional[float] = None, ts: Optional[float] = None) -> None:
        """Record one frame (BGR uint8) and, optionally, the model's outputs and latency."""
        self._agent.monitor.observe(frame, outputs, latency_s, ts)

    def hook_error(self, exc: BaseException) -> None:
        """Count an observation that failed in :func:`agent.wrap` (never raised into the app)."""
        self._agent.monitor.hook_error(exc)

    def set_view(self, kind: str, size: Optional[Tuple[int, int]] = None) -> None:
        """What is observed: ``frame`` (default) or ``input`` (:func:`agent.wrap` sets it)."""
        self._agent.monitor.set_view(kind, size)

    def snapshot(self) -> Dict[str, Any]:
        """Latest statistics, confidence, drift scores and open alerts."""
        return self._agent.monitor.snapshot()

    def close(self) -> None:
        """Flush the history, publish offline and stop the agent's threads. Idempotent."""
        self._agent.close()

    def __enter__(self) -> InProcessMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
