"""Device health: CPU, memory, disk, temperatures, Pi throttling, Jetson GPU load, own process.

Every reading degrades quietly: a sensor that does not exist on this board gives ``None``,
never an exception, so the same code runs on a Raspberry Pi, a Jetson and a laptop.
``health_checks`` turns one reading into ``device_health`` observations, one per check with a
reading, healthy or not (a pure function); the alert manager applies ``for`` durations and
resolution.
"""

from __future__ import annotations

import glob
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import psutil

from .records import Observation, Window

log = logging.getLogger(__name__)

__all__ = [
    "HEALTH_FEATURES",
    "HealthLimits",
    "HealthReader",
    "THROTTLE_FLAGS",
    "decode_throttled",
    "health_checks",
    "read_health",
]

MB = 1024 * 1024

#: The features the health checks report on (what ``alerts disable``/``snooze`` may name).
HEALTH_FEATURES: tuple[str, ...] = ("temperature", "throttling", "disk", "memory")

#: ``vcgencmd get_throttled`` bits: the current state in bits 0-3, "has occurred since boot"
#: in bits 16-19 (https://www.raspberrypi.com/documentation/computers/os.html#get_throttled).
THROTTLE_FLAGS: dict[str, int] = {
    "under_voltage": 0,
    "arm_freq_capped": 1,
    "throttled": 2,
    "soft_temp_limit": 3,
}
_SINCE_BOOT_SHIFT = 16

#: Jetson GPU load files, per-mille: TX2/Xavier/Nano first, then Orin (JetPack 5/6) layouts.
DEFAULT_GPU_LOAD_PATHS: tuple[str, ...] = (
    "/sys/devices/gpu.0/load",
    "/sys/devices/platform/gpu.0/load",
    "/sys/devices/platform/bus@0/17000000.gpu/load",
    "/sys/devices/17000000.ga10b/load",
)

# Thermal zones that report nonsense (-273, 1e6) exist on some boards: ignore them.
_TEMP_RANGE_C = (-60.0, 200.0)


@dataclass(frozen=True)
class HealthLimits:
    """Thresholds for the device_health checks."""

    temp_c: float = 80.0
    """Warn above this SoC temperature (the Pi starts soft-throttling at 80 °C)."""
    temp_critical_c: float = 85.0
    """Critical at or above this temperature (the Pi hard-throttles at 85 °C)."""
    disk_free_mb: float = 500.0
    """Warn when the database's filesystem has less free space than this."""
    disk_percent: float = 95.0
    """Warn when the database's filesystem is fuller than this percentage."""
    memory_percent: float = 90.0
    """Warn when system memory use is above this percentage."""

    def __post_init__(self) -> None:
        if self.temp_critical_c < self.temp_c:
            raise ValueError(
                f"temp_critical_c ({self.temp_critical_c}) must be >= temp_c ({self.temp_c})"
            )
        for name in ("disk_percent", "memory_percent"):
            value = getattr(self, name)
            if not 0.0 < value <= 100.0:
                raise ValueError(f"{name} must be in (0, 100], got {value}")
        if self.disk_free_mb < 0:
            raise ValueError(f"disk_free_mb must be >= 0, got {self.disk_free_mb}")


def decode_throttled(value: int) -> dict[str, Any]:
    """Decode a ``get_throttled`` bit field into current and since-boot flags."""
    return {
        "raw": f"0x{value:x}",
        "now": {name: bool(value >> bit & 1) for name, bit in THROTTLE_FLAGS.items()},
        "since_boot": {
            name: bool(value >> (bit + _SINCE_BOOT_SHIFT) & 1)
            for name, bit in THROTTLE_FLAGS.items()
        },
    }


def parse_throttled(output: str) -> Optional[int]:
    """The integer in ``vcgencmd get_throttled`` output (``throttled=0x50005``), or None."""
    text = output.strip()
    if not text.startswith("throttled="):
        return None
    try:
        return int(text.split("=", 1)[1], 0)
    except ValueError:
        return None


def _cpu_busy_percent(prev: Any, cur: Any) -> Optional[float]:
    """Busy share of CPU time between two ``psutil.cpu_times()`` samples, like ``top``."""
    def idle(t: Any) -> float:
        return float(t.idle + getattr(t, "iowait", 0.0))

    def total_of(t: Any) -> float:
        # Linux counts guest time inside user time already (psutil does the same).
        return float(sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0))

    total = total_of(cur) - total_of(prev)
    if total <= 0:
        return None
    busy = total - (idle(cur) - idle(prev))
    return round(max(0.0, min(100.0, 100.0 * busy / total)), 1)


