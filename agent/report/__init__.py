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

import os
import time
from pathlib import Path
from typing import Optional

from ..config import Config
from ._data import ReportData, gather
from ._html import page

__all__ = ["ReportData", "build_report", "gather", "write_report"]


def build_report(config: Config, db_path: str, *, since: Optional[float] = None,
                 until: Optional[float] = None, now: Optional[float] = None) -> str:
    """The report's HTML for the history in ``db_path`` between ``since`` and ``until``."""
    stamp = time.time() if now is None else now
    return page(gather(config, db_path, since, until, stamp), stamp)


def write_report(config: Config, db_path: str, out: str, *, since: Optional[float] = None,
                 until: Optional[float] = None) -> int:
    """Write the report to ``out`` atomically; return its size in bytes."""
    html = build_report(config, db_path, since=since, until=until)
    tmp = Path(f"{out}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out)
    return len(html.encode("utf-8"))
