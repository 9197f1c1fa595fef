"""``edgewatch samples list|export``: captured frames, out to a labelling tool.

Both only read: the database through a read-only connection, the JPEGs from the samples
folder (``--samples``; else ``[capture] path``, else ``samples/`` beside the database).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

from ..errors import AgentError, CommandError, UsageError
from ..export import parse_time
from ..records import Sample
from ..samplestore import find_samples_dir, read_samples, sample_alert_ids
from ._format import local_time, safe_text, table
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
                         "(labels/*.txt and classes.txt) or jsonl (samples.jsonl). Each file "
                         "is checked against its recorded SHA-256. Exit status: 0 when every "
                         "selected sample was exported, also 0 with a warning on stderr when "
                         "some files were missing or altered (left out, named), 1 when all "
                         "were (nothing is written).")
    _common(ex)
    ex.add_argument("--out", required=True, help="output folder: a new or empty one")
    ex.add_argument("--force", action="store_true", help="replace an earlier export in --out "
                    "(its images, labels and manifests; refused when the folder holds "
                    "anything else)")
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
    folder = find_samples_dir(cfg, args.db, args.samples)
    now = time.time()
    since: Optional[float] = parse_time(args.since, now) if args.since else None
    until: Optional[float] = parse_time(args.until, now) if args.until else None
    alert = _check_alert(cfg.store.path, args.alert)
    return read_samples(cfg.store.path, since=since, until=until, alert_id=alert), folder


def _check_alert(db: str, alert: Optional[str]) -> Optional[str]:
    """``--alert`` stripped; an error when it is empty or no sample belongs to it."""
    if alert is None:
        return None
    alert = alert.strip()
    if not alert:
        raise UsageError("--alert is empty (give an alert id or its first characters; "
                         "'edgewatch samples list' shows them)")
    known = sample_alert_ids(db)
    if not any(k.startswith(alert) for k in known):
        shown = ", ".join(k[:12] for k in known[:8]) + (", ..." if len(known) > 8 else "")
        raise CommandError(f"no alert {safe_text(alert)} among the samples in {db} "
                           f"(known: {shown or 'none, no alert has samples'})")
    return alert


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


def _class_names(text: str) -> List[str]:
    """``--classes``: names separated by commas, none empty, none twice."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise UsageError(f"--classes {safe_text(text)!r} has an empty name (give one name per "
                         "class, class 0 first, e.g. --classes face,person)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--classes names {', '.join(map(safe_text, twice))} more than once "
                         "(each class needs its own name)")
    return names


def run_export(args: argparse.Namespace) -> int:
    """Handle ``edgewatch samples export``: write the folder and print one summary line (a
    warning on stderr when some files were left out; an error, exit 1, when all were)."""
    from ..sampleexport import clear_export, export_samples

    names = None if args.classes is None else _class_names(args.classes)
    samples, folder = _select(args)
    out = Path(args.out)
    created = not out.exists()
    result = export_samples(samples, folder, out, args.format, class_names=names,
                            force=args.force)
    skipped = result["skipped"]
    why = f"file missing or altered in {folder}: ids {', '.join(map(str, skipped[:10]))}" \
          f"{', ...' if len(skipped) > 10 else ''}; if the files are elsewhere, pass " \
          "--samples DIR"
    if skipped and not result["images"]:
        clear_export(out)  # nothing worth keeping: leave no empty manifest behind
        if created:
            out.rmdir()
        raise AgentError(f"none of the {len(skipped)} samples exported ({why})")
    print(f"exported {result['images']} samples ({result['annotations']} detections) as "
          f"{args.format} to {args.out}: {result['manifest']}")
    if skipped:
        print(f"edgewatch: warning: {len(skipped)} of {len(samples)} samples left out ({why})",
              file=sys.stderr)
    return 0
