"""``edgewatch run`` (the owned live loop) and ``edgewatch replay`` (a finite source, fast)."""

from __future__ import annotations

import argparse
import json
import logging
import math
from typing import Any, Dict, Optional

from ..config import Config, default_config_path, load_config, require
from ..sources import open_source
from ._format import Progress, duration

log = logging.getLogger(__name__)


def overrides_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """``section__key`` overrides from --model and --db."""
    overrides: Dict[str, Any] = {}
    if getattr(args, "model", None):
        overrides["model__path"] = args.model
    if getattr(args, "db", None):
        overrides["store__path"] = args.db
    return overrides


def _config_path(args: argparse.Namespace) -> Optional[str]:
    path = getattr(args, "config", None) or default_config_path()
    return None if path is None else str(path)


def config_from_args(args: argparse.Namespace) -> Config:
    """The config named by --config (or the default file), with --model/--db applied."""
    cfg = load_config(_config_path(args))
    overrides = overrides_from_args(args)
    return cfg.with_values(**overrides) if overrides else cfg


def _run(args: argparse.Namespace) -> int:
    from ..loop import run_forever

    overrides = overrides_from_args(args)  # kept on every reload (SIGHUP)
    if args.source:
        overrides["source__uri"] = args.source
    path = _config_path(args)
    cfg = load_config(path)
    cfg = require(cfg.with_values(**overrides) if overrides else cfg, "run")
    return run_forever(path, config=cfg, overrides=overrides)


def model_config_from_args(args: argparse.Namespace, command: str) -> Config:
    """:func:`config_from_args` for a command that runs the model: [model] path must be set."""
    return require(config_from_args(args), command, ["model.path"])


def number_type(kind: type, low: float, allowed: str) -> Any:
    """An argparse type: a finite number of ``kind`` above ``low``, else a one-line error."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number ({allowed})") from None
        if not (math.isfinite(value) and value > low):
            raise argparse.ArgumentTypeError(f"{text} is out of range ({allowed})")
        return value
    return parse


def _replay(args: argparse.Namespace) -> int:
    from ..loop import replay

    cfg = model_config_from_args(args, "replay")
    size = (cfg.source.size[0], cfg.source.size[1]) if all(cfg.source.size) else None
    source = open_source(args.source, loop=False, size=size)
    progress = Progress("replay", args.max_frames)
    try:
        result = replay(cfg, source, fps=args.fps, max_frames=args.max_frames,
                        start_ts=args.start, on_frame=progress.update)
    finally:
        progress.close()
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"replayed {result.frames} frames ({duration(result.frames / result.fps)} of video at "
          f"{result.fps:g} fps) in {duration(result.seconds)}, {result.alerts} alert "
          f"transition(s); history in {result.db}")
    checked = [c for c in ("rules", "drift") if c not in result.unchecked]
    if checked:
        print(f"checked: {', '.join(checked)}")
    for check, why in result.unchecked.items():
        print(f"{check} was never checked: {why}")
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
    p.add_argument("--fps", type=number_type(float, 0, "frames per second, more than 0"),
                   help="frame rate for synthetic timestamps (default: the source's, else 30)")
    p.add_argument("--max-frames", type=number_type(int, 0, "a whole number of frames, at least 1"),
                   help="stop after this many frames")
    p.add_argument("--start", type=number_type(float, -math.inf, "a unix time"),
                   help="unix time of frame 0 (default: now)")
    p.add_argument("--json", action="store_true", help="print one JSON line with the result")
    p.set_defaults(func=_replay)
