"""``edgewatch samples list|export``: captured frames, out to a labelling tool.

Both only read: the database through a read-only connection, the JPEGs from the samples
folder (``--samples``; else ``[capture] path``, else ``samples/`` beside the database).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, List, Optional

from ..export import parse_time
from ..records import Sample
from ..samplestore import read_samples, samples_dir
from ._format import local_time, table
from ._run import config_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``samples`` command and its subcommands."""
    from ..sampleexport import FORMATS

    p = sub.add_parser("samples", help="list or export captured frames (for labelling)",
                       description="Frames the agent kept when alerts fired or the model was "
                       "unsure, with normal frames for contrast ([capture]).")
    cmds = p.add_subparsers(dest="samples_command", metavar="SUBCOMMAND", required=True)
    ls = cmds.add_parser("list", help="list captured samples, oldest first",
                         description="List captured samples, oldest first.")
    _common(ls)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=run_list)
    ex = cmds.add_parser("export", help="copy samples and a manifest to a folder",
                         description="Copy samples into OUT/images with a manifest: coco "
                         "(annotations.json, the model's detections as pre-annotations), yolo "
                         "(labels/*.txt and classes.txt) or jsonl (samples.jsonl).")
    _common(ex)
    ex.add_argument("--out", required=True, help="output folder (created when missing)")
    ex.add_argument("--format", choices=FORMATS, default="coco", help="manifest format")
    ex.add_argument("--classes", help="comma-separated class names, class 0 first "
                    "(default class_0, class_1, ...)")
    ex.set_defaults(func=run_export)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (for [store] path and [capture] path)")
    p.add_argument("--db", help="history database (default: [store] path of the config)")
    p.add_argument("--samples", help="samples folder (default: [capture] path, else samples/ "
                   "beside the database)")
    p.add_argument("--since", help="samples at or after: 30m, 2h, 7d, unix seconds or ISO 8601")
    p.add_argument("--until", help="samples at or before (same forms as --since)")
    p.add_argument("--alert", help="only this alert's samples (its id or a prefix)")


def _select(args: argparse.Namespace) -> tuple[List[Sample], Path]:
    cfg = config_from_args(args)
    folder = Path(args.samples) if args.samples else \
        samples_dir(args.db) if args.db else samples_dir(cfg)
    now = time.time()
    since: Optional[float] = parse_time(args.since, now) if args.since else None
    until: Optional[float] = parse_time(args.until, now) if args.until else None
    return read_samples(cfg.store.path, since=since, until=until, alert_id=args.alert), folder


def run_list(args: argparse.Namespace) -> int:
    """Handle ``edgewatch samples list``."""
    from ..sampleexport import summary_rows

    samples, _ = _select(args)
    rows: List[Any] = summary_rows(samples)
    if args.json:
        for s in samples:
            print(json.dumps({**s.__dict__, "detections": list(s.detections)}))
        return 0
    for row in rows:
        row["ts"] = local_time(row["ts"])
        row["alert"] = row["alert"] and row["alert"][:12]
    print(table(rows, ["id", "ts", "reason", "kind", "feature", "alert", "size", "detections",
                       "path"]) if rows else "no samples")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Handle ``edgewatch samples export``: write the folder and print one summary line."""
    from ..sampleexport import export_samples

    samples, folder = _select(args)
    names = [n.strip() for n in args.classes.split(",")] if args.classes else None
    result = export_samples(samples, folder, Path(args.out), args.format, class_names=names)
    skipped = result["skipped"]
    note = f"; {len(skipped)} left out (file missing or altered: ids " \
           f"{', '.join(map(str, skipped[:10]))})" if skipped else ""
    print(f"exported {result['images']} samples ({result['annotations']} detections) as "
          f"{args.format} to {args.out}: {result['manifest']}{note}")
    return 1 if skipped and not result["images"] else 0
