"""A sample report from a real replay: night falls, then the lens blurs (``make report-demo``).

Builds a baseline of the normal emulated scene, replays night and then blur through the real
BlazeFace model into one database, acknowledges and snoozes an alert as an operator would,
keeps a few captured frames through the agent's own sample writer, writes the model card and
the report, and (with ``--screenshot``) a PNG of the report taken by headless Chromium.
The tests build their report with :func:`build_scenario` too (tests/test_report.py).

    python scripts/report_demo.py --out docs/report-demo.html --screenshot docs/report-demo.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, Tuple

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.cli import main  # noqa: E402
from agent.emulated import parse_emulated_uri  # noqa: E402
from agent.history import History  # noqa: E402
from agent.samplestore import SampleWriter, samples_dir  # noqa: E402
from agent.store import Store  # noqa: E402
from agent.testdata import blazeface_model_path  # noqa: E402

SIZE = "320x240"
FPS = 15
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

CONFIG = """[device]
id = "porch-pi"
camera = "front-door"
[model]
path = "{model}"
[model.card]
name = "doorbell faces"
version = "1.2"
description = "Finds faces at the front door to ring the doorbell app."
owner = "home-ops"
intended_use = "faces at 0.5 to 3 m, daylight and porch light"
limitations = ["no infrared night mode", "faces under 20 px are missed"]
[model.card.evaluation]
"AP@0.5 (WIDER FACE easy)" = 0.87
[health]
enabled = false
[drift]
window_frames = 300
reference = "baseline.npz"
[store]
path = "history.db"
window_s = 2.0
"""


def _run(*argv: str) -> None:
    code = main(list(argv))
    if code != 0:
        raise SystemExit(f"edgewatch {argv[0]} failed with exit code {code}")


def _capture(db: Path, t0: float) -> int:
    """Keep frames as the capture would: alert frames of each alert, normal frames before."""
    with History(str(db)) as history:
        alerts = history.alerts()
    writer = SampleWriter(samples_dir(db), max_mb=20, normal_frames=4)
    night = parse_emulated_uri(f"emulated:night?seed=2&size={SIZE}&fps={FPS}&onset=20")
    blur = parse_emulated_uri(f"emulated:blur?seed=3&size={SIZE}&fps={FPS}&onset=20")
    frames = [(t0 + s, night.frame_at(s * FPS), "normal", None) for s in (2, 8, 14)]
    for alert in alerts:
        feed, base = (blur, t0 + 100) if alert.starts_at >= t0 + 100 else (night, t0)
        for dt in (0.0, 4.0, 8.0):
            ts = alert.starts_at + dt
            frames.append((ts, feed.frame_at(int((ts - base) * FPS)), "alert", alert))
    with Store(str(db), create=False, maintain=False) as store:
        for ts, frame, reason, alert in frames:
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
            meta: Dict[str, object] = {"ts": ts, "camera": "front-door", "reason": reason,
                                       "width": frame.shape[1], "height": frame.shape[0]}
            if alert is not None:
                meta.update(alert_id=alert.id, kind=alert.kind, feature=alert.feature)
            writer.submit(store, jpeg.tobytes(), meta).result(30)
    return len(frames)


def build_scenario(folder: Path) -> Tuple[Path, Path]:
    """Baseline, night replay, blur replay, an ack, a snooze and samples; (config, db)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "edgewatch.toml"
    cfg.write_text(CONFIG.format(model=blazeface_model_path()))
    db = folder / "history.db"
    t0 = float(int(time.time()) - 400)
    _run("baseline", f"emulated:stationary?seed=1&size={SIZE}&duration=40", "--fps", "30",
         "--config", str(cfg), "--out", str(folder / "baseline.npz"))
    for name, seed, start in (("night", 2, t0), ("blur", 3, t0 + 100)):
        _run("replay", f"emulated:{name}?seed={seed}&size={SIZE}&fps={FPS}&onset=20&duration=80",
             "--config", str(cfg), "--start", str(start))
    with History(str(db)) as history:
        firing = [a for a in history.alerts() if a.state == "firing"]
    if len(firing) >= 2:
        _run("alerts", "ack", firing[0].id, "--config", str(cfg), "--by", "alice")
        _run("alerts", "snooze", firing[1].id, "--for", "2h", "--config", str(cfg),
             "--by", "bob")
    _capture(db, t0)
    return cfg, db


def screenshot(html: Path, png: Path) -> None:
    """A full-page PNG of the report from Debian's headless Chromium (via Playwright)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1150, "height": 900})
            page.goto(html.resolve().as_uri())
            page.screenshot(path=str(png), full_page=True)
        finally:
            browser.close()
    from PIL import Image  # a 256-colour PNG: a third of the size, the same to the eye

    Image.open(png).convert("RGB").quantize(256).save(png, optimize=True)


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="build/report-demo", help="scratch folder")
    parser.add_argument("--out", default="docs/report-demo.html", help="the report")
    parser.add_argument("--card", default="docs/report-demo-card.md", help="the model card")
    parser.add_argument("--screenshot", help="also save a PNG of the report here")
    args = parser.parse_args()
    work = Path(args.work)
    for old in work.glob("history.db*"):
        old.unlink()
    cfg, _ = build_scenario(work)
    for out in (args.out, args.card, args.screenshot):
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
    _run("report", "--config", str(cfg), "--out", args.out)
    _run("card", "--config", str(cfg), "--out", args.card)
    if args.screenshot:
        screenshot(Path(args.out), Path(args.screenshot))
        print(f"screenshot: {args.screenshot}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
