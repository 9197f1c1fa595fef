"""Per-frame confidence summary of a vision model's raw outputs.

``make_decoder`` picks a decoder from the interpreter's output details (or from the output
arrays themselves) once; calling the decoder on each frame's outputs writes the
``CONFIDENCE_FEATURES`` values into a preallocated row. Kinds:

* ``classification``: one ``[1, C]`` output, probabilities or logits (softmaxed), int8/uint8
  dequantised with the tensor's (scale, zero_point).
* ``ssd``: the TFLite detection post-process outputs (boxes, classes, scores, count).
* ``yolo``: one ``[1, 4+C, N]`` or ``[1, N, 4+C]`` output (cx, cy, w, h, class scores).
* ``anchors``: raw anchor scores and regressors such as BlazeFace's ``[1, 896, 16]`` and
  ``[1, 896, 1]`` (score logits).
* ``generic``: anything else, summarised from the flattened first output.

Raw detector outputs (``yolo``, ``anchors``) have no non-maximum suppression, so the
decoder applies a vectorised "fast NMS" (a candidate is dropped when a higher-scoring one
overlaps it by more than ``nms_iou``) to at most ``max_candidates`` candidates above the
score threshold: a fixed, small cost.

Features that do not apply are NaN (e.g. ``det_count`` for a classifier, ``mean_score`` for
a frame without detections).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from .boxes import fast_nms, ssd_anchors
from .errors import ModelError

Array = npt.NDArray[Any]

CONFIDENCE_FEATURES: tuple[str, ...] = (
    "top_score",
    "margin",
    "score_entropy",
    "det_count",
    "mean_score",
    "low_conf_frac",
    "box_area_mean",
    "box_area_std",
    "pred_class",
)

# Positions in the confidence row, named: the decoders write them by name.
_TOP_SCORE = CONFIDENCE_FEATURES.index("top_score")
_MARGIN = CONFIDENCE_FEATURES.index("margin")
_SCORE_ENTROPY = CONFIDENCE_FEATURES.index("score_entropy")
_DET_COUNT = CONFIDENCE_FEATURES.index("det_count")
_MEAN_SCORE = CONFIDENCE_FEATURES.index("mean_score")
_LOW_CONF_FRAC = CONFIDENCE_FEATURES.index("low_conf_frac")
_BOX_AREA_MEAN = CONFIDENCE_FEATURES.index("box_area_mean")
_BOX_AREA_STD = CONFIDENCE_FEATURES.index("box_area_std")
_PRED_CLASS = CONFIDENCE_FEATURES.index("pred_class")
# Features without meaning when nothing is detected.
_NO_DETECTION = (_SCORE_ENTROPY, _MEAN_SCORE, _BOX_AREA_MEAN, _BOX_AREA_STD, _PRED_CLASS)

CONFIDENCE_SPECS: tuple[tuple[str, str, str], ...] = (
    ("top_score", "highest class probability / candidate score", "0-1"),
    ("margin", "classification: top1 - top2 probability; detection: top_score - threshold",
     "-1..1"),
    ("score_entropy", "classification: softmax entropy / log(C); detection: mean binary entropy of "
     "the detections' scores", "0-1"),
    ("det_count", "detections at or above the score threshold (after NMS); NaN for classifiers",
     ">= 0"),
    ("mean_score", "mean score of the detections (NaN when none)", "0-1"),
    ("low_conf_frac", "detection: share of candidates >= low_conf that are below the threshold; "
     "classification: 1 when top_score < threshold", "0-1"),
    ("box_area_mean", "mean detection box area as a fraction of the image", "0-1"),
    ("box_area_std", "standard deviation of the detection box areas", "0-0.5"),
    ("pred_class", "class index of the top prediction (NaN when no detection)", ">= 0"),
)

KINDS = ("auto", "classification", "ssd", "yolo", "anchors", "generic")
_NAN = float("nan")
_LN2 = math.log(2.0)


@dataclass(frozen=True)
class OutputInfo:
    """What the decoder knows about one output tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: Any
    scale: float
    zero_point: int


