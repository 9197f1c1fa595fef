"""``wrap``: observe every ``invoke()`` of an application's own TFLite interpreter.

The wrapped interpreter behaves exactly as before; after each ``invoke()`` the monitor
sees the model's input tensor (turned back into a BGR uint8 image) and its outputs.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Protocol, Sequence, Tuple

import numpy as np

from .config import Config


class Observer(Protocol):
    """What ``wrap`` needs: the config (for the input's colour order) and ``observe``."""

    @property
    def config(self) -> Config:
        """The agent's configuration."""

    def observe(self, frame: np.ndarray, outputs: Optional[Sequence[np.ndarray]] = None,
                latency_s: Optional[float] = None, ts: Optional[float] = None) -> None:
        """Record one frame and the model's outputs."""


def tensor_to_bgr(tensor: np.ndarray, *, quantization: Tuple[float, int] = (0.0, 0),
                  color: str = "rgb") -> np.ndarray:
    """Map a model input tensor ([1, H, W, C], float or quantised) to a BGR uint8 image."""
    img = tensor[0] if tensor.ndim == 4 else tensor
    if img.dtype == np.uint8:
        out = img
    else:
        x = img.astype(np.float32)
        scale, zero = quantization
        if scale and img.dtype != np.float32:
            x = (x - zero) * scale
        lo, hi = float(x.min()), float(x.max())
        # Float inputs are normalised to [-1, 1] or [0, 1] (or raw 0..255): undo whichever.
        if lo >= -1.01 and hi <= 1.01:
            x = (x + 1.0) * 127.5 if lo < -0.01 else x * 255.0
        out = np.clip(x, 0, 255).astype(np.uint8)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return out[..., ::-1] if color == "rgb" else out


def wrap(interpreter: Any, monitor: Observer) -> Any:
    """Return ``interpreter`` with every ``invoke()`` observed by ``monitor``."""
    original = interpreter.invoke
    inp = interpreter.get_input_details()[0]
    outs = interpreter.get_output_details()
    color = monitor.config.model.color
    quant = tuple(inp.get("quantization", (0.0, 0)))

    def invoke(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        result = original(*args, **kwargs)
        latency = time.perf_counter() - t0
        frame = tensor_to_bgr(interpreter.get_tensor(inp["index"]), quantization=quant, color=color)
        outputs = [interpreter.get_tensor(d["index"]) for d in outs]
        monitor.observe(frame, outputs, latency)
        return result

    interpreter.invoke = invoke
    interpreter.edgewatch_monitor = monitor
    return interpreter
