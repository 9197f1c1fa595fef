"""Frame sources: emulated feeds, cameras, network streams, video files and image folders.

Every source returns BGR uint8 frames (H x W x 3) from ``read()`` and None once finished.
``open_source`` picks the kind from the URI; a source that cannot be opened raises
``SourceError("cannot open source: <uri> (<why>; <fix>)")``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Protocol, Tuple, Union, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np
import numpy.typing as npt

from .emulated import parse_emulated_uri
from .errors import SourceError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
_STREAM_TIMEOUT_MS = 5000

Frame = npt.NDArray[np.uint8]  # BGR, (H, W, 3)
RawFrame = npt.NDArray[np.generic]  # as decoded: grey, BGRA, 16-bit or float, any of them


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` a source uses (a test may pass another capture)."""

    def isOpened(self) -> bool: ...
    def read(self) -> Tuple[bool, Optional[RawFrame]]: ...
    def get(self, propId: int) -> float: ...
    def set(self, propId: int, value: float) -> bool: ...
    def release(self) -> None: ...


@runtime_checkable
class Source(Protocol):
    """What the capture loop reads frames from."""

    @property
    def fps(self) -> float | None:
        """Nominal frames per second, if the source knows it."""

    @property
    def name(self) -> str:
        """A human name for logs and records (passwords removed)."""

    @property
    def live(self) -> bool:
        """True for cameras and network streams, False for files and emulated feeds."""

    def read(self) -> Optional[Frame]:
        """The next BGR uint8 frame, or None when the source is finished."""

    def close(self) -> None:
        """Release the source; ``read()`` returns None afterwards."""


