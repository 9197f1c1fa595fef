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
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from agent.card import model_card
from agent.cli import main
from agent.config import load_config
from agent.history import Event, HeartbeatRow, History, SummaryWindow, monitoring_gaps
from agent.records import AlertTransition, Window
from agent.report import _svg, build_report, gather
from agent.report import diagnose as dg
from agent.report._data import MAX_THUMBS, drift_matrix
from agent.samplestore import read_samples, samples_dir
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
    assert "drastic: the scene got darker (brightness down" in night.summary, night.summary
    assert blur.cause == "camera fault" and "Fix the camera" in blur.action
    assert "brightness" in data.features and "top_score" in data.features


def test_dusk_is_diagnosed_gradual(scenario: Tuple[Path, Path], tmp_path: Path) -> None:
    """The light fades over two minutes (a real replay against the scenario's baseline, with
    the default one-minute windows: brightness 125 -> 98 -> 46 -> 19): one gradual episode,
    its size over the whole fade, the model's outputs lagging behind in the same episode."""
    cfg = tmp_path / "dusk.toml"
    cfg.write_text(scenario[0].read_text().replace(
        'reference = "baseline.npz"', f'reference = "{scenario[0].parent / "baseline.npz"}"')
        .replace("window_s = 2.0", "window_s = 60.0"))
    assert main(["replay", "emulated:dusk?seed=2&size=320x240&fps=15&onset=60&duration=300",
                 "--config", str(cfg)]) == 0
    data = gather(load_config(str(cfg)), str(tmp_path / "history.db"), None, None, now=0.0)
    assert {"data_drift", "prediction_drift"} <= {a.kind for a in data.alerts}
    assert len(data.episodes) == 1, [d.summary for _, d in data.episodes]
    ep, dusk = data.episodes[0]
    assert {"data_drift", "prediction_drift"} <= set(ep.kinds)
    assert (dusk.onset, dusk.magnitude) == ("gradual", "drastic"), dusk.summary
    assert "incrementally" in dusk.action
    assert "the scene got darker (brightness down" in dusk.summary


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


def test_the_windows_cover_every_replayed_frame(scenario: Tuple[Path, Path]) -> None:
    """The last, partial summary window is written when a replay ends (it was lost, so a
    replay shorter than two windows showed no drift in its report)."""
    with History(str(scenario[1])) as history:
        windows = history.windows()
        stops = [e for e in history.events() if e.kind == "stop"]
    replayed = [int(m.group(1)) for e in stops
                for m in [re.search(r"after (\d+) frames", e.message)] if m]
    assert len(replayed) == 2 and sum(replayed) > 0
    assert sum(w.frames for w in windows) == sum(replayed)


def test_the_period_runs_from_the_first_to_the_last_thing_recorded(
        scenario: Tuple[Path, Path]) -> None:
    """Samples, the stop event and open episodes end where the data ends, not at the last
    window; ``--since 2h`` starts the charts and heatmap at the first data, not 2 h back."""
    cfg, db = scenario
    with History(str(db)) as history:
        stops = [e.ts for e in history.events() if e.kind == "stop"]
        first = min(w.ts_start for w in history.windows())
    taken = [s.ts for s in read_samples(db)]
    data = gather(load_config(str(cfg)), str(db), first - 7200, None, now=1e10)
    assert data.span[0] == first
    assert data.span[1] >= max(taken) and data.span[1] >= max(stops)
    assert data.span[1] - first < 400  # a replay's start and stop are on its own clock
    assert data.stopped == max(stops)
    assert "stopped at" in build_report(load_config(str(cfg)), str(db))
    kept = sum(len(t) for t in data.thumbs.values())
    assert kept == sum(min(MAX_THUMBS, sum(s.reason == r for s in read_samples(db)))
                       for r in {s.reason for s in read_samples(db)})