def output_infos(outputs_spec: Sequence[Any]) -> list[OutputInfo]:
    """OutputInfo for each entry of get_output_details() dicts or of plain numpy arrays."""
    infos = []
    for i, spec in enumerate(outputs_spec):
        if isinstance(spec, dict):
            scale, zp = spec.get("quantization", (0.0, 0)) or (0.0, 0)
            infos.append(OutputInfo(str(spec.get("name", f"output{i}")),
                                    tuple(int(d) for d in spec["shape"]), np.dtype(spec["dtype"]),
                                    float(scale), int(zp)))
        else:
            arr = np.asarray(spec)
            scale, zp = 0.0, 0
            # Without details, assume the usual TFLite quantisation of a [0, 1] output.
            if arr.dtype == np.uint8:
                scale, zp = 1.0 / 256.0, 0
            elif arr.dtype == np.int8:
                scale, zp = 1.0 / 256.0, -128
            infos.append(OutputInfo(f"output{i}", tuple(arr.shape), arr.dtype, scale, zp))
    if not infos:
        raise ModelError("model has no outputs: cannot summarise confidence (check the model file)")
    return infos


def detect_kind(infos: Sequence[OutputInfo]) -> str:
    """Guess the decoder kind from output shapes and names."""
    shapes = [i.shape for i in infos]
    sizes = [int(np.prod(s)) if s else 1 for s in shapes]
    if len(infos) == 4 and 1 in sizes and any(len(s) == 3 and s[-1] == 4 for s in shapes):
        return "ssd"
    if len(infos) == 2 and all(len(s) == 3 for s in shapes) and shapes[0][1] == shapes[1][1]:
        last = sorted(s[-1] for s in shapes)
        if last[0] == 1 and last[1] >= 4:
            return "anchors"
    s = shapes[0]
    if len(infos) == 1 and len(s) == 3 and s[0] == 1 and 5 <= min(s[1:]) <= 1024 \
            and max(s[1:]) >= 2 * min(s[1:]):
        return "yolo"
    if sizes[0] >= 2 and sizes[0] == max(s or (1,)):
        return "classification"
    return "generic"


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1.0 - 1e-12)
    return math.log(p / (1.0 - p))


class Decoder:
    """Base: turns one frame's outputs into CONFIDENCE_FEATURES values."""

    kind = "generic"

    def __init__(self, infos: Sequence[OutputInfo], score_threshold: float, low_conf: float,
                 num_classes: int) -> None:
        self.infos = tuple(infos)
        self.score_threshold = float(score_threshold)
        self.low_conf = float(low_conf)
        self.num_classes = int(num_classes)
        self._scratch = [
            np.empty(i.shape, np.float32) if i.scale > 0 else None for i in self.infos
        ]

    def _float(self, outputs: Sequence[Array], i: int) -> Array:
        """Output i as float32, dequantised into preallocated scratch when quantised."""
        s = self._scratch[i]
        arr = outputs[i]
        if s is None:
            return arr
        info = self.infos[i]
        np.copyto(s, arr.reshape(s.shape), casting="unsafe")
        s -= info.zero_point
        s *= info.scale
        return s

    def _check(self, outputs: Sequence[Array]) -> None:
        if len(outputs) != len(self.infos):
            raise ModelError(
                f"{self.kind} decoder expected {len(self.infos)} outputs, got {len(outputs)} "
                "(pass every output tensor, in interpreter order)"
            )

    def __call__(self, outputs: Sequence[Array], out: Array,
                 class_hist: Array | None = None) -> bool:
        """Write the CONFIDENCE_FEATURES values for one frame into ``out``.

        Returns False, leaving ``out`` to the caller, when the outputs hold NaN or infinite
        values (a broken model or delegate): the frame's confidence is then unknown.
        """
        raise NotImplementedError

    def _detections(self, out: Array, top: float, n_above_low: int, n_hi: int,
                    scores: list[float], areas: list[float], classes: list[int] | None,
                    class_hist: Array | None) -> None:
        """Shared detection summary over the kept detections (plain floats: usually few)."""
        k = len(scores)
        out[_TOP_SCORE] = top
        out[_MARGIN] = top - self.score_threshold
        out[_DET_COUNT] = k
        out[_LOW_CONF_FRAC] = (n_above_low - n_hi) / n_above_low if n_above_low else 0.0
        if k == 0:
            for i in _NO_DETECTION:
                out[i] = _NAN
            return
        ent = 0.0
        for s in scores:
            p = min(max(s, 1e-12), 1.0 - 1e-12)
            ent -= p * math.log(p) + (1.0 - p) * math.log(1.0 - p)
        out[_SCORE_ENTROPY] = ent / (k * _LN2)
        out[_MEAN_SCORE] = sum(scores) / k
        a_mu = sum(areas) / k
        out[_BOX_AREA_MEAN] = a_mu
        out[_BOX_AREA_STD] = math.sqrt(max(sum(a * a for a in areas) / k - a_mu * a_mu, 0.0))
        best = max(range(k), key=scores.__getitem__)
        out[_PRED_CLASS] = 0.0 if classes is None else classes[best]
        if class_hist is not None:
            n = len(class_hist)
            if classes is None:
                class_hist[0] += k
            else:
                for c in classes:
                    if 0 <= c < n:
                        class_hist[c] += 1


