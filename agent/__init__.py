"""edgewatch: a lightweight monitoring agent for TFLite vision models on edge devices.

In-process use::

    from agent import Monitor, wrap
    with Monitor.from_config("edgewatch.toml") as monitor:
        interpreter = wrap(interpreter, monitor)   # every invoke() is observed
        ...                                        # or monitor.observe(frame, outputs)
"""

from __future__ import annotations

from ._version import __version__
from .config import Config, load_config  # noqa: E402
from .errors import (  # noqa: E402
    AgentError,
    BaselineError,
    CommandError,
    ConfigError,
    ModelError,
    SourceError,
    StoreError,
)
from .hook import wrap  # noqa: E402
from .monitor import Monitor  # noqa: E402

__all__ = [
    "AgentError", "BaselineError", "CommandError", "Config", "ConfigError", "ModelError",
    "Monitor", "SourceError", "StoreError", "__version__", "load_config", "wrap",
]
