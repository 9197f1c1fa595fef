"""Captured samples out to a labelling tool: images plus a manifest it imports.

Formats (``--format``), each writing ``images/`` under the output folder:

* ``coco``: ``annotations.json``, COCO detection format; the model's own detections are the
  annotations (pre-annotations to correct, each with its ``score``); an image's capture
  record (reason, alert, statistics) rides along under ``edgewatch``.
* ``yolo``: ``labels/<image>.txt`` with ``class cx cy w h`` (0..1) per detection and
  ``classes.txt`` (one name a line, line ``i`` naming class ``i``).
* ``jsonl``: ``samples.jsonl``, one JSON object per sample (every column, plus ``file``).

Each file is checked against its recorded SHA-256 as it is copied; a missing or altered one
is left out and counted, never exported under a sample's name.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ._version import __version__
from .errors import CommandError
from .records import Sample
from .samplestore import write_private

__all__ = ["FORMATS", "export_samples"]

FORMATS = ("coco", "yolo", "jsonl")
_MANIFESTS = ("annotations.json", "classes.txt", "samples.jsonl")


def _class_names(samples: Sequence[Sample], names: Optional[Sequence[str]]) -> List[str]:
    """Names for class 0..max: the given ones, then ``class_<i>``."""
    top = max((int(d["class"]) for s in samples for d in s.detections), default=-1)
    given = list(names or ())
    return given + [f"class_{i}" for i in range(len(given), top + 1)]


def _copy(folder: Path, sample: Sample, images: Path) -> Optional[str]:
    """Copy a sample's JPEG into ``images``; its new name, or None if missing or altered."""
    try:
        data = (folder / sample.path).read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sample.sha256:
        return None
    name = sample.path.replace("/", "_")
    write_private(images / name, data)  # as private as the original (0640)
    return name


def _record(sample: Sample) -> Dict[str, Any]:
    return {"id": sample.id, "ts": sample.ts, "camera": sample.camera, "reason": sample.reason,
            "alert_id": sample.alert_id, "kind": sample.kind, "feature": sample.feature,
            "path": sample.path, "sha256": sample.sha256, "bytes": sample.bytes,
            "width": sample.width, "height": sample.height, "stats": dict(sample.stats),
            "confidence": dict(sample.confidence),
            "detections": [dict(d) for d in sample.detections]}


def export_samples(samples: Sequence[Sample], folder: Path, out: Path, fmt: str, *,
                   class_names: Optional[Sequence[str]] = None,
                   force: bool = False) -> Dict[str, Any]:
    """Write ``samples`` (files in ``folder``) to ``out`` as ``fmt``.

    ``out`` must be missing or empty; with ``force`` an earlier export's files there go
    first (see :func:`clear_export`). Returns {"format", "manifest", "images",
    "skipped": [sample ids], "annotations"}.
    """
    if fmt not in FORMATS:
        raise CommandError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file (name a folder)")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise CommandError(f"--out {out} is not empty (name a new folder, or pass --force "
                               "to replace an earlier export there)")
        clear_export(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    copied: List[Tuple[Sample, str]] = []
    skipped: List[int] = []
    for sample in samples:
        name = _copy(folder, sample, images)
        if name is None:
            skipped.append(sample.id)
        else:
            copied.append((sample, name))
    names = _class_names([s for s, _ in copied], class_names)
    writer = {"coco": _coco, "yolo": _yolo, "jsonl": _jsonl}[fmt]
    manifest, annotations = writer(copied, out, names)
    return {"format": fmt, "manifest": str(manifest), "images": len(copied),
            "skipped": skipped, "annotations": annotations}


def clear_export(out: Path) -> None:
    """Delete an earlier export in ``out`` (its manifests, ``images/*.jpg``, ``labels/*.txt``
    and those folders); CommandError, deleting nothing, when ``out`` holds anything else."""
    owned = {out / m for m in _MANIFESTS} | {out / "images", out / "labels"}
    owned |= {*out.glob("images/*.jpg"), *out.glob("labels/*.txt")}
    foreign = [p for p in (*out.iterdir(), *out.glob("images/*"), *out.glob("labels/*"))
               if p not in owned or p.is_symlink()]
    if foreign:
        raise CommandError(f"--out {out} holds {foreign[0].relative_to(out)}, which no export "
                           "wrote (--force replaces only an earlier export; name a new folder)")
    for path in sorted(owned, key=lambda p: -len(p.parts)):  # files before their folders
        if path.is_dir():
            path.rmdir()
        elif path.exists():
            path.unlink()


def _coco(copied: Sequence[Tuple[Sample, str]], out: Path,
          names: Sequence[str]) -> Tuple[Path, int]:
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for image_id, (sample, name) in enumerate(copied, start=1):
        images.append({"id": image_id, "file_name": name, "width": sample.width,
                       "height": sample.height, "date_captured": _iso(sample.ts),
                       "edgewatch": {k: v for k, v in _record(sample).items()
                                     if k != "detections"}})
        for det in sample.detections:
            x0, y0, x1, y1 = (float(v) for v in det["box"])
            w, h = (x1 - x0) * sample.width, (y1 - y0) * sample.height
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": int(det["class"]) + 1,  # COCO ids start at 1
                "bbox": [round(x0 * sample.width, 2), round(y0 * sample.height, 2),
                         round(w, 2), round(h, 2)],
                "area": round(w * h, 2), "iscrowd": 0, "segmentation": [],
                "score": float(det["score"])})
    doc = {"info": {"description": "edgewatch captured samples (model detections as "
                    "pre-annotations)", "version": __version__,
                    "date_created": _iso(datetime.now(timezone.utc).timestamp())},
           "licenses": [], "images": images, "annotations": annotations,
           "categories": [{"id": i + 1, "name": n, "supercategory": "object"}
                          for i, n in enumerate(names)]}
    manifest = out / "annotations.json"
    _write_text(manifest, json.dumps(doc, indent=1))
    return manifest, len(annotations)


def _yolo(copied: Sequence[Tuple[Sample, str]], out: Path,
          names: Sequence[str]) -> Tuple[Path, int]:
    labels = out / "labels"
    labels.mkdir(exist_ok=True)
    count = 0
    for sample, name in copied:
        lines = []
        for det in sample.detections:
            x0, y0, x1, y1 = (float(v) for v in det["box"])
            lines.append(f"{int(det['class'])} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} "
                         f"{x1 - x0:.6f} {y1 - y0:.6f}")
        count += len(lines)
        _write_text(labels / (Path(name).stem + ".txt"), "".join(f"{line}\n" for line in lines))
    manifest = out / "classes.txt"
    _write_text(manifest, "".join(f"{n}\n" for n in names))
    return manifest, count


def _jsonl(copied: Sequence[Tuple[Sample, str]], out: Path,
           names: Sequence[str]) -> Tuple[Path, int]:
    manifest = out / "samples.jsonl"
    _write_text(manifest, "".join(json.dumps({**_record(s), "file": f"images/{name}"}) + "\n"
                                  for s, name in copied))
    return manifest, sum(len(s.detections) for s, _ in copied)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def summary_rows(samples: Sequence[Sample]) -> List[Mapping[str, Any]]:
    """One row per sample for ``edgewatch samples list``."""
    return [{"id": s.id, "ts": s.ts, "reason": s.reason, "alert": s.alert_id,
             "kind": s.kind, "feature": s.feature, "size": f"{s.width}x{s.height}",
             "detections": len(s.detections), "path": s.path} for s in samples]
