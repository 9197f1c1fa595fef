"""Box geometry for the detection decoders: MediaPipe SSD anchor grids and fast NMS."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["fast_nms", "ssd_anchors"]

Array = npt.NDArray[Any]


def ssd_anchors(input_size: int = 128, strides: Sequence[int] = (8, 16, 16, 16),
                per_layer: int = 2) -> Array:
    """Normalised (cx, cy) anchor centres of a MediaPipe SSD anchor grid (BlazeFace: 896)."""
    centres = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        fm = int(math.ceil(input_size / strides[i]))
        ys, xs = np.mgrid[0:fm, 0:fm]
        grid = np.stack([(xs + 0.5) / fm, (ys + 0.5) / fm], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, per_layer * (j - i), axis=1).reshape(-1, 2))
        i = j
    out: Array = np.concatenate(centres).astype(np.float32)
    return out


def fast_nms(boxes: Array, iou: float) -> Array:
    """Keep-mask for x1, y1, x2, y2 boxes sorted by descending score (YOLACT's fast NMS)."""
    k = len(boxes)
    if k < 2:
        return np.ones(k, bool)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    iw = np.maximum(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0)
    ih = np.maximum(np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0)
    inter = iw * ih
    ious = inter / np.maximum(area[:, None] + area - inter, 1e-12)
    keep: Array = np.triu(ious, 1).max(axis=0) <= iou
    return keep
