"""The machinery behind the config's one-line errors: type coercion and range checks.

:mod:`agent.config` declares the sections; this module turns a TOML table into one of them
(:func:`build_section`), rejecting unknown keys, wrong types, non-finite numbers and values out
of range, each with a message naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Mapping, Tuple, Union

from .errors import ConfigError

__all__ = ["build_section"]


def _check(ok: bool, key: str, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{key}: {allowed}")


def _range(obj: Any, key: str, lo: float, hi: float, unit: str = "", *,
           above: bool = False) -> None:
    """``obj.key`` is a finite number from ``lo`` (more than ``lo`` when ``above``) to ``hi``."""
    value = getattr(obj, key)
    ok = math.isfinite(value) and (value > lo if above else value >= lo) and value <= hi
    lo_s, hi_s = (str(int(v)) if float(v).is_integer() else f"{v:g}" for v in (lo, hi))
    span = f"more than {lo_s} and at most {hi_s}" if above else f"{lo_s} to {hi_s}"
    _check(ok, key, f"{span}{' ' + unit if unit else ''}, got {value!r}")


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
            if not math.isfinite(value):  # TOML has nan and inf literals
                raise ValueError(f"{where}: expected a finite number, got {value!r}")
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
