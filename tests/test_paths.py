"""A slice of bench/bench_paths.py's matrix: every user path and every reference, one change each.

Real parts throughout: the BlazeFace model, emulated feeds, ``edgewatch baseline`` run as a
user runs it, SQLite read back. Each path and reference is prepared once per session (the
warm-up or calibration on the unchanged scene, which must raise no alert) and every change
starts from a copy of that SQLite file, in frame time (no sleeps, no wall-clock waits).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_paths as bp  # type: ignore[import-not-found]  # noqa: E402

pytestmark = pytest.mark.integration  # `edgewatch baseline` runs in a child process

Prepared = Tuple[Path, str]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Dict[Tuple[str, str], Prepared]:
    """Per (path, reference): its prepared SQLite file and reference file, made on first use."""
    return {}


def cell(prepared: Dict[Tuple[str, str], Prepared], tmp_path_factory: pytest.TempPathFactory,
         path: str, ref: str, scenario: str) -> bp.Outcome:
    workdir = tmp_path_factory.getbasetemp() / "paths"
    workdir.mkdir(exist_ok=True)
    if (path, ref) not in prepared:
        bp.set_start(float(int(bp.time.time())) + 60.0)
        db, reference, why = bp.prepare(path, ref, workdir)
        assert db is not None, f"{path} x {ref}: {why}"
        alerts = [a for a in bp.read_alerts(db, bp.START_TS) if a["kind"] not in bp.HOST_KINDS]
        assert alerts == [], f"{path} x {ref}: alerts on the unchanged scene: {alerts}"
        prepared[(path, ref)] = (db, reference)
    db, reference = prepared[(path, ref)]
    return bp.run_cell(path, ref, scenario, db, reference, workdir, seed=31)


@pytest.mark.parametrize("path, ref, scenario", [
    ("replay", "warmup", "night"),     # bug 5: brightness named first
    ("wrap", "video", "dusk"),         # within 30 s of the ramp's start; dimmer is not blur
    ("observe", "training", "blur"),  # blur is still blur
    ("wrap", "video", "fog"),          # a hazier scene is not blur (the model-input view)
    ("run", "warmup", "frozen"),       # the owned loop on a synthetic clock
])
def test_each_path_and_reference_alerts_the_change_and_names_it(
        prepared: Dict[Tuple[str, str], Prepared], tmp_path_factory: pytest.TempPathFactory,
        path: str, ref: str, scenario: str) -> None:
    got = cell(prepared, tmp_path_factory, path, ref, scenario)
    problems = got.problems  # includes "late:" past the deadline (dusk: 30 s of its ramp)
    assert not problems, f"{path} x {ref} x {scenario}: {problems}; alerts {got.alerts}"
    if scenario == "night":
        assert got.named == "brightness"


def test_make_run_is_quiet_until_night_falls_then_names_brightness(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``make run``'s config, replayed in frame time: no WARNING before night, then brightness."""
    from agent.config import load_config
    from agent.loop import replay
    from agent.sources import open_source

    cfg = load_config(bp.REPO / "configs" / "emulated.toml").with_values(
        store__path=str(tmp_path / "run.db"), model__path=bp.model_path(),
        health__enabled=False)
    onset = 180.0
    assert f"onset={onset:g}" in cfg.source.uri
    start = float(int(bp.time.time())) + 60.0
    with caplog.at_level("WARNING"):
        replay(cfg, open_source(cfg.source.uri + "&duration=250"), start_ts=start)
    warnings = [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert warnings and warnings[0].startswith("alert firing"), warnings[:3]
    alerts = [a for a in bp.read_alerts(tmp_path / "run.db", start)]
    assert alerts and min(a["fired"] for a in alerts) >= start + onset, alerts
    drift = [a for a in alerts if a["kind"] == "data_drift"]
    assert drift and drift[0]["named"][0] == "brightness", drift