def test_with_capture_off_the_advice_says_so(scenario: Tuple[Path, Path]) -> None:
    cfg, db = scenario
    config = load_config(str(cfg)).with_values(capture__enabled=False)
    data = gather(config, str(db), None, None, now=1e10)
    night = next(d for ep, d in data.episodes if "data_drift" in ep.kinds)
    assert "captured frames" not in night.action and "Capture is off" in night.action
    assert "[capture] enabled = true" in night.action
    assert "<b>Capture is off</b>" in build_report(config, str(db))


def test_an_altered_sample_file_is_not_shown_as_the_frame(scenario: Tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    """A JPEG changed since capture (its sha256 differs) is left out, said and counted."""
    cfg, db = scenario
    snap = tmp_path / "snap.db"
    assert main(["export", "--db", str(db), "--out", str(snap)]) == 0  # frames come along
    config = load_config(str(cfg))
    before = build_report(config, str(snap))
    shown = gather(config, str(snap), None, None, now=1e10).thumbs["alert"][0].sample
    altered = samples_dir(str(snap)) / shown.path
    altered.write_bytes(altered.read_bytes() + b"edited")
    after = build_report(config, str(snap))
    assert after.count("<img ") == before.count("<img ") - 1
    assert "file altered since capture" in after and "1 of them not shown" in after


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


def test_a_pulled_snapshot_shows_its_reference_without_the_config(
        scenario: Tuple[Path, Path], tmp_path: Path) -> None:
    """The replay kept the baseline file's reference in the database, once."""
    db = scenario[1]
    with History(str(db)) as history:
        kept = [r for r in history.references() if r.origin == "file"]
    assert len(kept) == 1  # two replays, one baseline: recorded once
    out = tmp_path / "card.md"
    assert main(["card", "--db", str(db), "--out", str(out)]) == 0
    text = out.read_text()
    assert "No reference yet" not in text and "baseline file" in text
    assert "emulated:stationary?seed=1" in text
    html = build_report(load_config({}), str(db))
    assert "<b>reference</b><br>none" not in html and 'class="band"' in html


@pytest.mark.integration
def test_card_and_report_print_no_runtime_noise(scenario: Tuple[Path, Path],
                                                tmp_path: Path) -> None:
    """A fresh process (the runtime logs its delegate once per process): stderr stays quiet."""
    import os
    import subprocess

    cfg, db = scenario
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for command, out in (("card", "c.md"), ("report", "r.html")):
        proc = subprocess.run([sys.executable, "-m", "agent.cli", command, "--config", str(cfg),
                               "--out", str(tmp_path / out)], capture_output=True, text=True,
                              env=env, timeout=300)
        assert proc.returncode == 0 and "XNNPACK" not in proc.stderr, proc.stderr
    card = (tmp_path / "c.md").read_text()
    assert "| metric | value |" in card and "|  | value |" not in card


def test_card_from_config_alone_says_what_is_missing(tmp_path: Path) -> None:
    text = model_card(load_config({"model": {"path": str(demo.blazeface_model_path())}}))
    assert "Not given: write `[model.card]`" in text and "No reference yet" in text
    assert "No alerts recorded." in text
    _check_markdown(text)


def test_report_of_a_missing_database_is_one_line(tmp_path: Path, capsys: Any) -> None:
    code = main(["report", "--db", str(tmp_path / "nope.db"), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "database not found" in err and "\n" not in err


def _one_line_error(capsys: Any, argv: List[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, (code, err)
    return err


def test_out_is_a_file_path_and_its_folders_are_made(scenario: Tuple[Path, Path],
                                                     tmp_path: Path, capsys: Any) -> None:
    cfg = str(scenario[0])
    for command in ("report", "card"):
        folder = tmp_path / command
        folder.mkdir()
        err = _one_line_error(capsys, [command, "--config", cfg, "--out", str(folder)])
        assert "error: --out" in err and "is a folder" in err, err
        assert list(folder.iterdir()) == [] and not list(tmp_path.glob("*.tmp"))
        out = tmp_path / "new" / command / "file.out"
        assert main([command, "--config", cfg, "--out", str(out)]) == 0
        assert out.stat().st_size > 0 and not list(out.parent.glob("*.tmp"))
    blocker = tmp_path / "plain"
    blocker.write_text("")
    err = _one_line_error(capsys, ["card", "--config", cfg, "--out", str(blocker / "x.md")])
    assert "--out" in err and "cannot write" in err, err


def test_card_without_config_or_database_is_an_error(tmp_path: Path, capsys: Any,
                                                     monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no edgewatch.toml here
    err = _one_line_error(capsys, ["card", "--out", "card.md"])
    assert "--config" in err and "--db" in err and not (tmp_path / "card.md").exists()


def test_an_inverted_period_is_an_error(scenario: Tuple[Path, Path], tmp_path: Path,
                                        capsys: Any) -> None:
    out = tmp_path / "r.html"
    err = _one_line_error(capsys, ["report", "--config", str(scenario[0]), "--since", "1h",
                                   "--until", "2h", "--out", str(out)])
    assert "--since 1h is not before --until 2h" in err and not out.exists()


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


def test_titles_fit_the_charts_and_counts_stay_above_zero(report_file: Path) -> None:
    few = _svg.heatmap(["brightness"], [0.0, 60.0, 120.0], [[1.0, 2.0]], 3.0,
                       "drift score: distance / threshold")  # a short replay: two columns
    html = report_file.read_text() + few
    heats = re.findall(r'<svg class="heatmap"[^>]*width="(\d+)".*?<text class="title" '
                       r'x="(\d+)"[^>]*>([^<]*)</text>', html, re.S)
    assert len(heats) == 2
    for width, x, title in heats:
        assert int(x) + 6 * len(title) <= int(width), (width, x, title)
    for name in ("overexposed", "motion", "underexposed"):
        chart = re.search(rf'aria-label="{name}">(.*?)</svg>', html, re.S)
        assert chart is not None, name
        low = re.findall(r'text-anchor="end">([-0-9.e]+)</text>', chart.group(1))[-1]
        assert float(low) >= 0, (name, low)
    assert "<th>window tested</th>" in html and "<th>timeframe</th>" not in html


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


def test_an_anomaly_episode_says_what_was_anomalous() -> None:
    said = ("anomalous frames: 100% of frames have a robust z-score over 8 (mostly brightness, "
            "contrast; expected under 50%) [against the training reference: x]")
    alert = replace(_alert("anomaly", 100.0, None, "outlier_frames"), message=said)
    summary = dg.diagnose(dg.episodes([alert], now=200.0)[0], 200.0).summary
    assert "moderate: 100% of frames have a robust z-score over 8 (mostly brightness" in summary
    assert "[against" not in summary


def test_a_step_within_long_windows_is_sudden() -> None:
    """With one-minute windows a step straddles one window: a minute's ramp is a step."""
    ep = replace(_episode(ramp=dg.SUDDEN_S * 1.5), resolution_s=dg.SUDDEN_S * 2)
    assert dg.diagnose(ep, NOW).onset == "sudden"
    assert dg.diagnose(replace(ep, ramp_s=dg.SUDDEN_S * 3), NOW).onset == "gradual"


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
                "host": {"cpu_percent": 25.0 + k, "max_temp_c": 61.5, "disk_free_mb": None},
                "queues": {"store": 0, "last_error": None},
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
    assert "<td>host: max temp</td><td>61.5 °C</td>" in html and "degraded" in html
    assert "<td>host: disk free</td><td>-</td>" in html
    assert "<td>store queue: last error</td><td>-</td>" in html
    assert "None" not in html.split("Device health")[-1].split("Model card")[0]
    assert html.count('<svg class="chart"') == 1 and 'class="heatmap"' in html
    assert html.count('<svg class="hchart"') == 3  # fps, CPU, temperature over time