class ClassificationDecoder(Decoder):
    """One [1, C] output: probabilities or logits."""

    kind = "classification"

    def __init__(self, infos: Sequence[OutputInfo], score_threshold: float, low_conf: float,
                 num_classes: int | None = None) -> None:
        c = int(np.prod(infos[0].shape))
        super().__init__(infos, score_threshold, low_conf, num_classes or c)
        self._p = np.empty(c, np.float64)
        self._tmp = np.empty(c, np.float64)
        self._log_c = math.log(c)

    def __call__(self, outputs: Sequence[Array], out: Array,
                 class_hist: Array | None = None) -> bool:
        """Write top_score, margin, entropy, pred_class (and low_conf_frac) into ``out``."""
        p, tmp = self._p, self._tmp
        np.copyto(p, self._float(outputs, 0).reshape(-1))
        total = p.sum()
        if not math.isfinite(total):
            return False
        if p.min() >= 0.0 and p.max() <= 1.0001 and 0.9 < total < 1.1:
            p /= total
        else:  # logits
            p -= p.max()
            np.exp(p, out=p)
            p /= p.sum()
        idx = int(p.argmax())
        top1 = float(p[idx])
        p[idx] = -1.0
        top2 = float(p.max())
        p[idx] = top1
        np.maximum(p, 1e-300, out=tmp)
        np.log(tmp, out=tmp)
        out[_TOP_SCORE] = top1
        out[_MARGIN] = top1 - top2
        out[_SCORE_ENTROPY] = -float(np.dot(p, tmp)) / self._log_c
        out[_DET_COUNT] = _NAN
        out[_MEAN_SCORE] = _NAN
        out[_LOW_CONF_FRAC] = 1.0 if top1 < self.score_threshold else 0.0
        out[_BOX_AREA_MEAN] = out[_BOX_AREA_STD] = _NAN
        out[_PRED_CLASS] = idx
        if class_hist is not None and idx < len(class_hist):
            class_hist[idx] += 1
        return True


class SSDDecoder(Decoder):
    """TFLite_Detection_PostProcess outputs: boxes [1,N,4], classes [1,N], scores [1,N], count."""

    kind = "ssd"

    def __init__(self, infos: Sequence[OutputInfo], score_threshold: float, low_conf: float,
                 num_classes: int | None = None) -> None:
        super().__init__(infos, score_threshold, low_conf, num_classes or 91)
        shapes = [i.shape for i in infos]
        self._boxes = next(i for i, s in enumerate(shapes) if len(s) == 3 and s[-1] == 4)
        self._count = next(i for i, s in enumerate(shapes) if int(np.prod(s)) == 1)
        rest = [i for i in range(len(infos)) if i not in (self._boxes, self._count)]
        self._pair: tuple[int, int] | None = None  # (classes, scores)
        names = [infos[i].name.lower() for i in rest]
        if any("class" in n for n in names) and any("score" in n for n in names):
            c = rest[0] if "class" in names[0] else rest[1]
            self._pair = (c, rest[1] if c == rest[0] else rest[0])
        elif all(infos[i].name.startswith("TFLite_Detection_PostProcess") for i in rest):
            by_suffix = {infos[i].name.rsplit(":", 1)[-1]: i for i in rest}
            if "1" in by_suffix and "2" in by_suffix:
                self._pair = (by_suffix["1"], by_suffix["2"])
        self._rest = (rest[0], rest[1])

    def _resolve(self, a: Array, b: Array) -> tuple[int, int] | None:
        """Tell classes from scores by value: classes are integers, scores are not."""
        ia = bool(np.all(a == np.round(a)))
        ib = bool(np.all(b == np.round(b)))
        if ia and not ib:
            return self._rest
        if ib and not ia:
            return (self._rest[1], self._rest[0])
        return None

    def __call__(self, outputs: Sequence[Array], out: Array,
                 class_hist: Array | None = None) -> bool:
        """Summarise the post-processed detections of one frame into ``out``."""
        self._check(outputs)
        count = float(np.asarray(self._float(outputs, self._count)).reshape(-1)[0])
        if not math.isfinite(count):
            return False
        n = int(count)
        pair = self._pair
        if pair is None:
            a = self._float(outputs, self._rest[0]).reshape(-1)[:n]
            b = self._float(outputs, self._rest[1]).reshape(-1)[:n]
            pair = self._resolve(a, b)
            if pair is not None:
                self._pair = pair
            else:
                pair = self._rest
        classes = self._float(outputs, pair[0]).reshape(-1)[:n]
        scores = self._float(outputs, pair[1]).reshape(-1)[:n]
        boxes = self._float(outputs, self._boxes).reshape(-1, 4)[:n]
        if not math.isfinite(float(scores.sum() + classes.sum() + boxes.sum())):
            return False
        n = min(n, len(scores))
        top = float(scores.max()) if n else 0.0
        n_above_low = int(np.count_nonzero(scores >= self.low_conf))
        keep = scores >= self.score_threshold
        n_hi = int(np.count_nonzero(keep))
        kb = boxes[keep]
        areas = np.clip(kb[:, 2] - kb[:, 0], 0, 1) * np.clip(kb[:, 3] - kb[:, 1], 0, 1)
        self._detections(out, top, n_above_low, n_hi, scores[keep].tolist(), areas.tolist(),
                         classes[keep].astype(np.intp).tolist(), class_hist)
        return True


