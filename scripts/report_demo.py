"""A sample report from a real replay: night falls, then the lens blurs (``make report-demo``).

Builds a baseline of the normal emulated scene, replays night and then blur through the real
BlazeFace model into one database (the agent's capture keeps frames on the way), acknowledges
and snoozes an alert as an operator would, writes the model card and the report, and (with
``--screenshot``) a PNG of the report taken by headless Chromium.
The tests build their report with :func:`build_scenario` too (tests/test_report.py).

    python scripts/report_demo.py --out docs/report-demo.html --screenshot docs/report-demo.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.cli import main  # noqa: E402
from agent.history import History  # noqa: E402
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


def build_scenario(folder: Path) -> Tuple[Path, Path]:
    """Baseline, night replay, blur replay (frames captured), an ack, a snooze; (config, db)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "edgewatch.toml"
    cfg.write_text(CONFIG.format(model=blazeface_model_path()))
    db = folder / "history.db"
    t0 = float(int(time.time()) - 600)
    _run("baseline", f"emulated:stationary?seed=1&size={SIZE}&duration=40", "--fps", "30",
         "--config", str(cfg), "--out", str(folder / "baseline.npz"))
    # The agent's own capture ([capture], on by default) keeps the frames the report shows:
    # normal ones before night falls, alert frames through each episode.
    for name, seed, start in (("night", 2, t0), ("blur", 3, t0 + 120)):
        _run("replay", f"emulated:{name}?seed={seed}&size={SIZE}&fps={FPS}&onset=45&duration=100",
             "--config", str(cfg), "--start", str(start))
    with History(str(db)) as history:
        firing = [a for a in history.alerts() if a.state == "firing"]
    if len(firing) >= 2:
        _run("alerts", "ack", firing[0].id, "--config", str(cfg), "--by", "alice")
        _run("alerts", "snooze", firing[1].id, "--for", "2h", "--config", str(cfg),
             "--by", "bob")
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
