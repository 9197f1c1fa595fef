"""The central against hostile devices: every bad message is counted and skipped, always.

Each case once killed the central's writer thread (the process stayed up and recorded
nothing more for the whole fleet). Now, after the bad message, a good alert and heartbeat
from another device are still recorded and the webhook still fires.
"""

from __future__ import annotations

import json
from typing import Any

import central_helpers
import pytest
from central_helpers import heartbeat, query
from helpers import make_alert, wait
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.central.records import (
    REASONS,
    AlertTransition,
    BadMessage,
    Heartbeat,
    Limits,
    parse,
)

central_factory = central_helpers.central_factory
webhook = central_helpers.webhook

P = "edgewatch/v1"


def alert_with(**fields: Any) -> bytes:
    return json.dumps({**make_alert(1, device="evil"), **fields}).encode()


def alert_literal(field: str, literal: bytes) -> bytes:
    """An alert whose ``field`` is the raw JSON ``literal`` (json.dumps cannot write 1e400)."""
    return alert_with(**{field: "@@"}).replace(b'"@@"', literal)


HOSTILE = [
    pytest.param("heartbeat", b'{"seq": 1e400}', "bad_field", id="seq-1e400"),
    pytest.param("heartbeat", json.dumps({"seq": 10**30}).encode(), "bad_field", id="seq-10e30"),
    pytest.param("alerts", alert_with(seq=10**30), "bad_field", id="alert-seq-10e30"),
    pytest.param("alerts", alert_with(message={"a": 1}), "bad_field", id="dict-for-string"),
    pytest.param("alerts", alert_with(transition=["x"]), "bad_field", id="list-for-string"),
    pytest.param("alerts", alert_literal("ts", b"1e400"), "bad_field", id="ts-inf"),
    pytest.param("heartbeat", b"[" * 100_000 + b"]" * 100_000, "too_deep", id="deep-list"),
    pytest.param("alerts", b'{"a":' * 5000 + b"1" + b"}" * 5000, "too_deep", id="deep-dict"),
    pytest.param("heartbeat", b'{"pad": "' + b"x" * 300_000 + b'"}', "too_large", id="huge"),
    pytest.param("heartbeat", b"\xff\xfe{", "not_json", id="not-utf8"),
    pytest.param("alerts", b"[1, 2]", "not_object", id="array"),
    pytest.param("cmd/result", b'{"id": {"x": 1}, "ok": true}', "bad_field", id="result-id-dict"),
    pytest.param("alerts", alert_with(device="cam-b"), "device_mismatch", id="claims-cam-b"),
    pytest.param("status", b"\x1b[2Jpwned", "bad_status", id="status-escape"),
]


@pytest.mark.parametrize("kind, payload, reason", HOSTILE)
def test_hostile_message_is_counted_and_the_fleet_still_recorded(
        broker, tmp_path, central_factory, listeners, webhook, kind: str, payload: bytes,
        reason: str) -> None:
    webhook.fail_first = 0
    central = central_factory(broker, webhook=webhook.url)
    db = tmp_path / "central.db"
    pub = listeners(broker, [])
    pub.wait_connected()
    pub.publish(f"{P}/evil/{kind}", payload)
    pub.publish(f"{P}/cam-b/alerts", json.dumps(make_alert(7, device="cam-b")))
    pub.publish(f"{P}/cam-b/heartbeat", json.dumps(heartbeat("cam-b", 3)))
    got = webhook.wait_for(1)
    assert got[0]["alert"]["device"] == "cam-b"
    wait(lambda: query(db, "SELECT device_id FROM devices")
                               == [("cam-b",)], what="cam-b's heartbeat recorded")
    assert query(db, "SELECT device, seq FROM alerts") == [("cam-b", 7)]
    status = central.status()
    assert status["bad"] == {reason: 1}
    assert status["bad_messages"] == 1


def test_limits_are_checked_before_parsing() -> None:
    limits = Limits(max_bytes=100, max_depth=3)
    with pytest.raises(BadMessage, match="too_large"):
        parse(P, f"{P}/d/heartbeat", b"{" + b" " * 200 + b"}", limits)
    assert parse(P, f"{P}/d/heartbeat", b'{"a": [[1]], "s": "[[[[[["}', limits).seq == 0
    with pytest.raises(BadMessage, match="too_deep"):
        parse(P, f"{P}/d/heartbeat", b'{"a": [[[1]]]}', limits)


