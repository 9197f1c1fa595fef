"""The command line's boundary: one line per error with the right exit code, options where
people type them, output helpers for people."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.cli._format import Progress, duration, local_time, safe_text, table
from agent.store import Store


def _db(tmp_path: Path) -> Path:
    path = tmp_path / "edgewatch.db"
    Store(str(path)).start().close()
    return path


@pytest.mark.parametrize("argv", [
    ["--log-level", "DEBUG", "status", "--db", "{db}"],
    ["status", "--db", "{db}", "--log-level", "DEBUG"],
    ["status", "--log-level", "debug", "--db", "{db}"],
    ["alerts", "list", "--db", "{db}", "--log-level", "DEBUG"],
])
def test_log_level_is_accepted_before_and_after_the_command(tmp_path: Path, argv: list[str],
                                                            capsys: Any) -> None:
    db = str(_db(tmp_path))
    before = logging.getLogger().level
    try:
        assert main([a.replace("{db}", db) for a in argv]) == 0
        assert logging.getLogger().level == logging.DEBUG
    finally:
        logging.getLogger().setLevel(before)


def test_a_bad_log_level_is_a_usage_error(tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["status", "--db", str(_db(tmp_path)), "--log-level", "LOUD"])
    assert exc.value.code == 2
    assert "'LOUD' is not one of DEBUG, INFO, WARNING, ERROR" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["status"], ["alerts", "list"], ["export", "--out", "x.db"]])
def test_database_errors_are_one_line(tmp_path: Path, argv: list[str], capsys: Any) -> None:
    """A file that is no edgewatch database: one line naming it, never a traceback."""
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    code = main([*argv, "--db", str(foreign)] if argv[0] != "export" else
                [*argv[:1], "--db", str(foreign), "--out", str(tmp_path / "x.db")])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("edgewatch: error:"), err
    assert "Traceback" not in err and "free space" not in err


def test_no_command_prints_help_and_exits_2(capsys: Any) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_output_helpers_for_people() -> None:
    assert duration(150) == "2m 30s" and duration(3600 * 3 + 300) == "3h 5m"
    assert duration(None) == "-" and duration(float("nan")) == "-"
    assert local_time(0.0).startswith("1970-01-01") and local_time(None) == "-"
    assert safe_text("a\x1b[2Jb\nc") == "a\\x1b[2Jb\\x0ac"
    text = table([{"a": "x", "bb": 1.23456}, {"a": "longer", "bb": None}], ["a", "bb"])
    head, first, second = text.splitlines()
    assert head.split() == ["A", "BB"] and first.split() == ["x", "1.235"]
    assert second.split() == ["longer", "-"] and len(head) <= len(second) + 2


def test_progress_prints_lines_when_not_a_terminal(tmp_path: Path) -> None:
    with (tmp_path / "log.txt").open("w+") as out:
        progress = Progress("replay", total=10, stream=out, every_s=0.0)
        for i in range(1, 11):
            progress.update(i)
        progress.close()
        out.seek(0)
        lines = out.read().splitlines()
    assert lines and lines[-1].startswith("replay: 10/10 (100%")
