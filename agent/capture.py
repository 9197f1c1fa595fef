"""Frames to retrain on: which to keep is decided on the hot path, the keeping happens off it.

:meth:`Capture.offer` runs for every frame, after the frame's row is written. It decides
with a few comparisons whether this frame is due, and if so copies the frame, its row and
the model's outputs into one slot of a small pool allocated on the first frame (three
frame-sized buffers). A full pool drops the capture and counts it (``dropped``): a burst of
captures never grows memory nor waits. The slot goes to the storage thread
(:meth:`agent.store.Store.offer`, which never waits), which encodes the JPEG, decodes the
model's boxes (:mod:`agent.detections`) and saves file and row (:class:`agent.samplestore.SampleWriter`),
then frees the slot.

What is due:

* ``alert``: while an alert of a ``[capture] kinds`` kind is firing, its episode takes
  frames at ``first_gap_s`` x (0, 1, 3, 7, 15, ...) after it fired (the gaps double), up to
  ``per_episode``: the first seconds and the later course of a long episode both show.
* ``normal``: while no such alert is firing, frames at doubling gaps from the first frame,
  at most one every ``3600 / normal_frames`` s; the store keeps the newest
  ``normal_frames`` of them, so an episode has normal frames from just before it to
  contrast with. When an episode opens, the normal frames taken since one window before
  the alert's window are deleted: the change had begun before it was seen.
* ``unsure``: at most ``unsure_per_hour``, a frame whose top score is within
  ``UNSURE_BAND`` of ``[model] score_threshold`` (classifiers: below it, or a top-2 margin
  under the band).

All of them together take at most ``per_hour`` in any hour (a ring of the last
``per_hour`` capture times, ``limited`` counts what it held back); the store side bounds
the total size (``max_mb``, oldest first) and keeps free space above ``[health]
disk_free_mb``.

Alerts arrive through :meth:`alert` from whichever thread evaluated them; the episodes are
replaced (copy on write), never changed in place, so the hot path reads them without a lock.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import numpy.typing as npt
import sqlite_utils

from .confidence import Decoder
from .config import CaptureConfig
from .detections import detections
from .errors import StoreError
from .records import AlertTransition, FeatureLayout, Sample
from .samplestore import SampleWriter
from .store import Store

__all__ = ["POOL_SLOTS", "UNSURE_BAND", "Capture"]

log = logging.getLogger(__name__)

POOL_SLOTS = 3  # frames waiting for the storage thread at most
UNSURE_BAND = 0.1  # "near the threshold": |top_score - score_threshold| below this
_HOUR = 3600.0
Frame = npt.NDArray[np.uint8]


@dataclass
class _Episode:
    """One firing alert's capture schedule (changed by the hot path only)."""

    alert_id: str
    kind: str
    feature: str
    start: float
    taken: int = 0
    next_due: float = -math.inf


def _fits(held: Sequence[npt.NDArray[Any]], outputs: Sequence[npt.NDArray[Any]]) -> bool:
    """Are ``held`` buffers the shapes and types of ``outputs``?"""
    return len(held) == len(outputs) and all(
        a.shape == b.shape and a.dtype == b.dtype for a, b in zip(held, outputs))


class _Slot:
    """One frame-sized buffer with what the storage thread needs to save it."""

    def __init__(self, row_size: int) -> None:
        self.busy = False
        self.frame: Optional[Frame] = None
        self.row = np.full(row_size, np.nan, np.float32)
        self.outputs: List[npt.NDArray[Any]] = []
        self.has_outputs = False
        self.meta: Tuple[float, str, Optional[_Episode]] = (0.0, "normal", None)
        self.job: Callable[[sqlite_utils.Database], Optional[Sample]] = lambda db: None


