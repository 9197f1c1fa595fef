"""Command validation and dispatch, directly and through a real broker and MqttLink.

The ControlAPI here is a small dict-backed implementation written for the test: the real one
is the lead's AlertManager, which has its own tests. It keeps the same contract: it raises
CommandError for unknown alerts and targets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest
from helpers import DictControl, wait

from agent.commands import VERBS, handle_command, parse_duration
from agent.errors import CommandError
from agent.mqtt import MqttConfig, MqttLink
from agent.store import Store

NOW = 1_700_000_000.0


def run(verb: str, body: Any, api: DictControl, **kw: Any) -> Dict[str, Any]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return handle_command(verb, payload, api, clock=lambda: NOW, **kw)


@pytest.mark.parametrize("verb, body, result", [
    ("ack", {"id": "r1", "alert": "a1"}, {"alert": "a1", "acknowledged": True}),
    ("snooze", {"id": 7, "alert": "a1", "duration": "30m"}, {"target": "a1", "until": NOW + 1800}),
    ("snooze", {"id": "r", "target": "blur", "until": NOW + 60}, {"target": "blur",
                                                                 "until": NOW + 60}),
    ("snooze", {"id": "r", "target": "anomaly", "duration": 90}, {"target": "anomaly",
                                                                 "until": NOW + 90}),
    ("disable", {"id": "r", "target": "camera_fault"}, {"target": "camera_fault",
                                                        "enabled": False}),
    ("enable", {"id": "r", "target": "brightness"}, {"target": "brightness", "enabled": True}),
    ("set_threshold", {"id": "r", "feature": "blur", "value": 0.3},
     {"feature": "blur", "metric": None, "value": 0.3}),
    ("set_threshold", {"id": "r", "feature": "blur", "value": 2, "metric": "psi"},
     {"feature": "blur", "metric": "psi", "value": 2.0}),
    ("rebaseline", {"id": "r"}, {"rebaseline": "started"}),
    ("ping", {"id": "r"}, {"pong": True}),
    ("status", {"id": "r"}, {"open_alerts": 1}),
])
def test_valid_commands_reach_the_api(verb: str, body: Dict[str, Any],
                                      result: Dict[str, Any]) -> None:
    api = DictControl()
    answer = run(verb, body, api)
    assert answer == {"id": body["id"], "verb": verb, "ok": True, "result": result, "ts": NOW}
    assert api.calls == ([] if verb == "ping" else [verb])


@pytest.mark.parametrize("verb, body, error", [
    ("ack", b"not json", "not JSON"),
    ("ack", b"\xff\xfe", "not JSON"),
    ("ack", b"", "must be a JSON object"),
    ("ack", [1, 2], "must be a JSON object, got list"),
    ("ack", {"alert": "a1"}, "missing 'id'"),
    ("ack", {"id": True, "alert": "a1"}, "'id' must be a string or integer"),
    ("ack", {"id": "r"}, "ack needs 'alert'"),
    ("ack", {"id": "r", "alert": 5}, "'alert' must be a non-empty string"),
    ("ack", {"id": "r", "alert": "a1", "extra": 1}, "unknown field 'extra'"),
    ("reboot", {"id": "r"}, "unknown verb 'reboot' (valid: ack, snooze, disable"),
    ("snooze", {"id": "r", "alert": "a1"}, "exactly one of 'until'"),
    ("snooze", {"id": "r", "duration": "1h"}, "exactly one of 'alert' or 'target'"),
    ("snooze", {"id": "r", "alert": "a1", "target": "blur", "duration": "1h"}, "exactly one"),
    ("snooze", {"id": "r", "alert": "a1", "duration": "soon"}, "duration must be like"),
    ("snooze", {"id": "r", "alert": "a1", "duration": -5}, "between 0 and 30 days"),
    ("snooze", {"id": "r", "alert": "a1", "until": NOW - 1}, "'until' is in the past"),
    ("snooze", {"id": "r", "alert": "a1", "until": "tomorrow"}, "'until' must be a finite"),
    ("set_threshold", {"id": "r", "feature": "blur", "value": "high"}, "'value' must be a finite"),
    ("set_threshold", {"id": "r", "feature": "blur", "value": -1}, "'value' must be > 0"),
    ("set_threshold", {"id": "r", "value": 1}, "needs 'feature'"),
])
def test_malformed_commands_never_reach_the_api(verb: str, body: Any, error: str) -> None:
    api = DictControl()
    answer = run(verb, body, api)
    assert answer["ok"] is False and error in answer["error"], answer
    assert "\n" not in answer["error"]
    assert api.calls == []
    assert "result" not in answer


def test_id_is_echoed_even_when_the_command_is_rejected() -> None:
    answer = run("ack", {"id": "req-9"}, DictControl())
    assert answer["id"] == "req-9" and not answer["ok"]


def test_oversized_payload_rejected_before_parsing() -> None:
    api = DictControl()
    answer = run("ack", b"{" + b" " * 200 + b"}", api, max_bytes=100)
    assert not answer["ok"] and "payload too large: 202 bytes (max 100)" == answer["error"]


@pytest.mark.parametrize("verb, body, error", [
    ("ack", {"id": "r", "alert": "nope"}, "unknown alert: nope"),
    ("disable", {"id": "r", "target": "nope"}, "unknown target: nope"),
    ("set_threshold", {"id": "r", "feature": "nope", "value": 1.0}, "unknown feature: nope"),
])
def test_api_command_errors_become_error_results(verb: str, body: Dict[str, Any],
                                                 error: str) -> None:
    answer = run(verb, body, DictControl())
    assert answer["ok"] is False and answer["error"].startswith(error) and answer["id"] == "r"


def test_unexpected_api_failure_still_answers_with_the_id() -> None:
    class Broken(DictControl):
        def rebaseline(self) -> Dict[str, Any]:
            raise RuntimeError("disk on fire")

    answer = run("rebaseline", {"id": "x"}, Broken())
    assert answer["id"] == "x" and answer["error"] == "internal error: RuntimeError: disk on fire"


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800), ("45", 45), (1.5, 1.5),
    ("1.5h", 5400),
])
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1w", "h", "0", 0, True, "31d", "-1m"])
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(CommandError):
        parse_duration(text)


def test_every_verb_has_help_in_the_module_docstring() -> None:
    import agent.commands as mod

    for verb in VERBS:
        assert f"\n    {verb} " in mod.__doc__


@pytest.mark.integration
def test_commands_through_the_broker(broker, tmp_path: Path, listeners) -> None:
    api = DictControl()
    store = Store(str(tmp_path / "agent.db"), flush_interval_s=0.2).start()
    cfg = MqttConfig(enabled=True, host=broker.host, port=broker.port, device_id="dev1",
                     keepalive=5, max_payload_kb=4)
    link = MqttLink(cfg, store, command_handler=lambda verb, payload: handle_command(
        verb, payload, api, max_bytes=4096))
    listener = listeners(broker, ["edgewatch/v1/dev1/cmd/result"])
    try:
        listener.wait_connected()
        link.start()
        wait(lambda: link.connected, what="link connected")
        broker.wait_suback("dev1")  # the link's cmd/+ subscription
        sent = [
            ("ack", {"id": "1", "alert": "a1"}),
            ("snooze", {"id": "2", "target": "blur", "duration": "1h"}),
            ("disable", {"id": "3", "target": "anomaly"}),
            ("enable", {"id": "4", "target": "anomaly"}),
            ("set_threshold", {"id": "5", "feature": "blur", "value": 0.5, "metric": "psi"}),
            ("rebaseline", {"id": "6"}),
            ("ping", {"id": "7"}),
            ("status", {"id": "8"}),
            ("ack", b"{not json"),
            ("ack", {"id": "10", "alert": ["a1"]}),
            ("selfdestruct", {"id": "11"}),
            ("ping", json.dumps({"id": "12", "pad": "x" * 8000}).encode()),
            ("ack", {"id": "13", "alert": "missing"}),
            ("ping", {"id": "14"}),
        ]
        for verb, body in sent:
            data = body if isinstance(body, bytes) else json.dumps(body)
            listener.publish(f"edgewatch/v1/dev1/cmd/{verb}", data)
        msgs = listener.wait_for(lambda ms: len(ms) >= len(sent))
        answers = [json.loads(m.payload) for m in msgs]
        assert [a["ok"] for a in answers] == [True] * 8 + [False] * 5 + [True]
        assert [a["id"] for a in answers] == (
            ["1", "2", "3", "4", "5", "6", "7", "8", None, "10", "11", None, "13", "14"])
        assert "not JSON" in answers[8]["error"]
        assert "'alert' must be a non-empty string" in answers[9]["error"]
        assert "unknown verb 'selfdestruct'" in answers[10]["error"]
        assert "payload too large" in answers[11]["error"]
        assert answers[12]["error"] == "unknown alert: missing"
        assert api.alerts["a1"]["acknowledged"] and api.thresholds == {("blur", "psi"): 0.5}
        assert api.rebaselines == 1 and "anomaly" not in api.disabled
        assert link.status()["connected"]
        assert link.status()["connected"] and link.status()["commands"] == len(sent)
    finally:
        link.close()
        store.close()
