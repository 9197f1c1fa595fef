"""The TFLite model: loading the interpreter (in one place), feeding frames, invoking.

The interpreter comes from ``tflite_runtime``, then ``ai_edge_litert``, then
``tensorflow.lite`` (the config can force one). Frames are resized and normalised as the
model's input tensor requires, from its shape, dtype and quantisation, into a buffer
allocated once.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

import cv2
import numpy as np
import numpy.typing as npt

from .config import ModelConfig
from .errors import ModelError

log = logging.getLogger(__name__)

# An output tensor: its dtype is the model's (float32, or uint8/int8 when quantised).
Tensor = npt.NDArray[Any]
# A tensor's details as the runtime reports them: name, index, shape, dtype, quantization, ...
TensorDetails = Dict[str, Any]


class Interpreter(Protocol):
    """The part of a TFLite ``Interpreter`` (any of the three runtimes) that edgewatch uses."""

    def allocate_tensors(self) -> None: ...
    def get_input_details(self) -> List[TensorDetails]: ...
    def get_output_details(self) -> List[TensorDetails]: ...
    def set_tensor(self, tensor_index: int, value: Tensor) -> None: ...
    def invoke(self) -> None: ...
    def get_tensor(self, tensor_index: int) -> Tensor: ...


_RUNTIME_MODULES = {
    "tflite_runtime": "tflite_runtime.interpreter",
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tensorflow": "tensorflow.lite",
}
_INSTALL_HINT = (
    "pip install tflite-runtime 'numpy<2' (Python <= 3.11), or pip install ai-edge-litert"
)


def load_runtime(
    runtime: str = "auto",
) -> Tuple[str, Callable[..., Interpreter], Optional[Callable[[str], object]]]:
    """Return ``(name, Interpreter class, load_delegate)`` for the chosen or first available runtime."""
    names = list(_RUNTIME_MODULES) if runtime == "auto" else [runtime]
    errors: List[str] = []
    for name in names:
        if name not in _RUNTIME_MODULES:
            raise ModelError(f"unknown runtime: {name} (use auto, {', '.join(_RUNTIME_MODULES)})")
        try:
            module = importlib.import_module(_RUNTIME_MODULES[name])
        except Exception as exc:  # ImportError, or a NumPy ABI mismatch inside the module
            errors.append(f"{name}: {exc}")
            continue
        if name == "tensorflow":
            return name, module.Interpreter, getattr(module.experimental, "load_delegate", None)
        return name, module.Interpreter, getattr(module, "load_delegate", None)
    raise ModelError(f"no TFLite runtime available ({'; '.join(errors)}) ({_INSTALL_HINT})")


_PROBE = """
import sys
from {module} import Interpreter
Interpreter(model_path=sys.argv[1]).allocate_tensors()
"""


def verify_model_file(path: Path, runtime: str) -> None:
    """Refuse a file that is not a loadable TFLite model, without risking this process.

    A truncated or corrupt flatbuffer can crash the TFLite runtime with a segmentation
    fault rather than an exception, so the first load happens in a child process.
    """
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise ModelError(f"cannot load model: {path}: not a TFLite flatbuffer "
                         "(no TFL3 identifier; is it a .tflite file?)")
    module = _RUNTIME_MODULES[runtime]
    if runtime == "tensorflow":
        module = "tensorflow.lite"
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE.format(module=module), str(path)],
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise ModelError(f"cannot load model: {path}: loading took over 120 s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        why = lines[-1] if lines and proc.returncode > 0 else f"the runtime crashed (exit {proc.returncode})"
        raise ModelError(f"cannot load model: {path}: {why} (is the file complete and valid?)")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, the model's identity in baselines and alerts."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open_interpreter(path: Path, interpreter_cls: Callable[..., Interpreter],
                      load_delegate: Optional[Callable[[str], object]], *, runtime: str,
                      delegate: str, num_threads: int) -> Interpreter:
    """The interpreter for ``path`` with its tensors allocated, on ``delegate`` if one is named."""
    delegates: List[object] = []
    if delegate:
        if load_delegate is None:
            raise ModelError(f"runtime {runtime} cannot load delegates ([model] delegate)")
        try:
            delegates.append(load_delegate(delegate))
        except (ValueError, OSError, RuntimeError) as exc:
            raise ModelError(
                f"cannot load delegate {delegate}: {exc} (install it or clear [model] delegate)"
            ) from None
    try:
        interpreter = interpreter_cls(
            model_path=str(path),
            num_threads=num_threads,
            experimental_delegates=delegates or None,
        )
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot load model: {path}: {first} (is it a valid .tflite file?)"
        ) from None
    return interpreter


def input_transform(dtype: np.dtype[Any], quantization: Optional[Tuple[float, int]],
                     input_range: Tuple[float, float]) -> Tuple[float, float]:
    """``(mul, add)`` such that ``pixel * mul + add`` is the input tensor's value."""
    scale, zero = quantization or (0.0, 0)
    lo, hi = input_range
    if dtype == np.float32:
        # pixel 0..255 -> [lo, hi]
        return (hi - lo) / 255.0, lo
    if scale:
        # quantised input: q = real / scale + zero, real in [lo, hi] as for float
        mul, add = (hi - lo) / 255.0 / scale, lo / scale + zero
        if dtype == np.uint8 and abs(mul - 1) < 1e-3 and abs(add) < 0.5:
            return 1.0, 0.0
        return mul, add
    return 1.0, 0.0 if dtype == np.uint8 else -128.0


