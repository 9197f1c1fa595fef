"""The model's detections of one captured frame, as boxes a labelling tool can pre-load.

The per-frame decoders of :mod:`agent.confidence` only summarise detections (counts, scores,
areas) and never build box lists: that would allocate on every frame. A captured frame is
rare, so the storage thread decodes its copied outputs once more here, with the layout the
frame's decoder resolved (which output holds boxes, scores, classes; anchors; input size),
and the same score threshold and NMS overlap.

Boxes are ``[x0, y0, x1, y1]`` in 0..1 of the model input, which is the whole frame resized
(stretched, never letterboxed), so the same fractions hold on the captured frame. Decoders
without boxes (classification, generic) yield ``[]``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import numpy.typing as npt

from .boxes import fast_nms
from .confidence import AnchorDecoder, Decoder, SSDDecoder, YoloDecoder

__all__ = ["detections"]

Array = npt.NDArray[Any]
Detection = Dict[str, Any]


def detections(decoder: Decoder, outputs: Sequence[Array], limit: int = 100) -> List[Detection]:
    """``[{"box": [x0, y0, x1, y1], "score": s, "class": c}]``, best first (at most ``limit``)."""
    if isinstance(decoder, SSDDecoder):
        found = _ssd(decoder, outputs)
    elif isinstance(decoder, AnchorDecoder):
        found = _anchors(decoder, outputs)
    elif isinstance(decoder, YoloDecoder):
        found = _yolo(decoder, outputs)
    else:
        return []
    found.sort(key=lambda d: -float(d["score"]))
    return found[:limit]


def _pack(boxes: Array, scores: Array, classes: Array) -> List[Detection]:
    boxes = np.clip(np.nan_to_num(boxes.astype(np.float64)), 0.0, 1.0)
    return [{"box": [round(float(v), 5) for v in b], "score": round(float(s), 5), "class": int(c)}
            for b, s, c in zip(boxes, scores, classes) if np.isfinite(s)]


def _ssd(dec: SSDDecoder, outputs: Sequence[Array]) -> List[Detection]:
    """TFLite post-processed outputs: boxes are [ymin, xmin, ymax, xmax], already NMS'd."""
    n = int(np.asarray(dec._float(outputs, dec._count)).reshape(-1)[0])
    pair = dec._pair or dec._rest
    classes = np.asarray(dec._float(outputs, pair[0])).reshape(-1)[:n]
    scores = np.asarray(dec._float(outputs, pair[1])).reshape(-1)[:n]
    boxes = np.asarray(dec._float(outputs, dec._boxes)).reshape(-1, 4)[:n][:, [1, 0, 3, 2]]
    keep = scores >= dec.score_threshold
    return _pack(boxes[keep], scores[keep], classes[keep].astype(np.intp))


def _nms(boxes: Array, scores: Array, classes: Array, iou: float) -> List[Detection]:
    order = np.argsort(-scores)
    boxes, scores, classes = boxes[order], scores[order], classes[order]
    keep = fast_nms(boxes, iou)
    return _pack(boxes[keep], scores[keep], classes[keep])


def _anchors(dec: AnchorDecoder, outputs: Sequence[Array]) -> List[Detection]:
    """Raw anchors (BlazeFace): score logits and (dx, dy, w, h) regressors in input pixels."""
    if dec._anchor_px is None:
        return []
    logits = np.asarray(dec._float(outputs, dec._scores), np.float64).reshape(-1)
    idx = np.flatnonzero(logits >= dec._thr)
    if not len(idx):
        return []
    regs = np.asarray(dec._float(outputs, dec._regs), np.float64)[0][idx, :4]
    centres = np.asarray(dec._anchor_px, np.float64)[idx]
    size = np.asarray(dec._size, np.float64)
    half = np.abs(regs[:, 2:4]) / 2.0
    mid = centres + regs[:, 0:2]
    boxes = np.concatenate([(mid - half) / size, (mid + half) / size], axis=1)
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits[idx], -100.0, 100.0)))
    return _nms(boxes, scores, np.zeros(len(idx), np.intp), dec._iou)


def _yolo(dec: YoloDecoder, outputs: Sequence[Array]) -> List[Detection]:
    """One [1, 4+C, N] or [1, N, 4+C] output: cx, cy, w, h and class scores."""
    x = np.asarray(dec._float(outputs, 0)[0], np.float64)
    if dec._channels_first:
        x = x.T
    best = x[:, 4:].max(axis=1)
    keep = best >= dec.score_threshold
    rows = x[keep]
    if not len(rows):
        return []
    cx, cy, w, h = rows[:, 0], rows[:, 1], np.abs(rows[:, 2]), np.abs(rows[:, 3])
    if max(cx.max(), cy.max(), w.max(), h.max()) > 1.5:  # pixel units
        cx, w = cx / dec._size[0], w / dec._size[0]
        cy, h = cy / dec._size[1], h / dec._size[1]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return _nms(boxes, best[keep], rows[:, 4:].argmax(axis=1), dec._iou)
