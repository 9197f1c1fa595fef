"""The README's code runs as written.

Every fenced block in README.md is tagged by the HTML comment on the line before it:
``<!-- test: NAME -->`` (run here) or ``<!-- not tested: WHY -->``. Tested blocks run in
README order in one scratch folder laid out like a checkout after ``make install`` (``models/``,
``scripts/``, ``configs/``, ``.venv``), so later examples use what earlier ones made (the
baseline): Python blocks as scripts, shell blocks with ``bash -e``, ``file PATH`` blocks are
saved there, and data blocks are checked against the code (a config loads, the alert record
is what ``AlertTransition.to_dict`` writes).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Set
from urllib.parse import parse_qs, urlsplit

import pytest

from agent.central.config import load_central_config
from agent.config import load_config, tomllib
from agent.records import AlertTransition

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TAG = re.compile(r"^<!-- (test(?:: (?P<name>[^>]+?))?|not tested: (?P<why>[^>]+?)) -->$")
CHECKOUT = ("agent", "configs", "models", "scripts", "systemd", "pyproject.toml", "Makefile")
ONSET_S = 60.0  # the examples' emulated night falls this far into the clip


@dataclass(frozen=True)
class Block:
    """One fenced block: where it starts, its language, its tag line and its text."""

    line: int
    lang: str
    tag: str
    body: str

    @property
    def name(self) -> str:
        """The tested block's name (``test: NAME``), else ''."""
        m = TAG.match(self.tag)
        return (m.group("name") or f"line {self.line}") if m and m.group(1).startswith("test") \
            else ""