def to_bgr(frame: RawFrame, size: Optional[tuple[int, int]] = None) -> Frame:
    """``frame`` as BGR uint8 (from gray, BGRA or 16-bit), resized to ``size`` (w, h) if given."""
    if frame.dtype == np.uint16:
        out: Frame = (frame.astype(np.uint16, copy=False) >> 8).astype(np.uint8)
    elif frame.dtype != np.uint8:
        out = np.clip(frame, 0, 255).astype(np.uint8)
    else:
        out = frame.astype(np.uint8, copy=False)
    # OpenCV returns the uint8 arrays it is given; its stubs type them as any Mat.
    if out.ndim == 2 or out.shape[2] == 1:
        out = np.asarray(cv2.cvtColor(out, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    elif out.shape[2] == 4:
        out = np.asarray(cv2.cvtColor(out, cv2.COLOR_BGRA2BGR), dtype=np.uint8)
    if size is not None and (out.shape[1], out.shape[0]) != tuple(size):
        shrink = out.shape[1] > size[0]
        out = np.asarray(cv2.resize(out, (size[0], size[1]), interpolation=(
            cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)), dtype=np.uint8)
    return out


def redact(uri: str) -> str:
    """``uri`` with any password removed, for names, logs and error messages."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _fps_of(capture: Capture) -> Optional[float]:
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if 0.0 < fps < 1000.0 else None


class VideoFileSource:
    """Frames of a video file, read once or looped."""

    live = False

    def __init__(self, path: Path, *, loop: bool = False, size: tuple[int, int] | None = None):
        self.name = str(path)
        self.loop = loop
        self.size = size
        self._capture: Optional[Capture] = cv2.VideoCapture(str(path))
        if not self._capture.isOpened():
            raise SourceError(
                f"cannot open source: {path} (OpenCV cannot decode this file; "
                "use a video OpenCV reads, e.g. .mp4 or .avi, or a folder of images)"
            )
        self.fps = _fps_of(self._capture)
        self.rewinds = 0

    def read(self) -> Optional[Frame]:
        """The next frame; at the end, None or (with ``loop``) the first frame again."""
        if self._capture is None:
            return None
        ok, frame = self._capture.read()
        if not ok and self.loop:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._capture.read()
            self.rewinds += ok
        if not ok or frame is None:
            return None
        return to_bgr(frame, self.size)

    def close(self) -> None:
        """Release the file."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def _natural_key(path: Path) -> list[Union[int, str]]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class ImageFolderSource:
    """The image files of a folder in natural name order (frame2 before frame10)."""

    live = False
    fps = None

    def __init__(self, files: list[Path], name: str, *, loop: bool = False,
                 size: tuple[int, int] | None = None):
        self.files = files
        self.name = name
        self.loop = loop
        self.size = size
        self.skipped = 0
        self._next = 0
        self._read_this_pass = 0
        self._closed = False

    @classmethod
    def from_dir(cls, folder: Path, *, loop: bool = False,
                 size: tuple[int, int] | None = None) -> ImageFolderSource:
        """A source over every image file directly inside ``folder``."""
        files = sorted(
            (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=_natural_key,
        )
        if not files:
            raise SourceError(
                f"cannot open source: {folder} (no image files in the folder; "
                f"add {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} files or point at another folder)"
            )
        return cls(files, str(folder), loop=loop, size=size)

    def read(self) -> Optional[Frame]:
        """The next readable image; unreadable files are skipped and counted in ``skipped``."""
        while not self._closed:
            if self._next >= len(self.files):
                if self._read_this_pass == 0:
                    raise SourceError(
                        f"no readable image in source: {self.name} "
                        f"({self.skipped} files skipped; check the files are valid images)"
                    )
                if not self.loop:
                    return None
                self._next, self._read_this_pass = 0, 0
            path = self.files[self._next]
            self._next += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                self.skipped += 1
                log.warning("skipped unreadable image: %s (%d skipped)", path, self.skipped)
                continue
            self._read_this_pass += 1
            return to_bgr(image, self.size)
        return None

    def close(self) -> None:
        """Stop reading: ``read()`` returns None from now on."""
        self._closed = True


class LiveSource:
    """A camera or network stream that reconnects with exponential backoff when it fails.

    ``read()`` blocks while reconnecting (the capture thread owns the source) and returns
    None only once ``close()`` has been called, possibly from another thread. ``state`` is
    "ok", "reconnecting" or "failed" (gave up after ``give_up_after_s``, or closed mid-outage).
    """

    live = True

    def __init__(
        self,
        target: int | str,
        *,
        name: str | None = None,
        size: tuple[int, int] | None = None,
        reconnect_initial_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        give_up_after_s: float | None = None,
        capture_factory: Optional[Callable[[], Capture]] = None,
        sleep: Optional[Callable[[float], object]] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < reconnect_initial_s <= reconnect_max_s:
            raise SourceError(
                f"bad reconnect delays: initial {reconnect_initial_s} s, max {reconnect_max_s} s "
                "(use 0 < initial <= max)"
            )
        self.target = target
        self.name = name if name is not None else redact(str(target))
        self.size = size
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.give_up_after_s = give_up_after_s
        self.reconnects = 0
        self.state = "ok"
        self.last_error: str | None = None
        self._factory = capture_factory or self._default_capture
        self._stop = threading.Event()
        self._io = threading.Lock()  # held while the capture is read, released or replaced
        self._sleep = sleep or self._stop.wait
        self._clock = clock
        self._capture: Optional[Capture] = self._factory()
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(
                f"cannot open source: {self.name} (the device or stream did not open; check "
                "it is connected, the index or URL is right and no other program holds it)"
            )
        self.fps = _fps_of(self._capture)

    def _default_capture(self) -> Capture:
        if isinstance(self.target, int) or str(self.target).startswith("/dev/"):
            capture = cv2.VideoCapture(self.target, cv2.CAP_V4L2)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a stale queue
            if self.size is not None:
                capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
                capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
            return capture
        if str(self.target).startswith(_STREAM_SCHEMES):
            # Timeouts so a dead stream fails a read instead of blocking forever.
            return cv2.VideoCapture(str(self.target), cv2.CAP_FFMPEG, [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, _STREAM_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, _STREAM_TIMEOUT_MS,
            ])
        return cv2.VideoCapture(str(self.target))

    def read(self) -> Optional[Frame]:
        """The next frame, reconnecting as long as it takes; None once closed."""
        frame = None if self._stop.is_set() else self._read_once()
        if frame is None and not self._stop.is_set():
            frame = self._reconnect()
        if self._stop.is_set():
            self._release()
            return None
        return None if frame is None else to_bgr(frame, self.size)

    def _read_once(self) -> Optional[RawFrame]:
        with self._io:
            if self._capture is None:
                return None
            try:
                ok, frame = self._capture.read()
            except cv2.error as exc:
                self.last_error = f"read raised: {exc}"
                return None
        if not ok or frame is None:
            self.last_error = "read returned no frame"
            return None
        return frame

    def _release(self) -> None:
        with self._io:
            capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()

    def _reconnect(self) -> Optional[RawFrame]:
        """Reopen with delays doubling from initial to max until a frame comes; that frame."""
        self.state = "reconnecting"
        started = self._clock()
        log.warning("source lost: %s (%s); reconnecting", self.name, self.last_error)
        delay, attempts = self.reconnect_initial_s, 0
        while not self._stop.is_set():
            self._release()
            if (self.give_up_after_s is not None
                    and self._clock() - started >= self.give_up_after_s):
                self.state = "failed"
                raise SourceError(
                    f"source failed: {self.name} (no frame for {self.give_up_after_s:.0f} s, "
                    f"{attempts} reconnect attempts; last error: {self.last_error})"
                )
            self._sleep(delay)
            if self._stop.is_set():
                break
            attempts += 1
            delay = min(delay * 2.0, self.reconnect_max_s)
            try:
                capture = self._factory()
            except cv2.error as exc:
                self.last_error = f"reopen raised: {exc}"
                continue
            with self._io:
                self._capture = capture
            if not capture.isOpened():
                self.last_error = "reopen failed"
                continue
            frame = self._read_once()
            if frame is None:
                self.last_error = "reopened but read no frame"
                continue
            self.state = "ok"
            self.reconnects += 1
            log.info("source back: %s after %.1f s, %d attempts",
                     self.name, self._clock() - started, attempts)
            return frame
        self.state = "failed"
        return None

    def close(self) -> None:
        """Stop reading and wake a pending reconnect; ``read()`` then returns None.

        Safe from another thread: if a read is in progress, the reading thread releases
        the capture when that read returns (releasing under a running read can crash).
        """
        self._stop.set()
        if self._io.acquire(blocking=False):
            try:
                capture, self._capture = self._capture, None
            finally:
                self._io.release()
            if capture is not None:
                capture.release()


def open_source(
    uri: str,
    *,
    loop: bool = False,
    size: tuple[int, int] | None = None,
    reconnect_initial_s: float = 1.0,
    reconnect_max_s: float = 30.0,
) -> Source:
    """Open ``uri``: emulated:NAME?..., a camera index or /dev/videoN, rtsp/http(s) URL,
    a video file, an image file or a folder of images. ``size`` is (width, height)."""
    uri = uri.strip()
    if uri.startswith("emulated:"):
        return parse_emulated_uri(uri, size=size, loop=loop)

    def live(target: Union[int, str], name: Optional[str] = None) -> LiveSource:
        return LiveSource(target, name=name, size=size, reconnect_initial_s=reconnect_initial_s,
                          reconnect_max_s=reconnect_max_s)

    if re.fullmatch(r"\d+", uri):
        return live(int(uri), name=f"camera {uri}")
    if uri.startswith("/dev/video"):
        if not Path(uri).exists():
            raise SourceError(
                f"cannot open source: {uri} (no such device; list cameras with "
                "`ls /dev/video*` and check the camera is plugged in)"
            )
        return live(uri)
    if uri.startswith(_STREAM_SCHEMES):
        return live(uri)
    path = Path(uri).expanduser()
    if path.is_dir():
        return ImageFolderSource.from_dir(path, loop=loop, size=size)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageFolderSource([path], str(path), loop=loop, size=size)
        return VideoFileSource(path, loop=loop, size=size)
    raise SourceError(
        f"cannot open source: {redact(uri)} (file not found; check the path, or use "
        "emulated:NAME, a camera index, /dev/videoN or an rtsp:// URL)"
    )