class HealthReader:
    """Reads device health; keeps CPU samples between calls so percentages are deltas."""

    def __init__(
        self,
        db_path: Optional[str] = None,
        *,
        thermal_root: str = "/sys/class/thermal",
        gpu_load_path: Union[str, Sequence[str]] = DEFAULT_GPU_LOAD_PATHS,
        vcgencmd: str = "vcgencmd",
        run: Callable[..., Any] = subprocess.run,
    ) -> None:
        self._db_path = db_path
        self._thermal_root = thermal_root
        self._gpu_paths = (gpu_load_path,) if isinstance(gpu_load_path, str) else tuple(
            gpu_load_path
        )
        self._vcgencmd = vcgencmd
        self._run = run
        # Once vcgencmd is missing (not a Pi), don't spawn it again every interval.
        self._vcgencmd_missing = False
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only primes the counter
        self._cpu_times = psutil.cpu_times()

    def read_health(self, db_path: Optional[str] = None) -> dict[str, Any]:
        """One health snapshot; keys whose sensor is absent are None."""
        temps = self._temperatures()
        return {
            "cpu_percent": self._cpu_percent(),
            "load": _guard(lambda: [round(x, 2) for x in os.getloadavg()]),
            "memory": _guard(self._memory),
            "disk": _guard(lambda: self._disk(db_path or self._db_path)),
            "temperatures": temps or None,
            "max_temp_c": max(temps.values()) if temps else None,
            "throttled": self._throttled(),
            "gpu_percent": self._gpu_percent(),
            "process": _guard(self._own_process),
        }

    def _cpu_percent(self) -> Optional[float]:
        try:
            cur = psutil.cpu_times()
        except OSError:
            return None
        prev, self._cpu_times = self._cpu_times, cur
        return _cpu_busy_percent(prev, cur)

    @staticmethod
    def _memory() -> dict[str, float]:
        vm = psutil.virtual_memory()
        return {"percent": float(vm.percent), "available_mb": round(vm.available / MB, 1)}

    @staticmethod
    def _disk(db_path: Optional[str]) -> dict[str, Any]:
        # The database may not exist yet: measure the nearest existing ancestor directory.
        path = os.path.abspath(os.path.dirname(db_path) if db_path else os.sep)
        while not os.path.isdir(path) and path != os.path.dirname(path):
            path = os.path.dirname(path)
        du = psutil.disk_usage(path)
        return {"path": path, "free_mb": round(du.free / MB, 1), "percent": float(du.percent)}

    def _temperatures(self) -> dict[str, float]:
        temps: dict[str, float] = {}
        try:
            sensors = psutil.sensors_temperatures() if hasattr(psutil, "sensors_temperatures") \
                else {}
        except (OSError, RuntimeError):
            sensors = {}
        for chip, entries in sensors.items():
            for i, entry in enumerate(entries):
                name = chip
                if len(entries) > 1:
                    name = f"{chip}/{entry.label or i}"
                _add_temp(temps, name, entry.current)
        if temps:
            return temps
        for zone in sorted(glob.glob(os.path.join(self._thermal_root, "thermal_zone*"))):
            raw = _read_text(os.path.join(zone, "temp"))
            if raw is None:
                continue
            name = _read_text(os.path.join(zone, "type")) or os.path.basename(zone)
            try:
                _add_temp(temps, name, int(raw) / 1000.0)  # millidegrees Celsius
            except ValueError:
                continue
        return temps

    def _throttled(self) -> Optional[dict[str, Any]]:
        if self._vcgencmd_missing:
            return None
        try:
            proc = self._run(
                [self._vcgencmd, "get_throttled"],
                capture_output=True, text=True, timeout=2.0, check=False,
            )
        except (FileNotFoundError, PermissionError):
            self._vcgencmd_missing = True
            log.debug("%s not available: no Raspberry Pi throttling data", self._vcgencmd)
            return None
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("%s get_throttled failed: %s", self._vcgencmd, exc)
            return None
        if proc.returncode != 0:
            # e.g. no /dev/vchiq access (add the user to the video group).
            return None
        value = parse_throttled(proc.stdout or "")
        return decode_throttled(value) if value is not None else None

    def _gpu_percent(self) -> Optional[float]:
        for path in self._gpu_paths:
            raw = _read_text(path)
            if raw is None:
                continue
            try:
                return round(int(raw) / 10.0, 1)  # per-mille -> percent
            except ValueError:
                return None
        return None

    def _own_process(self) -> dict[str, float]:
        with self._process.oneshot():
            return {
                "rss_mb": round(self._process.memory_info().rss / MB, 1),
                # psutil's convention: 100 means one full core, so it can exceed 100.
                "cpu_percent": float(self._process.cpu_percent(None)),
            }


def read_health(
    db_path: Optional[str] = None,
    *,
    thermal_root: str = "/sys/class/thermal",
    gpu_load_path: Union[str, Sequence[str]] = DEFAULT_GPU_LOAD_PATHS,
    vcgencmd: str = "vcgencmd",
    run: Callable[..., Any] = subprocess.run,
) -> dict[str, Any]:
    """A one-off health snapshot (CPU percentages since the reader was made: use HealthReader)."""
    reader = HealthReader(
        db_path, thermal_root=thermal_root, gpu_load_path=gpu_load_path,
        vcgencmd=vcgencmd, run=run,
    )
    return reader.read_health()


