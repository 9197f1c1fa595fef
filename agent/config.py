"""Configuration: one TOML file parsed once into frozen dataclasses, validated on load.

Every field has a default, so ``edgewatch run`` works with only a model and a source.
An unknown key, a wrong type or an impossible value is a one-line :class:`ConfigError`
naming the file, the key and what is allowed. ``configs/default.toml`` documents every key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Union

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10 on older boards
    import tomli as tomllib

RUNTIMES = ("auto", "tflite_runtime", "ai_edge_litert", "tensorflow")
DECODERS = ("auto", "classification", "ssd", "yolo", "anchors", "generic")


def _check(ok: bool, key: str, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{key}: {allowed}")


@dataclass(frozen=True)
class DeviceConfig:
    """Who this agent is: the device id (MQTT client id) and the camera's name."""

    id: str = ""
    camera: str = "cam0"

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", socket.gethostname() or "edgewatch")
        _check(bool(self.camera), "camera", "must not be empty")


@dataclass(frozen=True)
class ModelConfig:
    """The TFLite model, its runtime and how frames are fed to it and decoded."""

    path: str = "models/face_detection_short_range.tflite"
    runtime: str = "auto"
    num_threads: int = 1
    delegate: str = ""
    input_range: Tuple[float, float] = (-1.0, 1.0)
    color: str = "rgb"
    decoder: str = "auto"
    score_threshold: float = 0.5

    def __post_init__(self) -> None:
        _check(self.runtime in RUNTIMES, "runtime", f"one of {', '.join(RUNTIMES)}")
        _check(self.decoder in DECODERS, "decoder", f"one of {', '.join(DECODERS)}")
        _check(self.color in ("rgb", "bgr"), "color", "rgb or bgr")
        _check(self.num_threads >= 1, "num_threads", "at least 1")
        _check(0.0 < self.score_threshold < 1.0, "score_threshold", "between 0 and 1")
        _check(self.input_range[0] < self.input_range[1], "input_range", "[low, high], low < high")


@dataclass(frozen=True)
class SourceConfig:
    """Where frames come from: camera, file, stream, image folder or emulated feed."""

    uri: str = "emulated:stationary"
    loop: bool = False
    fps: float = 0.0
    size: Tuple[int, int] = (0, 0)
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        _check(bool(self.uri), "uri", "a camera index, /dev/videoN, file, folder, URL or emulated:NAME")
        _check(self.fps >= 0, "fps", "0 (source's own rate) or a positive number")
        _check(all(v >= 0 for v in self.size), "size", "[width, height], 0 keeps the source's")
        _check(0 < self.reconnect_initial_s <= self.reconnect_max_s, "reconnect_initial_s",
               "positive and at most reconnect_max_s")


@dataclass(frozen=True)
class StatsConfig:
    """Image statistics sample size and ring-buffer capacity (fixed memory)."""

    sample_width: int = 64
    sample_height: int = 36
    capacity: int = 4096

    def __post_init__(self) -> None:
        _check(16 <= self.sample_width <= 640, "sample_width", "16..640")
        _check(16 <= self.sample_height <= 480, "sample_height", "16..480")
        _check(256 <= self.capacity <= 1_000_000, "capacity", "256..1000000 frames")


@dataclass(frozen=True)
class StoreConfig:
    """SQLite history: path, batching, summary windows and retention."""

    path: str = "edgewatch.db"
    queue_size: int = 2048
    flush_interval_s: float = 2.0
    window_s: float = 60.0
    retention_days: float = 30.0
    max_db_mb: float = 512.0
    outbox_max: int = 50000
    outbox_max_age_days: float = 7.0

    def __post_init__(self) -> None:
        _check(bool(self.path), "path", "a file path")
        _check(self.queue_size >= 16, "queue_size", "at least 16")
        _check(self.flush_interval_s > 0, "flush_interval_s", "positive seconds")
        _check(self.window_s >= 1, "window_s", "at least 1 second")
        _check(self.retention_days > 0, "retention_days", "positive days")
        _check(self.max_db_mb >= 1, "max_db_mb", "at least 1")
        _check(self.outbox_max >= 10, "outbox_max", "at least 10")


@dataclass(frozen=True)
class DriftConfig:
    """Drift detection against a reference: windows, schedule, persistence, false-alarm rate."""

    enabled: bool = True
    reference: str = ""
    warmup_s: float = 300.0
    calibration_s: float = 300.0
    window_frames: int = 900
    eval_interval_s: float = 2.0
    for_s: float = 4.0
    clear_for_s: float = 60.0
    false_alarms_per_week: float = 1.0
    class_mix_js: float = 0.15
    features: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(self.warmup_s >= 10, "warmup_s", "at least 10 seconds")
        _check(self.calibration_s >= 10, "calibration_s", "at least 10 seconds")
        _check(64 <= self.window_frames, "window_frames", "at least 64")
        _check(self.eval_interval_s > 0, "eval_interval_s", "positive seconds")
        _check(self.for_s >= 0, "for_s", "0 or more seconds")
        _check(self.clear_for_s >= 0, "clear_for_s", "0 or more seconds")
        _check(self.false_alarms_per_week > 0, "false_alarms_per_week", "positive")
        _check(0 < self.class_mix_js <= 1, "class_mix_js", "0..1 (Jensen-Shannon divergence, base 2)")


