"""edgewatch: a lightweight monitoring agent for TFLite vision models on edge devices.

In-process use::

    from agent import Monitor, wrap
    with Monitor.from_config("edgewatch.toml") as monitor:
        interpreter = wrap(interpreter, monitor)   # every invoke() is observed
        ...                                        # or monitor.observe(frame, outputs)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import Config, load_config
from .errors import (
    AgentError,
    BaselineError,
    CommandError,
    ConfigError,
    ModelError,
    SourceError,
    StoreError,
)
from .hook import wrap

if TYPE_CHECKING:
    from .inprocess import InProcessMonitor as Monitor


def __getattr__(name: str) -> Any:
    """``agent.Monitor``, imported on first use: it starts a whole agent (store, MQTT)."""
    if name == "Monitor":
        from .inprocess import InProcessMonitor

        return InProcessMonitor
    raise AttributeError(f"module 'agent' has no attribute {name!r}")


__all__ = [
    "AgentError", "BaselineError", "CommandError", "Config", "ConfigError", "ModelError",
    "Monitor", "SourceError", "StoreError", "__version__", "load_config", "wrap",
]