def health_checks(health: Mapping[str, Any], limits: Any = None, *, now: float,
                  for_s: float = 0.0) -> list[Observation]:
    """One ``device_health`` observation per check that has a reading, breach or not.

    A healthy reading is an observation too (``clear``), so an alert resolves once the
    device has been healthy for ``for_s``. ``now`` stamps the observations' window.
    """
    lim = _limits(limits)
    found = [_temperature(health, lim), _throttling(health), _disk(health, lim),
             _memory_check(health, lim)]
    window = Window(now, now, 0)
    return [Observation(kind="device_health", feature=c.feature, metric=c.metric, value=c.value,
                        threshold=c.threshold, breach=c.breach, clear=not c.breach,
                        summary=c.message, window=window, severity=c.severity, for_s=for_s,
                        clear_for_s=for_s, expected={"threshold": c.threshold},
                        observed={"value": c.value})
            for c in found if c is not None]


@dataclass(frozen=True)
class _Check:
    feature: str
    metric: str
    value: float
    threshold: float
    breach: bool
    severity: str
    message: str


def _temperature(health: Mapping[str, Any], lim: HealthLimits) -> Optional[_Check]:
    temp = health.get("max_temp_c")
    if temp is None:
        return None
    hottest = max((health.get("temperatures") or {}).items(), key=lambda kv: kv[1],
                  default=("soc", temp))[0]
    breach = temp > lim.temp_c
    return _Check("temperature", "max_temp_c", float(temp), lim.temp_c, breach,
                  "critical" if temp >= lim.temp_critical_c else "warning",
                  f"temperature {temp:.1f} °C on {hottest} "
                  f"{'above' if breach else 'within'} {lim.temp_c:g} °C")


def _throttling(health: Mapping[str, Any]) -> Optional[_Check]:
    throttled = health.get("throttled")
    if not throttled:
        return None
    active = [name for name, on in throttled.get("now", {}).items() if on]
    bits = sum(1 << THROTTLE_FLAGS[name] for name in active)
    # Under-voltage corrupts SD cards and flips camera frames: worse than heat.
    severity = "critical" if "under_voltage" in active else "warning"
    what = ", ".join(n.replace("_", " ") for n in active) or "not throttled"
    return _Check("throttling", "throttled", float(bits), 0.0, bool(active), severity,
                  f"Raspberry Pi {what} (get_throttled {throttled.get('raw', hex(bits))})")


def _disk(health: Mapping[str, Any], lim: HealthLimits) -> Optional[_Check]:
    disk = health.get("disk")
    if not disk:
        return None
    free, pct = disk.get("free_mb"), disk.get("percent")
    where = disk.get("path", "?")
    full = pct is not None and pct > lim.disk_percent
    if free is not None and (free < lim.disk_free_mb or not full):
        low = free < lim.disk_free_mb
        return _Check("disk", "disk_free_mb", float(free), lim.disk_free_mb, low,
                      "critical" if low and full else "warning",
                      f"{'low disk: ' if low else 'disk: '}{free:.0f} MB free on {where} "
                      f"({'below' if low else 'above'} {lim.disk_free_mb:g} MB)")
    if pct is None:
        return None
    return _Check("disk", "disk_percent", float(pct), lim.disk_percent, full, "warning",
                  f"disk {pct:.1f}% full on {where} "
                  f"({'above' if full else 'within'} {lim.disk_percent:g}%)")


def _memory_check(health: Mapping[str, Any], lim: HealthLimits) -> Optional[_Check]:
    memory = health.get("memory")
    if not memory or memory.get("percent") is None:
        return None
    pct = float(memory["percent"])
    breach = pct > lim.memory_percent
    return _Check("memory", "memory_percent", pct, lim.memory_percent, breach, "warning",
                  f"{'memory pressure: ' if breach else 'memory: '}{pct:.1f}% used, "
                  f"{memory.get('available_mb', 0):.0f} MB available")


def _limits(limits: Any) -> HealthLimits:
    """Accept a HealthLimits, a mapping or any object with (some of) its attribute names."""
    if limits is None or isinstance(limits, HealthLimits):
        return limits or HealthLimits()
    names = HealthLimits.__dataclass_fields__
    if isinstance(limits, Mapping):
        unknown = set(limits) - set(names)
        if unknown:
            raise ValueError(f"unknown health limit(s) {sorted(unknown)}; valid: {sorted(names)}")
        return HealthLimits(**limits)
    return HealthLimits(**{n: getattr(limits, n) for n in names if hasattr(limits, n)})


def _add_temp(temps: dict[str, float], name: str, value: Optional[float]) -> None:
    if value is None or not _TEMP_RANGE_C[0] < value < _TEMP_RANGE_C[1]:
        return
    key, n = name, 1
    while key in temps:  # two zones of the same type (e.g. two "cpu-thermal")
        n += 1
        key = f"{name}#{n}"
    temps[key] = round(float(value), 1)


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _guard(fn: Callable[[], Any]) -> Any:
    """Run one reading; an OS-level failure makes it None instead of killing the report."""
    try:
        return fn()
    except (OSError, psutil.Error) as exc:
        log.debug("health reading failed: %s", exc)
        return None
