"""The ``edgewatch`` command line: a thin layer over the library.

Each command group lives in its own ``agent/cli/_<group>.py`` module exposing
``register(subparsers)``; every handler takes the parsed args and returns an exit code.
This module is the boundary: every error that reaches it becomes one line on stderr with
the right exit code (an :class:`~agent.errors.AgentError` carries its own; usage mistakes
exit 2; SQLite and OS errors exit 1), and a closed pipe (``edgewatch alerts list | head``)
ends quietly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sqlite3
import sys
from typing import Optional, Sequence

from ..errors import AgentError

# Command-group modules, registered in this order (help lists them so).
_GROUPS = ("_run", "_baseline", "_alerts", "_status", "_export", "_samples", "_report", "_central")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in _LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(_LOG_LEVELS)}")
    return level


def _add_log_level(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--log-level", type=_log_level, default=default,
                        help="logging level: DEBUG, INFO, WARNING or ERROR (default INFO)")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (commands and their subcommands)."""
    out: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                out += [child, *_subparsers(child)]
    return out


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every command group registered."""
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="edgewatch",
        description="Monitor a TFLite vision model on an edge device: drift, camera faults, alerts.",
    )
    parser.add_argument("--version", action="version", version=f"edgewatch {__version__}")
    _add_log_level(parser, "INFO")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _GROUPS:
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(sub)
    for child in _subparsers(parser):  # --log-level is accepted after the command too
        if not any("--log-level" in a.option_strings for a in child._actions):
            _add_log_level(child, argparse.SUPPRESS)
    return parser


def _quiet_broken_pipe() -> int:
    """stdout's reader went away (``| head``): stop quietly, without a traceback at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``edgewatch`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger().setLevel(level)  # also when a host (a test runner) configured logging
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except AgentError as exc:
        print(f"edgewatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        return 130
    except sqlite3.Error as exc:
        print(f"edgewatch: error: database: {exc} (check --db names an edgewatch database "
              "you can read)", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"edgewatch: error:{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
