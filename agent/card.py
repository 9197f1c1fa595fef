"""The model card: the deployed model's record, in Markdown that MkDocs renders as it is.

What the agent knows (the model file and its hash, input and outputs, decoder, runtime and
delegate, the reference drift is tested against with its thresholds, the monitoring
configuration, the alert history) plus what the owner writes in ``[model.card]``. The same
text is embedded in the report (:mod:`agent.report`).

>>> from agent.config import from_dict
>>> text = model_card(from_dict({"model": {"card": {"name": "doorbell", "owner": "ops"}}}))
>>> text.splitlines()[0], "| owner | ops |" in text
('# Model card: doorbell', True)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .config import CARD_KEYS, Config
from .errors import AgentError
from .history import History, ReferenceRow, current_reference
from .records import AlertTransition

__all__ = ["CardFacts", "card_facts", "model_card", "render_card"]

_UTC = "%Y-%m-%d %H:%M:%S UTC"


class CardFacts:
    """What the card says, gathered once (the report reads it too)."""

    def __init__(self) -> None:
        self.owner: Dict[str, Any] = {}
        self.model: Dict[str, Any] = {}
        self.reference: Optional[Any] = None  # agent.drift.reference.Reference
        self.reference_row: Optional[ReferenceRow] = None
        self.calibration: Tuple[Optional[float], Optional[float]] = (None, None)
        self.monitoring: Dict[str, Any] = {}
        self.alerts: List[AlertTransition] = []
        self.device: Dict[str, Any] = {}


def when(ts: Optional[float]) -> str:
    """A timestamp as UTC text ("-" for none): the card and report are read elsewhere."""
    import time

    return "-" if ts is None else time.strftime(_UTC, time.gmtime(ts))


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (where the TFLite runtime logs) for the block; the CLI's
    own errors come as exceptions, so nothing a person needs is lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _model_file(config: Config) -> Dict[str, Any]:
    """The model file's own facts: hash, input, outputs, decoder (when it can be opened here)."""
    from .confidence import detect_kind, output_infos
    from .inference import Model, file_sha256

    path = Path(config.model.path)
    if not config.model.path or not path.is_file():
        return {}
    out: Dict[str, Any] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    try:
        with _quiet_stderr():  # the runtime's "INFO: Created ... delegate" is no news here
            model = Model.from_config(config.model)
    except AgentError as exc:
        out["load_error"] = str(exc)
        return out
    info = model.info()
    out.update(input=info["input"], input_dtype=info["input_dtype"], outputs=info["outputs"],
               runtime=info["runtime"], delegate=info["delegate"])
    if config.model.decoder == "auto":
        out["decoder"] = f"auto ({detect_kind(output_infos(model.output_details))})"
    return out


def card_facts(config: Config, db_path: Optional[str] = None) -> CardFacts:
    """Gather the card's facts from the config, the model file and (when given) the database."""
    facts = CardFacts()
    facts.owner = dict(config.model.card or {})
    m = config.model
    facts.model = {"path": m.path, "runtime": m.runtime, "delegate": m.delegate or None,
                   "input_range": list(m.input_range), "color": m.color, "decoder": m.decoder,
                   "score_threshold": m.score_threshold}
    facts.device = {"id": config.device.id, "camera": config.device.camera}
    beat_model: Mapping[str, Any] = {}
    if db_path is not None:
        with History(db_path) as history:
            beat = history.latest_heartbeat()
            if beat is not None:
                beat_model = beat.payload.get("model") or {}
                facts.device = {"id": beat.payload.get("device") or config.device.id,
                                "camera": (beat.payload.get("camera") or {}).get("name")
                                or config.device.camera}
            facts.alerts = history.alerts()
            sha = str(beat_model.get("sha256") or "")
            facts.reference, facts.reference_row = current_reference(
                history, sha, config.drift.reference)
            facts.calibration = _calibration(history.references())
    else:
        from .drift.reference import Reference

        if config.drift.reference and os.path.isfile(config.drift.reference):
            facts.reference = Reference.load(config.drift.reference)
    facts.model.update({k: v for k, v in beat_model.items() if v is not None})
    facts.model.update({k: v for k, v in _model_file(config).items() if v is not None})
    facts.monitoring = _monitoring(config)
    return facts


def _calibration(rows: Sequence[ReferenceRow]) -> Tuple[Optional[float], Optional[float]]:
    start = next((r.ts for r in rows if r.origin == "calibrating"), None)
    done = next((r.ts for r in reversed(rows) if r.origin == "calibration"), None)
    return start, done


def _monitoring(config: Config) -> Dict[str, Any]:
    d, r = config.drift, config.rules
    return {
        "drift": "on" if d.enabled else "off",
        "reference": d.reference or f"learned on the device (warm-up {d.warmup_s:g} s)",
        "window": f"{d.window_frames} frames, tested every {d.eval_interval_s:g} s",
        "persistence": f"fires after {d.for_s:g} s over threshold, clears after "
                       f"{d.clear_for_s:g} s below",
        "false alarms budget": f"{d.false_alarms_per_week:g} per week",
        "rules": "on" if r.enabled else "off",
        "camera-fault rules": f"black < {r.black_brightness:g} luma for {r.black_for_s:g} s; "
                              f"blur < {r.blur_ratio:.0%} of reference sharpness for "
                              f"{r.blur_for_s:g} s; frozen for {r.frozen_for_s:g} s; "
                              f"stall {r.stall_s:g} s",
        "summary windows": f"every {config.store.window_s:g} s, kept "
                           f"{config.store.retention_days:g} days",
    }


