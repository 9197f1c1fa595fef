"""The TFLite model: real BlazeFace invoked; missing, corrupt and unsupported models refused clearly."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.errors import ModelError
from agent.inference import Model, load_runtime


def test_runtime_loads_in_order() -> None:
    name, cls, _ = load_runtime("auto")
    assert name in ("tflite_runtime", "ai_edge_litert", "tensorflow")
    assert callable(cls)


def test_unknown_or_missing_runtime_names_packages() -> None:
    with pytest.raises(ModelError, match="unknown runtime"):
        load_runtime("onnx")
    with pytest.raises(ModelError, match="pip install"):
        load_runtime("tensorflow")  # not installed here: the error says what to install


def test_blazeface_finds_the_astronaut_face(model_path: Path, astronaut: Path) -> None:
    model = Model(model_path)
    assert model.input_size == (128, 128)
    assert [d["name"] for d in model.output_details] == ["regressors", "classificators"]
    outputs, latency = model(cv2.imread(str(astronaut)))
    scores = 1 / (1 + np.exp(-np.clip(outputs[1].ravel(), -50, 50)))
    assert scores.max() > 0.8
    assert 0 < latency < 1.0
    black, _ = model(np.zeros((480, 640, 3), np.uint8))
    assert (1 / (1 + np.exp(-np.clip(black[1].ravel(), -50, 50)))).max() < 0.5
    info = model.info()
    assert len(info["sha256"]) == 64 and info["runtime"]


def test_prepare_normalises_to_model_range(model_path: Path) -> None:
    model = Model(model_path, input_range=(-1.0, 1.0))
    tensor = model.prepare(np.full((480, 640, 3), 255, np.uint8))
    assert tensor.shape == (1, 128, 128, 3) and tensor.dtype == np.float32
    assert np.allclose(tensor, 1.0)
    assert np.allclose(model.prepare(np.zeros((48, 64, 3), np.uint8)), -1.0)


def test_missing_model_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model not found: .*nope.tflite \(set \[model\] path"):
        Model(tmp_path / "nope.tflite")


def test_corrupt_model_is_one_clear_line(tmp_path: Path, model_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"this is not a flatbuffer" * 100)
    with pytest.raises(ModelError) as info:
        Model(bad)
    assert "cannot load model" in str(info.value) and "\n" not in str(info.value)
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(model_path.read_bytes()[:5000])
    with pytest.raises(ModelError, match="cannot load model"):
        Model(truncated)


# tflite_runtime's Delegate.__del__ raises on a delegate that failed to load (its bug).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_missing_delegate_is_refused(model_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot load delegate libnope.so"):
        Model(model_path, delegate="libnope.so")
