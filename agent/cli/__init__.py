"""The ``edgewatch`` command line: a thin layer over the library.

Each command group lives in its own ``agent/cli/_<group>.py`` module exposing
``register(subparsers)``; every handler takes the parsed args and returns an exit code.
Errors derived from :class:`agent.errors.AgentError` become one clean line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from ..errors import AgentError

# Command-group modules, registered in this order (help lists them so).
_GROUPS = ("_run", "_baseline", "_alerts", "_status", "_export", "_central")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every command group registered."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="edgewatch",
        description="Monitor a TFLite vision model on an edge device: drift, camera faults, alerts.",
    )
    parser.add_argument("--version", action="version", version=f"edgewatch {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ERROR)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _GROUPS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``edgewatch`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AgentError as exc:
        print(f"edgewatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