def _cell(value: Any) -> str:
    """A value in a Markdown table cell: pipes escaped, newlines as spaces."""
    if isinstance(value, float):
        value = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        value = ", ".join(_cell(v) for v in value)
    elif isinstance(value, Mapping):
        value = "; ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ").strip() or "-"


def _table(rows: Sequence[Tuple[str, Any]], head: Tuple[str, str] = ("", "")) -> List[str]:
    return [f"| {head[0]} | {head[1]} |", "|---|---|",
            *(f"| {_cell(k)} | {_cell(v)} |" for k, v in rows), ""]


def _owner_section(owner: Mapping[str, Any]) -> List[str]:
    lines = ["## Owner's record", ""]
    if not owner:
        return lines + ["Not given: write `[model.card]` in the config (name, version, "
                        "training_data, evaluation, intended_use, limitations, owner, ...).", ""]
    simple = [(k, owner[k]) for k in CARD_KEYS if k in owner
              and not isinstance(owner[k], Mapping)]
    lines += _table(simple, ("field", "value")) if simple else []
    for key in CARD_KEYS:
        value = owner.get(key)
        if isinstance(value, Mapping):
            lines += [f"### {key.replace('_', ' ').capitalize()}", ""]
            head = "metric" if key == "evaluation" else "item"
            lines += _table([(k, v) for k, v in value.items()], (head, "value"))
    return lines


def _model_section(model: Mapping[str, Any]) -> List[str]:
    outputs = model.get("outputs") or []
    shown = [("file", model.get("path")), ("sha256", model.get("sha256")),
             ("size", f"{model['bytes']} bytes" if model.get("bytes") else None),
             ("input shape", model.get("input")), ("input type", model.get("input_dtype")),
             ("input range", model.get("input_range")), ("colour order", model.get("color")),
             ("outputs", [f"{o.get('name')} {o.get('shape')}" for o in outputs] or None),
             ("decoder", model.get("decoder")), ("score threshold", model.get("score_threshold")),
             ("runtime", model.get("runtime")), ("delegate", model.get("delegate") or "none (CPU)"),
             ("latency (ms)", model.get("latency_ms"))]
    lines = ["## Model", ""] + _table([(k, v) for k, v in shown if v is not None],
                                      ("property", "value"))
    if model.get("load_error"):
        lines += [f"The model file could not be opened here: {_cell(model['load_error'])}", ""]
    return lines


def _reference_section(facts: CardFacts) -> List[str]:
    ref = facts.reference
    lines = ["## Reference (what normal looks like)", ""]
    if ref is None:
        return lines + ["No reference yet: drift is not tested until one is learned or given.",
                        ""]
    start, done = facts.calibration
    rows = [("kind", f"{ref.kind} ({'baseline file' if ref.origin == 'baseline' else ref.origin})"),
            ("source", ref.source), ("frames", ref.frames), ("fps", ref.fps),
            ("created", when(ref.created)), ("view", ref.view_kind),
            ("model sha256", ref.model_sha256 or "-"),
            ("window", f"{ref.window_frames} frames"),
            ("thresholds", "calibrated on the reference" if ref.calibrated
             else "calibrated on the device's first frames"),
            ("calibration period", f"{when(start)} to {when(done)}" if start else "-"),
            ("target false alarms", f"{ref.target_false_alarms_per_week:g} per week")]
    lines += _table(rows, ("property", "value"))
    lines += ["### Per-feature reference and threshold", "",
              "| feature | p05 | median | p95 | KS threshold |", "|---|---|---|---|---|"]
    for i, name in enumerate(ref.names):
        lines.append(f"| {name} | {_cell(float(ref.p05[i]))} | {_cell(float(ref.median[i]))} | "
                     f"{_cell(float(ref.p95[i]))} | {_cell(float(ref.threshold[i]))} |")
    return lines + [""]


def _alerts_section(alerts: Sequence[AlertTransition]) -> List[str]:
    lines = ["## Alert history", ""]
    if not alerts:
        return lines + ["No alerts recorded.", ""]
    counts = Counter((a.kind, a.severity) for a in alerts)
    firing = sum(a.state == "firing" for a in alerts)
    lines += [f"{len(alerts)} alerts from {when(alerts[0].starts_at)} to "
              f"{when(max(a.ts for a in alerts))}; {firing} firing now.", "",
              "| kind | severity | alerts |", "|---|---|---|"]
    lines += [f"| {k} | {s} | {n} |" for (k, s), n in sorted(counts.items())]
    return lines + [""]


def render_card(facts: CardFacts) -> str:
    """The card's Markdown."""
    name = facts.owner.get("name") or Path(str(facts.model.get("path") or "model")).name
    version = facts.owner.get("version")
    head = [f"# Model card: {_cell(name)}" + (f" {_cell(version)}" if version else ""), "",
            f"Deployed on device `{_cell(facts.device.get('id'))}`, camera "
            f"`{_cell(facts.device.get('camera'))}`. Generated by `edgewatch card` from what the "
            "agent measured and the owner's `[model.card]`.", ""]
    if facts.owner.get("description"):
        head += [_cell(facts.owner["description"]), ""]
    body = (_owner_section({k: v for k, v in facts.owner.items()
                            if k not in ("name", "version", "description")})
            + _model_section(facts.model) + _reference_section(facts)
            + ["## Monitoring", ""] + _table(list(facts.monitoring.items()), ("setting", "value"))
            + _alerts_section(facts.alerts))
    return "\n".join(head + body).rstrip() + "\n"


def model_card(config: Config, db_path: Optional[str] = None) -> str:
    """The model card's Markdown for this config (and database, when given)."""
    return render_card(card_facts(config, db_path))
