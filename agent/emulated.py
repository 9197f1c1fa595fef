"""Deterministic emulated camera feeds built from the photos scikit-image ships.

A feed looks like a fixed camera: the scene is chosen by the scenario (never by the seed),
the view wanders by a few pixels, the exposure drifts by a few percent, objects pass, the
sensor adds noise and every few frames go through JPEG. At ``onset`` seconds the scenario
fault begins (darkening, blur, fog, a bumped camera...). Frame ``i`` depends only on
(scenario, seed, fps, size, onset), so ``frame_at`` can be called in any order.

>>> feed = EmulatedFeed("night", seed=1, size=(160, 120), onset=1.0, fps=10.0, duration=2.0)
>>> before, after = feed.frame_at(5), feed.frame_at(15)
>>> before.shape, before.dtype.name
((120, 160, 3), 'uint8')
>>> bool(after.mean() < 0.3 * before.mean())
True
>>> bool((feed.frame_at(5) == before).all())
True
>>> frames = 0
>>> while feed.read() is not None:
...     frames += 1
>>> frames, feed.index
(20, 20)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Tuple
from urllib.parse import parse_qsl

import cv2
import numpy as np
import numpy.typing as npt

from .errors import SourceError
from .testdata import photo_path

if TYPE_CHECKING:
    from cv2.typing import MatLike

SCENARIOS: tuple[str, ...] = (
    "stationary", "dusk", "night", "blur", "fog", "noise",
    "color_cast", "occlusion", "frozen", "black", "bumped",
)

_SCENE = ("astronaut.png", 0.15)  # (photo, vertical crop anchor): keeps the face in view
_BUMPED_SCENE = ("coffee.png", 0.5)
_VEHICLE = "motorcycle_left.png"
_NOISE_PAD = 64  # noise fields are this much larger than a frame: offsets give fresh noise
_SLOT_S = 12.0  # passing objects are scheduled per slot of this many seconds

Image = npt.NDArray[np.uint8]  # BGR (H, W, 3), or a single-channel mask
Floats = npt.NDArray[np.float64]
Sines = Tuple[Floats, Floats, Floats]  # amplitudes, angular frequencies, phases


class _Crossing(NamedTuple):
    """An object crossing the scene."""

    start: float
    duration: float
    lane: float  # vertical centre, as a fraction of the height
    leftwards: bool
    kind: int  # 0: the vehicle photo, 1: a plain box truck
    colour: Tuple[int, int, int]


def _u8(image: MatLike) -> Image:
    """An OpenCV result as the uint8 array it is (the stubs type it as any Mat); no copy."""
    return np.asarray(image, dtype=np.uint8)
_BASE_SIGMA = 2.5
_DUSK_S = 120.0
_URI_KEYS = ("seed", "fps", "size", "onset", "duration")
MAX_SIDE = 7680  # 8K UHD: a frame is allocated at this size, so a typo must not ask for 30 GB
_MAX_SECONDS = 1e9  # finite: frame indices are seconds x fps


def _load_photo(name: str) -> Image:
    image = cv2.imread(str(photo_path(name)), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"cannot read sample photo: {name} (reinstall scikit-image)")
    return _u8(image)


def _cover(image: Image, width: int, height: int, anchor_y: float) -> Image:
    """Crop ``image`` to the aspect of width x height (anchored vertically), then resize."""
    h, w = image.shape[:2]
    if w / h > width / height:
        cw, ch = round(h * width / height), h
    else:
        cw, ch = w, round(w * height / width)
    x0 = (w - cw) // 2
    y0 = round((h - ch) * anchor_y)
    crop = image[y0:y0 + ch, x0:x0 + cw]
    interp = cv2.INTER_AREA if cw > width else cv2.INTER_LINEAR
    return _u8(cv2.resize(crop, (width, height), interpolation=interp))


def _sinusoids(rng: np.random.Generator, n: int, amp: float, fmin: float, fmax: float) -> Sines:
    """Random sum-of-sines parameters: smooth, closed-form in time, total amplitude ``amp``."""
    weights = rng.uniform(0.5, 1.0, n)
    return (
        amp * weights / weights.sum(),
        rng.uniform(fmin, fmax, n) * 2.0 * math.pi,
        rng.uniform(0.0, 2.0 * math.pi, n),
    )


def _eval(params: Sines, t: float) -> float:
    amps, omegas, phases = params
    return float(np.dot(amps, np.sin(omegas * t + phases)))


def _crossing(rng: np.random.Generator, slot: int) -> _Crossing:
    """A random crossing starting in ``slot`` (the draws keep their order: frames depend on it)."""
    start = slot * _SLOT_S + rng.uniform(0.0, _SLOT_S - 1.0)
    duration = rng.uniform(2.5, 6.0)
    lane = rng.uniform(0.62, 0.85)
    leftwards = bool(rng.integers(2))
    kind = int(rng.integers(2))
    b, g, r = (int(v) for v in rng.integers(20, 236, 3))
    return _Crossing(start, duration, lane, leftwards, kind, (b, g, r))


class EmulatedFeed:
    """A deterministic emulated camera: ``read()`` frames of a scenario, BGR uint8."""

    live = False

    def __init__(
        self,
        scenario: str,
        *,
        seed: int = 0,
        fps: float = 30.0,
        size: tuple[int, int] = (640, 480),
        onset: float = 60.0,
        duration: float | None = None,
        loop: bool = False,
        jpeg_every: int = 5,
    ) -> None:
        if scenario not in SCENARIOS:
            raise SourceError(
                f"unknown emulated scenario: {scenario!r} (use one of {', '.join(SCENARIOS)})"
            )
        width, height = (int(v) for v in size)
        if not (32 <= width <= MAX_SIDE and 32 <= height <= MAX_SIDE):
            raise SourceError(f"bad emulated frame size: {width}x{height} "
                              f"(use 32x32 to {MAX_SIDE}x{MAX_SIDE})")
        if not (isinstance(seed, (int, np.integer)) and seed >= 0):
            raise SourceError(f"bad emulated seed: {seed!r} (use an integer >= 0)")
        if not 0 < fps <= 1000:  # NaN and inf fail too
            raise SourceError(f"bad emulated fps: {fps!r} (use a number > 0, at most 1000)")
        if not 0 <= onset < _MAX_SECONDS:
            raise SourceError(f"bad emulated onset: {onset!r} (use seconds >= 0)")
        if duration is not None and not 0 < duration < _MAX_SECONDS:
            raise SourceError(f"bad emulated duration: {duration!r} (use seconds > 0)")
        self.scenario = scenario
        self.seed = int(seed)
        self.fps = float(fps)
        self.size = (width, height)
        self.onset = float(onset)
        self.duration = duration
        self.loop = loop
        self.jpeg_every = int(jpeg_every)
        self.name = f"emulated:{scenario}"
        self.index = 0
        self._closed = False
        self._onset_index = int(round(self.onset * self.fps))
        self._frames = None if duration is None else int(duration * self.fps)

        scale = width / 640.0
        rng = np.random.default_rng([self.seed, 0x5EED])
        self._jx = _sinusoids(rng, 3, 2.5 * scale, 0.01, 0.4)
        self._jy = _sinusoids(rng, 3, 2.0 * scale, 0.01, 0.4)
        self._rot = _sinusoids(rng, 2, 0.15 * math.pi / 180.0, 0.005, 0.1)
        self._gain = _sinusoids(rng, 3, 0.04, 0.003, 0.15)
        self._margin = int(math.ceil(4.0 * scale)) + 2
        self._scene = self._canvas(*_SCENE)
        self._bumped: Optional[Image] = None
        self._noise: dict[float, tuple[Image, Image]] = {}
        self._events: dict[int, list[_Crossing]] = {}
        self._frozen: Optional[Image] = None
        self._occluder: Optional[tuple[Image, npt.NDArray[np.float32], npt.NDArray[np.float32]]] = None
        vehicle = _load_photo(_VEHICLE)
        vh = max(8, int(0.3 * height))
        vw = max(8, int(vh * vehicle.shape[1] / vehicle.shape[0] * 0.8))
        right = _cover(vehicle, vw, vh, 0.5)
        self._sprites = (right, np.ascontiguousarray(right[:, ::-1]))

    # -- public API ------------------------------------------------------------------------

    def read(self) -> Optional[Image]:
        """The next frame, or None after ``duration`` seconds of frames or once closed."""
        if self._closed:
            return None
        if self._frames is not None and self.index >= self._frames:
            if not self.loop:
                return None
            self.index = 0
        frame = self.frame_at(self.index)
        self.index += 1
        return frame

    def frame_at(self, i: int) -> Image:
        """Frame number ``i`` (from 0), the same on every call for the same feed parameters."""
        if i < 0:
            raise ValueError(f"frame index must be >= 0, got {i}")
        faulty = i >= self._onset_index and self.scenario != "stationary"
        if faulty and self.scenario == "frozen":
            if i > self._onset_index:
                if self._frozen is None:
                    self._frozen = self._render(self._onset_index, False)
                return self._frozen.copy()
        return self._render(i, faulty)

    def close(self) -> None:
        """Stop the feed: ``read()`` returns None from now on."""
        self._closed = True

    # -- rendering -------------------------------------------------------------------------

    def _render(self, i: int, faulty: bool) -> Image:
        width, height = self.size
        t = i / self.fps
        since = t - self.onset
        scenario = self.scenario if faulty else "stationary"
        rng = np.random.default_rng([self.seed, i])
        offsets = rng.integers(0, _NOISE_PAD, 2)
        if scenario == "black":
            pos, _ = self._noise_field(1.0)
            dark = pos[offsets[0]:offsets[0] + height, offsets[1]:offsets[1] + width]
            return np.minimum(dark, 3)

        scene = self._bumped_scene() if scenario == "bumped" else self._scene
        frame = self._jitter(scene, t)
        self._paste_objects(frame, t)

        if scenario == "blur":
            frame = self._defocus(frame, 4.0 * width / 640.0)
        elif scenario == "occlusion":
            frame = self._occlude(frame)

        brightness, fog, cast, sigma = 1.0, 0.0, (1.0, 1.0, 1.0), _BASE_SIGMA
        if scenario == "dusk":
            brightness = 1.0 - 0.85 * min(1.0, since / _DUSK_S)
            # Auto-gain steps up as the light goes: noise grows in steps, like a real camera.
            sigma = 8.0 if brightness < 0.25 else 5.0 if brightness < 0.5 else 3.5 if (
                brightness < 0.75) else _BASE_SIGMA
        elif scenario == "night":
            brightness, sigma = 0.1, 8.0
        elif scenario == "fog":
            fog = 0.6
        elif scenario == "noise":
            sigma = 20.0
        elif scenario == "color_cast":
            cast = (1.4, 1.0, 0.7)
        gain = (1.0 + _eval(self._gain, t)) * brightness
        frame = _u8(cv2.LUT(frame, self._lut(gain, fog, cast)))

        pos, neg = self._noise_field(sigma)
        ys, xs = slice(offsets[0], offsets[0] + height), slice(offsets[1], offsets[1] + width)
        frame = _u8(cv2.subtract(cv2.add(frame, pos[ys, xs]), neg[ys, xs]))

        if self.jpeg_every > 0 and i % self.jpeg_every == 0:
            ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
            if ok:
                frame = _u8(cv2.imdecode(data, cv2.IMREAD_COLOR))
        return frame

    def _canvas(self, name: str, anchor_y: float) -> Image:
        width, height = self.size
        m = self._margin
        return _cover(_load_photo(name), width + 2 * m, height + 2 * m, anchor_y)

    def _bumped_scene(self) -> Image:
        if self._bumped is None:
            self._bumped = self._canvas(*_BUMPED_SCENE)
        return self._bumped

    def _jitter(self, canvas: Image, t: float) -> Image:
        """The view of ``canvas`` at time ``t``: a small smooth shift and rotation."""
        width, height = self.size
        m = self._margin
        angle = _eval(self._rot, t)
        c, s = math.cos(angle), math.sin(angle)
        cx, cy = width / 2.0, height / 2.0
        # Inverse map (output -> canvas): rotate about the centre, shift into the margin.
        tx = m + _eval(self._jx, t) + cx - (c * cx - s * cy)
        ty = m + _eval(self._jy, t) + cy - (s * cx + c * cy)
        matrix = np.array([[c, -s, tx], [s, c, ty]])
        return _u8(cv2.warpAffine(
            canvas, matrix, (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT,
        ))

    def _slot_events(self, k: int) -> list[_Crossing]:
        """Objects crossing in slot ``k``: (start, duration, lane y, leftwards, kind, colour)."""
        events = self._events.get(k)
        if events is None:
            rng = np.random.default_rng([self.seed, 0xB10B, k])
            count = int(rng.choice([0, 0, 1, 1, 2]))
            events = [_crossing(rng, k) for _ in range(count)]
            if len(self._events) > 64:
                self._events.clear()
            self._events[k] = events
        return events

    def _paste_objects(self, frame: Image, t: float) -> None:
        width, height = self.size
        k = int(t // _SLOT_S)
        events = self._slot_events(k) + (self._slot_events(k - 1) if k > 0 else [])
        for start, dur, lane, leftwards, kind, colour in events:
            if not start <= t < start + dur:
                continue
            sprite = self._sprites[int(leftwards)]
            oh, ow = sprite.shape[:2]
            progress = (t - start) / dur
            x = int(-ow + (width + ow) * (1.0 - progress if leftwards else progress))
            y = int(lane * height - oh / 2)
            x0, x1 = max(x, 0), min(x + ow, width)
            y0, y1 = max(y, 0), min(y + oh, height)
            if x0 >= x1 or y0 >= y1:
                continue
            if kind == 0:
                frame[y0:y1, x0:x1] = sprite[y0 - y:y1 - y, x0 - x:x1 - x]
            else:  # a plain box truck, slightly lower than the vehicle photo
                frame[y0 + (y1 - y0) // 4:y1, x0:x1] = colour

    def _defocus(self, frame: Image, sigma: float) -> Image:
        """Gaussian defocus of ``sigma`` pixels, blurred at low resolution to stay cheap."""
        width, height = self.size
        factor = max(1, int(sigma / 2.0))
        small = cv2.resize(
            frame, (max(1, width // factor), max(1, height // factor)),
            interpolation=cv2.INTER_AREA,
        )
        small = cv2.GaussianBlur(small, (0, 0), max(0.5, sigma / factor))
        return _u8(cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR))

    def _occlude(self, frame: Image) -> Image:
        """Cover ~40% of the frame with a dark, out-of-focus blob stuck on the lens."""
        if self._occluder is None:
            width, height = self.size
            mask = np.zeros((height, width), np.uint8)
            radius = 0.5
            for _ in range(12):  # grow the ellipse until it covers 40% of the frame
                mask[:] = 0
                axes = (int(radius * width), int(radius * 1.1 * height))
                centre = (int(0.1 * width), int(0.3 * height))
                cv2.ellipse(mask, centre, axes, 20.0, 0.0, 360.0, (255,), -1)
                radius *= math.sqrt(0.4 / max(1e-3, mask.mean() / 255.0))
            alpha = cv2.GaussianBlur(mask, (0, 0), 0.02 * width).astype(np.float32) / 255.0
            dark = np.full_like(frame, 14)
            self._occluder = (dark, alpha, 1.0 - alpha)
        dark, alpha, keep = self._occluder
        return _u8(cv2.blendLinear(frame, dark, keep, alpha))

    def _lut(self, gain: float, fog: float, cast: tuple[float, float, float]) -> Image:
        """One table for every per-pixel tone change: fog, exposure, white balance."""
        v = np.arange(256, dtype=np.float32)
        v = v * (1.0 - fog) + 200.0 * fog
        table = np.stack([v * gain * c for c in cast], axis=-1)
        lut: Image = np.clip(table + 0.5, 0, 255).astype(np.uint8).reshape(256, 1, 3)
        return lut

    def _noise_field(self, sigma: float) -> tuple[Image, Image]:
        """Positive and negative parts of a Gaussian noise field a little larger than a frame."""
        field = self._noise.get(sigma)
        if field is None:
            width, height = self.size
            rng = np.random.default_rng([self.seed, 0x4015E, int(sigma * 100)])
            shape = (height + _NOISE_PAD, width + _NOISE_PAD, 3)
            noise = np.rint(rng.standard_normal(shape, dtype=np.float32) * sigma)
            field = (
                np.clip(noise, 0, 255).astype(np.uint8),
                np.clip(-noise, 0, 255).astype(np.uint8),
            )
            self._noise[sigma] = field
        return field


def parse_emulated_uri(
    uri: str, *, size: tuple[int, int] | None = None, loop: bool = False
) -> EmulatedFeed:
    """An EmulatedFeed from ``emulated:NAME?seed=S&fps=F&size=WxH&onset=SEC&duration=SEC``.

    ``size``, if given, overrides the size in the URI (the caller wants frames of that size);
    ``loop`` restarts a feed with a ``duration`` from its first frame.
    """
    if not uri.startswith("emulated:"):
        raise SourceError(f"not an emulated source: {uri} (use emulated:NAME?seed=0)")
    rest = uri[len("emulated:"):].lstrip("/")
    name, _, query = rest.partition("?")
    if name not in SCENARIOS:
        raise SourceError(
            f"unknown emulated scenario: {name!r} in {uri} (use one of {', '.join(SCENARIOS)})"
        )
    kwargs: dict[str, Any] = {}  # int seed, float fps/onset/duration, (w, h) size
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise SourceError(f"bad emulated source query: {uri} ({exc}; use key=value&...)") from None
    for key, value in pairs:
        if key not in _URI_KEYS:
            raise SourceError(
                f"unknown emulated source parameter: {key!r} in {uri} "
                f"(use {', '.join(_URI_KEYS)})"
            )
        if key in kwargs:
            raise SourceError(f"emulated source parameter given twice: {key!r} in {uri}")
        try:
            if key == "seed":
                kwargs[key] = int(value)
            elif key == "size":
                w, _, h = value.lower().partition("x")
                kwargs[key] = (int(w), int(h))
            else:
                kwargs[key] = float(value)
        except ValueError:
            hint = "WxH, e.g. 640x480" if key == "size" else "a number"
            raise SourceError(
                f"bad emulated source parameter: {key}={value!r} in {uri} (use {hint})"
            ) from None
    if size is not None:
        kwargs["size"] = size
    return EmulatedFeed(name, loop=loop, **kwargs)
