"""Config: defaults, validation with one-line errors naming file and key, every shipped config loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


def test_defaults_are_valid() -> None:
    cfg = load_config(None)
    assert cfg.model.runtime == "auto"
    assert cfg.stats.capacity == 4096
    assert cfg.mqtt.device_id == cfg.device.id


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.origin == str(path)


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "edgewatch.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, needle", [
    ("[model]\npaht = 'x'\n", "unknown key 'model.paht'"),
    ("[modle]\npath = 'x'\n", "unknown section 'modle'"),
    ("[model]\nnum_threads = 'two'\n", "model.num_threads: expected an integer"),
    ("[model]\nruntime = 'tpu'\n", "runtime: one of auto"),
    ("[drift]\nwindow_frames = 10\n", "window_frames: at least 64"),
    ("[source]\nsize = [640]\n", "source.size: expected a list of 2 values"),
    ("[mqtt]\nport = 70000\n", "mqtt.port"),
    ("[store]\nflush_interval_s = -1\n", "flush_interval_s: positive"),
    ("[model\npath = 'x'\n", "not valid TOML"),
])
def test_bad_config_is_one_line_naming_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert needle in msg
    assert str(path) in msg
    assert "\n" not in msg


def test_missing_config_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config not found: .*--config"):
        load_config(tmp_path / "nope.toml")


def test_dict_config_and_overrides() -> None:
    cfg = load_config({"store": {"path": "x.db"}, "drift": {"warmup_s": 60}})
    assert cfg.store.path == "x.db" and cfg.drift.warmup_s == 60.0
    cfg2 = cfg.with_values(store__path="y.db", model__num_threads=4)
    assert cfg2.store.path == "y.db" and cfg2.model.num_threads == 4
    assert cfg.store.path == "x.db"  # frozen: the original is unchanged


def test_mqtt_section_is_typed_and_names_the_device_unless_set() -> None:
    from agent.config import MqttConfig

    cfg = load_config({"device": {"id": "cam-9"}})
    assert isinstance(cfg.mqtt, MqttConfig) and cfg.mqtt.device_id == "cam-9"
    own = load_config({"device": {"id": "cam-9"}, "mqtt": {"device_id": "gate-1"}})
    assert own.mqtt.device_id == "gate-1"


def test_overrides_and_frozen_sections() -> None:
    cfg = load_config(None)
    assert not hasattr(cfg, "replace")  # one way to change a config: with_values
    with pytest.raises(AttributeError):
        cfg.store.path = "x.db"  # type: ignore[misc]
