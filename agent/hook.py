"""``wrap``: observe every ``invoke()`` of an application's own TFLite interpreter.

The wrapped interpreter behaves exactly as before; after each ``invoke()`` the monitor
sees the model's input tensor (turned back into a BGR uint8 image by the config's
``[model] input_range`` and the tensor's quantisation) and its outputs.
Observing never raises into the application: ``invoke()`` returns the interpreter's result
whatever happens to the observation, and a failure is counted in ``monitor.errors``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Protocol, Sequence, Tuple

import numpy as np
import numpy.typing as npt

from .config import Config
from .inference import input_transform


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

    def set_view(self, kind: str, size: Optional[Tuple[int, int]] = None) -> None:
        """Say what is observed: ``input`` (the model's input tensor) for ``wrap``."""


class TensorImage:
    """The model's input tensor turned back into BGR uint8 pixels, into buffers made once.

    The inverse of what ``Model.prepare`` does to a frame, from the config's
    ``[model] input_range`` and the tensor's quantisation: never from the frame's own values
    (a bright frame of a [-1, 1] model has no negative values and is still in [-1, 1]).
    """

    def __init__(self, shape: Sequence[int], dtype: Any, *,
                 input_range: Tuple[float, float] = (-1.0, 1.0),
                 quantization: Tuple[float, int] = (0.0, 0), color: str = "rgb") -> None:
        h, w, c = (int(v) for v in tuple(shape)[-3:])
        self.size = (w, h)
        self._dtype = np.dtype(dtype)
        mul, add = input_transform(self._dtype, quantization, input_range)
        self._identity = self._dtype == np.uint8 and mul == 1.0 and add == 0.0
        # pixel = (value - add) / mul, plus 0.5 so that the cast to uint8 rounds.
        self._scale, self._offset = 1.0 / mul, 0.5 - add / mul
        self._work = np.empty((h, w, c), np.float32)
        self._pixels = np.empty((h, w, c), np.uint8)
        self._grey = np.empty((h, w, 3), np.uint8) if c == 1 else None
        self._rgb = color == "rgb"

    def __call__(self, tensor: npt.NDArray[Any]) -> Optional[npt.NDArray[np.uint8]]:
        """BGR pixels of one input tensor (a view into a buffer reused by the next call);
        None when it holds NaN or inf (there is no image to measure)."""
        img = tensor[0] if tensor.ndim == 4 else tensor
        pixels: npt.NDArray[np.uint8] = img
        if not self._identity:
            work = self._work
            np.multiply(img, self._scale, out=work, casting="unsafe")
            work += self._offset
            if not np.isfinite(float(np.add.reduce(work, axis=None))):  # NaN or inf anywhere
                return None
            np.clip(work, 0.0, 255.0, out=work)
            np.copyto(self._pixels, work, casting="unsafe")
            pixels = self._pixels
        if self._grey is not None:
            np.copyto(self._grey, pixels)  # grey: broadcast to three channels
            return self._grey
        return pixels[..., ::-1] if self._rgb else pixels


def tensor_to_bgr(tensor: npt.NDArray[Any], *, input_range: Tuple[float, float] = (-1.0, 1.0),
                  quantization: Tuple[float, int] = (0.0, 0),
                  color: str = "rgb") -> Optional[npt.NDArray[np.uint8]]:
    """Map a model input tensor ([1, H, W, C], float or quantised) to a BGR uint8 image.

    By ``input_range`` and ``quantization`` (see :class:`TensorImage`); None when a float
    tensor holds NaN or infinite values.
    """
    out = TensorImage(tensor.shape, tensor.dtype, input_range=input_range,
                      quantization=quantization, color=color)(tensor)
    return None if out is None else out.copy()


def wrap(interpreter: Any, monitor: Observer, *,
         clock: Optional[Callable[[], float]] = None) -> Any:
    """Return ``interpreter`` with every ``invoke()`` observed by ``monitor``.

    The monitor measures the model's input tensor (the ``input`` view), and compares it with
    a reference measured the same way (``edgewatch baseline`` records both views).
    ``clock`` gives each frame's time (a recorded clip's own clock); by default, now.
    """
    original = interpreter.invoke
    inp = interpreter.get_input_details()[0]
    outs = interpreter.get_output_details()
    model = monitor.config.model
    image = TensorImage(inp["shape"], inp["dtype"], input_range=model.input_range,
                        quantization=tuple(inp.get("quantization", (0.0, 0))), color=model.color)
    monitor.set_view("input", image.size)

    def invoke(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        result = original(*args, **kwargs)
        latency = time.perf_counter() - t0
        try:
            frame = image(interpreter.get_tensor(inp["index"]))
            outputs = [interpreter.get_tensor(d["index"]) for d in outs]
            monitor.observe(frame, outputs, latency, None if clock is None else clock())
        # The application's boundary: whatever observing does, its invoke() must not fail.
        except Exception as exc:  # noqa: BLE001
            monitor.hook_error(exc)
        return result

    interpreter.invoke = invoke
    interpreter.edgewatch_monitor = monitor
    return interpreter
