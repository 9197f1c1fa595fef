"""Configuration: one TOML file parsed once into frozen dataclasses, validated on load.

Every field has a default, and the defaults are what ``configs/default.toml`` says, except
``[model] path`` and ``[source] uri``: ``run`` needs both set (:func:`require`), so nothing
runs a model or a camera the user never chose. An unknown key, a wrong type, a number that is
not finite or out of its range is a one-line :class:`ConfigError` naming the file, the key and
what is allowed. Relative paths in a config file are relative to that file's folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

from ._configparse import _check, _range, build_section
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10 on older boards
    import tomli as tomllib

RUNTIMES = ("auto", "tflite_runtime", "ai_edge_litert", "tensorflow")
DECODERS = ("auto", "classification", "ssd", "yolo", "anchors", "generic")


DAY = 86400.0


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

    path: str = ""  # required by run, replay and baseline: see require()
    runtime: str = "auto"
    num_threads: int = 1
    delegate: str = ""
    input_range: Tuple[float, float] = (-1.0, 1.0)
    color: str = "rgb"
    decoder: str = "auto"
    score_threshold: float = 0.5
    # [model.card]: the owner's part of the model card (edgewatch card); keys in CARD_KEYS.
    card: Any = None

    def __post_init__(self) -> None:
        _check_card(self.card)
        _check(self.runtime in RUNTIMES, "runtime", f"one of {', '.join(RUNTIMES)}")
        _check(self.decoder in DECODERS, "decoder", f"one of {', '.join(DECODERS)}")
        _check(self.color in ("rgb", "bgr"), "color", "rgb or bgr")
        _range(self, "num_threads", 1, 64, "threads")
        _check(0.0 < self.score_threshold < 1.0, "score_threshold",
               f"between 0 and 1, got {self.score_threshold!r}")
        low, high = self.input_range
        _check(all(math.isfinite(v) and abs(v) <= 65535 for v in (low, high)) and low < high,
               "input_range", f"[low, high], finite, low < high, got {list(self.input_range)}")


CARD_KEYS = ("name", "version", "description", "training_data", "evaluation", "intended_use",
             "limitations", "owner", "license", "contact")


def _check_card(card: Any) -> None:
    """``[model.card]``: a table of known keys whose values are text, numbers, lists or tables."""
    if card is None:
        return
    _check(isinstance(card, Mapping), "card", "a table ([model.card])")
    for key, value in card.items():
        _check(key in CARD_KEYS, f"card.{key}", f"unknown key (valid keys: {', '.join(CARD_KEYS)})")
        _check(isinstance(value, (str, int, float, list, Mapping)) and not isinstance(value, bool),
               f"card.{key}", f"text, a number, a list or a table, got {value!r}")


@dataclass(frozen=True)
class SourceConfig:
    """Where frames come from: camera, file, stream, image folder or emulated feed."""

    uri: str = ""  # required by run: see require()
    loop: bool = False
    fps: float = 0.0
    size: Tuple[int, int] = (0, 0)
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        _range(self, "fps", 0, 1000, "frames per second (0 = the source's own rate)")
        _check(self.size == (0, 0) or all(16 <= v <= 16384 for v in self.size), "size",
               f"[width, height] each 16..16384, or [0, 0] to keep the source's, "
               f"got {list(self.size)}")
        _range(self, "reconnect_max_s", 0, DAY, "seconds", above=True)
        _range(self, "reconnect_initial_s", 0, self.reconnect_max_s,
               "seconds (at most reconnect_max_s)", above=True)


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

    path: str = "/var/lib/edgewatch/edgewatch.db"
    queue_size: int = 2048
    flush_interval_s: float = 2.0
    window_s: float = 60.0
    retention_days: float = 30.0
    max_db_mb: float = 512.0
    outbox_max: int = 50000
    outbox_max_age_days: float = 7.0

    def __post_init__(self) -> None:
        _check(bool(self.path), "path", "a file path")
        _range(self, "queue_size", 16, 1_000_000, "rows")
        _range(self, "flush_interval_s", 0, 3600, "seconds", above=True)
        _range(self, "window_s", 1, DAY, "seconds")
        _range(self, "retention_days", 0, 36500, "days", above=True)
        _range(self, "max_db_mb", 1, 10_000_000, "MB")
        _range(self, "outbox_max", 10, 100_000_000, "messages")
        # 0 would delete every unsent alert at once: store-and-forward needs hours at least
        age = self.outbox_max_age_days
        _check(math.isfinite(age) and 1 / 24 <= age <= 36500, "outbox_max_age_days",
               f"1/24 (one hour) to 36500 days, got {age!r}")


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
        _range(self, "warmup_s", 10, 7 * DAY, "seconds")
        _range(self, "calibration_s", 10, 7 * DAY, "seconds")
        _range(self, "window_frames", 64, 1_000_000, "frames")
        _range(self, "eval_interval_s", 0, 3600, "seconds", above=True)
        _range(self, "for_s", 0, DAY, "seconds")
        _range(self, "clear_for_s", 0, DAY, "seconds")
        _range(self, "false_alarms_per_week", 0, 10_000, "per week", above=True)
        _range(self, "class_mix_js", 0, 1, "(Jensen-Shannon divergence, base 2)", above=True)


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
        for name in ("eval_interval_s", "window_s", "stall_s"):
            _range(self, name, 0, 3600, "seconds", above=True)
        for name in ("black_for_s", "saturated_for_s", "frozen_for_s", "blur_for_s", "fps_for_s",
                     "latency_for_s", "outlier_for_s"):
            _range(self, name, 0, DAY, "seconds")
        for name in ("black_brightness", "frozen_diff"):
            _range(self, name, 0, 255, "(luma)", above=True)
        for name in ("saturated_fraction", "min_fps_ratio", "outlier_rate"):
            _range(self, name, 0, 1, "(a fraction)", above=True)
        _range(self, "blur_ratio", 0, 0.99, "(sharpness as a fraction of the reference)",
               above=True)
        _range(self, "latency_ratio", 1, 1000, "(times the reference's latency)", above=True)
        _range(self, "outlier_z", 0, 1000, "(robust z-score)", above=True)


@dataclass(frozen=True)
class AlertsConfig:
    """Alert lifecycle: repeat notifications while firing."""

    repeat_interval_s: float = 3600.0

    def __post_init__(self) -> None:
        _range(self, "repeat_interval_s", 10, 365 * DAY, "seconds")


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
        _range(self, "interval_s", 1, DAY, "seconds")
        _range(self, "temp_c", 0, 200, "degrees C", above=True)
        _range(self, "disk_free_mb", 0, 10_000_000, "MB")
        _range(self, "memory_percent", 0, 100, "percent", above=True)
        _range(self, "for_s", 0, DAY, "seconds")


@dataclass(frozen=True)
class ServiceConfig:
    """The owning loop: heartbeats, console status lines."""

    heartbeat_interval_s: float = 30.0
    status_interval_s: float = 10.0
    # "" = $RUNTIME_DIRECTORY/edgewatch.sock under systemd, else <[store] path>.sock
    control_socket: str = ""

    def __post_init__(self) -> None:
        _range(self, "heartbeat_interval_s", 1, DAY, "seconds")
        _range(self, "status_interval_s", 0, DAY, "seconds (0 = off)")
        _check(len(os.fsencode(self.control_socket)) <= 107, "control_socket",
               "a path of at most 107 bytes (a Unix socket's limit)")


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: a Prometheus endpoint and/or a node_exporter textfile (off by default)."""

    enabled: bool = False
    host: str = "127.0.0.1"  # loopback: expose it on purpose, behind a firewall or a proxy
    port: int = 9781
    textfile: str = ""  # e.g. /var/lib/node_exporter/textfile_collector/edgewatch.prom

    def __post_init__(self) -> None:
        _check(bool(self.host), "host", "an address to listen on, e.g. 127.0.0.1 or 0.0.0.0")
        _range(self, "port", 1, 65535, "(a TCP port)")
        _check(not self.textfile or self.textfile.endswith(".prom"), "textfile",
               f"a file name ending in .prom (node_exporter reads only those), got {self.textfile!r}")


