"""``edgewatch baseline``: build a reference from training data, or rebuild it on the device."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ..config import require
from ..drift.reference import build_reference
from ..errors import BaselineError, UsageError
from ..inference import Model
from ..loop import collect_rows
from ..monitor import FEATURES
from ._format import Progress, duration
from ._run import add_common, config_from_args, number_type


def _baseline(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.rebuild:
        from ..control import AgentUnavailable, send

        try:
            result = send(cfg, "rebaseline", {})
        except AgentUnavailable:
            raise BaselineError(f"no running agent answered on {cfg.store.path} "
                                "(start it; --rebuild asks the running agent)") from None
        print(json.dumps(result, indent=2))
        return 0 if result.get("ok") else 1
    if not args.sources or not args.out:
        raise UsageError("give SOURCE... and --out FILE (or --rebuild for the running agent)")
    model = Model.from_config(require(cfg, "baseline", ["model.path"]).model)
    t0 = time.perf_counter()
    progress = Progress("baseline", args.max_frames * len(args.sources) if args.max_frames else None)
    try:
        values = collect_rows(cfg, model, args.sources, args.fps, args.max_frames,
                              on_frame=progress.update)
    finally:
        progress.close()
    window = cfg.drift.window_frames
    if values.shape[0] < 2 * window:
        raise BaselineError(f"only {values.shape[0]} frames; a baseline needs at least "
                            f"{2 * window} (2 x drift.window_frames)")
    ref = build_reference(
        values, FEATURES, window_frames=window,
        eval_stride_frames=max(1, int(round(cfg.drift.eval_interval_s * args.fps))),
        fps=args.fps, model_sha256=model.sha256, model_path=str(model.path), origin="baseline",
        source=" ".join(args.sources), created=time.time(),
        target_false_alarms_per_week=cfg.drift.false_alarms_per_week,
        persistence_s=cfg.drift.for_s)
    ref.save(args.out)
    print(f"baseline: {values.shape[0]} frames from {len(args.sources)} source(s) in "
          f"{duration(time.perf_counter() - t0)} -> {args.out} (model sha256 {model.sha256[:12]})")
    print(f"drift thresholds calibrated for {len(ref.names)} features, windows of {window} "
          f"frames; set [drift] reference = \"{args.out}\"")
    return 0


def register(sub: Any) -> None:
    """Add ``baseline``."""
    p = sub.add_parser("baseline", help="build a drift reference from training/validation data",
                       description="Run the model and statistics over image folders, videos or "
                       "emulated feeds and write a compact reference file; or, with --rebuild, "
                       "make the running agent learn a new reference from its next frames.")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="image folder, video or emulated:NAME")
    add_common(p)
    p.add_argument("--out", help="reference file to write (.npz)")
    p.add_argument("--fps", type=number_type(float, 0, "frames per second, more than 0"),
                   default=30.0, help="frame rate the frames stand for (default 30)")
    p.add_argument("--max-frames", type=number_type(int, 0, "a whole number, at least 1"),
                   help="at most this many frames per source")
    p.add_argument("--rebuild", action="store_true",
                   help="ask the running agent to re-learn its reference (accept the new normal)")
    p.set_defaults(func=_baseline)