class YoloDecoder(Decoder):
    """One [1, 4+C, N] (or [1, N, 4+C]) output: cx, cy, w, h and per-class scores."""

    kind = "yolo"

    def __init__(self, infos: Sequence[OutputInfo], score_threshold: float, low_conf: float,
                 num_classes: int | None = None, input_size: tuple[int, int] = (640, 640),
                 nms_iou: float = 0.5, max_candidates: int = 64) -> None:
        s = infos[0].shape
        self._channels_first = s[1] < s[2]
        k = s[1] if self._channels_first else s[2]
        n = s[2] if self._channels_first else s[1]
        super().__init__(infos[:1], score_threshold, low_conf, num_classes or (k - 4))
        self._best = np.empty(n, np.float32)
        self._mask = np.empty(n, bool)
        self._size = input_size
        self._iou = nms_iou
        self._cap = max_candidates

    def __call__(self, outputs: Sequence[Array], out: Array,
                 class_hist: Array | None = None) -> bool:
        """Summarise the frame's candidates (after fast NMS) into ``out``."""
        x = self._float(outputs, 0)[0]
        if self._channels_first:
            x = x.T  # a view: (N, 4+C)
            np.max(self._float(outputs, 0)[0, 4:], axis=0, out=self._best)
        else:
            np.max(x[:, 4:], axis=1, out=self._best)
        best, mask = self._best, self._mask
        top = float(best.max())  # NaN when any score is NaN
        if not math.isfinite(top):
            return False
        np.greater_equal(best, self.low_conf, out=mask)
        n_above_low = int(np.count_nonzero(mask))
        np.greater_equal(best, self.score_threshold, out=mask)
        idx = np.flatnonzero(mask)
        n_hi = len(idx)
        if n_hi > self._cap:
            idx = idx[np.argpartition(best[idx], -self._cap)[-self._cap:]]
        idx = idx[np.argsort(-best[idx])]
        rows = np.asarray(x[idx], np.float64)
        if not math.isfinite(float(rows.sum())):
            return False
        scores = best[idx]
        classes = rows[:, 4:].argmax(axis=1)
        cx, cy, w, h = rows[:, 0], rows[:, 1], np.abs(rows[:, 2]), np.abs(rows[:, 3])
        if len(rows) and max(cx.max(), cy.max(), w.max(), h.max()) > 1.5:  # pixel units
            cx, w = cx / self._size[0], w / self._size[0]
            cy, h = cy / self._size[1], h / self._size[1]
        keep = fast_nms(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1),
                        self._iou)
        areas = np.clip(w, 0, 1) * np.clip(h, 0, 1)
        self._detections(out, top, n_above_low, n_hi, scores[keep].tolist(),
                         areas[keep].tolist(), classes[keep].tolist(), class_hist)
        return True


