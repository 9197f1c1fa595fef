"""Placeholder replaced by the MQTT work: fixtures that start a real Mosquitto."""

from __future__ import annotations

import pytest


@pytest.fixture
def broker_factory():  # pragma: no cover - replaced
    pytest.fail("broker fixtures not built yet")


@pytest.fixture
def broker():  # pragma: no cover - replaced
    pytest.fail("broker fixtures not built yet")
