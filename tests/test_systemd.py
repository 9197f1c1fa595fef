"""The systemd unit: it verifies cleanly, its sandbox scores "OK" or better, and its
MemoryDenyWriteExecute=yes does not break TFLite, OpenCV or numpy."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "edgewatch.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
ACCEPTABLE_LEVELS = ("PERFECT", "SAFE", "OK")

needs_analyze = pytest.mark.skipif(
    not Path(SYSTEMD_ANALYZE).exists(), reason="systemd-analyze is not installed"
)


def directives(path: Path = UNIT) -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit; keys may repeat (DeviceAllow=, SystemCallFilter=)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_has_the_contract_settings():
    d = directives()
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": "/opt/edgewatch/venv/bin/edgewatch run --config /etc/edgewatch/edgewatch.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "TimeoutStopSec": "20",
        "TimeoutStartSec": "120",
        "User": "edgewatch",
        "SupplementaryGroups": "video",
        "StateDirectory": "edgewatch",
        "WorkingDirectory": "/var/lib/edgewatch",
        "ProtectSystem": "strict",
        "CapabilityBoundingSet": "",
        "DevicePolicy": "closed",
        "MemoryDenyWriteExecute": "yes",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], key
    # Cameras must stay reachable: no PrivateDevices, and V4L2 devices allowed.
    assert "PrivateDevices" not in d
    assert "char-video4linux rw" in d["DeviceAllow"]
    # psutil needs /proc/stat and /proc/meminfo.
    assert "ProcSubset" not in d


@pytest.mark.integration
@needs_analyze
def test_systemd_analyze_verify(tmp_path):
    # verify insists that ExecStart= exists and is executable; /opt/edgewatch is not installed
    # on this build machine, so the unmodified unit fails for that reason and that reason only.
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert complaints == [
        "edgewatch.service: Command /opt/edgewatch/venv/bin/edgewatch is not executable: "
        "No such file or directory"
    ]
    # With ExecStart= pointing at an existing binary, verify must be silent: it exits 0 even
    # on unknown keys or bad values, so any output counts as a failure.
    unit = tmp_path / "edgewatch.service"
    unit.write_text(
        re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={shutil.which('true')}", UNIT.read_text())
    )
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout + proc.stderr == ""


@pytest.mark.integration
@needs_analyze
def test_systemd_analyze_security_is_ok_or_better():
    # --offline=yes scores the unit file itself, without a running systemd (systemd >= 250).
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )
    m = re.search(r"Overall exposure level for edgewatch\.service: ([\d.]+) (\w+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    score, level = float(m.group(1)), m.group(2)
    print(f"systemd-analyze security: {score} {level}")
    assert level in ACCEPTABLE_LEVELS, f"{score} {level}"
    assert score <= 2.0


MDWE_SCRIPT = textwrap.dedent(
    """
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(77)
    import mmap
    try:  # prove the guard is on: an anonymous W+X mapping is refused
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit(78)
    except PermissionError:
        pass
    import numpy as np, cv2, psutil
    from tflite_runtime.interpreter import Interpreter
    interp = Interpreter(model_path=sys.argv[1], num_threads=2)  # XNNPACK by default
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.zeros(inp["shape"], dtype=inp["dtype"]))
    interp.invoke()
    out = interp.get_tensor(interp.get_output_details()[0]["index"])
    img = cv2.resize(np.zeros((480, 640, 3), np.uint8), (128, 128))
    print("ok", out.shape, img.shape, psutil.cpu_count())
    """
)


@pytest.mark.integration
def test_tflite_runs_without_writable_executable_memory():
    # systemd's MemoryDenyWriteExecute= is a seccomp filter that needs a systemd-run service;
    # the kernel's PR_SET_MDWE (Linux >= 6.3) refuses the same W+X mappings in-process.
    from agent.testdata import blazeface_model_path

    proc = subprocess.run(
        [sys.executable, "-c", MDWE_SCRIPT, str(blazeface_model_path())],
        capture_output=True, text=True, timeout=120,
    )
    if proc.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3): cannot check here")
    assert proc.returncode != 78, "PR_SET_MDWE did not take effect"
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok ")