CAPTURE_KINDS = ("data_drift", "prediction_drift", "anomaly", "camera_fault")


@dataclass(frozen=True)
class CaptureConfig:
    """``[capture]``: frames kept for retraining when alerts fire or the model is unsure."""

    enabled: bool = True
    kinds: Tuple[str, ...] = CAPTURE_KINDS  # alert kinds whose episodes capture frames
    per_episode: int = 10  # frames spread over one alert episode
    first_gap_s: float = 2.0  # an episode's frames at 0, 1, 3, 7, 15... x this after it fired
    per_hour: int = 60  # all captures together, per hour
    unsure_per_hour: float = 6.0  # low-confidence frames per hour (0 = none)
    normal_frames: int = 10  # frames from the reference period, for contrast
    max_mb: float = 100.0  # total size on disk; the oldest go first
    jpeg_quality: int = 85
    path: str = ""  # "" = a samples/ folder beside [store] path
    remote: bool = False  # may the central fetch samples over MQTT (fleet samples)?

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in CAPTURE_KINDS]
        _check(not bad, "kinds", f"alert kinds from {', '.join(CAPTURE_KINDS)}, got {bad}")
        _range(self, "per_episode", 0, 10_000, "frames")
        _range(self, "first_gap_s", 0.01, 86400, "seconds")
        _range(self, "per_hour", 0, 100_000, "frames")
        _range(self, "unsure_per_hour", 0, 3600, "frames per hour")
        _range(self, "normal_frames", 0, 10_000, "frames")
        _range(self, "max_mb", 1, 10_000_000, "MB")
        _range(self, "jpeg_quality", 1, 100, "(JPEG quality)")


