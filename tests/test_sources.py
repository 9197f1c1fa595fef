"""Frame sources on real files: video written here, image folders, and the reconnect logic."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.emulated import EmulatedFeed
from agent.errors import SourceError
from agent.sources import (
    ImageFolderSource,
    LiveSource,
    Source,
    VideoFileSource,
    open_source,
    redact,
    to_bgr,
)

W, H = 64, 48


def solid(value: int, channels: int = 3) -> np.ndarray:
    shape = (H, W) if channels == 1 else (H, W, channels)
    return np.full(shape, value, np.uint8)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    """A 12-frame MJPG .avi at 10 fps whose frame k has grey level 20 * k."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    assert writer.isOpened()
    for k in range(12):
        writer.write(solid(20 * k))
    writer.release()
    return path


def levels(frames: list) -> list[int]:
    return [int(round(f.mean())) for f in frames]


def test_video_file_reads_every_frame_then_stops(video):
    source = open_source(str(video))
    assert isinstance(source, VideoFileSource) and isinstance(source, Source)
    assert not source.live and source.fps == pytest.approx(10.0)
    frames = [source.read() for _ in range(12)]
    assert all(f is not None and f.shape == (H, W, 3) and f.dtype == np.uint8 for f in frames)
    assert all(abs(a - 20 * k) <= 3 for k, a in enumerate(levels(frames)))
    assert source.read() is None
    source.close()
    assert source.read() is None


def test_video_file_loops_and_resizes(video):
    source = open_source(str(video), loop=True, size=(32, 24))
    frames = [source.read() for _ in range(30)]
    assert all(f.shape == (24, 32, 3) for f in frames)
    got = levels(frames)
    assert abs(got[12] - got[0]) <= 3 and abs(got[25] - got[1]) <= 3
    assert source.rewinds == 2
    source.close()


def write_images(folder: Path, names_values: dict) -> None:
    folder.mkdir(exist_ok=True)
    for name, image in names_values.items():
        assert cv2.imwrite(str(folder / name), image)


def test_image_folder_natural_order_and_conversion(tmp_path):
    folder = tmp_path / "frames"
    write_images(folder, {
        "frame10.png": solid(100),
        "frame2.jpg": solid(20, channels=1),  # greyscale
        "frame1.png": solid(10, channels=4),  # BGRA
        "Frame3.bmp": solid(30),
    })
    (folder / "notes.txt").write_text("not an image")
    source = open_source(str(folder))
    assert isinstance(source, ImageFolderSource) and source.fps is None
    frames = [source.read() for _ in range(4)]
    assert all(f.shape == (H, W, 3) for f in frames)
    assert levels(frames) == [10, 20, 30, 100]
    assert source.read() is None


def test_image_folder_loops_and_skips_unreadable_files(tmp_path, caplog):
    folder = tmp_path / "frames"
    write_images(folder, {"a1.png": solid(10), "a3.png": solid(30)})
    (folder / "a2.png").write_bytes(b"not a png at all")
    source = open_source(str(folder), loop=True)
    with caplog.at_level(logging.WARNING, logger="agent.sources"):
        got = levels([source.read() for _ in range(5)])
    assert got == [10, 30, 10, 30, 10]
    assert source.skipped == 2  # once per pass
    assert sum("a2.png" in r.getMessage() for r in caplog.records) == 2


