"""``edgewatch baseline``: build a reference from training data, or rebuild it on the device."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, List

import numpy as np

from ..alerts import AlertManager
from ..drift.reference import build_reference
from ..errors import BaselineError
from ..inference import Model
from ..monitor import FEATURES, Monitor, NullSink
from ..sources import open_source
from ._run import add_common, config_from_args


def collect_features(cfg: Any, model: Model, uris: List[str], fps: float,
                     max_frames: int | None) -> np.ndarray:
    """Run the model and statistics over sources; returns (frames, features) in time order."""
    rows: List[np.ndarray] = []
    cfg = cfg.with_values(drift__enabled=False, rules__enabled=False)
    for uri in uris:
        alerts = AlertManager(device="baseline", camera="baseline", model={}, emit=lambda r: None)
        mon = Monitor(cfg, alerts, model_info=model.info() | {"input_size": model.input_size},
                      sink=NullSink(), output_spec=model.output_details)
        source = open_source(uri)
        i = 0
        try:
            while max_frames is None or i < max_frames:
                frame = source.read()
                if frame is None:
                    break
                outputs, latency = model(frame)
                mon.observe(frame, outputs, latency, ts=i / fps)
                rows.append(mon.ring.last(1)[1][0].copy())
                i += 1
        finally:
            source.close()
    if not rows:
        raise BaselineError(f"no frames read from {', '.join(uris)} (check the sources)")
    return np.vstack(rows)


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
        raise BaselineError("give SOURCE... and --out FILE (or --rebuild for the running agent)")
    model = Model(cfg.model.path, runtime=cfg.model.runtime, num_threads=cfg.model.num_threads,
                  delegate=cfg.model.delegate, input_range=cfg.model.input_range,
                  color=cfg.model.color)
    t0 = time.perf_counter()
    values = collect_features(cfg, model, args.sources, args.fps, args.max_frames)
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
          f"{time.perf_counter() - t0:.1f} s -> {args.out} (model sha256 {model.sha256[:12]}); "
          f"set [drift] reference = \"{args.out}\"")
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
    p.add_argument("--fps", type=float, default=30.0, help="frame rate the frames stand for (default 30)")
    p.add_argument("--max-frames", type=int, help="at most this many frames per source")
    p.add_argument("--rebuild", action="store_true",
                   help="ask the running agent to re-learn its reference (accept the new normal)")
    p.set_defaults(func=_baseline)