def blocks(text: str) -> List[Block]:
    """Every fenced block of ``text``, with the line before it as its tag."""
    out: List[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            tag = lines[i - 1].strip() if i else ""
            out.append(Block(i + 1, lines[i][3:].strip(), tag, "\n".join(lines[i + 1:end]) + "\n"))
            i = end
        i += 1
    return out


BLOCKS = blocks(README.read_text(encoding="utf-8"))
TESTED = [b for b in BLOCKS if b.name]


def test_every_block_says_whether_it_is_tested() -> None:
    untagged = [f"README.md:{b.line}" for b in BLOCKS if not TAG.match(b.tag)]
    assert not untagged, ("fenced blocks without <!-- test: NAME --> or "
                          f"<!-- not tested: WHY --> before them: {', '.join(untagged)}")
    assert len({b.name for b in TESTED}) == len(TESTED), "two tested blocks share a name"


def test_the_blocks_that_matter_are_tested() -> None:
    names = {b.name for b in TESTED}
    assert {"replay", "hook", "install dry run"} <= names
    assert all(b.lang != "python" for b in BLOCKS if not b.name), "every Python example runs"

def test_the_stack_demo_shows_drift_after_its_reference() -> None:
    """The stack's night falls well after the reference is learnt, or no drift ever shows."""
    block = next(b for b in BLOCKS if b.name == "file stack.toml")
    config = tomllib.loads(block.body)
    drift = config.get("drift", {})
    learnt_s = float(drift.get("warmup_s", 300.0))
    if drift.get("reference"):
        learnt_s = float(drift.get("calibration_s", 300.0))
    fps = float(config["source"]["fps"])
    assert learnt_s * fps >= 2 * int(drift.get("window_frames", 900)), \
        "the warm-up must hold two drift windows"
    onset = float(parse_qs(urlsplit(config["source"]["uri"]).query)["onset"][0])
    assert onset >= learnt_s + 60, (f"night falls at {onset:.0f} s, the reference is learnt "
                                    f"until {learnt_s:.0f} s: the reference would include it")



class Checkout:
    """The scratch folder the examples run in, and which blocks have run there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: Set[int] = set()
        self.output: Dict[str, str] = {}

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(":")
        return env

    def run_through(self, block: Block) -> str:
        """Run every tested block up to ``block`` not run yet, in README order; its output."""
        for earlier in TESTED[:TESTED.index(block) + 1]:
            if earlier.line not in self.done:
                self.output[earlier.name] = self._run(earlier)
                self.done.add(earlier.line)
        return self.output[block.name]

    def _run(self, block: Block) -> str:
        if block.name.startswith("file "):
            (self.path / block.name[len("file "):]).write_text(block.body)
            return ""
        if block.lang == "python":
            script = self.path / f"readme_{block.line}.py"
            script.write_text(block.body)
            argv = [sys.executable, str(script)]
        elif block.lang == "sh":
            argv = ["bash", "-e", "-o", "pipefail", "-c", block.body]
        else:
            return block.body
        proc = subprocess.run(argv, cwd=self.path, env=self.env(), capture_output=True, text=True,
                              timeout=600)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"README.md:{block.line} ({block.name}) failed:\n{out[-3000:]}"
        return out


@pytest.fixture(scope="session")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkout]:
    """A checkout after ``make install``: the repository's files and the venv running the tests."""
    path = tmp_path_factory.mktemp("readme")
    for name in CHECKOUT:
        (path / name).symlink_to(ROOT / name)
    venv = path / ".venv"
    if sys.prefix != sys.base_prefix:  # the venv `make install` made (or the one running us)
        venv.symlink_to(sys.prefix)
    else:  # tests run outside a venv: an activate that puts this Python's scripts on PATH
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "activate").write_text(
            f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    yield Checkout(path)


def _alerts(db: Path) -> List[Dict[str, object]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT payload FROM alerts").fetchall()
        first = conn.execute("SELECT MIN(ts_start) FROM windows").fetchone()[0]
    finally:
        conn.close()
    return [dict(json.loads(r[0]), since_start=json.loads(r[0])["starts_at"] - first)
            for r in rows]


def _night_alerted_and_nothing_before(db: Path) -> None:
    alerts = _alerts(db)
    early = [(a["kind"], a["feature"], round(float(str(a["since_start"])))) for a in alerts
             if float(str(a["since_start"])) < ONSET_S]
    assert not early, f"alerts before night fell (kind, feature, s into the clip): {early}"
    assert any(a["kind"] == "data_drift" for a in alerts), f"night not alerted: {alerts}"


@pytest.mark.integration
@pytest.mark.parametrize("block", TESTED, ids=[b.name for b in TESTED])
def test_readme_block_runs_as_written(checkout: Checkout, block: Block) -> None:
    out = checkout.run_through(block)
    if block.name.startswith("file ") and block.lang == "toml":
        assert load_config(checkout.path / block.name[len("file "):]).model.path
    elif block.name == "central config":
        path = checkout.path / "central.toml"
        path.write_text(block.body)
        assert load_central_config(str(path)).mqtt.protocol == "5"
    elif block.name == "alert record":
        record = json.loads(block.body)
        assert AlertTransition.from_dict(record).to_dict().keys() == record.keys()
    elif block.name == "replay":
        assert "baseline: " in out and "-> baseline.npz" in out
        _night_alerted_and_nothing_before(checkout.path / "replay.db")
    elif block.name == "hook":
        # a new user who copies it sees the alert in the log, not silence
        assert "WARNING agent.service: alert firing [data_drift/" in out, out[-3000:]
        _night_alerted_and_nothing_before(checkout.path / "edgewatch.db")
    elif block.name == "samples":
        assert "alert" in out and "data_drift" in out, out[-3000:]
        doc = json.loads((checkout.path / "to-label" / "annotations.json").read_text())
        assert doc["images"] and [c["name"] for c in doc["categories"]] == ["face"]
        yolo = checkout.path / "yolo"
        assert len(list((yolo / "images").glob("*.jpg"))) == len(doc["images"])
    elif block.name == "report":
        card = (checkout.path / "MODEL_CARD.md").read_text()
        assert "# Model card: doorbell faces 1.2" in card and "| owner | home-ops |" in card
        html = (checkout.path / "report.html").read_text()
        assert "Model card: doorbell faces" in html and '<svg class="chart"' in html
    elif block.name == "install dry run":
        assert "dry run finished, nothing was changed" in out