class Capture:
    """Keeps frames for retraining within the ``[capture]`` limits (see the module docstring)."""

    def __init__(self, config: CaptureConfig, store: Store, writer: SampleWriter, *,
                 camera: str, layout: FeatureLayout, score_threshold: float,
                 first_gap_s: Optional[float] = None, slots: int = POOL_SLOTS) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.config = config
        self._store = store
        self.writer = writer
        self._camera = camera
        self._layout = layout
        self._threshold = score_threshold
        self._gap = config.first_gap_s if first_gap_s is None else first_gap_s
        self._top = layout.index("top_score")
        self._margin = layout.index("margin")
        self._det = layout.index("det_count")
        self._slots = [_Slot(len(layout.names)) for _ in range(slots)]
        for slot in self._slots:
            slot.job = functools.partial(self._save, slot)
        self._jpeg = [int(cv2.IMWRITE_JPEG_QUALITY), int(config.jpeg_quality)]
        self._hour = np.full(max(1, config.per_hour), -math.inf)  # the last per_hour captures
        self._hour_i = 0
        self._episodes: Dict[str, _Episode] = {}
        self._normal_next: Optional[float] = None
        self._normal_gap = self._gap
        self._normal_max_gap = _HOUR / max(1, config.normal_frames)
        self._unsure_next = -math.inf
        self._allocated = False
        self.decoder_of: Callable[[], Optional[Decoder]] = lambda: None  # set by the service
        self.counts = {"captured": 0, "dropped": 0, "limited": 0, "errors": 0}

    # ---- alerts (any thread) -----------------------------------------------------------
    def alert(self, transition: AlertTransition) -> None:
        """Open an episode when an alert of a captured kind fires; close it when it resolves."""
        if transition.kind not in self.config.kinds:
            return
        episodes = dict(self._episodes)
        if transition.state == "firing":
            if transition.id in episodes:
                return
            episodes[transition.id] = _Episode(transition.id, transition.kind,
                                               transition.feature, transition.ts)
            # A condition shows a window after it begins: frames kept as normal within one
            # window before the alert's window were probably not normal either.
            window = transition.window
            since = min(window.start, transition.starts_at) - max(0.0, window.end - window.start)
            try:
                self._store.submit(lambda db: self.writer.forget_normal_since(db, since))
            except StoreError:
                pass  # closing: the next start keeps them, labelled as they were
        elif episodes.pop(transition.id, None) is None:
            return
        self._episodes = episodes  # one reference swap: the hot path sees old or new

    # ---- the hot path ------------------------------------------------------------------
    def offer(self, frame: Optional[Frame], outputs: Optional[Sequence[npt.NDArray[Any]]],
              row: npt.NDArray[np.float32], ts: float) -> None:
        """Keep this frame if one is due and a slot is free (no I/O, no lock, no growth)."""
        if frame is None:
            return
        if not self._allocated:  # the pool, sized by the first frame
            self._allocate(frame)
            self._allocated = True
        reason, episode = self._due(row, ts)
        if reason is None:
            return
        self._advance(reason, episode, ts)
        hour = self._hour
        if self.config.per_hour == 0 or hour[self._hour_i] > ts - _HOUR:
            self.counts["limited"] += 1
            return
        slot = self._free_slot(frame)
        if slot is None:
            self.counts["dropped"] += 1
            return
        hour[self._hour_i] = ts
        self._hour_i = (self._hour_i + 1) % len(hour)
        self._fill(slot, frame, outputs, row, (ts, reason, episode))
        try:  # never waits: a storage thread behind on its work drops the capture
            queued = self._store.offer(slot.job) is not None
        except StoreError:  # the store is closing: nothing more is kept
            queued = False
        if not queued:
            slot.busy = False
            self.counts["dropped"] += 1
            return
        self.counts["captured"] += 1

    def _due(self, row: npt.NDArray[np.float32],
             ts: float) -> Tuple[Optional[str], Optional[_Episode]]:
        episodes = self._episodes
        if episodes:
            for episode in episodes.values():
                if episode.taken < self.config.per_episode and ts >= episode.next_due:
                    return "alert", episode
        elif self.config.normal_frames:
            if self._normal_next is None:
                self._normal_next = ts + self._gap
            elif ts >= self._normal_next:
                return "normal", None
        if self.config.unsure_per_hour and ts >= self._unsure_next and self._unsure(row):
            return "unsure", None
        return None, None

    def _unsure(self, row: npt.NDArray[np.float32]) -> bool:
        top = float(row[self._top])
        if not math.isfinite(top):
            return False
        if math.isnan(float(row[self._det])):  # a classifier: no detections counted
            return top < self._threshold or float(row[self._margin]) < UNSURE_BAND
        return abs(top - self._threshold) < UNSURE_BAND

    def _advance(self, reason: str, episode: Optional[_Episode], ts: float) -> None:
        """Move the schedule on, whether or not this capture is kept (one try per due frame)."""
        if episode is not None:
            episode.taken += 1
            episode.next_due = max(episode.start + self._gap * (2.0 ** episode.taken - 1.0),
                                   ts + self._gap)
        elif reason == "normal":
            self._normal_gap = min(2.0 * self._normal_gap, self._normal_max_gap)
            self._normal_next = ts + self._normal_gap
        else:
            self._unsure_next = ts + _HOUR / self.config.unsure_per_hour

    def _free_slot(self, frame: Frame) -> Optional[_Slot]:
        for slot in self._slots:
            if not slot.busy:
                if slot.frame is None or slot.frame.shape != frame.shape:
                    self._allocate(frame)
                slot.busy = True
                return slot
        return None

    def _allocate(self, frame: Frame) -> None:
        """Every idle slot sized for ``frame`` (on the first capture, or a new frame size)."""
        for slot in self._slots:
            if not slot.busy and (slot.frame is None or slot.frame.shape != frame.shape):
                slot.frame = np.empty_like(frame)

    def _fill(self, slot: _Slot, frame: Frame, outputs: Optional[Sequence[npt.NDArray[Any]]],
              row: npt.NDArray[np.float32],
              meta: Tuple[float, str, Optional[_Episode]]) -> None:
        assert slot.frame is not None
        np.copyto(slot.frame, frame)
        np.copyto(slot.row, row)
        slot.has_outputs = outputs is not None
        if outputs is not None:
            if not _fits(slot.outputs, outputs):  # once per model: every idle slot at once
                for other in self._slots:
                    if other is slot or not other.busy:
                        other.outputs = [np.empty_like(o) for o in outputs]
            for dst, src in zip(slot.outputs, outputs):
                np.copyto(dst, src)
        slot.meta = meta

    # ---- the storage thread ------------------------------------------------------------
    def _save(self, slot: _Slot, db: sqlite_utils.Database) -> Optional[Sample]:
        """Encode, decode boxes and save one slot; the slot is free again afterwards."""
        try:
            assert slot.frame is not None
            ok, buf = cv2.imencode(".jpg", slot.frame, self._jpeg)
            if not ok:
                raise ValueError("JPEG encoding failed")
            ts, reason, episode = slot.meta
            height, width = slot.frame.shape[:2]
            meta = {"ts": ts, "camera": self._camera, "reason": reason,
                    "alert_id": episode and episode.alert_id, "kind": episode and episode.kind,
                    "feature": episode and episode.feature, "width": width, "height": height,
                    "stats": self._values(self._layout.image_features, self._layout.image, slot),
                    "confidence": self._values(self._layout.confidence_features,
                                               self._layout.confidence, slot),
                    "detections": self._boxes(slot)}
            return self.writer.save(db, buf.tobytes(), meta)
        except (cv2.error, ValueError, OSError) as exc:
            self.counts["errors"] += 1
            log.warning("a captured frame was not saved: %s", exc)
            return None
        finally:
            slot.busy = False

    @staticmethod
    def _values(names: Sequence[str], part: slice, slot: _Slot) -> Dict[str, Optional[float]]:
        return {n: round(float(v), 5) if math.isfinite(v) else None
                for n, v in zip(names, slot.row[part].tolist())}

    def _boxes(self, slot: _Slot) -> List[Dict[str, Any]]:
        decoder = self.decoder_of()
        if decoder is None or not slot.has_outputs:
            return []
        try:
            return detections(decoder, slot.outputs)
        except (ValueError, IndexError, TypeError) as exc:  # outputs the decoder did not expect
            log.warning("boxes of a captured frame not decoded: %s", exc)
            return []

    # ---- reporting ---------------------------------------------------------------------
    def stats(self) -> Dict[str, int]:
        """Captures handed to storage, dropped (pool full), limited (per hour), saved, evicted."""
        w = self.writer.counts
        return {**self.counts, "saved": w["saved"], "evicted": w["evicted"],
                "disk_low": w["disk_low"], "errors": self.counts["errors"] + w["errors"]}
