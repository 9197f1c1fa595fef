"""The device's side of ``edgewatch fleet samples``: an alert's samples, in chunks on request.

Only with ``[capture] remote = true``, which the config accepts only over MQTT with TLS.
The central sends the ``samples`` command twice over:

* ``{"id", "alert"}``: the answer (``cmd/result``) lists the alert's samples (every column of
  the samples table, plus ``chunks`` at the requested ``chunk_kb``);
* ``{"id", "alert", "want": [[sample_id, first_chunk, count], ...], "chunk_kb"}``: the device
  publishes those chunks of the JPEGs, raw bytes with QoS 1, to
  ``<prefix>/<device>/samples/<sample_id>/<chunk>``, at most ``MAX_CHUNKS`` per command, and
  answers how many it sent.

Why chunks on request: a slow or flaky link never holds more than one window of chunks in
flight (the device queues at most ``MAX_CHUNKS x chunk_kb`` with its MQTT client, however
many samples the alert has); a broken transfer resumes with the chunks still missing (the
device keeps no transfer state; the central knows what it has); every chunk is a small
QoS 1 message the broker may carry; and the frames never leave the device unless an operator
asks, for one alert at a time.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .errors import CommandError
from .records import Sample
from .samplestore import read_samples

__all__ = ["CHUNK_KB_MAX", "MAX_CHUNKS", "SampleServer"]

MAX_CHUNKS = 64  # chunks published for one command at most
CHUNK_KB_MAX = 256
Publish = Callable[[int, int, bytes], bool]  # (sample id, chunk, data) -> queued


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CommandError(f"'{what}' must be an integer from {low} to {high}, got {value!r}")
    return value


def sample_record(sample: Sample, chunk_bytes: int) -> Dict[str, Any]:
    """A sample as the answer lists it: its columns plus ``chunks``."""
    return {"id": sample.id, "ts": sample.ts, "camera": sample.camera, "reason": sample.reason,
            "alert_id": sample.alert_id, "kind": sample.kind, "feature": sample.feature,
            "path": sample.path, "sha256": sample.sha256, "bytes": sample.bytes,
            "width": sample.width, "height": sample.height, "stats": dict(sample.stats),
            "confidence": dict(sample.confidence),
            "detections": [dict(d) for d in sample.detections],
            "chunks": max(1, math.ceil(sample.bytes / chunk_bytes))}


class SampleServer:
    """Answers ``samples`` commands from the database and the samples folder."""

    def __init__(self, db_path: str, folder: Path, publish: Publish) -> None:
        self._db = db_path
        self._folder = folder
        self._publish = publish

    def answer(self, alert: str, want: Optional[Sequence[Any]], chunk_kb: int) -> Dict[str, Any]:
        """The alert's sample list, or (with ``want``) publish those chunks and say how many."""
        size = _int(chunk_kb, "chunk_kb", 1, CHUNK_KB_MAX) * 1024
        samples = {s.id: s for s in read_samples(self._db, alert_id=alert) if s.alert_id}
        if not samples:
            raise CommandError(f"no samples of alert {alert!r} on this device "
                               "(see 'edgewatch samples list')")
        if want is None:
            return {"alert": alert, "chunk_kb": size // 1024,
                    "samples": [sample_record(s, size) for s in samples.values()]}
        if not isinstance(want, list):
            raise CommandError("'want' must be a list of [sample_id, first_chunk, count]")
        return self._send(samples, want, size)

    def _send(self, samples: Mapping[int, Sample], want: List[Any],
              size: int) -> Dict[str, Any]:
        sent, missing = 0, []
        for item in want:
            if not isinstance(item, list) or len(item) != 3:
                raise CommandError(f"each 'want' item is [sample_id, first_chunk, count], "
                                   f"got {item!r}")
            sid = _int(item[0], "sample_id", 0, 2**62)
            if sid not in samples:
                raise CommandError(f"sample {sid} is not one of this alert's samples")
            last = max(1, math.ceil(samples[sid].bytes / size)) - 1
            first = _int(item[1], "first_chunk", 0, last)
            count = min(_int(item[2], "count", 1, 2**31), last - first + 1, MAX_CHUNKS - sent)
            if count <= 0:
                break  # the rest next time: one window per command
            if not self._send_file(samples[sid], first, count, size):
                missing.append(sid)
                continue
            sent += count
        return {"sent": sent, "missing": missing}

    def _send_file(self, sample: Sample, first: int, count: int, size: int) -> bool:
        """Publish ``count`` chunks from ``first``; False when the file is gone or altered."""
        path = self._folder / sample.path
        try:
            if os.path.getsize(path) != sample.bytes:
                return False
            with open(path, "rb") as f:
                f.seek(first * size)
                for k in range(first, first + count):
                    if not self._publish(sample.id, k, f.read(size)):
                        raise CommandError("the MQTT link went down while sending samples "
                                           "(ask again: the transfer resumes)")
        except OSError:
            return False
        return True
