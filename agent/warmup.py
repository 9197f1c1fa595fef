"""Warm-up: learn a drift reference from the first ``warmup_s`` of frames.

Without a baseline file or a stored reference, the monitor collects its first frames'
rows into a fixed buffer (``push`` is on the hot path: one row copy, nothing allocated),
and once ``warmup_s`` of frame time has passed (or the buffer is full) builds a reference
from them. A warm-up that cannot build one (too few frames for the drift window) fails
visibly: :attr:`Warmup.status` says ``failed`` with the reason, and the monitor reports an
event; ``restart`` begins a new one. The same buffer collects the calibration period of a
training reference (``begin(target_s=drift.calibration_s)``, then :meth:`Warmup.take`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np
import numpy.typing as npt

from .config import DriftConfig
from .drift.reference import Reference, build_reference
from .errors import BaselineError
from .records import ReferenceStatus

__all__ = ["WARMUP_MAX_FRAMES", "Warmup", "WarmupFailed", "too_short"]

#: The warm-up buffer's size in frames (20 minutes at 30 fps).
WARMUP_MAX_FRAMES = 36_000


def too_short(drift: DriftConfig, fps: float) -> Optional[str]:
    """Why a warm-up of ``warmup_s`` at ``fps`` cannot hold the two windows a reference needs
    (with the arithmetic and the fix), or None when it can.

    >>> from agent.config import load_config
    >>> drift = load_config({"drift": {"warmup_s": 20, "window_frames": 450}}).drift
    >>> too_short(drift, 15).split(": ")[1]
    'raise [drift] warmup_s to at least 60 s or lower [drift] window_frames to at most 150'
    >>> too_short(drift, 45) is None
    True
    """
    frames = int(drift.warmup_s * fps)
    need = 2 * drift.window_frames
    if frames >= need:
        return None
    return (f"[drift] warmup_s {drift.warmup_s:g} s x {fps:g} fps = {frames} frames, fewer than "
            f"the {need} a reference needs (2 x [drift] window_frames {drift.window_frames}): "
            f"raise [drift] warmup_s to at least {math.ceil(need / fps)} s or lower "
            f"[drift] window_frames to at most {frames // 2}")


class WarmupFailed(BaselineError):
    """A warm-up ended without a usable reference (the message says why and what to change)."""


class Warmup:
    """Collects per-frame rows and builds a reference from them when the warm-up is over."""

    def __init__(self, names: tuple[str, ...], drift: DriftConfig, model_info: Mapping[str, Any],
                 max_frames: int = WARMUP_MAX_FRAMES) -> None:
        self._names = names
        self._cfg = drift
        self._model = model_info
        self._max = int(max_frames)
        self._buf: Optional[npt.NDArray[np.float32]] = None  # allocated while collecting
        self._n = 0
        self._start: Optional[float] = None
        self._target = drift.warmup_s
        self._failure = ""

    @property
    def collecting(self) -> bool:
        """True while frames are being collected."""
        return self._buf is not None

    @property
    def frames(self) -> int:
        """Frames collected by the current (or last) warm-up."""
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes held by the warm-up buffer (0 when not collecting)."""
        return 0 if self._buf is None else int(self._buf.nbytes)

    @property
    def failure(self) -> str:
        """Why the last warm-up failed ('' if it did not)."""
        return self._failure

    def status(self) -> ReferenceStatus:
        """``warming_up`` or ``failed`` (the monitor reports ``ready``/``disabled`` itself)."""
        if self._failure and self._buf is None:
            return ReferenceStatus("failed", frames=self._n, target_s=self._target,
                                   message=self._failure)
        return ReferenceStatus("warming_up", frames=self._n, target_s=self._target)

    @property
    def target_s(self) -> float:
        """How long the current collection lasts (frame time)."""
        return self._target

    def begin(self, start: Optional[float] = None, target_s: Optional[float] = None) -> None:
        """Start collecting for ``target_s`` (the warm-up's by default) from ``start``/next frame."""
        if self._buf is None:
            self._buf = np.empty((self._max, len(self._names)), np.float32)
        self._n = 0
        self._start = start
        self._target = self._cfg.warmup_s if target_s is None else float(target_s)
        self._failure = ""

    def stop(self) -> None:
        """Stop collecting and free the buffer (a reference came from elsewhere)."""
        self._buf = None
        self._start = None

    def push(self, ts: float, row: npt.NDArray[np.float32]) -> None:
        """Copy one row while collecting (the hot path: no allocation)."""
        buf = self._buf
        if buf is None or self._n >= self._max:
            return
        if self._start is None:
            self._start = ts
        buf[self._n] = row
        self._n += 1

    def due(self, now: float) -> bool:
        """True when the warm-up is over: ``warmup_s`` of frame time, or the buffer full."""
        if self._buf is None or self._start is None:
            return False
        return now - self._start >= self._target or self._n >= self._max

    def take(self, now: float) -> tuple[npt.NDArray[np.float32], float, float]:
        """The collected rows, their frame rate and span in seconds; frees the buffer."""
        buf, start, n = self._buf, self._start, self._n
        self.stop()
        if buf is None or start is None:
            raise WarmupFailed("no warm-up in progress")
        return buf[:n], (n - 1) / max(now - start, 1e-9), now - start

    def fail(self, message: str) -> WarmupFailed:
        """Record why the collection could not be used; the error to raise."""
        self._failure = message
        return WarmupFailed(message)

    def finish(self, now: float, view: Optional[Mapping[str, Any]] = None) -> Reference:
        """The reference learned from the collected frames; frees the buffer.

        Raises :class:`WarmupFailed` (and keeps the reason in :attr:`status`) when the
        frames cannot make one.
        """
        rows, fps, span = self.take(now)
        n = rows.shape[0]
        cfg = self._cfg
        need = 2 * cfg.window_frames
        if n < need:
            raise self.fail(f"warm-up collected only {n} frames in {span:.0f} s; need {need} "
                            "(2 x drift.window_frames): raise [drift] warmup_s or lower "
                            "[drift] window_frames")
        try:
            return build_reference(
                rows, self._names, window_frames=cfg.window_frames,
                eval_stride_frames=max(1, int(round(cfg.eval_interval_s * fps))),
                fps=fps, model_sha256=str(self._model.get("sha256") or ""),
                model_path=str(self._model.get("path") or ""), origin="warmup",
                source=f"warm-up of {n} frames", created=now,
                target_false_alarms_per_week=cfg.false_alarms_per_week,
                persistence_s=cfg.for_s, view=view)
        except (BaselineError, ValueError) as exc:
            raise self.fail(f"warm-up of {n} frames could not build a reference: {exc}") from exc
