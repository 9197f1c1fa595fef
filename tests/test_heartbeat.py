"""Heartbeat schema 3: measured fps, frames dropped, drift scores and the flat summary.

The heartbeats come from a real agent fed the emulated night scene through the real model:
warm-up learns a reference, night falls at 60 s of frame time and data drift fires.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from running import fast_config, feed_until

from agent.central.records import Heartbeat as CentralHeartbeat
from agent.central.records import parse
from agent.records import KINDS
from agent.service import Agent
from agent.stats import IMAGE_FEATURES

NIGHT = "emulated:night?seed=4&size=320x240&onset=60&duration=200"


def data_drift_open_and_fps_measured(agent: Agent) -> bool:
    kinds = [a["kind"] for a in agent.monitor.snapshot()["alerts_open"]]
    return agent.heartbeats.rate.fps is not None and "data_drift" in kinds


def stored_heartbeats(db: str) -> List[Dict[str, Any]]:
    conn = sqlite3.connect(db)
    try:
        return [json.loads(r[0]) for r in conn.execute("SELECT payload FROM heartbeats")]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Dict[str, Any]]:
    """The heartbeat once night has raised data drift, the thresholds, and the stored beats."""
    db = str(tmp_path_factory.mktemp("hb") / "hb.db")
    fed = feed_until(fast_config(db, str(model_path)), NIGHT, data_drift_open_and_fps_measured)
    try:
        beat = fed.agent.heartbeat().to_dict()
        reference = fed.agent.monitor.snapshot()["reference"]
    finally:
        fed.agent.close()
    yield {"beat": beat, "thresholds": reference["thresholds"], "stored": stored_heartbeats(db),
           "frames": fed.frames}


def test_schema_3_adds_fps_dropped_drift_scores_and_summary(night: Dict[str, Any]) -> None:
    beat = night["beat"]
    assert beat["schema"] == 3
    assert {"drift_scores", "summary"} <= set(beat)
    cam = beat["camera"]
    assert cam["fps"] > 0 and cam["dropped"] == 0  # a clean feed loses nothing
    assert cam["frames"] == night["frames"]
    # The worker's own beats carry the fps it measured on its tick.
    assert any((h["camera"].get("fps") or 0) > 0 for h in night["stored"])


def test_drift_scores_are_each_distance_over_its_threshold(night: Dict[str, Any]) -> None:
    beat, thresholds = night["beat"], night["thresholds"]
    scores, distances = beat["drift_scores"], beat["drift"]
    assert scores and set(scores) == set(distances)
    for feature, score in scores.items():
        expected = distances[feature] / thresholds[feature]["threshold"]
        if feature in IMAGE_FEATURES:  # never missing: tested at the calibrated threshold
            assert score == pytest.approx(expected, rel=2e-3, abs=2e-4), feature
        else:  # a window with missing values (no detection at night) is held to a higher one
            assert 0 <= score <= expected * 1.002 + 2e-4, feature
    assert max(scores.values()) >= 1  # night: some image statistic is over its threshold


def test_summary_is_the_flat_block_home_assistant_reads(night: Dict[str, Any]) -> None:
    beat = night["beat"]
    summary = beat["summary"]
    assert summary["fps"] == beat["camera"]["fps"]
    assert summary["brightness"] == beat["stats"]["brightness"]
    assert summary["top_score"] == beat["confidence"]["top_score"]
    scores = beat["drift_scores"]
    assert summary["worst_drift"] == max(scores.values())
    assert scores[summary["worst_drift_feature"]] == summary["worst_drift"]
    assert summary["worst_drift"] >= 1  # night: over its threshold
    assert summary["monitoring"] == beat["monitoring"]["state"] == "active"
    assert set(summary["problems"]) == set(KINDS)
    open_kinds = {a["kind"] for a in beat["alerts_open"]}
    assert summary["problems"] == {kind: kind in open_kinds for kind in KINDS}
    assert summary["problems"]["data_drift"] is True


def test_the_central_reads_a_schema_3_heartbeat_and_its_fps(night: Dict[str, Any]) -> None:
    beat = night["beat"]
    record = parse("edgewatch/v1", f"edgewatch/v1/{beat['device']}/heartbeat",
                   json.dumps(beat).encode())
    assert isinstance(record, CentralHeartbeat)
    assert record.fps == beat["camera"]["fps"]


def test_before_any_drift_test_scores_are_empty_and_fps_unknown(tmp_path: Path,
                                                                model_path: Path) -> None:
    cfg = fast_config(str(tmp_path / "h.db"), str(model_path))
    fed = feed_until(cfg, "emulated:stationary?seed=3&size=320x240&duration=2", lambda a: False)
    try:
        beat = fed.agent.heartbeats.current().to_dict()
    finally:
        fed.agent.close()
    assert beat["drift_scores"] == {} and beat["summary"]["worst_drift"] is None
    assert beat["summary"]["worst_drift_feature"] is None
    assert beat["summary"]["monitoring"] == "warming_up"
    assert not any(beat["summary"]["problems"].values())


def test_dropped_counts_bad_frames_and_files_the_source_skipped(tmp_path: Path, model_path: Path,
                                                               astronaut: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        shutil.copy(astronaut, folder / f"{i}.png")
    (folder / "1a.png").write_bytes(b"not a png")  # unreadable: skipped by the source
    cfg = fast_config(str(tmp_path / "h.db"), str(model_path))
    fed = feed_until(cfg, str(folder), lambda a: False)
    try:
        fed.agent.monitor.observe(None)  # an unusable frame
        dropped = fed.agent.heartbeats.dropped()
        beat = fed.agent.heartbeat().to_dict()
    finally:
        fed.agent.close()
    assert fed.frames == 3
    assert dropped == {"bad_frame": 1, "source": 1}
    assert beat["camera"]["dropped"] == 2
