"""The codebase keeps the shape issue 8 gave it: small modules and functions, one owner for
each table's SQL, help text on every command (import cycles: test_imports.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[1] / "agent"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
# Fixed-cost statistics kernels and decoders: long because they are unrolled on purpose.
KERNELS = {"ImageStats.compute", "AnchorDecoder.__call__", "kolmogorov_sf", "radix_argsort"}
_SQL = re.compile(r"\b(SELECT\s+.+\s+FROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
                  r"CREATE\s+(TABLE|INDEX))\b", re.IGNORECASE | re.DOTALL)


def _modules() -> list[Path]:
    return sorted(p for p in AGENT.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    rel = path.relative_to(AGENT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(AGENT.parent)))
def test_module_is_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines; split it by concern"


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, ast.AST]]:
    out: list[tuple[str, ast.AST]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.ClassDef):
            out += _functions(node, f"{node.name}.")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append((prefix + node.name, node))
            out += _functions(node, f"{prefix}{node.name}.")
    return out


def test_functions_are_short() -> None:
    long = []
    for path in _modules():
        for name, node in _functions(ast.parse(path.read_text())):
            n = node.end_lineno - node.lineno + 1  # type: ignore[attr-defined]
            if n > MAX_FUNCTION_LINES and name not in KERNELS:
                long.append(f"{_name(path)}.{name} ({n} lines)")
    assert not long, "functions over 60 lines: " + ", ".join(long)


def test_sql_has_one_owner() -> None:
    owners = {
        "agent.store": "every device table but samples (the only writer: its storage thread)",
        "agent.samplestore": "the samples table (captured frames' metadata)",
        "agent.history": "read-only queries over a device database (report, model card)",
        "agent.central.store": "every central table",
    }
    strays = [f"{_name(p)}: {m.group(0)[:40]!r}" for p in _modules() if _name(p) not in owners
              for m in _SQL.finditer(p.read_text())]
    assert not strays, "SQL outside the table owners: " + "; ".join(strays)


def test_every_command_has_help() -> None:
    from agent.cli import _subparsers, build_parser

    parser = build_parser()
    missing = [p.prog for p in _subparsers(parser) if not (p.description or p.format_help().strip())]
    assert not missing
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for choice in action._choices_actions:
            assert choice.help, f"edgewatch {choice.dest} has no help text"
