"""``edgewatch export``: copy the history out while the agent keeps running."""

from __future__ import annotations

import argparse
import time

from ..config import Config
from ..export import EXPORT_TABLES, FORMATS, check_tables, export_rows, export_snapshot, parse_time
from ..samplestore import copy_samples, find_samples_dir, snapshot_samples_dir
from ._run import config_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``export`` command."""
    p = sub.add_parser(
        "export",
        help="export the history (SQLite snapshot, CSV or JSON Lines)",
        description="Export the history while the agent keeps writing. sqlite: a consistent "
        "snapshot (online backup). csv: one file per table, <stem>_<table>.csv next to --out. "
        "jsonl: one JSON object per row with a \"table\" key.",
    )
    p.add_argument("--config", help="TOML config file (for [store] path)")
    p.add_argument("--db", help="history database (default: [store] path of the config)")
    p.add_argument("--out", required=True, help="output file (csv: its stem names the files)")
    p.add_argument("--since", help="keep rows at or after: 30m, 2h, 7d, unix seconds or ISO 8601")
    p.add_argument("--until", help="keep rows at or before (same forms as --since)")
    p.add_argument("--tables", help=f"comma-separated subset of {','.join(EXPORT_TABLES)}")
    p.add_argument("--format", choices=FORMATS, default="sqlite", help="output format")
    p.add_argument("--samples", help="samples folder to copy (default: [capture] path, else "
                   "samples/ beside the database)")
    p.add_argument("--no-samples", action="store_true", help="sqlite: leave the captured "
                   "frames out (by default they are copied to <out stem>-samples/ beside it)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Handle ``edgewatch export``: write the export and print one summary line."""
    cfg = config_from_args(args)
    db = cfg.store.path
    now = time.time()
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    tables = check_tables(args.tables.split(",")) if args.tables else None
    note = ""
    if args.format == "sqlite":
        result = export_snapshot(db, args.out, tables, since, until)
        where = f"{result['path']} ({result['bytes']} bytes)"
        if not args.no_samples:
            note = _copy_samples(cfg, args, result["path"])
    else:
        result = export_rows(db, args.out, tables, since, until, args.format)
        where = ", ".join(result["paths"]) if args.format == "csv" else result["paths"][0]
    counts = " ".join(f"{t}={n}" for t, n in result["rows"].items())
    print(f"exported {args.format} to {where}: {counts}{note}")
    return 0


def _copy_samples(cfg: Config, args: argparse.Namespace, snapshot: str) -> str:
    """Copy the snapshot's samples beside it; the summary's note on them."""
    source = find_samples_dir(cfg, args.db, args.samples)
    dest = snapshot_samples_dir(snapshot)
    copied, missing = copy_samples(snapshot, source, dest)
    if not copied and not missing:
        return " samples=0"
    note = f" samples={copied} (files in {dest})"
    if missing:
        note += f" ({len(missing)} not found in {source}: ids " \
                f"{', '.join(map(str, missing[:10]))}; pass --samples DIR)"
    return note
