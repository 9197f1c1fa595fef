"""The report, the model card, the history queries and the diagnosis.

The report is built from a real replay (the real BlazeFace model on an emulated scene where
night falls, then the lens blurs; scripts/report_demo.py) and opened in Debian's headless
Chromium through Playwright: no console error, no request leaving the file, every chart and
thumbnail present, a screenshot that is not blank.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from agent.card import model_card
from agent.cli import main
from agent.config import load_config
from agent.history import Event, HeartbeatRow, History, SummaryWindow, monitoring_gaps
from agent.records import AlertTransition, Window
from agent.report import build_report, gather
from agent.report import diagnose as dg
from agent.report._data import MAX_THUMBS, drift_matrix
from agent.samplestore import read_samples
from agent.store import Store

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("report_demo", ROOT / "scripts/report_demo.py")
assert _spec is not None and _spec.loader is not None
demo = importlib.util.module_from_spec(_spec)
sys.modules["report_demo"] = demo
_spec.loader.exec_module(demo)


@pytest.fixture(scope="session")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    """(config, database) of a real replay: night falls, then the lens blurs; an ack by
    alice, a snooze by bob, captured frames (shared by every test here)."""
    cfg, db = demo.build_scenario(tmp_path_factory.mktemp("scenario"))
    return Path(cfg), Path(db)


@pytest.fixture(scope="session")
def report_file(scenario: Tuple[Path, Path]) -> Path:
    cfg, db = scenario
    out = db.parent / "report.html"
    assert main(["report", "--config", str(cfg), "--out", str(out)]) == 0
    return out


# -- the report from the real replay ----------------------------------------------------------

def test_the_replay_gives_the_report_what_it_shows(scenario: Tuple[Path, Path]) -> None:
    cfg, db = scenario
    data = gather(load_config(str(cfg)), str(db), None, None, now=1e10)
    kinds = {a.kind for a in data.alerts}
    assert {"data_drift", "camera_fault"} <= kinds, kinds
    assert len(data.episodes) >= 2  # night, then the blurred lens: two episodes
    night = next(d for ep, d in data.episodes if "data_drift" in ep.kinds)
    blur = next(d for ep, d in data.episodes if ep.camera_faults)
    assert night.cause == "scene change" and night.onset == "sudden" and "retrain" in night.action
    assert "brightness" in night.summary or "entropy" in night.summary
    assert blur.cause == "camera fault" and "Fix the camera" in blur.action
    assert "brightness" in data.features and "top_score" in data.features


def test_dusk_is_diagnosed_gradual(scenario: Tuple[Path, Path], tmp_path: Path) -> None:
    """The light fades over two minutes (a real replay against the scenario's baseline)."""
    cfg = tmp_path / "dusk.toml"
    cfg.write_text(scenario[0].read_text().replace(
        'reference = "baseline.npz"', f'reference = "{scenario[0].parent / "baseline.npz"}"')
        .replace("window_s = 2.0", "window_s = 5.0"))
    assert main(["replay", "emulated:dusk?seed=4&size=320x240&fps=15&onset=30&duration=200",
                 "--config", str(cfg)]) == 0
    data = gather(load_config(str(cfg)), str(tmp_path / "history.db"), None, None, now=0.0)
    drift = [d for ep, d in data.episodes if "data_drift" in ep.kinds]
    assert drift and drift[0].onset == "gradual", [d.summary for d in drift]
    assert "incrementally" in drift[0].action


def test_the_report_is_one_offline_file_of_a_few_mb(report_file: Path,
                                                     scenario: Tuple[Path, Path]) -> None:
    html = report_file.read_text()
    assert len(html.encode()) < 5_000_000
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert links and all(link.startswith("data:") for link in links), links[:3]
    assert "default-src 'none'" in html  # the page may not fetch anything
    for needed in ("acked by alice", "snoozed by bob", "What to do", "Model card",
                   hashlib.sha256(demo.blazeface_model_path().read_bytes()).hexdigest()):
        assert needed in html, needed
    samples = read_samples(scenario[1])
    reasons = {s.reason for s in samples}
    assert {"alert", "normal"} <= reasons  # the agent's capture kept both
    shown = sum(min(MAX_THUMBS, sum(s.reason == r for s in samples)) for r in reasons)
    assert html.count("<img ") == shown > 0


def test_since_and_until_narrow_the_report(scenario: Tuple[Path, Path]) -> None:
    cfg, db = scenario
    config = load_config(str(cfg))
    with History(str(db)) as history:
        first, last = history.span()
        everything = len(history.windows())
    assert first is not None and last is not None
    middle = (first + last) / 2
    data = gather(config, str(db), middle, None, now=last)
    assert 0 < len(data.windows) < everything
    assert all(w.ts_end >= middle for w in data.windows)
    assert "edgewatch report" in build_report(config, str(db), since=middle, until=last)


def test_history_reads_the_lifecycle_and_a_hole_between_replays(
        scenario: Tuple[Path, Path]) -> None:
    with History(str(scenario[1])) as history:
        alerts = history.alerts()
        windows = history.windows()
    assert any(a.acknowledged and a.acknowledged_by == "alice" for a in alerts)
    assert any(a.snoozed_until and a.snoozed_by == "bob" for a in alerts)
    gaps = monitoring_gaps([], [], None, windows)
    assert [g.state for g in gaps] == ["no data"]  # the 20 s between night and blur
    assert 15 <= gaps[0].end - gaps[0].start <= 25


def test_the_report_reads_a_live_database_and_a_pulled_snapshot(
        scenario: Tuple[Path, Path], tmp_path: Path) -> None:
    cfg, db = scenario
    config = load_config(str(cfg))
    snap = tmp_path / "snap.db"
    assert main(["export", "--db", str(db), "--out", str(snap)]) == 0
    pulled = build_report(config, str(snap))
    assert pulled.count('<svg class="chart"') > 10 and "acked by alice" in pulled
    with Store(str(snap), create=False, maintain=False) as store:  # a writer at work (WAL)
        store.put("windows", {"ts_start": 0.0, "ts_end": 1.0, "frames": 1, "camera": "c",
                              "summary": {}})
        live = build_report(config, str(snap))
    assert live.count('<svg class="chart"') == pulled.count('<svg class="chart"')


def test_the_card_records_model_reference_and_owner(scenario: Tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    cfg, db = scenario
    out = tmp_path / "MODEL_CARD.md"
    assert main(["card", "--config", str(cfg), "--db", str(db), "--out", str(out)]) == 0
    text = out.read_text()
    sha = hashlib.sha256(demo.blazeface_model_path().read_bytes()).hexdigest()
    for needed in (sha, "# Model card: doorbell faces 1.2", "| owner | home-ops |",
                   "emulated:stationary?seed=1", "| frames | 1200 |", "AP@0.5",
                   "no infrared night mode", "| input shape | 1, 128, 128, 3 |",
                   "auto (anchors)", "| data_drift | warning |"):
        assert needed in text, needed
    _check_markdown(text)


def _check_markdown(text: str) -> None:
    """Headings are ATX, every table row has as many cells as its header, tables end."""
    lines = text.splitlines()
    assert lines[0].startswith("# ")
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"\|(-+\|)+$", lines[i + 1]):
            cells = len(re.split(r"(?<!\\)\|", line))
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert len(re.split(r"(?<!\\)\|", lines[j])) == cells, lines[j]
                j += 1
            assert j == len(lines) or lines[j] == "", f"table not followed by a blank line: {j}"


def test_card_from_config_alone_says_what_is_missing(tmp_path: Path) -> None:
    text = model_card(load_config({"model": {"path": str(demo.blazeface_model_path())}}))
    assert "Not given: write `[model.card]`" in text and "No reference yet" in text
    assert "No alerts recorded." in text
    _check_markdown(text)


def test_report_of_a_missing_database_is_one_line(tmp_path: Path, capsys: Any) -> None:
    code = main(["report", "--db", str(tmp_path / "nope.db"), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "database not found" in err and "\n" not in err


# -- the report in a browser ------------------------------------------------------------------

@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium (Debian's) for the session, through Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                      args=demo.CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.integration
def test_the_report_opens_offline_in_chromium(browser: Any, report_file: Path,
                                              scenario: Tuple[Path, Path]) -> None:
    page = browser.new_page(viewport={"width": 1150, "height": 900})
    errors: List[str] = []
    requests: List[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(report_file.as_uri(), wait_until="load")
    data = gather(load_config(str(scenario[0])), str(scenario[1]), None, None, now=1e10)
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert page.locator("svg.chart").count() == len(data.features) > 10
    assert page.locator("svg.heatmap").count() == 1
    images = page.locator("img")
    assert images.count() == sum(len(t) for t in data.thumbs.values()) > 0
    loaded = page.evaluate("Array.from(document.images).every(i => i.complete && "
                           "i.naturalWidth > 0)")
    assert loaded
    assert page.locator("table").count() >= 3
    _assert_not_blank(page.screenshot(full_page=False))
    page.close()


def _assert_not_blank(png: bytes) -> None:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    assert pixels.std() > 20, f"screenshot looks blank (std {pixels.std():.1f})"


# -- the diagnosis, on hand-built episodes ----------------------------------------------------

def _episode(*, kinds: Tuple[str, ...] = ("data_drift",), shift: float = 10.0,
             ramp: Optional[float] = 30.0, end: Optional[float] = None,
             faults: Tuple[str, ...] = ()) -> dg.Episode:
    return dg.Episode(start=1000.0, end=end, kinds=kinds, shifts={"brightness": -shift},
                   ramp_s=ramp, camera_faults=faults)


NOW = 1000.0 + 2 * dg.TRANSIENT_S


@pytest.mark.parametrize("episode, onset, course, cause, magnitude, action", [
    (_episode(kinds=("camera_fault",), faults=("blur",), shift=0), "sudden", "persistent",
     "camera fault", "moderate", "Fix the camera"),
    (_episode(end=1000.0 + dg.TRANSIENT_S / 2), "sudden", "transient", "scene change", "drastic",
     "No action needed"),
    (_episode(ramp=dg.SUDDEN_S * 4), "gradual", "persistent", "scene change", "drastic",
     "update the model incrementally"),
    (_episode(shift=dg.DRASTIC_SD * 2), "sudden", "persistent", "scene change", "drastic",
     "retrain the model fully"),
    (_episode(shift=dg.DRASTIC_SD / 2), "sudden", "persistent", "scene change", "moderate",
     "the new normal is fine: rebaseline"),
    (_episode(kinds=("device_health",), shift=0, ramp=None), "unknown", "persistent", "device",
     "moderate", "Check the device"),
])
def test_diagnosis_follows_the_guide(episode: dg.Episode, onset: str, course: str, cause: str,
                                     magnitude: str, action: str) -> None:
    d = dg.diagnose(episode, NOW)
    assert (d.onset, d.course, d.cause, d.magnitude) == (onset, course, cause, magnitude)
    assert action in d.action


def test_diagnosis_names_features_and_how_far_they_moved() -> None:
    ep = dg.Episode(0.0, 100.0, ("data_drift",), {"brightness": -12.5, "contrast": 3.0}, 10.0, ())
    summary = dg.diagnose(ep, 200.0).summary
    assert "brightness down 12.5 robust SDs" in summary and "contrast up 3.0" in summary
    assert summary.index("brightness") < summary.index("contrast")


def _alert(kind: str, start: float, end: Optional[float], feature: str = "image",
           observed: Optional[Dict[str, Any]] = None,
           expected: Optional[Dict[str, Any]] = None) -> AlertTransition:
    return AlertTransition(
        id=f"{kind}-{start}", fingerprint=kind, seq=1, transition="firing",
        state="firing" if end is None else "resolved", ts=end or start, starts_at=start,
        ends_at=end, device="d", camera="c", kind=kind, severity="warning", feature=feature,
        metric="ks", value=1.0, threshold=0.5, expected=expected or {}, observed=observed or {},
        window=Window(start - 10, start, 300), model={}, message=f"{kind} alert",
        acknowledged=False, snoozed_until=None)


def test_episodes_split_by_start_and_read_the_signed_shift() -> None:
    drift = _alert("data_drift", 100.0, None,
                   observed={"features": {"brightness": {"mean": 20.0, "effect": 30.0}}},
                   expected={"brightness": {"p50": 120.0}})
    found = dg.episodes([drift, _alert("anomaly", 120.0, 200.0),
                      _alert("camera_fault", 500.0, None, "blur")], now=1000.0)
    assert [e.kinds for e in found] == [("data_drift", "anomaly"), ("camera_fault",)]
    assert found[0].shifts == {"brightness": -30.0} and found[0].end is None
    assert found[1].camera_faults == ("blur",)


def test_ramp_seconds_tells_a_step_from_a_ramp() -> None:
    times = [float(t) for t in range(0, 1200, 60)]
    step = [10.0 if t < 300 else 50.0 for t in times]
    ramp = [10.0 if t < 300 else min(50.0, 10.0 + (t - 300) / 15) for t in times]
    assert dg.ramp_seconds(times, step, (9, 11), 300) == 60.0
    took = dg.ramp_seconds(times, ramp, (9, 11), 400)
    assert took is not None and took > dg.SUDDEN_S
    assert dg.ramp_seconds(times, step, (40, 60), 100) is None  # never inside the band before


def test_monitoring_gaps_from_heartbeats_and_stops() -> None:
    def beat(ts: float, state: str) -> HeartbeatRow:
        return HeartbeatRow(ts, int(ts), state, {}, {}, {})

    beats = [beat(0, "active"), beat(30, "degraded"), beat(60, "degraded"), beat(90, "active")]
    events = [Event(100, "stop", ""), Event(400, "start", "")]
    windows = [SummaryWindow(0, 60, 900, "c", {}), SummaryWindow(600, 660, 900, "c", {})]
    gaps = monitoring_gaps(beats, events, None, windows)
    assert [(g.start, g.end, g.state) for g in gaps] == [
        (30, 90, "degraded"), (60, 600, "no data"), (100, 400, "stopped")]


def test_heartbeats_give_health_gaps_and_the_drift_scores_heatmap(tmp_path: Path) -> None:
    """A live agent's heartbeats (schema 3): drift scores, monitoring state, host health."""
    db = str(tmp_path / "h.db")
    with Store(db) as store:
        for k in range(10):
            state = "degraded" if 4 <= k < 7 else "active"
            store.put("heartbeats", {"ts": 1000.0 + 30 * k, "payload": {
                "ts": 1000.0 + 30 * k, "monitoring": {"state": state},
                "drift": {"brightness": 0.1 * k}, "drift_scores": {"brightness": 0.2 * k},
                "host": {"cpu_percent": 25.0 + k, "max_temp_c": 61.5},
                "camera": {"name": "c", "fps": 29.5}}})
            store.put("windows", {"ts_start": 1000.0 + 30 * k, "ts_end": 1030.0 + 30 * k,
                                  "frames": 900, "camera": "c",
                                  "summary": {"brightness": {"mean": 100.0 + k}}})
    config = load_config({"store": {"path": db}})
    data = gather(config, db, None, None, now=2000.0)
    assert [(g.start, g.end, g.state) for g in data.gaps] == [(1120.0, 1210.0, "degraded")]
    names, edges, matrix, unit = drift_matrix(data)
    assert names == ["brightness"] and unit.startswith("drift score")
    assert max(v for v in matrix[0] if v == v) == pytest.approx(1.8)
    html = build_report(config, db, now=2000.0)
    assert "host.max_temp_c" in html and "61.5" in html and "degraded" in html
    assert html.count('<svg class="chart"') == 1 and 'class="heatmap"' in html
    assert html.count('<svg class="hchart"') == 3  # fps, CPU, temperature over time
