"""``edgewatch run`` (the owned live loop) and ``edgewatch replay`` (a finite source, fast)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Optional

from ..config import Config, default_config_path, load_config
from ..sources import open_source

log = logging.getLogger(__name__)


def config_from_args(args: argparse.Namespace) -> Config:
    """The config named by --config (or the default file), with --model/--db applied."""
    path = getattr(args, "config", None) or default_config_path()
    cfg = load_config(path)
    overrides: dict[str, Any] = {}
    if getattr(args, "model", None):
        overrides["model__path"] = args.model
    if getattr(args, "db", None):
        overrides["store__path"] = args.db
    return cfg.with_values(**overrides) if overrides else cfg


def _run(args: argparse.Namespace) -> int:
    from ..service import run_forever

    cfg = config_from_args(args)
    if args.source:
        cfg = cfg.with_values(source__uri=args.source)
    path: Optional[str] = args.config or (str(default_config_path()) if default_config_path() else None)
    return run_forever(path, config=cfg)


def _replay(args: argparse.Namespace) -> int:
    from ..service import replay

    cfg = config_from_args(args)
    size = (cfg.source.size[0], cfg.source.size[1]) if all(cfg.source.size) else None
    source = open_source(args.source, loop=False, size=size)
    result = replay(cfg, source, fps=args.fps, max_frames=args.max_frames, start_ts=args.start)
    if args.json:
        print(json.dumps({"frames": result.frames, "start_ts": result.start_ts, "fps": result.fps,
                          "seconds": result.seconds, "db": result.db,
                          "alert_transitions": result.alerts,
                          "processing_fps": round(result.frames / max(result.seconds, 1e-9), 1)}))
    else:
        print(f"replayed {result.frames} frames ({result.frames / result.fps:.0f} s of video at "
              f"{result.fps:g} fps) in {result.seconds:.1f} s; history in {result.db}")
    return 0


def add_common(p: argparse.ArgumentParser) -> None:
    """--config, --model and --db, shared by the commands that run the model."""
    p.add_argument("--config", help="TOML config file (default: $EDGEWATCH_CONFIG or "
                   "/etc/edgewatch/edgewatch.toml, else built-in defaults)")
    p.add_argument("--model", help="TFLite model file (overrides [model] path)")
    p.add_argument("--db", help="SQLite history file (overrides [store] path)")


def register(sub: Any) -> None:
    """Add ``run`` and ``replay``."""
    p = sub.add_parser("run", help="run the camera -> TFLite -> monitor loop until stopped",
                       description="Open the source, run the model on every frame, monitor it, "
                       "and keep going until SIGINT/SIGTERM (SIGHUP reloads the config).")
    add_common(p)
    p.add_argument("--source", help="frame source (overrides [source] uri)")
    p.set_defaults(func=_run)

    p = sub.add_parser("replay", help="run a finite source as fast as possible, synthetic time",
                       description="Replay a video, image folder or emulated feed through the "
                       "model and monitor; frame i gets timestamp start + i/fps.")
    p.add_argument("source", metavar="SOURCE", help="video file, image folder or emulated:NAME?...")
    add_common(p)
    p.add_argument("--fps", type=float, help="frame rate for synthetic timestamps "
                   "(default: the source's, else 30)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--start", type=float, help="unix time of frame 0 (default: now)")
    p.add_argument("--json", action="store_true", help="print one JSON line with the result")
    p.set_defaults(func=_replay)