class AnchorDecoder(Decoder):
    """Raw anchor outputs, e.g. BlazeFace: regressors [1, N, 4+] and score logits [1, N, 1]."""

    kind = "anchors"

    def __init__(self, infos: Sequence[OutputInfo], score_threshold: float, low_conf: float,
                 num_classes: int | None = None, input_size: tuple[int, int] = (128, 128),
                 anchors: Array | None = None, nms_iou: float = 0.3,
                 max_candidates: int = 32) -> None:
        super().__init__(infos, score_threshold, low_conf, num_classes or 1)
        self._scores = next(i for i, inf in enumerate(infos) if inf.shape[-1] == 1)
        self._regs = 1 - self._scores
        n = infos[self._scores].shape[1]
        if anchors is None and n == 896 and input_size == (128, 128):
            anchors = ssd_anchors(128)
        if anchors is not None and len(anchors) != n:
            raise ModelError(f"anchor decoder: {len(anchors)} anchors for {n} model outputs "
                             "(pass the model's anchor centres)")
        self._size = (float(input_size[0]), float(input_size[1]))
        self._anchor_px: list[list[float]] | None = None
        if anchors is not None:  # centres in input pixels, as plain floats for the NMS loop
            self._anchor_px = (np.asarray(anchors, np.float64)[:, :2] * self._size).tolist()
        self._thr = _logit(self.score_threshold)
        self._low = _logit(self.low_conf)
        self._mask = np.empty(n, bool)
        self._iou = nms_iou
        self._cap = max_candidates

    def __call__(self, outputs: Sequence[Array], out: Array,
                 class_hist: Array | None = None) -> bool:
        """Summarise the frame's anchors (thresholded on logits, then fast NMS) into ``out``."""
        self._check(outputs)
        logits = self._float(outputs, self._scores).reshape(-1)
        # NaN never clears low_conf and would hide among the low scores: look for it (and
        # inf) with a dot product, where both propagate, at a third of a reduction's cost.
        if not math.isfinite(logits.dot(logits)):
            return False
        # Most anchors are far below low_conf: find the few above it first and work on
        # those as plain floats; the sigmoid is only ever taken of the kept scores.
        idx = np.flatnonzero(logits >= self._low)
        n_above_low = len(idx)
        if n_above_low and n_above_low <= 4 * self._cap:
            lg = logits[idx].tolist()
            top_logit = max(lg)
        else:  # none above low_conf, or degenerate outputs: stay vectorised
            top_logit = float(logits.max())
        top = 1.0 / (1.0 + math.exp(-min(max(top_logit, -100.0), 100.0)))
        thr_l = self._thr
        if top_logit < thr_l:
            self._detections(out, top, n_above_low, 0, [], [], None, class_hist)
            return True
        if n_above_low > 4 * self._cap:
            idx = np.flatnonzero(logits >= thr_l)
            if len(idx) > self._cap:
                idx = idx[np.argpartition(logits[idx], -self._cap)[-self._cap:]]
            lg = logits[idx].tolist()
            n_hi = int(np.count_nonzero(logits >= thr_l))
            order = sorted(range(len(lg)), key=lg.__getitem__, reverse=True)
        else:
            order = [j for j, x in enumerate(lg) if x >= thr_l]
            n_hi = len(order)
            order.sort(key=lg.__getitem__, reverse=True)
            del order[self._cap:]
        regs = self._float(outputs, self._regs)[0][idx, :4].tolist()
        kept = self._nms(order, lg, regs, idx.tolist())
        if kept is None:
            return False
        scores, areas = kept
        self._detections(out, top, n_above_low, n_hi, scores, areas, None, class_hist)
        return True

    def _nms(self, order: list[int], lg: list[float], regs: list[list[float]],
             il: list[int]) -> tuple[list[float], list[float]] | None:
        """Greedy NMS of the ordered candidates in plain floats: their scores and box areas.

        None when a candidate's box holds NaN or inf.
        """
        sw, sh = self._size
        anchors = self._anchor_px
        scores: list[float] = []
        areas: list[float] = []
        boxes: list[tuple[float, float, float, float, float]] = []
        k = 1.0 + self._iou
        thr = self._iou
        for i in order:  # greedy NMS in plain floats: a handful of candidates per object
            rx, ry, rw, rh = regs[i]
            if not math.isfinite(rx + ry + rw + rh):
                return None
            w = rw if rw > 0.0 else -rw
            h = rh if rh > 0.0 else -rh
            if anchors is not None:
                ax, ay = anchors[il[i]]
                x1 = ax + rx - 0.5 * w
                y1 = ay + ry - 0.5 * h
                x2, y2, a = x1 + w, y1 + h, w * h
                for bx1, by1, bx2, by2, ba in boxes:
                    iw = (x2 if x2 < bx2 else bx2) - (x1 if x1 > bx1 else bx1)
                    ih = (y2 if y2 < by2 else by2) - (y1 if y1 > by1 else by1)
                    if iw > 0.0 and ih > 0.0 and iw * ih * k > thr * (a + ba):
                        break  # IoU > thr with a kept box
                else:
                    boxes.append((x1, y1, x2, y2, a))
                    x = lg[i]
                    scores.append(1.0 / (1.0 + math.exp(-(x if x > -100.0 else -100.0))))
                    areas.append((w / sw if w < sw else 1.0) * (h / sh if h < sh else 1.0))
                continue
            x = lg[i]
            scores.append(1.0 / (1.0 + math.exp(-(x if x > -100.0 else -100.0))))
            areas.append((w / sw if w < sw else 1.0) * (h / sh if h < sh else 1.0))
        return scores, areas


