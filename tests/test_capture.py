"""Captured samples: the samples table and files, and capture through the real loop."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any, Dict

import cv2
import numpy as np
import pytest

from agent.errors import StoreError
from agent.samplestore import SampleWriter, read_samples, samples_dir
from agent.store import SCHEMA_VERSION, Store


def _jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def _meta(ts: float, reason: str = "alert", **extra: Any) -> Dict[str, Any]:
    meta: Dict[str, Any] = {"ts": ts, "camera": "cam", "reason": reason, "width": 320,
                            "height": 240, "stats": {"brightness": np.float32(0.25)},
                            "confidence": {"top_score": 0.9},
                            "detections": [{"box": [0.1, 0.2, 0.3, 0.4], "score": 0.9,
                                            "class": 0}]}
    if reason == "alert":
        meta.update(alert_id="a1b2c3", kind="data_drift", feature="image")
    meta.update(extra)
    return meta


def test_a_sample_is_a_0640_file_and_a_row_read_back_whole(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    writer = SampleWriter(samples_dir(db), max_mb=5, normal_frames=3)
    jpeg = _jpeg(1)
    with Store(str(db)) as store:
        saved = writer.submit(store, jpeg, _meta(1000.5)).result(10)
    assert saved is not None
    (got,) = read_samples(db)
    assert got == saved
    assert got.reason == "alert" and got.alert_id == "a1b2c3" and got.kind == "data_drift"
    assert got.stats == {"brightness": 0.25} and got.detections[0]["box"] == [0.1, 0.2, 0.3, 0.4]
    file = samples_dir(db) / got.path
    assert file.read_bytes() == jpeg and got.sha256 == hashlib.sha256(jpeg).hexdigest()
    assert os.stat(file).st_mode & 0o777 == 0o640 and got.bytes == len(jpeg)
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_read_samples_filters_by_time_and_alert(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    writer = SampleWriter(samples_dir(db), max_mb=5, normal_frames=3)
    with Store(str(db)) as store:
        for i, alert in enumerate(["aaa111", "bbb222", "aaa111", None]):
            meta = _meta(100.0 + i, alert_id=alert) if alert else _meta(100.0 + i, "normal")
            writer.submit(store, _jpeg(i), meta).result(10)
    assert [s.ts for s in read_samples(db, alert_id="aaa")] == [100.0, 102.0]
    assert [s.ts for s in read_samples(db, since=101, until=102)] == [101.0, 102.0]
    assert [s.reason for s in read_samples(db, limit=1)] == ["alert"]
    with pytest.raises(StoreError, match="database not found"):
        read_samples(tmp_path / "missing.db")


def test_oldest_samples_go_first_over_max_mb_and_normal_frames_roll(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    folder = tmp_path / "kept"
    writer = SampleWriter(folder, max_mb=1, normal_frames=2)
    with Store(str(db)) as store:
        for i in range(30):
            writer.submit(store, _jpeg(i), _meta(1000.0 + i, "normal" if i % 3 == 0 else
                                                 "alert")).result(10)
    kept = read_samples(db)
    assert sum(s.bytes for s in kept) <= 1024 * 1024
    assert kept[-1].ts == 1029.0 and kept[0].ts > 1000.0  # the oldest went
    assert len([s for s in kept if s.reason == "normal"]) <= 2
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    assert files == sorted(s.path for s in kept)  # no file without a row, no row without a file
    assert writer.counts["evicted"] == 30 - len(kept)


def test_a_database_from_before_samples_has_none(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE windows (id INTEGER PRIMARY KEY); PRAGMA user_version=3;")
    conn.close()
    assert read_samples(db) == []


def test_bad_sample_fields_are_refused(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    writer = SampleWriter(samples_dir(db), max_mb=5, normal_frames=3)
    with Store(str(db)) as store:
        with pytest.raises(ValueError, match="reason 'maybe'"):
            writer.submit(store, _jpeg(0), _meta(1.0, "maybe")).result(10)
        with pytest.raises(ValueError, match="unknown sample fields"):
            writer.submit(store, _jpeg(0), _meta(1.0, colour="red")).result(10)
    assert read_samples(db) == []
