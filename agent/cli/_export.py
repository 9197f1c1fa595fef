"""``edgewatch export``: copy the history out while the agent keeps running."""

from __future__ import annotations

import argparse
import time

from ..export import EXPORT_TABLES, FORMATS, check_tables, export_rows, export_snapshot, parse_time
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
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Handle ``edgewatch export``: write the export and print one summary line."""
    db = config_from_args(args).store.path
    now = time.time()
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    tables = check_tables(args.tables.split(",")) if args.tables else None
    if args.format == "sqlite":
        result = export_snapshot(db, args.out, tables, since, until)
        where = f"{result['path']} ({result['bytes']} bytes)"
    else:
        result = export_rows(db, args.out, tables, since, until, args.format)
        where = ", ".join(result["paths"]) if args.format == "csv" else result["paths"][0]
    counts = " ".join(f"{t}={n}" for t, n in result["rows"].items())
    print(f"exported {args.format} to {where}: {counts}")
    return 0