@dataclass(frozen=True)
class RulesConfig:
    """Rule-based camera-fault and performance checks, each with a ``for`` duration."""

    enabled: bool = True
    eval_interval_s: float = 1.0
    window_s: float = 5.0
    black_brightness: float = 10.0
    black_for_s: float = 3.0
    saturated_fraction: float = 0.8
    saturated_for_s: float = 5.0
    frozen_diff: float = 0.05
    frozen_for_s: float = 3.0
    blur_ratio: float = 0.25
    blur_for_s: float = 10.0
    stall_s: float = 5.0
    min_fps_ratio: float = 0.5
    fps_for_s: float = 30.0
    latency_ratio: float = 3.0
    latency_for_s: float = 30.0
    outlier_z: float = 8.0
    outlier_rate: float = 0.5
    outlier_for_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("black_brightness", "saturated_fraction", "frozen_diff", "blur_ratio",
                     "stall_s", "min_fps_ratio", "latency_ratio", "outlier_z", "outlier_rate",
                     "window_s", "eval_interval_s"):
            _check(getattr(self, name) > 0, name, "positive")
        _check(self.saturated_fraction <= 1, "saturated_fraction", "0..1")
        _check(self.blur_ratio < 1, "blur_ratio", "0..1 (sharpness as a fraction of the reference)")
        _check(self.outlier_rate <= 1, "outlier_rate", "0..1")


@dataclass(frozen=True)
class AlertsConfig:
    """Alert lifecycle: repeat notifications while firing."""

    repeat_interval_s: float = 3600.0

    def __post_init__(self) -> None:
        _check(self.repeat_interval_s >= 10, "repeat_interval_s", "at least 10 seconds")


@dataclass(frozen=True)
class HealthConfig:
    """Device health limits for ``device_health`` alerts."""

    enabled: bool = True
    interval_s: float = 30.0
    temp_c: float = 80.0
    disk_free_mb: float = 500.0
    memory_percent: float = 90.0
    for_s: float = 60.0
    thermal_root: str = "/sys/class/thermal"
    gpu_load_path: str = "/sys/devices/gpu.0/load"

    def __post_init__(self) -> None:
        _check(self.interval_s >= 1, "interval_s", "at least 1 second")
        _check(0 < self.memory_percent <= 100, "memory_percent", "0..100")


@dataclass(frozen=True)
class ServiceConfig:
    """The owning loop: heartbeats, console status lines."""

    heartbeat_interval_s: float = 30.0
    status_interval_s: float = 10.0
    # "" = $RUNTIME_DIRECTORY/edgewatch.sock under systemd, else <[store] path>.sock
    control_socket: str = ""

    def __post_init__(self) -> None:
        _check(self.heartbeat_interval_s >= 1, "heartbeat_interval_s", "at least 1 second")
        _check(self.status_interval_s >= 0, "status_interval_s", "0 (off) or seconds")
        _check(len(os.fsencode(self.control_socket)) <= 107, "control_socket",
               "a path of at most 107 bytes (a Unix socket's limit)")


PROTOCOLS = ("3.1.1", "5")
_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def _default_device_id() -> str:
    return socket.gethostname() or "edgewatch"