class Model:
    """A loaded TFLite model that turns BGR frames into output arrays."""

    def __init__(
        self,
        path: str | Path,
        *,
        runtime: str = "auto",
        num_threads: int = 1,
        delegate: str = "",
        input_range: Tuple[float, float] = (-1.0, 1.0),
        color: str = "rgb",
        verify: bool = True,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model not found: {self.path} (set [model] path or --model FILE)")
        self.sha256 = file_sha256(self.path)
        self.runtime, interpreter_cls, load_delegate = load_runtime(runtime)
        if verify:
            verify_model_file(self.path, self.runtime)
        self.delegate = delegate
        self.interpreter = _open_interpreter(self.path, interpreter_cls, load_delegate,
                                             runtime=self.runtime, delegate=delegate,
                                             num_threads=num_threads)
        self.input_details = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()
        detail = self.input_details[0]
        shape = [int(v) for v in detail["shape"]]
        if len(shape) != 4 or shape[3] not in (1, 3):
            raise ModelError(f"unsupported input shape {shape} in {self.path} (need [1, H, W, 1|3])")
        self.input_index = int(detail["index"])
        self.input_dtype = np.dtype(detail["dtype"])
        self.input_size = (shape[2], shape[1])  # (width, height)
        self.channels = shape[3]
        self.color = color
        self._mul, self._add = input_transform(self.input_dtype, detail.get("quantization"),
                                                input_range)
        w, h = self.input_size
        self._resized = np.empty((h, w, 3), np.uint8)
        self._rgb = np.empty((h, w, 3), np.uint8)
        self._gray = np.empty((h, w), np.uint8)
        self._tensor = np.empty((1, h, w, self.channels), self.input_dtype)
        self._work = np.empty((h, w, self.channels), np.float32)

    @classmethod
    def from_config(cls, config: ModelConfig) -> Model:
        """The model a ``[model]`` section describes."""
        return cls(config.path, runtime=config.runtime, num_threads=config.num_threads,
                   delegate=config.delegate, input_range=config.input_range, color=config.color)

    def prepare(self, frame_bgr: npt.NDArray[np.uint8]) -> Tensor:
        """Resize and normalise a BGR frame into the model's input tensor (preallocated)."""
        cv2.resize(frame_bgr, self.input_size, dst=self._resized, interpolation=cv2.INTER_LINEAR)
        src: npt.NDArray[np.uint8] = self._resized
        if self.channels == 1:
            cv2.cvtColor(src, cv2.COLOR_BGR2GRAY, dst=self._gray)
            src = self._gray[:, :, None]
        elif self.color == "rgb":
            cv2.cvtColor(src, cv2.COLOR_BGR2RGB, dst=self._rgb)
            src = self._rgb
        if self._mul == 1.0 and self._add == 0.0 and self.input_dtype == np.uint8:
            self._tensor[0] = src
        else:
            np.multiply(src, self._mul, out=self._work, casting="unsafe")
            self._work += self._add
            if self.input_dtype != np.float32:
                info = np.iinfo(self.input_dtype)
                np.clip(np.rint(self._work, out=self._work), info.min, info.max, out=self._work)
            self._tensor[0] = self._work
        return self._tensor

    def invoke(self) -> List[Tensor]:
        """Run the interpreter on the prepared input and return copies of its outputs."""
        self.interpreter.set_tensor(self.input_index, self._tensor)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]) for d in self.output_details]

    def __call__(self, frame_bgr: npt.NDArray[np.uint8]) -> Tuple[List[Tensor], float]:
        """Prepare, invoke, and return ``(outputs, latency_s)`` for one frame."""
        t0 = time.perf_counter()
        self.prepare(frame_bgr)
        outputs = self.invoke()
        return outputs, time.perf_counter() - t0

    def info(self) -> Dict[str, Any]:
        """The model's identity for heartbeats, alerts and baselines."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "runtime": self.runtime,
            "delegate": self.delegate or None,
            "input": [int(v) for v in self.input_details[0]["shape"]],
            "input_size": self.input_size,
            "input_dtype": self.input_dtype.name,
            "outputs": [
                {"name": d["name"], "shape": [int(v) for v in d["shape"]]}
                for d in self.output_details
            ],
        }
