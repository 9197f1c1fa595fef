"""``edgewatch fleet samples DEVICE ALERT``: fetch an alert's captured frames from a device.

The protocol and why it holds up on a slow link are in :mod:`agent.remotesamples`. Here:
ask for the list, then ask for the missing chunks one window at a time; each chunk is
written where it belongs in ``<out>/<path>.part`` as it arrives and remembered in
``<path>.part.chunks``, so a transfer cut short resumes where it stopped on the next run. A
complete file is checked against its SHA-256 before it takes its name; ``samples.jsonl`` in
``--out`` lists what was fetched (every column of the device's samples table).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import paho.mqtt.client as mqtt

from ..errors import CommandError
from ..mqtt import Topics, topics
from ..mqttclient import ClientSettings, build_client, stop_client
from ..remotesamples import MAX_CHUNKS

__all__ = ["fetch_samples"]


class _Part:
    """One sample being fetched: its ``.part`` file and the chunks it holds."""

    def __init__(self, out: Path, record: Dict[str, Any], chunk: int) -> None:
        self.record = record
        self.final = out / str(record["path"])
        if ".." in Path(str(record["path"])).parts or Path(str(record["path"])).is_absolute():
            raise CommandError(f"the device sent an unsafe sample path: {record['path']!r}")
        self.part = self.final.with_name(self.final.name + ".part")
        self.state = self.final.with_name(self.final.name + ".part.chunks")
        self.chunk = chunk
        self.total = int(record["chunks"])
        self.have: Set[int] = set()
        if self.state.exists() and self.part.exists():
            try:
                saved = json.loads(self.state.read_text())
                if saved.get("chunk") == chunk:
                    self.have = {int(k) for k in saved.get("have", [])}
            except (ValueError, OSError):
                self.have = set()

    def done(self) -> bool:
        """The final file is there with the right hash."""
        if not self.final.exists():
            return False
        return bool(hashlib.sha256(self.final.read_bytes()).hexdigest() == self.record["sha256"])

    def missing(self) -> List[int]:
        """Chunks still to fetch."""
        return [k for k in range(self.total) if k not in self.have]

    def write(self, k: int, data: bytes) -> None:
        """Put chunk ``k`` in place (the network thread)."""
        self.part.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.part, os.O_WRONLY | os.O_CREAT, 0o640)
        try:
            os.pwrite(fd, data, k * self.chunk)
        finally:
            os.close(fd)
        self.have.add(k)

    def finish(self) -> bool:
        """Save progress; once complete and matching its hash, take the final name."""
        if len(self.have) < self.total:
            self.state.write_text(json.dumps({"chunk": self.chunk, "have": sorted(self.have)}))
            return False
        data = self.part.read_bytes()[:int(self.record["bytes"])]
        self.state.unlink(missing_ok=True)
        self.part.unlink(missing_ok=True)
        if hashlib.sha256(data).hexdigest() != self.record["sha256"]:
            return False  # fetched again from scratch next time
        fd = os.open(self.final, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True


class _Session:
    """One MQTT connection asking a device for samples and taking its chunks in."""

    def __init__(self, settings: ClientSettings, t: Topics, timeout: float) -> None:
        self._t = t
        self._timeout = timeout
        self._results: Dict[str, Dict[str, Any]] = {}
        self._cond = threading.Condition()
        self.parts: Dict[int, _Part] = {}
        self._ready = threading.Event()
        self._refused: List[str] = []
        self.client = build_client(settings)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message
        self._where = settings.describe()
        try:
            self.client.connect(**settings.connect_kwargs())
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot reach broker {self._where}: {exc} (check --broker "
                               "and --port, or [mqtt] in --config)") from None
        self.client.loop_start()
        if not self._ready.wait(timeout) or self._refused:
            stop_client(self.client)
            why = self._refused[0] if self._refused else f"no answer within {timeout:.0f} s"
            raise CommandError(f"broker {self._where}: {why} (check the username, password "
                               "and certificate)")

    def _on_connect(self, c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any = None) -> None:
        if reason.is_failure:
            self._refused.append(str(reason))
            self._ready.set()
            return
        c.subscribe([(self._t.cmd_result, 1), (f"{self._t.base}/samples/#", 1)])

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._t.cmd_result:
            try:
                result = json.loads(msg.payload)
            except ValueError:
                return
            if isinstance(result, dict):
                with self._cond:
                    self._results[str(result.get("id"))] = result
                    self._cond.notify_all()
            return
        try:
            sid, k = (int(x) for x in msg.topic.rsplit("/", 2)[1:])
        except ValueError:
            return
        part = self.parts.get(sid)
        if part is not None and 0 <= k < part.total:
            part.write(k, bytes(msg.payload))
            with self._cond:
                self._cond.notify_all()

    def ask(self, body: Dict[str, Any], chunks: List[Tuple[int, int]]) -> Dict[str, Any]:
        """Send one ``samples`` command; wait for its answer and the chunks it announces."""
        rid = uuid.uuid4().hex
        self.client.publish(self._t.command("samples"), json.dumps({"id": rid, **body}), qos=1)

        def arrived() -> bool:
            result = self._results.get(rid)
            if result is None:
                return False
            if not result.get("ok") or not chunks:
                return True
            missing = set(result["result"].get("missing") or [])
            return all(k in self.parts[s].have for s, k in chunks if s not in missing)

        with self._cond:
            if not self._cond.wait_for(arrived, self._timeout):
                raise CommandError(f"no answer or chunks from the device within "
                                   f"{self._timeout:.0f} s (run again: the transfer resumes)")
            result = self._results.pop(rid)
        if not result.get("ok"):
            raise CommandError(f"the device refused: {result.get('error') or 'no reason'}")
        return dict(result["result"])


def _window(parts: Dict[int, _Part], size: int) -> Tuple[List[List[int]], List[Tuple[int, int]]]:
    """The next ``want`` ranges (at most ``size`` chunks) and the chunks they name."""
    want: List[List[int]] = []
    chunks: List[Tuple[int, int]] = []
    for sid, part in parts.items():
        for k in part.missing():
            if len(chunks) == size:
                return want, chunks
            if want and want[-1][0] == sid and want[-1][1] + want[-1][2] == k:
                want[-1][2] += 1
            else:
                want.append([sid, k, 1])
            chunks.append((sid, k))
    return want, chunks


def fetch_samples(settings: ClientSettings, device: str, alert: str, out: Path, *,
                  prefix: str = "edgewatch/v1", chunk_kb: int = 32, timeout: float = 30.0,
                  window: int = MAX_CHUNKS) -> Dict[str, Any]:
    """Fetch ``alert``'s samples from ``device`` into ``out``; what was fetched and kept."""
    session = _Session(settings, topics(prefix, device), timeout)
    failed: List[int] = []
    try:
        records = session.ask({"alert": alert, "chunk_kb": chunk_kb}, [])["samples"]
        out.mkdir(parents=True, exist_ok=True)
        parts = {int(r["id"]): _Part(out, r, chunk_kb * 1024) for r in records}
        already = {sid for sid, p in parts.items() if p.done()}
        session.parts = {sid: p for sid, p in parts.items() if sid not in already}
        while True:
            want, chunks = _window(session.parts, min(window, MAX_CHUNKS))
            if not want:
                break
            answer = session.ask({"alert": alert, "chunk_kb": chunk_kb, "want": want}, chunks)
            for sid in answer.get("missing") or []:
                failed.append(int(sid))
                session.parts.pop(int(sid), None)
    finally:
        stop_client(session.client)
        # Whole files take their names; partial ones keep their chunks for the next run.
        kept = [sid for sid, part in session.parts.items() if part.have and part.finish()]
    failed += [sid for sid in session.parts if sid not in kept]
    _manifest(out, [r for r in records if int(r["id"]) in set(kept) | already])
    return {"samples": len(records), "fetched": len(kept), "already": len(already),
            "failed": failed, "out": str(out)}


def _manifest(out: Path, records: List[Dict[str, Any]]) -> None:
    """``samples.jsonl``: one line per sample held, merged with earlier fetches."""
    path = out / "samples.jsonl"
    held: Dict[int, Dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                held[int(rec["id"])] = rec
            except (ValueError, KeyError, TypeError):
                continue
    held.update({int(r["id"]): {k: v for k, v in r.items() if k != "chunks"} for r in records})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in held.values()))
    os.replace(tmp, path)
