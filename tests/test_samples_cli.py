"""``edgewatch samples list|export``: samples of a real night replay out to labelling tools."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from helpers import wait
from pycocotools.coco import COCO
from test_install import example_broker  # noqa: F401 - Mosquitto as shipped (TLS, ACL)

from agent.cli import main
from agent.config import Config, load_config
from agent.loop import replay
from agent.records import Sample
from agent.samplestore import read_samples, samples_dir
from agent.sources import open_source

START = 1_700_000_000.0
FAST = {"drift": {"warmup_s": 40, "window_frames": 300, "eval_interval_s": 2, "for_s": 6,
                  "clear_for_s": 10},
        "stats": {"capacity": 1024}, "store": {"flush_interval_s": 0.2, "window_s": 10},
        "health": {"enabled": False}}

# The parts of the COCO detection format a labelling tool relies on: (key, type) per record.
COCO_SCHEMA: Dict[str, Tuple[Tuple[str, Any], ...]] = {
    "images": (("id", int), ("file_name", str), ("width", int), ("height", int)),
    "annotations": (("id", int), ("image_id", int), ("category_id", int), ("bbox", list),
                   ("area", float), ("iscrowd", int)),
    "categories": (("id", int), ("name", str), ("supercategory", str)),
}


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Tuple[Config, List[Sample]]:
    """A night falling at 50 s, replayed to 130 s: normal, unsure and alert samples."""
    data: Dict[str, Dict[str, Any]] = {k: dict(v) for k, v in FAST.items()}
    data["store"]["path"] = str(tmp_path_factory.mktemp("night") / "h.db")
    data["model"] = {"path": str(model_path)}
    cfg = load_config(data)
    replay(cfg, open_source("emulated:night?seed=4&size=320x240&onset=50&duration=130"),
           fps=30, start_ts=START)
    samples = read_samples(cfg.store.path)
    assert {s.reason for s in samples} >= {"alert", "normal"}
    return cfg, samples


def _check_schema(doc: Dict[str, Any]) -> None:
    assert {"info", "images", "annotations", "categories", "licenses"} <= set(doc)
    for part, fields in COCO_SCHEMA.items():
        for record in doc[part]:
            for key, kind in fields:
                assert isinstance(record[key], kind), (part, key, record[key])
    for ann in doc["annotations"]:
        x, y, w, h = ann["bbox"]
        assert all(isinstance(v, (int, float)) for v in ann["bbox"]) and w > 0 and h > 0
    ids = {c["id"] for c in doc["categories"]}
    assert all(a["category_id"] in ids for a in doc["annotations"])
    assert len({i["id"] for i in doc["images"]}) == len(doc["images"])


def test_coco_export_passes_the_schema_and_round_trips_through_pycocotools(
        night: Tuple[Config, List[Sample]], tmp_path: Path) -> None:
    cfg, samples = night
    out = tmp_path / "coco"
    assert main(["samples", "export", "--db", cfg.store.path, "--out", str(out),
                 "--format", "coco", "--classes", "face"]) == 0
    doc = json.loads((out / "annotations.json").read_text())
    _check_schema(doc)
    coco = COCO(str(out / "annotations.json"))
    images = coco.loadImgs(coco.getImgIds())
    assert len(images) == len(samples)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["face"]
    by_sha = {s.sha256: s for s in samples}
    for image in images:
        data = (out / "images" / image["file_name"]).read_bytes()
        sample = by_sha[hashlib.sha256(data).hexdigest()]  # the very bytes captured
        assert image["edgewatch"]["reason"] == sample.reason
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert len(anns) == len(sample.detections)
        for ann, det in zip(anns, sample.detections):
            x0, y0 = det["box"][0] * sample.width, det["box"][1] * sample.height
            assert ann["bbox"][:2] == pytest.approx([x0, y0], abs=0.01)
            assert ann["score"] == det["score"] and ann["category_id"] == 1
    assert sum(len(s.detections) for s in samples) == len(coco.getAnnIds()) > 0


def test_yolo_export_writes_a_label_file_per_image_and_the_classes(
        night: Tuple[Config, List[Sample]], tmp_path: Path) -> None:
    cfg, samples = night
    out = tmp_path / "yolo"
    assert main(["samples", "export", "--db", cfg.store.path, "--out", str(out),
                 "--format", "yolo"]) == 0
    assert (out / "classes.txt").read_text() == "class_0\n"
    labels = sorted((out / "labels").glob("*.txt"))
    assert [p.stem for p in labels] == sorted(p.stem for p in (out / "images").glob("*.jpg"))
    assert len(labels) == len(samples)
    for path in labels:
        for line in path.read_text().splitlines():
            cls, *box = line.split()
            assert cls == "0" and len(box) == 4 and all(0 <= float(v) <= 1 for v in box)
    assert os.stat(next((out / "images").glob("*.jpg"))).st_mode & 0o777 == 0o640


def test_jsonl_export_and_filters(night: Tuple[Config, List[Sample]], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg, samples = night
    alert = next(s for s in samples if s.reason == "alert")
    out = tmp_path / "jsonl"
    assert main(["samples", "export", "--db", cfg.store.path, "--out", str(out), "--format",
                 "jsonl", "--alert", alert.alert_id[:8]]) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert rows and {r["alert_id"] for r in rows} == {alert.alert_id}
    assert all((out / r["file"]).exists() and r["stats"] and r["confidence"] for r in rows)
    capsys.readouterr()
    assert main(["samples", "list", "--db", cfg.store.path, "--until", str(START + 49)]) == 0
    listed = capsys.readouterr().out
    assert "normal" in listed and "alert" not in listed.split("\n", 1)[1]
    assert main(["samples", "list", "--db", cfg.store.path, "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(samples)


def test_an_unknown_or_empty_alert_is_refused(night: Tuple[Config, List[Sample]],
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg, samples = night
    newest: Dict[str, float] = {}
    for s in samples:
        if s.alert_id:
            newest[s.alert_id] = max(newest.get(s.alert_id, 0.0), s.ts)
    known = ", ".join(a[:12] for a in sorted(newest, key=lambda a: -newest[a]))
    out = tmp_path / "out"
    for command in (["list"], ["export", "--out", str(out)]):
        assert main(["samples", *command, "--db", cfg.store.path, "--alert", "ffff"]) != 0
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"no alert ffff among the samples in {cfg.store.path} "
                            f"(known: {known})") and "\n" not in err
        assert main(["samples", *command, "--db", cfg.store.path, "--alert", " "]) == 2
        assert "--alert is empty" in capsys.readouterr().err
    assert not out.exists()


def test_a_second_export_into_the_same_folder_is_refused_unless_forced(
        night: Tuple[Config, List[Sample]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg, samples = night
    alert = next(s.alert_id for s in samples if s.alert_id)
    out = tmp_path / "out"
    export = ["samples", "export", "--db", cfg.store.path, "--out", str(out)]
    assert main([*export, "--format", "coco"]) == 0
    before = sorted(p.name for p in out.rglob("*"))
    assert main([*export, "--format", "yolo"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--out {out} is not empty (name a new folder, or pass --force to "
                        "replace an earlier export there)") and "\n" not in err
    assert sorted(p.name for p in out.rglob("*")) == before
    assert main([*export, "--format", "yolo", "--alert", alert, "--force"]) == 0
    mine = [s for s in samples if s.alert_id == alert]
    assert not (out / "annotations.json").exists() and (out / "classes.txt").exists()
    assert len(list((out / "images").iterdir())) == len(mine) < len(samples)
    (out / "notes.txt").write_text("mine")
    assert main([*export, "--format", "jsonl", "--force"]) != 0
    assert "holds notes.txt, which no export wrote" in capsys.readouterr().err
    assert (out / "classes.txt").exists() and len(list((out / "images").iterdir())) == len(mine)


def test_an_altered_file_is_left_out_and_counted(night: Tuple[Config, List[Sample]],
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg, samples = night
    folder = tmp_path / "copy"
    for s in samples:
        (folder / s.path).parent.mkdir(parents=True, exist_ok=True)
        (folder / s.path).write_bytes((samples_dir(cfg) / s.path).read_bytes())
    (folder / samples[0].path).write_bytes(b"not the frame")
    assert main(["samples", "export", "--db", cfg.store.path, "--samples", str(folder),
                 "--out", str(tmp_path / "out"), "--format", "jsonl"]) == 0
    said = capsys.readouterr()
    assert f"exported {len(samples) - 1} samples" in said.out
    assert said.err == f"edgewatch: warning: 1 of {len(samples)} samples left out (file missing "\
        f"or altered in {folder}: ids {samples[0].id}; if the files are elsewhere, pass " \
        "--samples DIR)\n"
    rows = (tmp_path / "out" / "samples.jsonl").read_text().splitlines()
    assert len(rows) == len(samples) - 1
    # none of them: an error, exit 1, and nothing written
    for s in samples:
        (folder / s.path).unlink()
    assert main(["samples", "export", "--db", cfg.store.path, "--samples", str(folder),
                 "--out", str(tmp_path / "none")]) == 1
    said = capsys.readouterr()
    assert said.out == "" and said.err.startswith(
        f"edgewatch: error: none of the {len(samples)} samples exported (file missing or "
        f"altered in {folder}: ids ") and said.err.count("\n") == 1
    assert not (tmp_path / "none").exists()


def test_a_snapshot_from_export_carries_the_samples(night: Tuple[Config, List[Sample]],
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg, samples = night
    (tmp_path / "pulled").mkdir()
    snapshot = tmp_path / "pulled" / "cam.db"
    assert main(["export", "--db", cfg.store.path, "--out", str(snapshot)]) == 0
    said = capsys.readouterr().out
    assert f"samples={len(samples)} (files in {tmp_path / 'pulled' / 'cam-samples'})" in said
    assert samples_dir(snapshot) == tmp_path / "pulled" / "cam-samples"
    out = tmp_path / "yolo"
    assert main(["samples", "export", "--db", str(snapshot), "--out", str(out),
                 "--format", "yolo"]) == 0, capsys.readouterr()
    assert len(list((out / "images").glob("*.jpg"))) == len(samples)
    assert f"exported {len(samples)} samples" in capsys.readouterr().out


def test_files_not_found_name_the_folder_and_suggest_samples(
        night: Tuple[Config, List[Sample]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg, samples = night
    snapshot = tmp_path / "bare.db"
    assert main(["export", "--db", cfg.store.path, "--out", str(snapshot), "--no-samples"]) == 0
    assert "samples=" not in capsys.readouterr().out
    assert main(["samples", "export", "--db", str(snapshot), "--out", str(tmp_path / "o"),
                 "--format", "yolo"]) == 1
    err = capsys.readouterr().err
    assert f"in {tmp_path / 'samples'}" in err and "--samples DIR" in err
    capsys.readouterr()
    assert main(["samples", "export", "--db", str(snapshot), "--out", str(tmp_path / "o2"),
                 "--samples", str(samples_dir(cfg))]) == 0
    assert f"exported {len(samples)} samples" in capsys.readouterr().out


@pytest.mark.parametrize("classes, error", [
    ("face,face", "--classes names face more than once (each class needs its own name)"),
    ("", "--classes '' has an empty name"), ("face,,person", "has an empty name")])
def test_duplicate_or_empty_class_names_are_refused(night: Tuple[Config, List[Sample]],
                                                   tmp_path: Path, classes: str, error: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = night
    out = tmp_path / "out"
    assert main(["samples", "export", "--db", cfg.store.path, "--out", str(out),
                 "--classes", classes]) == 2
    err = capsys.readouterr().err.strip()
    assert error in err and "\n" not in err and not out.exists()


def test_an_out_that_is_a_file_is_one_line_error(night: Tuple[Config, List[Sample]],
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = night
    (tmp_path / "f").write_text("")
    assert main(["samples", "export", "--db", cfg.store.path, "--out",
                 str(tmp_path / "f")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.endswith("is a file (name a folder)") and "\n" not in err


def test_a_missing_database_says_how_to_point_at_one(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "replay.db"
    assert main(["samples", "list", "--db", str(db), "--since", "2h"]) != 0
    err = capsys.readouterr().err.strip()
    assert f"database not found: {db}" in err and "\n" not in err
    assert "--db FILE" in err and "--config FILE" in err


def test_a_database_that_is_not_edgewatchs_or_a_folder_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    for db in (empty, other):
        assert main(["samples", "list", "--db", str(db)]) != 0
        err = capsys.readouterr().err.strip()
        assert f"not an edgewatch database: {db}" in err and "\n" not in err
    assert main(["samples", "list", "--db", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{tmp_path} is a folder, not a database file (name the file, e.g. "
                        f"--db {tmp_path / 'edgewatch.db'})"), err


# ---- remote samples over MQTT (TLS, passwords and the ACL as shipped) -----------------------

@pytest.mark.integration
def test_fleet_samples_fetches_an_alerts_frames_over_tls_and_resumes(
        night: Tuple[Config, List[Sample]], example_broker: Any,  # noqa: F811
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from agent.service import Agent

    cfg, samples = night
    endpoint, ca = example_broker
    alert = next(s for s in samples if s.reason == "alert").alert_id
    assert alert is not None
    wanted = [s for s in samples if s.alert_id == alert]
    device = cfg.with_values(
        mqtt__enabled=True, mqtt__host="127.0.0.1", mqtt__port=endpoint.port, mqtt__tls=True,
        mqtt__ca_file=str(ca), mqtt__device_id="dev1", mqtt__username="dev1",
        mqtt__password="pw1", capture__remote=True)
    broker = ["--broker", "127.0.0.1", "--port", str(endpoint.port), "--tls-ca", str(ca),
              "--username", "central", "--password", "pwc"]
    out = tmp_path / "fetched"
    agent = Agent.start(device, model_info={"path": cfg.model.path}, live=False)
    try:
        wait(lambda: agent.mqtt is not None and agent.mqtt.connected, 20, "device connected")
        args = ["fleet", "samples", "dev1", alert[:8], "--out", str(out), "--chunk-kb", "4",
                *broker]
        assert main(args) == 0, capsys.readouterr().err
        said = capsys.readouterr().out
        assert f"{len(wanted)} of {len(wanted)} samples fetched" in said
        for s in wanted:
            got = out / s.path
            assert hashlib.sha256(got.read_bytes()).hexdigest() == s.sha256
            assert os.stat(got).st_mode & 0o777 == 0o640
        # A transfer cut short: one file lost, another half there; the next run completes them.
        (out / wanted[0].path).unlink()
        half = out / wanted[1].path
        data = half.read_bytes()
        half.unlink()
        part = half.with_name(half.name + ".part")
        part.write_bytes(data[:4096])
        part.with_name(half.name + ".part.chunks").write_text(json.dumps({"chunk": 4096,
                                                                         "have": [0]}))
        assert main(args) == 0
        assert f"2 of {len(wanted)} samples fetched, {len(wanted) - 2} already here" in \
            capsys.readouterr().out
        assert half.read_bytes() == data and not part.exists()
        manifest = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in manifest) == sorted(s.id for s in wanted)
    finally:
        agent.close()


def test_remote_samples_need_tls(tmp_path: Path) -> None:
    from agent.errors import ConfigError

    with pytest.raises(ConfigError, match="capture.remote = true sends captured frames"):
        load_config({"capture": {"remote": True}, "mqtt": {"enabled": True}})
