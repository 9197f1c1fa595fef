"""``wrap``: observe every ``invoke()`` of an application's own TFLite interpreter.

The wrapped interpreter behaves exactly as before; after each ``invoke()`` the monitor
sees the model's input tensor (turned back into a BGR uint8 image) and its outputs.
Observing never raises into the application: ``invoke()`` returns the interpreter's result
whatever happens to the observation, and a failure is counted in ``monitor.errors``.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Protocol, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from .config import Config


class Observer(Protocol):
    """What ``wrap`` needs: the monitor's config (the input's colour order), observe, errors.

    Both :class:`agent.monitor.Monitor` and the in-process ``agent.Monitor`` are one.
    """

    @property
    def config(self) -> Config:
        """The agent's configuration."""

    def observe(self, frame: Optional[npt.NDArray[np.uint8]],
                outputs: Optional[Sequence[npt.NDArray[Any]]] = None,
                latency_s: Optional[float] = None, ts: Optional[float] = None) -> None:
        """Record one frame and the model's outputs."""

    def hook_error(self, exc: BaseException) -> None:
        """Count an observation that failed in the hook."""


def tensor_to_bgr(tensor: npt.NDArray[Any], *, quantization: Tuple[float, int] = (0.0, 0),
                  color: str = "rgb") -> Optional[npt.NDArray[np.uint8]]:
    """Map a model input tensor ([1, H, W, C], float or quantised) to a BGR uint8 image.

    None when a float tensor holds NaN or infinite values: there is no image to measure.
    """
    img = tensor[0] if tensor.ndim == 4 else tensor
    if img.dtype == np.uint8:
        out = img
    else:
        x = img.astype(np.float32)
        scale, zero = quantization
        if scale and img.dtype != np.float32:
            x = (x - zero) * scale
        lo, hi = float(x.min()), float(x.max())  # NaN or inf here when any value is
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return None
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
        try:
            frame = tensor_to_bgr(interpreter.get_tensor(inp["index"]), quantization=quant,
                                  color=color)
            outputs = [interpreter.get_tensor(d["index"]) for d in outs]
            monitor.observe(frame, outputs, latency)
        # The application's boundary: whatever observing does, its invoke() must not fail.
        except Exception as exc:  # noqa: BLE001
            monitor.hook_error(exc)
        return result

    interpreter.invoke = invoke
    interpreter.edgewatch_monitor = monitor
    return interpreter
