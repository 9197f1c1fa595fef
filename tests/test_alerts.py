"""Alert lifecycle: pending, firing, repeat, resolve with hysteresis, controls, restart."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Optional, Tuple

import pytest

from agent.alerts import AlertManager, AlertTransition, Observation, fingerprint
from agent.errors import CommandError
from agent.records import Window


def obs(value: float, *, kind: str = "data_drift", feature: str = "brightness", for_s: float = 10,
        clear_for_s: float = 20, threshold: float = 0.3, severity: str = "warning") -> Observation:
    return Observation(kind=kind, feature=feature, metric="ks", value=value, threshold=threshold,
                       severity=severity,
                       breach=value > threshold, clear=value < 0.7 * threshold,
                       summary=f"{feature} drifted: KS {value:.2f}", for_s=for_s,
                       clear_for_s=clear_for_s, window=Window(0.0, 30.0, 900))


class Recorder:
    def __init__(self) -> None:
        self.records: List[Dict[str, Any]] = []
        self.controls: Dict[Tuple[str, str], Tuple[Optional[float], Optional[float]]] = {}

    def emit(self, rec: AlertTransition) -> None:
        self.records.append({**rec.to_dict(), "notify": rec.notify})

    def persist(self, kind: str, target: str, until: Optional[float], value: Optional[float]) -> None:
        if until is None and value is None:
            self.controls.pop((kind, target), None)
        else:
            self.controls[(kind, target)] = (until, value)

    def manager(self, repeat: float = 100.0) -> AlertManager:
        return AlertManager(device="dev1", camera="cam0", model={"path": "m", "sha256": "abc"},
                            emit=self.emit, repeat_interval_s=repeat, persist_control=self.persist)


def transitions(rec: Recorder) -> List[str]:
    return [r["transition"] for r in rec.records if r.get("notify", True)]


def test_fires_only_after_for_duration_then_repeats_and_resolves_with_hysteresis() -> None:
    rec = Recorder()
    m = rec.manager(repeat=100)
    m.update([obs(0.5)], now=0)
    m.update([obs(0.5)], now=5)
    assert transitions(rec) == []  # pending: for_s=10 not reached
    m.update([obs(0.5)], now=10)
    assert transitions(rec) == ["firing"]
    first = rec.records[-1]
    assert first["state"] == "firing" and first["starts_at"] == 0
    assert "since" in first["message"] and "900 frames" in first["message"]
    # between clear and threshold: stays firing (hysteresis), no resolve
    m.update([obs(0.25)], now=50)
    m.update([obs(0.25)], now=80)
    assert transitions(rec) == ["firing"]
    m.update([obs(0.5)], now=111)
    assert transitions(rec) == ["firing", "repeat"]
    m.update([obs(0.1)], now=120)
    m.update([obs(0.1)], now=130)
    assert transitions(rec)[-1] == "repeat"  # clear for 10 s < clear_for_s 20
    m.update([obs(0.1)], now=140)
    assert transitions(rec)[-1] == "resolved"
    last = rec.records[-1]
    assert last["state"] == "resolved" and last["ends_at"] == 140 and last["id"] == first["id"]
    assert [r["seq"] for r in rec.records] == [1, 2, 3]
    assert m.open_alerts() == []


def test_blip_shorter_than_for_does_not_fire() -> None:
    rec = Recorder()
    m = rec.manager()
    for t, v in [(0, 0.5), (5, 0.5), (8, 0.1), (12, 0.5), (20, 0.5)]:
        m.update([obs(v)], now=t)
    assert transitions(rec) == []


def test_one_fingerprint_per_kind_camera_feature() -> None:
    assert fingerprint("data_drift", "cam0", "brightness") != fingerprint("data_drift", "cam0", "contrast")
    assert fingerprint("data_drift", "cam0", "brightness") == fingerprint("data_drift", "cam0", "brightness")


def test_critical_camera_fault_inhibits_drift_warning_does_not() -> None:
    rec = Recorder()
    m = rec.manager()
    fault = obs(1.0, kind="camera_fault", feature="black_frames", for_s=0, severity="critical")
    m.update([fault], now=0)
    m.update([fault, obs(0.9, for_s=0)], now=5)
    assert [r["kind"] for r in rec.records] == ["camera_fault"]
    rec2 = Recorder()
    m2 = rec2.manager()
    blur = obs(1.0, kind="camera_fault", feature="blur", for_s=0, severity="warning")
    m2.update([blur], now=0)
    m2.update([blur, obs(0.9, for_s=0)], now=5)
    assert [r["kind"] for r in rec2.records] == ["camera_fault", "data_drift"]


def test_ack_suppresses_repeats_until_resolved() -> None:
    rec = Recorder()
    m = rec.manager(repeat=10)
    m.update([obs(0.5, for_s=0)], now=0)
    alert_id = rec.records[-1]["id"]
    m.ack(alert_id)
    m.update([obs(0.5, for_s=0)], now=50)
    assert transitions(rec) == ["firing"]
    assert ("ack", fingerprint("data_drift", "cam0", "brightness")) in rec.controls
    with pytest.raises(CommandError, match="no firing alert"):
        m.ack("nope")


def test_snooze_delays_notification_until_it_ends() -> None:
    rec = Recorder()
    m = rec.manager()
    m.snooze("data_drift", until=100)
    m.update([obs(0.5, for_s=0)], now=0)
    assert transitions(rec) == []
    assert rec.records and rec.records[-1]["notify"] is False  # stored, not notified
    m.tick(now=101)
    assert transitions(rec) == ["firing"]


def test_disable_resolves_and_blocks_enable_restores() -> None:
    rec = Recorder()
    m = rec.manager()
    m.declare_features({"brightness"})
    m.update([obs(0.5, for_s=0)], now=0)
    m.disable("brightness", now=1)
    assert transitions(rec) == ["firing", "resolved"]
    m.update([obs(0.5, for_s=0)], now=2)
    assert transitions(rec) == ["firing", "resolved"]
    m.enable("brightness")
    m.update([obs(0.5, for_s=0)], now=3)
    assert transitions(rec)[-1] == "firing"
    with pytest.raises(CommandError, match="unknown kind or feature"):
        m.disable("nonsense", now=4)


def test_restart_keeps_open_alerts_controls_and_sequence() -> None:
    rec = Recorder()
    m = rec.manager()
    m.update([obs(0.5, for_s=0)], now=0)
    m.set_threshold("brightness", 0.4)
    m.snooze("contrast", until=1000)
    open_alerts = [a.to_dict() for a in m.open_alerts()]
    controls = [{"kind": k, "target": t, "until": u, "value": v} for (k, t), (u, v) in rec.controls.items()]
    rec2 = Recorder()
    m2 = rec2.manager()
    m2.restore(open_alerts, controls, seq=m.seq)
    assert m2.threshold_override("brightness") == 0.4
    assert m2.controls()["snoozed"] == {"contrast": 1000.0}
    m2.update([obs(0.1, clear_for_s=0)], now=10)
    assert [r["transition"] for r in rec2.records] == ["resolved"]
    assert rec2.records[0]["id"] == open_alerts[0]["id"]
    assert rec2.records[0]["seq"] == m.seq + 1


def test_disable_drops_a_pending_condition_so_enable_waits_the_full_for() -> None:
    rec = Recorder()
    m = rec.manager()
    m.update([obs(0.5, for_s=10)], now=0)  # pending since 0
    assert m.pending() == {("data_drift", "brightness"): 0}
    m.disable("brightness", now=5)
    assert m.pending() == {}
    m.enable("brightness")
    m.update([obs(0.5, for_s=10)], now=12)  # the old wait (since 0) must not count
    assert transitions(rec) == []
    m.update([obs(0.5, for_s=10)], now=22)
    assert transitions(rec) == ["firing"] and rec.records[-1]["starts_at"] == 12


def test_disabling_a_kind_drops_its_pending_conditions_only() -> None:
    rec = Recorder()
    m = rec.manager()
    m.update([obs(0.5), obs(0.5, kind="anomaly", feature="outlier_frames")], now=0)
    m.disable("data_drift", now=1)
    assert m.pending() == {("anomaly", "outlier_frames"): 0}


def test_transition_record_is_the_readme_json() -> None:
    rec = Recorder()
    m = rec.manager()
    m.update([obs(0.5, for_s=0)], now=0)
    record = m.open_alerts()[0].to_dict()
    assert list(record) == [
        "schema", "id", "fingerprint", "seq", "transition", "state", "ts", "starts_at",
        "ends_at", "device", "camera", "kind", "severity", "feature", "metric", "value",
        "threshold", "expected", "observed", "window", "model", "message", "acknowledged",
        "snoozed_until", "acknowledged_by", "acknowledged_at", "snoozed_by", "reference"]
    assert record["window"] == {"start": 0.0, "end": 30.0, "frames": 900}
    assert AlertTransition.from_dict(record).to_dict() == record


def test_controls_republish_the_alert_state_with_who_and_when() -> None:
    rec = Recorder()
    updates: List[Dict[str, Any]] = []
    m = AlertManager(device="cam-a", camera="cam0", model={}, emit=rec.emit,
                     persist_control=rec.persist, update=lambda r: updates.append(r.to_dict()))
    m.declare_features(["brightness", "contrast"])
    m.update([obs(0.5, for_s=0)], now=0)
    alert = rec.records[-1]
    short = alert["id"][:12]  # the id every view shows is what every control takes
    assert m.ack(short, by="ops@desk", now=5.0) == {
        "acknowledged": short, "fingerprint": alert["fingerprint"], "by": "ops@desk", "at": 5.0}
    assert [(u["seq"], u["acknowledged"], u["acknowledged_by"], u["acknowledged_at"])
            for u in updates] == [(alert["seq"], True, "ops@desk", 5.0)]
    # Idempotent: a second ack changes nothing and says who acknowledged first.
    assert m.ack(alert["id"], by="someone@else", now=9.0)["by"] == "ops@desk"
    assert len(updates) == 1
    m.snooze(short, until=3600.0, by="night@shift", now=10.0)
    assert (updates[-1]["snoozed_until"], updates[-1]["snoozed_by"]) == (3600.0, "night@shift")
    assert updates[-1]["acknowledged_by"] == "ops@desk"  # one record carries all of it
    m.set_threshold("brightness", 0.4, by="ops@desk")
    assert updates[-1]["threshold"] == 0.4
    assert all(u["seq"] == alert["seq"] for u in updates)  # state changes, not transitions
    assert transitions(rec) == ["firing"]


def test_an_id_from_another_device_gets_a_clear_error_not_a_list_of_features() -> None:
    rec = Recorder()
    m = rec.manager()
    m.declare_features([f"feature_{i}" for i in range(40)])
    with pytest.raises(CommandError) as err:
        m.snooze("0123456789ab", until=100.0)
    text = str(err.value)
    assert "no firing alert with id '0123456789ab' on dev1" in text
    assert "another device" in text and "feature_1" not in text
    with pytest.raises(CommandError, match="did you mean feature_1"):
        m.disable("feture_1", now=0.0)


def test_the_timeframe_is_set_apart_from_the_summary_and_a_resolve_says_what_recovered() -> None:
    rec = Recorder()
    m = rec.manager()
    state = Observation(kind="monitoring", feature="drift", metric="seconds_not_running",
                        value=21.0, threshold=20.0, breach=True, clear=False, for_s=0,
                        summary="drift detection is not running (warming_up): raise [drift] "
                        "warmup_s or lower [drift] window_frames", window=Window(1000.0, 1021.0, 0))
    m.update([state, obs(0.5, for_s=0)], now=1021)
    fired = {r["kind"]: r["message"] for r in rec.records}
    assert re.fullmatch(r".* window_frames \(for 21 s, since \d\d:\d\d:\d\d\)", fired["monitoring"])
    assert re.fullmatch(r"brightness drifted: KS 0\.50 \(over 30 s, 900 frames, since "
                        r"\d\d:\d\d:\d\d\)", fired["data_drift"])
    running = dataclasses.replace(state, value=0.0, breach=False, clear=True, clear_for_s=0,
                                  summary="drift detection running again")
    m.update([running], now=1030)
    resolved = rec.records[-1]
    assert resolved["state"] == "resolved"
    assert resolved["message"] == f"resolved: drift detection running again (was: {fired['monitoring']})"