def test_folder_of_only_unreadable_images_fails_on_read(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(b"\xff\xd8 truncated")
    source = open_source(str(folder), loop=True)
    with pytest.raises(SourceError, match="no readable image"):
        source.read()


def test_empty_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(SourceError) as err:
        open_source(str(tmp_path))
    assert str(tmp_path) in str(err.value) and "no image files" in str(err.value)


def test_single_image_file(tmp_path):
    write_images(tmp_path, {"one.png": solid(77)})
    source = open_source(str(tmp_path / "one.png"))
    assert levels([source.read()]) == [77] and source.read() is None


@pytest.mark.parametrize(
    "uri, words",
    [
        ("/nonexistent/clip.mp4", ["cannot open source: /nonexistent/clip.mp4", "not found"]),
        ("/dev/video97", ["cannot open source: /dev/video97", "no such device"]),
        ("emulated:sunset", ["'sunset'", "stationary"]),
    ],
)
def test_unopenable_sources_say_what_and_how(uri, words):
    with pytest.raises(SourceError) as err:
        open_source(uri)
    for word in words:
        assert word in str(err.value)


def test_file_opencv_cannot_decode(tmp_path):
    path = tmp_path / "fake.avi"
    path.write_text("this is not a video")
    with pytest.raises(SourceError, match="cannot open source: .*fake.avi"):
        open_source(str(path))


def test_emulated_uri_opens_a_feed_of_the_requested_size():
    source = open_source("emulated:stationary?seed=2&duration=0.1", size=(80, 60))
    assert isinstance(source, EmulatedFeed) and isinstance(source, Source)
    assert source.read().shape == (60, 80, 3)
    assert source.read() is not None and source.read() is not None
    assert source.read() is None  # 0.1 s at 30 fps: 3 frames


def test_to_bgr_converts_16_bit_and_float():
    assert to_bgr(np.full((4, 4), 65535, np.uint16)).tolist()[0][0] == [255, 255, 255]
    assert to_bgr(np.full((4, 4, 3), 300.0, np.float32)).max() == 255


def test_redact_hides_passwords():
    assert redact("rtsp://admin:hunter2@10.0.0.5:554/stream1") == (
        "rtsp://admin:***@10.0.0.5:554/stream1"
    )
    assert redact("rtsp://10.0.0.5/stream") == "rtsp://10.0.0.5/stream"
    assert redact("/dev/video0") == "/dev/video0"


# --- reconnect logic -------------------------------------------------------------------------
# A physical camera or RTSP server cannot run here, so these tests inject a fake capture
# factory (scripted like cv2.VideoCapture) and, in one test, a real video file that "drops"
# when it ends.


class FakeCapture:
    """Stands in for cv2.VideoCapture: opens or not, then yields its frames and fails."""

    def __init__(self, opened: bool = True, frames: tuple = ()):
        self.opened = opened
        self.frames = list(frames)
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 - cv2's name
        return self.opened

    def get(self, prop: int) -> float:
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        if not self.opened or self.released or not self.frames:
            return False, None
        return True, self.frames.pop(0)

    def release(self) -> None:
        self.released = True


def scripted(*captures: FakeCapture):
    remaining = list(captures)
    return lambda: remaining.pop(0)


def test_live_source_reconnects_with_exponential_backoff(caplog):
    sleeps: list[float] = []
    source = LiveSource(
        "rtsp://user:secret@cam.local/live",
        reconnect_initial_s=1.0,
        reconnect_max_s=3.0,
        sleep=sleeps.append,
        capture_factory=scripted(
            FakeCapture(frames=(solid(1), solid(2))),
            FakeCapture(opened=False),
            FakeCapture(opened=True),  # opens but yields nothing: still down
            FakeCapture(opened=False),
            FakeCapture(frames=(solid(3),)),
        ),
    )
    assert source.live and source.fps == 25.0 and "secret" not in source.name
    with caplog.at_level(logging.INFO, logger="agent.sources"):
        got = levels([source.read() for _ in range(3)])
    assert got == [1, 2, 3]
    assert sleeps == [1.0, 2.0, 3.0, 3.0]
    assert source.reconnects == 1 and source.state == "ok"
    assert source.last_error == "reopen failed"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "secret" not in warnings[0].getMessage()


def test_live_source_gives_up_after_a_long_outage():
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    source = LiveSource(
        0,
        reconnect_initial_s=1.0,
        reconnect_max_s=8.0,
        give_up_after_s=20.0,
        sleep=sleep,
        clock=lambda: now[0],
        capture_factory=scripted(FakeCapture(), *[FakeCapture(opened=False)] * 10),
    )
    with pytest.raises(SourceError, match="no frame for 20 s"):
        source.read()
    assert source.state == "failed" and now[0] == pytest.approx(1 + 2 + 4 + 8 + 8)


def test_close_from_another_thread_wakes_a_pending_reconnect():
    source = LiveSource(
        "rtsp://cam.local/live",
        reconnect_initial_s=30.0,
        capture_factory=scripted(FakeCapture(), *[FakeCapture(opened=False)] * 5),
    )
    result: list = []
    reader = threading.Thread(target=lambda: result.append(source.read()), name="reader")
    reader.start()
    try:
        while source.state != "reconnecting":
            reader.join(0.01)
        source.close()
        reader.join(5.0)
        assert not reader.is_alive()
    finally:
        source.close()
        reader.join(5.0)
    assert result == [None] and source.state == "failed"


def test_live_source_that_never_opens_is_a_source_error():
    with pytest.raises(SourceError, match="cannot open source: camera 3"):
        LiveSource(3, name="camera 3", capture_factory=lambda: FakeCapture(opened=False))


def test_live_source_on_a_real_video_file_reopens_it_when_it_ends(video):
    sleeps: list[float] = []
    source = LiveSource(str(video), reconnect_initial_s=0.5, sleep=sleeps.append)
    got = levels([source.read() for _ in range(14)])
    assert abs(got[12] - got[0]) <= 3 and abs(got[13] - got[1]) <= 3
    assert source.reconnects == 1 and sleeps == [0.5] and source.state == "ok"
    source.close()
    assert source.read() is None
