"""``edgewatch report`` and ``edgewatch card``: the history as a page, the model as a record."""

from __future__ import annotations

import argparse
import os
import time
from typing import Optional, Tuple

from ..config import default_config_path
from ..errors import StoreError, UsageError
from ._run import config_from_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report`` and ``card``."""
    p = sub.add_parser(
        "report", help="one self-contained HTML report of the history (opens offline)",
        description="Charts, drift heatmap, alerts with their lifecycle and a diagnosis per "
        "episode, captured samples, device health and the model card, in one HTML file with "
        "nothing to fetch. Run it on the device or on a snapshot pulled with edgewatch export.")
    p.add_argument("--config", help="TOML config file ([store] path, the model, the baseline)")
    p.add_argument("--db", help="history database or snapshot (default: [store] path)")
    p.add_argument("--since", help="from: 30m, 2h, 7d, unix seconds or ISO 8601")
    p.add_argument("--until", help="to (same forms as --since)")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.set_defaults(func=_report)
    c = sub.add_parser(
        "card", help="the model card (Markdown) from what the agent knows and [model.card]",
        description="The deployed model's record: file and sha256, input and outputs, "
        "runtime, the reference and its thresholds, the monitoring configuration, the alert "
        "history, and the owner's [model.card] fields. MkDocs renders it as it is.")
    c.add_argument("--config", help="TOML config file ([model], [model.card], [store] path)")
    c.add_argument("--db", help="history database or snapshot (default: [store] path, if any)")
    c.add_argument("--out", required=True, help="the Markdown file to write (MODEL_CARD.md)")
    c.set_defaults(func=_card)


def _existing_db(path: str, required: bool) -> Optional[str]:
    if os.path.isfile(path):
        return path
    if required:
        raise StoreError(f"database not found: {path} (pass --db FILE or set [store] path)")
    return None


def _period(args: argparse.Namespace) -> Tuple[Optional[float], Optional[float]]:
    """--since and --until as unix times; an empty range is a one-line error."""
    from ..export import parse_time

    now = time.time()
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    if since is not None and until is not None and since >= until:
        raise UsageError(f"--since {args.since} is not before --until {args.until}: the "
                         "period would be empty (durations count back from now: --since 2h "
                         "--until 1h)")
    return since, until


def _report(args: argparse.Namespace) -> int:
    from ..report import write_report

    since, until = _period(args)
    config = config_from_args(args)
    db = _existing_db(config.store.path, True) or ""
    size = write_report(config, db, args.out, since=since, until=until)
    print(f"report: {args.out} ({size / 1e6:.2f} MB) from {db}")
    return 0


def _card(args: argparse.Namespace) -> int:
    from ..card import model_card
    from ..report import write_file

    config = config_from_args(args)
    db = _existing_db(config.store.path, bool(args.db))
    if db is None and not (args.config or default_config_path()):
        raise UsageError("card: nothing to describe: pass --config FILE (the model and "
                         "[model.card]) or --db FILE (a device's database), or both")
    write_file(args.out, model_card(config, db), "MODEL_CARD.md")
    print(f"model card: {args.out}" + (f" (from {db})" if db else " (no database: config only)"))
    return 0
