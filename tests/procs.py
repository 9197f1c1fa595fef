"""Stopping a process the tests started (a server, an agent): politely, then for sure."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> str:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL; its stderr when piped, else ""."""
    if proc.poll() is None:
        proc.terminate()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=5)
    if isinstance(err, bytes):
        return err.decode(errors="replace")
    return err or ""
