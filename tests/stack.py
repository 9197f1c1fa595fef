"""A real Alertmanager for the tests: Debian's ``prometheus-alertmanager`` on a free port.

``alertmanager`` (session scope) starts one in a temp folder with a minimal config (a route
to a ``null`` receiver), clustering off (``--cluster.listen-address=``), its storage in the
temp folder, and waits on ``/-/ready``; it is stopped at the end of the session even when a
test failed. Tests share it: each uses its own ``device`` label and filters on it
(:meth:`Alertmanager.alerts`). Without the binary the fixture skips, except under
``CI=true`` where it fails (``make stack`` installs it). Import the fixture into a test
module (``from stack import alertmanager``) and mark its tests ``integration``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from broker import free_port
from procs import stop_process

ALERTMANAGER_CANDIDATES = ("/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager")

_CONFIG = """\
route:
  receiver: "null"
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: "null"
"""


def alertmanager_path() -> Optional[str]:
    """The Alertmanager executable, or None when it is not installed."""
    for candidate in ALERTMANAGER_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


class PortTaken(RuntimeError):
    """The port was taken before Alertmanager could bind it."""


class Alertmanager:
    """One Alertmanager process on 127.0.0.1, its config, data and log in ``workdir``."""

    def __init__(self, exe: str, workdir: Path) -> None:
        self.exe, self.workdir = exe, workdir
        self.host, self.port = "127.0.0.1", free_port()
        self.url = f"http://{self.host}:{self.port}"
        self.log_path = workdir / "alertmanager.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self, timeout: float = 30.0, tries: int = 3) -> None:
        """Start it and wait until ``/-/ready`` answers 200.

        Other processes on the machine pick free ports too: when the port was taken between
        choosing it and binding it, start again on another.
        """
        for _ in range(tries - 1):
            try:
                return self._start(timeout)
            except PortTaken:
                self.port = free_port()
                self.url = f"http://{self.host}:{self.port}"
        self._start(timeout)

    def _start(self, timeout: float) -> None:
        config = self.workdir / "alertmanager.yml"
        config.write_text(_CONFIG)
        (self.workdir / "data").mkdir(exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, f"--config.file={config}", f"--storage.path={self.workdir / 'data'}",
                 f"--web.listen-address={self.host}:{self.port}", "--cluster.listen-address=",
                 "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()[-2000:]
                if "address already in use" in log:
                    raise PortTaken(log)
                raise RuntimeError(f"alertmanager exited at start:\n{log}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"alertmanager not ready on {self.url} in {timeout}s:\n"
                           f"{self.log()[-2000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop it (SIGTERM, then SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, timeout)

    def log(self) -> str:
        """Its log so far (for failure messages)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alerts(self, **labels: str) -> List[Dict[str, Any]]:
        """``GET /api/v2/alerts`` filtered on label values (``device="cam-1"``)."""
        query = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in labels.items()])
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?{query}", timeout=5) as resp:
            return list(json.loads(resp.read()))


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    """One real Alertmanager for the session (tests filter on their own labels)."""
    exe = alertmanager_path()
    if exe is None:
        reason = "alertmanager not installed (make stack installs prometheus-alertmanager)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    am = Alertmanager(exe, tmp_path_factory.mktemp("alertmanager"))
    try:
        am.start()
        yield am
    finally:
        am.stop()
