"""``edgewatch baseline``: build a reference from training data, or rebuild it on the device."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from ..config import require
from ..drift.reference import build_reference
from ..errors import BaselineError, UsageError
from ..inference import Model
from ..loop import collect_rows
from ..monitor import FEATURES, FEATURES_VERSION
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
        rows = collect_rows(cfg, model, args.sources, args.fps, args.max_frames,
                            on_frame=progress.update)
    finally:
        progress.close()
    # A folder of images (training data) has no time order: its distribution is the
    # reference, and the thresholds are calibrated on the device's own frames.
    independent = any(Path(uri).is_dir() for uri in args.sources)
    common = dict(window_frames=cfg.drift.window_frames,
                  eval_stride_frames=max(1, int(round(cfg.drift.eval_interval_s * args.fps))),
                  fps=args.fps, model_sha256=model.sha256, model_path=str(model.path),
                  origin="baseline", source=" ".join(args.sources), created=time.time(),
                  target_false_alarms_per_week=cfg.drift.false_alarms_per_week,
                  persistence_s=cfg.drift.for_s, kind="training", independent=independent)
    sample = [cfg.stats.sample_width, cfg.stats.sample_height]
    views = {"sample": sample, "features_version": FEATURES_VERSION}
    frame = build_reference(rows.frame, FEATURES, view={"kind": "frame", "size": None, **views},
                            **common)
    model_input = build_reference(rows.input, FEATURES, view={
        "kind": "input", "size": list(rows.input_size), **views}, **common)
    dataclasses.replace(frame, alt=model_input).save(args.out)
    n = rows.frame.shape[0]
    print(f"baseline: {n} {'images' if independent else 'frames'} from {len(args.sources)} "
          f"source(s) in {duration(time.perf_counter() - t0)} -> {args.out} (model sha256 "
          f"{model.sha256[:12]})")
    print(f"measured in both views: full frames (run, observe(frame)) and the model's "
          f"{rows.input_size[0]}x{rows.input_size[1]} input (wrap)")
    if independent:
        print(f"training images: thresholds are calibrated on the camera's own frames during "
              f"the first {cfg.drift.calibration_s:g} s ([drift] calibration_s)")
    else:
        print(f"drift thresholds calibrated for {len(frame.names)} features, windows of "
              f"{cfg.drift.window_frames} frames")
    print(f"set [drift] reference = \"{args.out}\"")
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
