"""``edgewatch report``: one self-contained HTML file from a device database or snapshot.

The page opens offline (inline CSS and SVG, images as data: URIs, a Content-Security-Policy
that forbids any request) and shows the device, camera and model at a glance; a diagnosis per
episode in words (:mod:`agent.report.diagnose`); each image statistic and confidence summary
over time against its reference band with alerts marked; drift as a heatmap over features and
time; the alert timeline with its lifecycle; captured samples beside normal frames; device
health and monitoring gaps; and the model card (:mod:`agent.card`). Nothing here is on the
device's frame path, and it needs no plotting library.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Optional

from ..config import Config
from ..errors import UsageError
from ._data import ReportData, gather
from ._html import page

__all__ = ["ReportData", "build_report", "gather", "write_file", "write_report"]


def build_report(config: Config, db_path: str, *, since: Optional[float] = None,
                 until: Optional[float] = None, now: Optional[float] = None) -> str:
    """The report's HTML for the history in ``db_path`` between ``since`` and ``until``."""
    stamp = time.time() if now is None else now
    return page(gather(config, db_path, since, until, stamp), stamp)


def write_report(config: Config, db_path: str, out: str, *, since: Optional[float] = None,
                 until: Optional[float] = None) -> int:
    """Write the report to ``out`` atomically; return its size in bytes."""
    return write_file(out, build_report(config, db_path, since=since, until=until), "report.html")


def write_file(out: str, text: str, example: str) -> int:
    """Write ``text`` to ``out`` atomically (its folders made as needed, like ``samples
    export``); return the size in bytes. A folder or an unwritable path is a one-line
    :class:`UsageError` naming ``--out``; no temporary file is left behind."""
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {out} is a folder: name the file to write "
                         f"(e.g. --out {path / example})")
    data = text.encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UsageError(f"--out {out}: cannot write it ({exc.strerror or exc}): choose a "
                         "writable file path") from None
    return len(data)
