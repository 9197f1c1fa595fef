"""The per-frame hot path: image statistics, confidence summary, one row into the ring buffer.

:class:`FrameObserver` does only what every frame needs: a fixed-size sample of the frame
gives the image statistics, the model's outputs give the confidence summary, the latency
and frame interval complete the row, and the row goes into a preallocated ring buffer (and
the warm-up buffer while one is being collected). No I/O, no lock, nothing that grows:
everything it writes was allocated in ``__init__``.

A frame the statistics cannot use (no frame, or NaN/inf in the model's input) or outputs
holding NaN/inf leave their part of the row missing (NaN) and count in ``bad_frames``;
monitoring goes on.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import numpy.typing as npt

from .buffers import RingBuffer
from .confidence import CONFIDENCE_FEATURES, Decoder
from .records import FeatureLayout
from .stats import IMAGE_FEATURES, ImageStats
from .warmup import Warmup

__all__ = ["FEATURES", "FEATURES_VERSION", "LAYOUT", "PERF_FEATURES", "FrameObserver"]

#: Bumped whenever a feature's definition changes, so that a reference learned by an older
#: agent (whose numbers mean something else) is not compared with the new ones.
FEATURES_VERSION = 2
#: The performance features the observer itself measures.
PERF_FEATURES: tuple[str, ...] = ("latency_ms", "frame_interval_ms")
#: The per-frame row: image statistics, confidence summary, performance.
LAYOUT = FeatureLayout(IMAGE_FEATURES, CONFIDENCE_FEATURES, PERF_FEATURES)
FEATURES: tuple[str, ...] = LAYOUT.names

Frame = npt.NDArray[np.uint8]
DecoderFactory = Callable[[Sequence[Any]], Decoder]


class FrameObserver:
    """Turns one frame (and the model's outputs) into one row of the ring buffer."""

    def __init__(self, ring: RingBuffer, stats: ImageStats, warmup: Warmup, *,
                 make_decoder: DecoderFactory, decoder: Optional[Decoder] = None,
                 layout: FeatureLayout = LAYOUT) -> None:
        if ring.names != layout.names:
            raise ValueError(f"ring buffer columns {ring.names} do not match the layout "
                             f"{layout.names}")
        self.ring = ring
        self._stats = stats
        self._warmup = warmup
        self._make_decoder = make_decoder
        self._decoder = decoder
        self.layout = layout
        self._row = np.full(len(layout.names), np.nan, np.float32)
        # Views into the row, made once: slicing per frame would allocate.
        self._image = self._row[layout.image]
        self._conf = self._row[layout.confidence]
        self._latency = layout.index("latency_ms")
        self._interval = layout.index("frame_interval_ms")
        self._frames = 0
        self._bad_frames = 0
        self._last_ts: Optional[float] = None

    @property
    def frames(self) -> int:
        """Frames observed."""
        return self._frames

    @property
    def bad_frames(self) -> int:
        """Frames whose input or outputs were unusable (NaN/inf): their statistics are NaN."""
        return self._bad_frames

    @property
    def last_ts(self) -> Optional[float]:
        """Timestamp of the last frame observed, if any."""
        return self._last_ts

    @property
    def row(self) -> npt.NDArray[np.float32]:
        """The last frame's row (a buffer reused for every frame: copy what you keep)."""
        return self._row

    @property
    def decoder(self) -> Optional[Decoder]:
        """The decoder of the model's outputs (None until the first outputs or a spec)."""
        return self._decoder

    def observe(self, frame: Optional[Frame], outputs: Optional[Sequence[npt.NDArray[Any]]],
                latency_s: Optional[float], ts: float) -> None:
        """Write one frame's row into the ring (and the warm-up buffer while collecting)."""
        row = self._row
        bad = False
        if frame is None:
            self._image.fill(np.nan)
            bad = True
        else:
            self._stats.compute(frame, self._image)
        if outputs is None:
            self._conf.fill(np.nan)
        else:
            decoder = self._decoder
            if decoder is None:
                decoder = self._decoder = self._make_decoder(list(outputs))
            if not decoder(outputs, self._conf):
                self._conf.fill(np.nan)
                bad = True
        row[self._latency] = np.nan if latency_s is None else latency_s * 1000.0
        last = self._last_ts
        row[self._interval] = np.nan if last is None else (ts - last) * 1000.0
        self.ring.push(ts, row)
        self._warmup.push(ts, row)
        self._frames += 1
        self._bad_frames += bad
        self._last_ts = ts

    def count_bad_frame(self) -> None:
        """Count a frame that could not be observed at all (the hook's conversion failed)."""
        self._bad_frames += 1