PROTOCOLS = ("3.1.1", "5")
# MQTT's keep-alive and Receive Maximum are 16-bit; a broker caps a packet at 256 MB.
_MQTT_RANGES = (("keepalive", 1, 65535, "seconds"), ("heartbeat_interval_s", 0, DAY, "seconds"),
                ("reconnect_min_s", 1, 3600, "seconds"), ("reconnect_max_s", 1, 3600, "seconds"),
                ("max_inflight", 1, 65535, "messages"), ("max_payload_kb", 1, 262144, "KB"))
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
    homeassistant: bool = False  # publish Home Assistant MQTT discovery configs
    homeassistant_prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        def bad(key: str, allowed: str) -> ConfigError:
            return ConfigError(f"mqtt.{key}: {allowed} (set [mqtt] {key})")

        for key in ("enabled", "tls", "tls_insecure", "homeassistant"):
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
        if self.homeassistant and not self.enabled:
            raise bad("homeassistant", "publishes over MQTT: set [mqtt] enabled = true too")
        if self.homeassistant and "." in self.device_id:
            raise bad("homeassistant", f"Home Assistant's discovery topics allow A-Z a-z 0-9 _ - "
                      f"in a device id, got {self.device_id!r} (set [mqtt] device_id)")
        prefix = self.topic_prefix
        if not prefix or prefix.startswith("/") or prefix.endswith("/") or set("+#") & set(prefix):
            raise bad("topic_prefix",
                      f"must be a topic without wildcards or edge '/', got {prefix!r}")
        ha = self.homeassistant_prefix
        if not ha or ha.startswith("/") or ha.endswith("/") or set("+#") & set(ha):
            raise bad("homeassistant_prefix",
                      f"must be a topic without wildcards or edge '/', got {ha!r}")
        for key, lo, hi, unit in _MQTT_RANGES:
            try:
                _range(self, key, lo, hi, unit, above=key == "heartbeat_interval_s")
            except ValueError as exc:
                raise bad(key, "must be " + str(exc).partition(": ")[2]) from None
        if self.reconnect_min_s > self.reconnect_max_s:
            raise bad("reconnect_max_s", "must be >= reconnect_min_s")
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
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    origin: str = "<defaults>"

    def __post_init__(self) -> None:
        if self.capture.remote and not (self.mqtt.enabled and self.mqtt.tls):
            raise ConfigError(
                f"{self.origin}: capture.remote = true sends captured frames (which may show "
                "people) over MQTT, so it needs TLS (set [mqtt] enabled = true and tls = true, "
                "or capture.remote = false)")
        if self.drift.window_frames > self.stats.capacity:
            raise ConfigError(
                f"{self.origin}: drift.window_frames ({self.drift.window_frames}) is larger "
                f"than stats.capacity ({self.stats.capacity}), so drift would never be checked "
                "(raise [stats] capacity or lower [drift] window_frames)")

    def with_values(self, **dotted: Any) -> Config:
        """A copy with ``section__key=value`` overrides applied (e.g. ``store__path='x.db'``)."""
        changes: dict[str, dict[str, Any]] = {}
        for key, value in dotted.items():
            section, _, name = key.partition("__")
            changes.setdefault(section, {})[name] = value
        new = {s: dataclasses.replace(getattr(self, s), **kv) for s, kv in changes.items()}
        return dataclasses.replace(self, **new)


