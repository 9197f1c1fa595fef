"""Decoders: the real BlazeFace model, and realistic classification / SSD / YOLO outputs."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from agent.boxes import ssd_anchors
from agent.confidence import (
    CONFIDENCE_FEATURES,
    CONFIDENCE_SPECS,
    Decoder,
    make_decoder,
)
from agent.errors import ModelError
from agent.testdata import blazeface_model_path, photo_path

IDX = {n: i for i, n in enumerate(CONFIDENCE_FEATURES)}
Array = npt.NDArray[Any]
BlazeFace = tuple[list[dict[str, Any]], Callable[[Array], list[Array]]]

try:
    from tflite_runtime.interpreter import Interpreter
except ImportError:  # pragma: no cover
    from ai_edge_litert.interpreter import Interpreter


def _run(decoder: Decoder, outputs: Sequence[Array], hist: Optional[Array] = None) -> dict[str, float]:
    out = np.full(len(CONFIDENCE_FEATURES), -7.0, np.float32)
    decoder(outputs, out, hist)
    return {n: float(v) for n, v in zip(CONFIDENCE_FEATURES, out)}


@pytest.fixture(scope="module")
def blazeface() -> BlazeFace:
    it = Interpreter(model_path=str(blazeface_model_path()))
    it.allocate_tensors()

    def infer(bgr: Array) -> list[Array]:
        x = cv2.cvtColor(cv2.resize(bgr, (128, 128)), cv2.COLOR_BGR2RGB)
        it.set_tensor(it.get_input_details()[0]["index"], (x.astype(np.float32) / 127.5 - 1)[None])
        it.invoke()
        return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]

    return it.get_output_details(), infer


def test_feature_names_unique_and_documented() -> None:
    assert len(set(CONFIDENCE_FEATURES)) == len(CONFIDENCE_FEATURES)
    assert tuple(s[0] for s in CONFIDENCE_SPECS) == CONFIDENCE_FEATURES


def test_blazeface_anchor_grid() -> None:
    a = ssd_anchors(128)
    assert a.shape == (896, 2)
    assert a[0].tolist() == pytest.approx([0.5 / 16, 0.5 / 16])
    assert a[512].tolist() == pytest.approx([0.5 / 8, 0.5 / 8])


def test_blazeface_face_and_black_frame(blazeface: BlazeFace) -> None:
    details, infer = blazeface
    dec = make_decoder(details, score_threshold=0.5, input_size=(128, 128))
    assert dec.kind == "anchors" and dec.num_classes == 1
    hist = np.zeros(dec.num_classes, np.int64)
    face = _run(dec, infer(cv2.imread(str(photo_path("astronaut.png")))), hist)
    assert face["det_count"] >= 1 and face["top_score"] > 0.5
    assert face["det_count"] <= 2  # NMS merges the overlapping anchors of one face
    assert 0.005 < face["box_area_mean"] < 0.5
    assert 0.5 <= face["mean_score"] <= 1.0 and 0.0 <= face["score_entropy"] <= 1.0
    assert face["pred_class"] == 0.0 and hist[0] == face["det_count"]
    black = _run(dec, infer(np.zeros((480, 640, 3), np.uint8)), hist)
    assert black["det_count"] == 0 and black["top_score"] < 0.5 and black["margin"] < 0
    assert math.isnan(black["mean_score"]) and math.isnan(black["box_area_mean"])
    assert hist[0] == face["det_count"]


def test_blazeface_from_arrays_and_extreme_logits(blazeface: BlazeFace) -> None:
    details, infer = blazeface
    outs = infer(cv2.imread(str(photo_path("astronaut.png"))))
    dec = make_decoder(outs)  # in-process hook: no details, detected from shapes
    assert dec.kind == "anchors"
    assert _run(dec, outs)["det_count"] >= 1
    extreme = [outs[0], np.full_like(outs[1], -1e4)]
    # No overflow warning (pytest turns warnings into errors).
    assert _run(dec, extreme)["top_score"] == pytest.approx(0.0, abs=1e-30)
    extreme[1][0, :40, 0] = 1e4
    v = _run(dec, extreme)
    assert v["top_score"] == 1.0 and v["det_count"] >= 1


def _cls_details(dtype: Any, scale: float = 0.0, zp: int = 0,
                 c: int = 1001) -> list[dict[str, Any]]:
    return [{"name": "Softmax", "shape": np.array([1, c]), "dtype": dtype,
             "quantization": (scale, zp)}]


def test_classification_probabilities_and_logits() -> None:
    probs = np.array([[0.05, 0.2, 0.1, 0.6, 0.05]], np.float32)
    dec = make_decoder([probs])
    assert dec.kind == "classification" and dec.num_classes == 5
    hist = np.zeros(5, np.int64)
    v = _run(dec, [probs], hist)
    assert v["top_score"] == pytest.approx(0.6, abs=1e-5)
    assert v["margin"] == pytest.approx(0.4, abs=1e-5)
    p = probs[0].astype(np.float64)
    assert v["score_entropy"] == pytest.approx(-(p * np.log(p)).sum() / math.log(5), abs=1e-5)
    assert v["pred_class"] == 3 and hist.tolist() == [0, 0, 0, 1, 0]
    assert math.isnan(v["det_count"]) and v["low_conf_frac"] == 0.0
    logits = np.log(probs) + 3.0  # softmax of these logits is probs again
    w = _run(dec, [logits])
    assert w["top_score"] == pytest.approx(0.6, abs=1e-5) and w["pred_class"] == 3


def test_classification_uint8_and_int8_quantised() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(1001, 0.05))
    q = np.clip(np.round(p * 256), 0, 255).astype(np.uint8)[None]
    dec = make_decoder(_cls_details(np.uint8, 1 / 256, 0))
    v = _run(dec, [q])
    assert v["pred_class"] == int(np.argmax(p))
    assert v["top_score"] == pytest.approx(p.max(), abs=0.02)
    q8 = (q.astype(np.int16) - 128).astype(np.int8)
    dec8 = make_decoder(_cls_details(np.int8, 1 / 256, -128))
    assert _run(dec8, [q8]) == pytest.approx(v, nan_ok=True)
    flat = np.full((1, 1001), 1, np.uint8)  # near-uniform: high entropy, low confidence
    u = _run(dec, [flat])
    assert u["score_entropy"] > 0.99 and u["low_conf_frac"] == 1.0


def _ssd_outputs(scores: Sequence[float], classes: Sequence[float],
                 boxes: Sequence[Sequence[float]], n: int) -> tuple[Array, Array, Array, Array]:
    m = 10
    b = np.zeros((1, m, 4), np.float32)
    b[0, : len(boxes)] = boxes
    s = np.zeros((1, m), np.float32)
    s[0, : len(scores)] = scores
    c = np.zeros((1, m), np.float32)
    c[0, : len(classes)] = classes
    return b, c, s, np.array([n], np.float32)


def test_ssd_by_names_and_by_values() -> None:
    b, c, s, n = _ssd_outputs([0.9, 0.7, 0.4, 0.2], [17, 1, 1, 3],
                              [[0.1, 0.1, 0.5, 0.5], [0.0, 0.0, 0.2, 0.1],
                               [0.3, 0.3, 0.4, 0.4], [0.5, 0.5, 0.6, 0.6]], 4)
    names = ["TFLite_Detection_PostProcess", "TFLite_Detection_PostProcess:1",
             "TFLite_Detection_PostProcess:2", "TFLite_Detection_PostProcess:3"]
    details = [{"name": nm, "shape": np.array(a.shape), "dtype": np.float32,
                "quantization": (0.0, 0)} for nm, a in zip(names, (b, c, s, n))]
    dec = make_decoder(details)
    assert dec.kind == "ssd"
    hist = np.zeros(dec.num_classes, np.int64)
    v = _run(dec, [b, c, s, n], hist)
    assert v["det_count"] == 2 and v["top_score"] == pytest.approx(0.9)
    assert v["mean_score"] == pytest.approx(0.8)
    assert v["low_conf_frac"] == pytest.approx(1 / 3)  # 0.4 of {0.9, 0.7, 0.4} >= 0.25
    assert v["box_area_mean"] == pytest.approx((0.16 + 0.02) / 2)
    assert v["pred_class"] == 17 and hist[17] == 1 and hist[1] == 1
    # TF2 exports order the outputs differently and name them StatefulPartitionedCall:k.
    shuffled = [s, b, n, c]
    dec2 = make_decoder(shuffled)
    assert dec2.kind == "ssd"
    assert _run(dec2, shuffled) == pytest.approx(v)


def _yolo(channels_first: bool, pixels: bool) -> Array:
    n, c = 8400, 80
    rng = np.random.default_rng(3)
    x = np.zeros((4 + c, n), np.float32)
    x[4:] = rng.uniform(0, 0.05, (c, n))
    x[0:4] = rng.uniform(0.2, 0.3, (4, n))
    dets = [(0.3, 0.3, 0.2, 0.2, 5, 0.9), (0.31, 0.3, 0.2, 0.2, 5, 0.8),  # duplicate
            (0.7, 0.7, 0.1, 0.4, 0, 0.75), (0.5, 0.5, 0.1, 0.1, 2, 0.3)]
    for i, (cx, cy, w, h, k, sc) in enumerate(dets):
        x[0:4, i * 100] = (cx, cy, w, h)
        x[4 + k, i * 100] = sc
    if pixels:
        x[0:4] *= 640
    return (x if channels_first else x.T.copy())[None]


@pytest.mark.parametrize("channels_first", [True, False])
@pytest.mark.parametrize("pixels", [True, False])
def test_yolo_layouts_and_nms(channels_first: bool, pixels: bool) -> None:
    out = _yolo(channels_first, pixels)
    dec = make_decoder([out], input_size=(640, 640))
    assert dec.kind == "yolo" and dec.num_classes == 80
    hist = np.zeros(80, np.int64)
    v = _run(dec, [out], hist)
    assert v["det_count"] == 2  # the duplicate is suppressed
    assert v["top_score"] == pytest.approx(0.9)
    assert v["mean_score"] == pytest.approx((0.9 + 0.75) / 2)
    assert v["box_area_mean"] == pytest.approx((0.04 + 0.04) / 2, rel=1e-4)
    assert v["pred_class"] == 5 and hist[5] == 1 and hist[0] == 1
    assert v["low_conf_frac"] == pytest.approx(1 / 4)


def test_generic_and_errors() -> None:
    seg = np.zeros((1, 8, 8, 3), np.float32)
    seg[0, 2, 3, 1] = 5.0
    dec = make_decoder([seg])
    assert dec.kind == "generic"
    v = _run(dec, [seg])
    assert v["top_score"] == 5.0 and v["pred_class"] == (2 * 8 + 3) * 3 + 1
    assert 0.0 < v["score_entropy"] < 1.0 and math.isnan(v["det_count"])
    with pytest.raises(ValueError, match="valid: auto"):
        make_decoder([seg], kind="bogus")
    with pytest.raises(ValueError):
        make_decoder([seg], score_threshold=1.5)
    with pytest.raises(ModelError, match="ssd decoder"):
        make_decoder([seg], kind="ssd")
    anchors = make_decoder([np.zeros((1, 896, 16), np.float32), np.zeros((1, 896, 1), np.float32)])
    with pytest.raises(ModelError, match="expected 2 outputs"):
        anchors([np.zeros((1, 896, 16), np.float32)], np.empty(9, np.float32))


def _spoilt(arrays: Sequence[Array], index: int, where: int, value: float) -> list[Array]:
    out = [a.copy() for a in arrays]
    out[index].reshape(-1)[where] = value
    return out


def _cases() -> list[tuple[str, list[Array], list[tuple[int, int]]]]:
    b, c, s, n = _ssd_outputs([0.9, 0.7], [17, 1], [[0.1, 0.1, 0.5, 0.5], [0.0, 0.0, 0.2, 0.1]], 2)
    probs = np.full((1, 10), 0.1, np.float32)
    yolo = _yolo(True, False)
    return [
        ("classification", [probs], [(0, 3)]),
        ("ssd", [b, c, s, n], [(2, 0), (0, 1), (3, 0)]),  # a score, a box, the count
        ("yolo", [yolo], [(0, 4 * 8400 + 5 * 8400)]),  # a class score
        ("generic", [np.zeros((1, 8, 8, 3), np.float32)], [(0, 17)]),
    ]


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize(("kind", "outputs", "spots"), _cases())
def test_non_finite_outputs_are_reported_not_raised(kind: str, outputs: list[Array],
                                                    spots: list[tuple[int, int]],
                                                    value: float) -> None:
    dec = make_decoder(outputs, input_size=(640, 640))
    assert dec.kind == kind
    out = np.zeros(len(CONFIDENCE_FEATURES), np.float32)
    assert dec(outputs, out) is True
    for index, where in spots:
        assert dec(_spoilt(outputs, index, where, value), out) is False


def test_anchor_decoder_all_nan_logits(blazeface: BlazeFace) -> None:
    """The old decoder raised UnboundLocalError: NaN never clears low_conf, nor the max."""
    details, infer = blazeface
    dec = make_decoder(details)
    outputs = infer(cv2.imread(str(photo_path("astronaut.png"))))
    scores = next(i for i, o in enumerate(outputs) if o.shape[-1] == 1)
    spoilt = [o.copy() for o in outputs]
    spoilt[scores][...] = np.nan
    assert dec(spoilt, np.zeros(len(CONFIDENCE_FEATURES), np.float32)) is False