@dataclass(frozen=True)
class MqttConfig:
    """The ``[mqtt]`` section: broker, identity, TLS and the link's timings."""

    enabled: bool = False
    host: str = "localhost"
    port: int = 1883
    device_id: str = field(default_factory=_default_device_id)
    protocol: str = "5"
    keepalive: int = 30
    username: Optional[str] = None
    password: Optional[str] = None
    tls: bool = False
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    tls_insecure: bool = False
    topic_prefix: str = "edgewatch/v1"
    heartbeat_interval_s: float = 30.0
    reconnect_min_s: int = 1
    reconnect_max_s: int = 60
    max_inflight: int = 20
    max_payload_kb: int = 64

    def __post_init__(self) -> None:
        def bad(key: str, allowed: str) -> ConfigError:
            return ConfigError(f"mqtt.{key}: {allowed} (set [mqtt] {key})")

        for key in ("enabled", "tls", "tls_insecure"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, f"must be true or false, got {getattr(self, key)!r}")
        for key in ("port", "keepalive", "reconnect_min_s", "reconnect_max_s", "max_inflight",
                    "max_payload_kb"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(key, f"must be an integer, got {value!r}")
        if not self.host:
            raise bad("host", "must not be empty")
        if not 1 <= self.port <= 65535:
            raise bad("port", f"must be between 1 and 65535, got {self.port}")
        if self.protocol not in PROTOCOLS:
            raise bad("protocol", f"must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if not _ID_RE.match(self.device_id or ""):
            raise bad("device_id", f"must be 1-128 of A-Z a-z 0-9 . _ -, got {self.device_id!r}")
        prefix = self.topic_prefix
        if not prefix or prefix.startswith("/") or prefix.endswith("/") or set("+#") & set(prefix):
            raise bad("topic_prefix",
                      f"must be a topic without wildcards or edge '/', got {prefix!r}")
        if self.keepalive < 1:
            raise bad("keepalive", f"must be at least 1 second, got {self.keepalive}")
        if not self.heartbeat_interval_s > 0:
            raise bad("heartbeat_interval_s", f"must be > 0, got {self.heartbeat_interval_s}")
        if not 1 <= self.reconnect_min_s <= self.reconnect_max_s:
            raise bad("reconnect_max_s", "must be >= reconnect_min_s >= 1")
        if self.max_inflight < 1:
            raise bad("max_inflight", f"must be at least 1, got {self.max_inflight}")
        if self.max_payload_kb < 1:
            raise bad("max_payload_kb", f"must be at least 1, got {self.max_payload_kb}")
        if self.password is not None and self.username is None:
            raise bad("username", "is required when a password is set")
        if (self.cert_file is None) != (self.key_file is None):
            raise bad("key_file", "cert_file and key_file go together")
        if self.tls_insecure and not self.tls:
            raise bad("tls_insecure", "only applies when tls = true")
        if not self.tls and (self.ca_file or self.cert_file):
            raise bad("tls", "must be true when ca_file or cert_file is set")
        if self.enabled and self.tls:
            for key in ("ca_file", "cert_file", "key_file"):
                path = getattr(self, key)
                if path is not None and not os.path.isfile(path):
                    raise bad(key, f"file not found: {path}")


@dataclass(frozen=True)
class Config:
    """The whole agent configuration."""

    device: DeviceConfig = field(default_factory=DeviceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    origin: str = "<defaults>"

    def with_values(self, **dotted: Any) -> Config:
        """A copy with ``section__key=value`` overrides applied (e.g. ``store__path='x.db'``)."""
        changes: dict[str, dict[str, Any]] = {}
        for key, value in dotted.items():
            section, _, name = key.partition("__")
            changes.setdefault(section, {})[name] = value
        new = {s: dataclasses.replace(getattr(self, s), **kv) for s, kv in changes.items()}
        return dataclasses.replace(self, **new)


_SECTIONS = {f.name for f in dataclasses.fields(Config)} - {"origin"}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, [a for a in args if a is not type(None)][0], where)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, got {value!r}")
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    return value


def build_section(cls: type, table: Mapping[str, Any], section: str, origin: str) -> Any:
    """Build one section's dataclass from a TOML table, rejecting unknown keys."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{origin}: [{section}] must be a table")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(
                f"{origin}: unknown key '{section}.{key}' (valid keys: {', '.join(names)})"
            )
        try:
            kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
        except ValueError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
    try:
        return cls(**kwargs)
    except (ValueError, ConfigError) as exc:
        msg = str(exc)
        if not msg.startswith(section):
            msg = f"{section}.{msg}"
        raise ConfigError(f"{origin}: {msg}") from None


def from_dict(data: Mapping[str, Any], origin: str = "<dict>") -> Config:
    """Build and validate a :class:`Config` from a parsed TOML mapping."""
    unknown = set(data) - _SECTIONS
    if unknown:
        raise ConfigError(
            f"{origin}: unknown section '{sorted(unknown)[0]}' "
            f"(valid sections: {', '.join(sorted(_SECTIONS))})"
        )
    hints = typing.get_type_hints(Config)
    sections: dict[str, Any] = {}
    device = build_section(DeviceConfig, data.get("device", {}), "device", origin)
    sections["device"] = device
    for name in _SECTIONS - {"device"}:
        table = dict(data.get(name, {}))
        if name == "mqtt":  # the MQTT client id is the device's id unless set
            table.setdefault("device_id", device.id)
        sections[name] = build_section(hints[name], table, name, origin)
    return Config(origin=origin, **sections)


def load_config(source: Union[str, os.PathLike[str], Mapping[str, Any], None] = None) -> Config:
    """Load a config from a TOML file path, a dict, or defaults when ``None``.

    Relative ``model.path``, ``store.path`` and ``drift.reference`` stay relative to the
    working directory, like every other command-line tool.
    """
    if source is None:
        return from_dict({}, "<defaults>")
    if isinstance(source, Mapping):
        return from_dict(source, "<dict>")
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config not found: {path} (pass --config FILE; see configs/default.toml)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config: {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(data, str(path))


def default_config_path() -> Optional[Path]:
    """The config file used when none is given: $EDGEWATCH_CONFIG, then /etc/edgewatch."""
    env = os.environ.get("EDGEWATCH_CONFIG")
    if env:
        return Path(env)
    etc = Path("/etc/edgewatch/edgewatch.toml")
    return etc if etc.is_file() else None
