"""edgewatch: a lightweight monitoring agent for TFLite vision models on edge devices."""

from __future__ import annotations

__version__ = "0.1.0"
