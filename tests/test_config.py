"""Config: defaults, validation with one-line errors naming file and key, every shipped config loads."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import typing
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from agent import config as config_module
from agent.cli import main
from agent.config import _SECTIONS, Config, from_dict, load_config
from agent.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))
MODEL_IN_REPO = ROOT / "models" / "face_detection_short_range.tflite"


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
    ("[drift]\nwindow_frames = 10\n", "drift.window_frames: 64 to 1000000 frames, got 10"),
    ("[source]\nsize = [640]\n", "source.size: expected a list of 2 values"),
    ("[mqtt]\nport = 70000\n", "mqtt.port"),
    ("[store]\nflush_interval_s = -1\n", "store.flush_interval_s: more than 0 and at most 3600"),
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


# -- defaults are what configs/default.toml says ------------------------------------------

DEFAULT_TOML = Path(__file__).parent.parent / "configs" / "default.toml"


def _fields(obj: Any) -> Dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def test_every_builtin_default_is_what_default_toml_says() -> None:
    data = tomllib.loads(DEFAULT_TOML.read_text(encoding="utf-8"))
    from_file, builtin = from_dict(data, "default.toml"), Config()
    text = DEFAULT_TOML.read_text(encoding="utf-8")
    for section in sorted(_SECTIONS):
        file_values = _fields(getattr(from_file, section))
        for key, default in _fields(getattr(builtin, section)).items():
            assert file_values[key] == default, \
                f"[{section}] {key}: file {file_values[key]!r}, Config() {default!r}"
            # every key is written in the file, as a value or (None, "" placeholders) commented
            named = key in data.get(section, {}) or re.search(
                rf"^# ?({key} = |\[{section}\.{key}\])", text, re.M)  # or a commented table
            assert named, f"[{section}] {key} is not in configs/default.toml"


def test_model_and_source_are_required_for_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config_module.require(load_config(DEFAULT_TOML), "run")
    msg = str(info.value)
    assert "[model] path and [source] uri must be set for run" in msg
    assert str(DEFAULT_TOML) in msg and "--model" in msg and "\n" not in msg
    half = load_config({"model": {"path": "m.tflite"}})
    with pytest.raises(ConfigError, match=r"\[source\] uri must be set for run .*--source"):
        config_module.require(half, "run")
    assert config_module.require(half, "replay", ["model.path"]) is half


def test_run_without_model_or_source_is_one_line_exit_2(tmp_path: Path, capsys: Any,
                                                        monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # (before: the emulated camera and ./models/ ran silently)
    config = tmp_path / "edgewatch.toml"
    config.write_text(f"[store]\npath = '{tmp_path / 'h.db'}'\n")
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"edgewatch: error: {config}: [model] path and [source] uri must be set for "
                   "run (set them there or pass --model and --source; see configs/default.toml)")
    assert not (tmp_path / "h.db").exists()  # refused before anything started
    assert main(["replay", "emulated:stationary", "--config", str(config)]) == 2
    assert "[model] path must be set for replay" in capsys.readouterr().err


# -- relative paths resolve against the config file's folder ------------------------------

def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path, monkeypatch: Any) -> None:
    folder = tmp_path / "etc" / "edgewatch"
    folder.mkdir(parents=True)
    config = folder / "edgewatch.toml"
    config.write_text(
        "[model]\npath = '../models/m.tflite'\n[source]\nuri = 'clips/door.mp4'\n"
        "[store]\npath = 'data/h.db'\n[drift]\nreference = 'baseline.npz'\n"
        "[mqtt]\ntls = true\nca_file = 'ca.pem'\n[service]\ncontrol_socket = 'run/e.sock'\n")
    monkeypatch.chdir(tmp_path)  # anywhere else: the file's folder decides, not the cwd
    cfg = load_config(Path("etc/edgewatch/edgewatch.toml"))
    assert Path(cfg.model.path) == Path("etc/models/m.tflite")
    assert Path(cfg.source.uri) == Path("etc/edgewatch/clips/door.mp4")
    assert Path(cfg.store.path) == Path("etc/edgewatch/data/h.db")
    assert Path(cfg.drift.reference) == Path("etc/edgewatch/baseline.npz")
    assert Path(cfg.mqtt.ca_file or "") == Path("etc/edgewatch/ca.pem")
    assert Path(cfg.service.control_socket) == Path("etc/edgewatch/run/e.sock")


@pytest.mark.parametrize("uri", ["0", "/dev/video0", "rtsp://cam/stream", "https://x/y.mjpg",
                                 "emulated:night?seed=7&fps=15", "/data/clips"])
def test_uris_that_are_not_relative_files_stay_as_written(tmp_path: Path, uri: str) -> None:
    config = tmp_path / "edgewatch.toml"
    config.write_text(f"[source]\nuri = '{uri}'\n")
    assert load_config(config).source.uri == uri


def test_dict_paths_and_command_line_paths_stay_relative_to_the_cwd() -> None:
    assert load_config({"model": {"path": "m.tflite"}}).model.path == "m.tflite"
    emulated = load_config(Path(__file__).parent.parent / "configs" / "emulated.toml")
    assert Path(emulated.model.path).resolve() == MODEL_IN_REPO.resolve()
    assert Path(emulated.store.path).parent.name == "data"


# -- every value is checked ----------------------------------------------------------------

def _numeric_keys() -> List[Tuple[str, str, Any]]:
    out = []
    for section in sorted(_SECTIONS):
        cls = typing.get_type_hints(Config)[section]
        for key, hint in typing.get_type_hints(cls).items():
            if hint in (int, float):
                out.append((section, key, hint))
    return out


NUMERIC = _numeric_keys()
NOT_A_NUMBER = [("nan", "nan"), ("inf", "inf"), ("-inf", "-inf"), ("negative", "-1"),
                ("huge", "1e12")]


@pytest.mark.parametrize("section, key, hint", NUMERIC, ids=[f"{s}.{k}" for s, k, _ in NUMERIC])
@pytest.mark.parametrize("case, value", NOT_A_NUMBER, ids=[c for c, _ in NOT_A_NUMBER])
def test_every_numeric_key_refuses_values_out_of_range(tmp_path: Path, section: str, key: str,
                                                       hint: Any, case: str, value: str) -> None:
    if hint is int and case in ("negative", "huge"):
        value = str(int(float(value)))
    path = _write(tmp_path, f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert f"{section}.{key}" in msg or f"[{section}] {key}" in msg


@pytest.mark.parametrize("section, key, hint", NUMERIC, ids=[f"{s}.{k}" for s, k, _ in NUMERIC])
def test_the_python_api_refuses_non_finite_numbers_too(section: str, key: str, hint: Any) -> None:
    cls = typing.get_type_hints(Config)[section]
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises((ValueError, ConfigError), match=key):
            cls(**{key: value})


@pytest.mark.parametrize("text, needle", [
    # from issue 9: each was a traceback or silently defeated store-and-forward
    ("[store]\noutbox_max_age_days = 0\n", "store.outbox_max_age_days: 1/24 (one hour) to"),
    ("[mqtt]\nkeepalive = 70000\n", "mqtt.keepalive: must be 1 to 65535 seconds, got 70000"),
    ("[store]\nmax_db_mb = inf\n", "store.max_db_mb: expected a finite number, got inf"),
    ("[model]\ninput_range = [-inf, inf]\n", "model.input_range: expected a finite number"),
    ("[drift]\nwarmup_s = nan\n", "drift.warmup_s: expected a finite number, got nan"),
    ("[rules]\nblack_for_s = -3\n", "rules.black_for_s: 0 to 86400 seconds, got -3.0"),
    ("[health]\nfor_s = -1\n", "health.for_s: 0 to 86400 seconds"),
    ("[source]\nsize = [640, 0]\n", "source.size: [width, height] each 16..16384, or [0, 0]"),
    ("[source]\nreconnect_initial_s = 60\n", "source.reconnect_initial_s: more than 0 and at most 30"),
    ("[model]\ninput_range = [1.0, -1.0]\n", "model.input_range: [low, high], finite, low < high"),
    ("[rules]\nlatency_ratio = 0.5\n", "rules.latency_ratio: more than 1"),
    ("[drift]\nwindow_frames = 5000\n", "drift.window_frames (5000) is larger than stats.capacity"),
])
def test_issue9_values_are_refused_naming_file_key_and_range(tmp_path: Path, text: str,
                                                             needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert needle in msg and msg.startswith(str(path)) and "\n" not in msg


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "edgewatch.toml"
    path.write_bytes("[device]\ncamera = 'caméra'\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: not UTF-8 text (byte 0xe9 at offset 22; save the file "
                               "as UTF-8)")


@pytest.mark.parametrize("argv, needle", [
    (["replay", "emulated:stationary", "--fps", "-30"], "argument --fps: -30 is out of range"),
    (["replay", "emulated:stationary", "--fps", "nan"], "argument --fps: nan is out of range"),
    (["replay", "emulated:stationary", "--max-frames", "0"], "argument --max-frames: 0 is out"),
    (["baseline", "emulated:stationary", "--out", "x.npz", "--fps", "inf"], "--fps: inf is out"),
])
def test_bad_numbers_on_the_command_line_are_usage_errors(argv: List[str], needle: str,
                                                          capsys: Any) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1] and "Traceback" not in "".join(err)


def test_an_emulated_size_too_large_is_refused_by_replay(tmp_path: Path, model_path: Path,
                                                         capsys: Any) -> None:
    code = main(["replay", "emulated:black?size=100000x100000", "--model", str(model_path),
                 "--db", str(tmp_path / "h.db")])
    err = capsys.readouterr().err.strip()
    assert code == 4 and "\n" not in err
    assert "bad emulated frame size: 100000x100000 (use 32x32 to 7680x7680)" in err


def test_a_central_config_that_is_not_utf8_is_one_line_too(tmp_path: Path) -> None:
    from agent.central.config import load_central_config

    path = tmp_path / "central.toml"
    path.write_bytes("[central]\ndb = 'c\xe9ntral.db'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"central.toml: not UTF-8 text \(byte 0xe9"):
        load_central_config(str(path))


def test_new_sections_check_their_values() -> None:
    card = {"name": "doorbell faces", "version": "1.2", "evaluation": {"AP50": 0.91}}
    assert load_config({"model": {"card": card}}).model.card == card
    with pytest.raises(ConfigError, match=r"model\.card\.colour: unknown key \(valid keys: name"):
        load_config({"model": {"card": {"colour": "red"}}})
    with pytest.raises(ConfigError, match=r"metrics\.textfile: a file name ending in \.prom"):
        load_config({"metrics": {"textfile": "/tmp/edgewatch.txt"}})
    with pytest.raises(ConfigError, match=r"metrics\.port: 1 to 65535"):
        load_config({"metrics": {"port": 0}})
    with pytest.raises(ConfigError, match=r"capture\.kinds: alert kinds from data_drift"):
        load_config({"capture": {"kinds": ["night"]}})
    with pytest.raises(ConfigError, match=r"capture\.first_gap_s: 0\.01 to 86400 seconds"):
        load_config({"capture": {"first_gap_s": 0}})
    with pytest.raises(ConfigError, match=r"mqtt\.homeassistant_prefix: must be a topic"):
        load_config({"mqtt": {"homeassistant_prefix": "ha/#"}})