class GenericDecoder(Decoder):
    """Anything else: max, mean, softmax entropy and argmax of the flattened first output."""

    kind = "generic"

    def __init__(self, infos: Sequence[OutputInfo], score_threshold: float, low_conf: float,
                 num_classes: int | None = None) -> None:
        n = int(np.prod(infos[0].shape)) if infos[0].shape else 1
        super().__init__(infos, score_threshold, low_conf, num_classes or 0)
        self._p = np.empty(n, np.float64)
        self._log_n = math.log(n) if n > 1 else 1.0

    def __call__(self, outputs: Sequence[Array], out: Array,
                 class_hist: Array | None = None) -> bool:
        """Write top_score (max), margin, entropy, mean_score (mean), pred_class (argmax)."""
        p = self._p
        np.copyto(p, np.asarray(self._float(outputs, 0)).reshape(-1))
        if not math.isfinite(float(p.sum())):
            return False
        idx = int(p.argmax())
        top1 = float(p[idx])
        out[_TOP_SCORE] = top1
        out[_MEAN_SCORE] = float(p.mean())
        if len(p) > 1:
            p[idx] = -np.inf
            out[_MARGIN] = top1 - float(p.max())
            p[idx] = top1
        else:
            out[_MARGIN] = _NAN
        p -= top1
        np.exp(p, out=p)
        total = p.sum()
        p /= total
        np.maximum(p, 1e-300, out=p)
        out[_SCORE_ENTROPY] = float(-np.dot(p, np.log(p))) / self._log_n if len(p) > 1 else 0.0
        out[_DET_COUNT] = out[_LOW_CONF_FRAC] = out[_BOX_AREA_MEAN] = out[_BOX_AREA_STD] = _NAN
        out[_PRED_CLASS] = idx
        return True


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    w, h = size
    return int(w), int(h)


def make_decoder(outputs_spec: Sequence[Any], kind: str = "auto", score_threshold: float = 0.5,
                 low_conf: float | None = None, max_classes: int | None = None,
                 input_size: Any = None, nms_iou: float | None = None,
                 anchors: Array | None = None) -> Decoder:
    """A decoder for a model's outputs: get_output_details() dicts or example output arrays.

    ``input_size`` is the model input (width, height) or one int, used to normalise box
    areas; ``low_conf`` defaults to half the score threshold; ``max_classes`` sets the
    class-histogram length (default: the model's class count; 91 for SSD).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown decoder kind {kind!r} (valid: {', '.join(KINDS)})")
    if not 0.0 < score_threshold < 1.0:
        raise ValueError(f"score_threshold must be in (0, 1), got {score_threshold}")
    low = score_threshold / 2.0 if low_conf is None else float(low_conf)
    if not 0.0 < low < score_threshold:
        raise ValueError(f"low_conf must be in (0, score_threshold), got {low}")
    infos = output_infos(outputs_spec)
    if kind == "auto":
        kind = detect_kind(infos)
    try:
        if kind == "classification":
            return ClassificationDecoder(infos[:1], score_threshold, low, max_classes)
        if kind == "ssd":
            return SSDDecoder(infos, score_threshold, low, max_classes)
        if kind == "yolo":
            return YoloDecoder(infos, score_threshold, low, max_classes,
                               _pair(input_size or 640), nms_iou or 0.5)
        if kind == "anchors":
            return AnchorDecoder(infos, score_threshold, low, max_classes,
                                 _pair(input_size or 128), anchors, nms_iou or 0.3)
        return GenericDecoder(infos, score_threshold, low, max_classes)
    except (StopIteration, IndexError) as exc:
        shapes = ", ".join(str(i.shape) for i in infos)
        raise ModelError(f"outputs do not fit the {kind} decoder: shapes {shapes} "
                         "(set [model] decoder to another kind, or auto)") from exc