def test_records_are_typed_and_the_topic_names_the_device() -> None:
    rec = parse(P, f"{P}/cam-a/alerts", json.dumps(make_alert(3, device="cam-a")).encode())
    assert isinstance(rec, AlertTransition)
    assert (rec.device, rec.seq, rec.state, rec.acknowledged) == ("cam-a", 3, "firing", False)
    no_claim = {k: v for k, v in make_alert(3).items() if k != "device"}
    rec = parse(P, f"{P}/cam-z/alerts", json.dumps(no_claim).encode())
    assert rec.device == "cam-z"
    hb = parse(P, f"{P}/cam-a/heartbeat", b'{"seq": 2, "x": NaN, "camera": {"fps_in": 9}}')
    assert isinstance(hb, Heartbeat) and hb.fps == 9.0 and '"x":null' in hb.payload


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
FIELDS = st.fixed_dictionaries({}, optional={
    k: JSON for k in ("id", "fingerprint", "seq", "state", "transition", "ts", "message",
                      "acknowledged", "interval_s", "camera", "ok", "device")})


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["alerts", "heartbeat", "cmd/result", "alerts/state/f1"]),
       obj=FIELDS)
def test_parse_raises_only_bad_message(kind: str, obj: dict) -> None:
    payload = json.dumps(obj).encode()
    try:
        parse(P, f"{P}/d/{kind}", payload)
    except BadMessage as exc:
        assert exc.reason in REASONS


def test_a_device_cannot_rewrite_another_devices_alert(broker, tmp_path, central_factory,
                                                        listeners, webhook) -> None:
    """Issue 10: "evil" replaying cam-c's alert id with ``"device": "cam-c"`` on its own topic."""
    webhook.fail_first = 0
    central = central_factory(broker, webhook=webhook.url)
    db = tmp_path / "central.db"
    pub = listeners(broker, [])
    pub.wait_connected()
    real = make_alert(1, device="cam-c", alert_id="c0ffee")
    pub.publish(f"{P}/cam-c/alerts", json.dumps(real))
    webhook.wait_for(1)
    forged = make_alert(999, device="cam-c", alert_id="c0ffee", state="resolved")
    pub.publish(f"{P}/evil/alerts", json.dumps(forged))
    unclaimed = {k: v for k, v in forged.items() if k != "device"}
    pub.publish(f"{P}/evil/alerts", json.dumps(unclaimed))  # same id, evil's own now
    rows = wait(lambda: sorted(query(db, "SELECT device, id, seq, state FROM alerts"))
                if len(query(db, "SELECT id FROM alerts")) == 2 else None,
                what="evil's own alert committed")
    assert central.status()["bad"] == {"device_mismatch": 1}
    assert rows == [("cam-c", "c0ffee", 1, "firing"), ("evil", "c0ffee", 999, "resolved")]
    texts = [b["text"] for b in webhook.wait_for(2)]
    assert not any(t.startswith("[WARNING] cam-c") and "resolved" in t for t in texts)
    assert texts[1].startswith("[WARNING] evil/cam0 resolved")


@pytest.mark.parametrize("schema", [None, 1, 2, 3])
def test_heartbeats_of_every_known_schema_are_read_while_devices_upgrade(schema: Any) -> None:
    hb = heartbeat("cam-a", 3)
    if schema is None:
        hb.pop("schema", None)
    else:
        hb["schema"] = schema
    if schema == 2:
        hb["mqtt"] = {"connected": True, "refused": 4,
                      "last_refusal": {"code": 135, "reason": "Not authorized", "ts": 1.0}}
    if schema == 3:
        hb["camera"] = {**hb["camera"], "fps": 12.5, "dropped": 2}
        hb["drift_scores"] = {"brightness": 1.4}
    record = parse(P, f"{P}/cam-a/heartbeat", json.dumps(hb).encode())
    assert isinstance(record, Heartbeat) and record.seq == 3
    assert record.fps == (12.5 if schema == 3 else 14.5)  # schema 3: camera.fps first


@pytest.mark.parametrize("topic,payload", [
    ("heartbeat", {"schema": 4, "seq": 1}),
    ("alerts", {**make_alert(1, device="cam-a"), "schema": 2}),
    ("heartbeat", {"schema": "2", "seq": 1}),
])
def test_a_schema_this_central_does_not_read_is_refused_with_the_upgrade_order(
        topic: str, payload: dict) -> None:
    with pytest.raises(BadMessage) as err:
        parse(P, f"{P}/cam-a/{topic}", json.dumps(payload).encode())
    assert err.value.reason == "bad_schema"
    assert "upgrade the central first, then the devices" in str(err.value)