_SECTIONS = {f.name for f in dataclasses.fields(Config)} - {"origin"}


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


# Keys naming files or folders: relative ones in a file are relative to the file's folder.
_PATH_KEYS = (("model", "path"), ("store", "path"), ("drift", "reference"),
              ("service", "control_socket"), ("health", "thermal_root"),
              ("health", "gpu_load_path"), ("mqtt", "ca_file"), ("mqtt", "cert_file"),
              ("mqtt", "key_file"), ("metrics", "textfile"), ("capture", "path"))


def _is_relative_file(value: Any) -> bool:
    return isinstance(value, str) and value != "" and not os.path.isabs(value) \
        and not value.startswith("~")


def _resolve_paths(data: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """``data`` with its relative paths made relative to ``folder`` (the config file's)."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for section, key in _PATH_KEYS:
        table = out.get(section)
        if isinstance(table, dict) and _is_relative_file(table.get(key)):
            table[key] = os.path.normpath(folder / table[key])
    source = out.get("source")
    if isinstance(source, dict):
        uri = source.get("uri")
        # A camera index, /dev/videoN, a URL or emulated:NAME is not a relative file.
        if isinstance(uri, str) and _is_relative_file(uri) and not uri.isdigit() \
                and ":" not in uri:
            source["uri"] = os.path.normpath(folder / uri)
    return out


_FLAGS = {"model.path": "--model", "source.uri": "--source"}


def require(config: Config, command: str,
            keys: Sequence[str] = ("model.path", "source.uri")) -> Config:
    """``config`` when every one of ``keys`` is set, else a ConfigError naming the unset ones.

    >>> require(load_config({"model": {"path": "m.tflite"}}), "replay", ["model.path"]).origin
    '<dict>'
    """
    unset = [k for k in keys if not getattr(getattr(config, k.split(".")[0]), k.split(".")[1])]
    if not unset:
        return config
    names = " and ".join("[{}] {}".format(*k.split(".")) for k in unset)
    flags = " and ".join(_FLAGS[k] for k in unset)
    where = "pass --config FILE, or" if config.origin.startswith("<") else "set it there or pass"
    if len(unset) > 1:
        where = where.replace(" it ", " them ")
    raise ConfigError(f"{config.origin}: {names} must be set for {command} "
                      f"({where} {flags}; see configs/default.toml)")


def load_config(source: Union[str, os.PathLike[str], Mapping[str, Any], None] = None) -> Config:
    """Load a config from a TOML file path, a dict, or defaults when ``None``.

    Relative paths in a file (``model.path``, ``store.path``, ``drift.reference``, a video or
    folder ``source.uri``, TLS files...) are relative to the file's folder, like Prometheus's
    ``rule_files``, so a config works from any working directory; in a dict they stay
    relative to the working directory.
    """
    if source is None:
        return from_dict({}, "<defaults>")
    if isinstance(source, Mapping):
        return from_dict(source, "<dict>")
    path = Path(source)
    data = read_toml(path, "pass --config FILE; see configs/default.toml")
    return from_dict(_resolve_paths(data, path.parent), str(path))


def read_toml(path: Path, missing: str) -> dict[str, Any]:
    """The parsed TOML file, or a one-line ConfigError (``missing``: how to fix a wrong path)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config not found: {path} ({missing})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config: {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                          f"offset {exc.start}; save the file as UTF-8)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def default_config_path() -> Optional[Path]:
    """The config file used when none is given: $EDGEWATCH_CONFIG, then /etc/edgewatch."""
    env = os.environ.get("EDGEWATCH_CONFIG")
    if env:
        return Path(env)
    etc = Path("/etc/edgewatch/edgewatch.toml")
    return etc if etc.is_file() else None
