"""The central's config file: ``edgewatch central --config central.toml``.

A central config has a ``[central]`` section (what flags carry badly: storage, retention,
the webhook and its expiry, secrets by reference) and an ``[mqtt]`` section with the same
keys as a device's. It is validated like the device's config: parsed once, unknown sections
and keys refused with the file named, every value checked. Flags override the file.

A file without ``[central]`` is read as a device config, of which only ``[mqtt]`` is used:
an operator can point ``edgewatch fleet`` at the config of a device on the same broker.

>>> cfg = central_config_from_dict({"central": {"keep_history_days": 7}}, "<example>")
>>> cfg.central.keep_history_days, cfg.central.db
(7.0, 'edgewatch-central.db')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

from .._configparse import build_section
from ..config import from_dict, load_config, read_toml
from ..errors import ConfigError
from .notify import DEFAULT_GROUP_BY, check_group_by, check_url, webhook_targets

__all__ = ["CentralSection", "CentralConfig", "load_central_config",
           "central_config_from_dict"]


@dataclass(frozen=True)
class CentralSection:
    """The ``[central]`` section."""

    db: str = "edgewatch-central.db"  # a SQLite file or a postgresql:// URL
    webhook: Optional[str] = None  # [FORMAT=]URL for alert and device notifications
    webhooks: Tuple[str, ...] = ()  # more webhooks, each [FORMAT=]URL (json, slack, generic)
    webhook_expire_s: float = 86400.0  # give up on a notification undelivered this long
    group_wait_s: float = 5.0  # hold notifications so a storm leaves as one call per group
    group_interval_s: float = 30.0  # after a group went out, hold its next ones this long
    group_by: Tuple[str, ...] = DEFAULT_GROUP_BY  # alert labels a group shares
    keep_history_days: float = 30.0  # heartbeats, commands and results older are dropped
    offline_after_s: Optional[float] = None  # default: 3 x the device's heartbeat interval
    share: Optional[str] = None  # MQTT 5 shared-subscription group
    client_id: Optional[str] = None  # fixed id: a persistent session
    password_env: Optional[str] = None  # environment variable holding the MQTT password
    password_file: Optional[str] = None  # file holding the MQTT password
    metrics_port: Optional[int] = None  # serve the fleet's /metrics on this port (0: any free)
    metrics_host: str = "127.0.0.1"  # the address /metrics listens on
    alertmanager: Optional[str] = None  # Alertmanager base URL: alerts posted to its v2 API
    alertmanager_interval_s: float = 60.0  # open alerts posted again this often

    def __post_init__(self) -> None:
        webhook_targets([*([self.webhook] if self.webhook is not None else []),
                         *self.webhooks], "central.webhook:")
        if self.alertmanager is not None:
            check_url(self.alertmanager, "central.alertmanager:")
        for key in ("group_wait_s", "group_interval_s"):
            if getattr(self, key) < 0:
                raise ConfigError(f"central.{key}: must be >= 0, got {getattr(self, key)}")
        try:
            object.__setattr__(self, "group_by", check_group_by(list(self.group_by)))
        except ConfigError as exc:
            raise ConfigError(f"central.{exc}") from None
        for key in ("webhook_expire_s", "keep_history_days", "offline_after_s",
                    "alertmanager_interval_s"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"central.{key}: must be > 0, got {value}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"central.metrics_port: must be 0-65535, got {self.metrics_port}")
        if not self.metrics_host:
            raise ConfigError("central.metrics_host: must be an address, e.g. 127.0.0.1")
        if self.password_env is not None and self.password_file is not None:
            raise ConfigError("central.password_env: give password_env or password_file, "
                              "not both")


@dataclass(frozen=True)
class CentralConfig:
    """A whole central config: ``[central]`` and ``[mqtt]``."""

    central: CentralSection
    mqtt: Any  # the device's MqttConfig: same keys, same checks
    origin: str = "<defaults>"


def central_config_from_dict(data: Mapping[str, Any], origin: str) -> CentralConfig:
    """Build and validate a :class:`CentralConfig` from a parsed TOML mapping."""
    unknown = sorted(set(data) - {"central", "mqtt"})
    if unknown:
        raise ConfigError(f"{origin}: unknown section '{unknown[0]}' in a central config "
                          "(valid sections: central, mqtt)")
    central = build_section(CentralSection, data.get("central", {}), "central", origin)
    mqtt_type = type(from_dict({}).mqtt)
    mqtt = build_section(mqtt_type, data.get("mqtt", {}), "mqtt", origin)
    return CentralConfig(central, mqtt, origin)


def load_central_config(path: str) -> CentralConfig:
    """A central config, or a device config's ``[mqtt]`` under default ``[central]`` values."""
    data = read_toml(Path(path), "check --config")
    if "central" in data:
        return central_config_from_dict(data, os.fspath(path))
    return CentralConfig(CentralSection(), load_config(path).mqtt, os.fspath(path))
