"""Per-frame image statistics with a cost that does not grow with the frame size.

``ImageStats.compute`` is on the per-frame hot path. It never looks at the whole frame:

* **Global statistics** (brightness, contrast, colour, exposure, entropy, edges, frame
  difference) come from a fixed ``sample_size`` grid taken with a nearest-neighbour
  ``cv2.resize`` into a preallocated buffer, which reads only the sampled pixels. The grid
  covers the same relative positions at every resolution, so these values agree across
  frame sizes of the same scene.
* **Sharpness and noise** need neighbouring pixels (a subsample aliases them away), so they
  come from a few small tiles at fixed relative positions, read with a stride of
  ``round(width / ref_width)`` pixels: at 1920 wide a tile sees the scene at about the
  scale of a 640-wide frame, which keeps both values comparable across resolutions. Each
  tile keeps a one-pixel frame border so that its 3x3 filters are exact; the border is
  masked out of the sums. A tile holds ``tile_size**2`` interior pixels laid out as
  ``TILE_ROWS`` rows (fewer when the frame is narrow): each tile row is one contiguous run
  in memory, read straight into luma, so fewer rows means fewer trips to memory.

The pure functions below are the reference definitions over a full image; ``naive_stats``
applies them to the whole frame (the benchmark's baseline).
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

IMAGE_FEATURES: tuple[str, ...] = (
    "brightness",
    "contrast",
    "sharpness",
    "saturation",
    "colorfulness",
    "entropy",
    "overexposed",
    "underexposed",
    "noise",
    "edge_density",
    "mean_b",
    "mean_g",
    "mean_r",
    "diff",
    "motion",
)

STAT_SPECS: tuple[tuple[str, str, str], ...] = (
    ("brightness", "mean luma (BT.601)", "0-255"),
    ("contrast", "standard deviation of luma", "0-127.5"),
    ("sharpness", "variance of the 4-neighbour Laplacian of luma on full-resolution tiles "
     "(low = blurred)", ">= 0"),
    ("saturation", "mean HSV saturation", "0-1"),
    ("colorfulness", "Hasler-Suesstrunk colourfulness (rg/yb opponent spread + 0.3 mean)", ">= 0"),
    ("entropy", "Shannon entropy of the 256-bin luma histogram", "0-8 bits"),
    ("overexposed", "fraction of luma >= 250", "0-1"),
    ("underexposed", "fraction of luma <= 5", "0-1"),
    ("noise", "noise sigma by Immerkaer's fast method on full-resolution tiles", ">= 0 (luma)"),
    ("edge_density", "fraction of pixels whose luma gradient max(|dx|, |dy|) >= 48", "0-1"),
    ("mean_b", "mean blue channel (colour cast)", "0-255"),
    ("mean_g", "mean green channel", "0-255"),
    ("mean_r", "mean red channel", "0-255"),
    ("diff", "mean absolute luma change since the previous frame (0 = frozen; NaN on the first)",
     "0-255"),
    ("motion", "fraction of pixels whose luma changed by >= 25 (NaN on the first frame)", "0-1"),
)

OVER_LEVEL = 250
UNDER_LEVEL = 5
EDGE_LEVEL = 48
MOTION_LEVEL = 25
TILE_ROWS = 16  # interior rows of a tile when the frame is wide enough (tile_size**2 pixels)
DEFAULT_TILES: tuple[tuple[float, float], ...] = ((0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7))

_IMMERKAER = math.sqrt(math.pi / 2.0) / 6.0
# Rows give (luma, (R-G)/2 + 128, ((R+G)/2 - B)/2 + 128) from BGR: halved so uint8 holds them.
_OPPONENT = np.array(
    [[0.114, 0.587, 0.299, 0.0], [0.0, -0.5, 0.5, 128.0], [-0.5, 0.25, 0.25, 128.0]], np.float32
)
_OPP_TO_BGR = np.linalg.inv(_OPPONENT[:, :3].astype(np.float64)).tolist()
_IMMERKAER_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_RGYB = np.array([[0.0, -1.0, 1.0], [-1.0, 0.5, 0.5]], np.float32)  # R-G, (R+G)/2-B from BGR


# --- reference definitions over a whole image -------------------------------------------


def to_gray(frame_bgr: np.ndarray) -> np.ndarray:
    """BT.601 luma of a BGR uint8 image."""
    return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)


def brightness(gray: np.ndarray) -> float:
    """Mean luma, 0-255."""
    return float(cv2.mean(gray)[0])


def contrast(gray: np.ndarray) -> float:
    """Standard deviation of luma."""
    return float(cv2.meanStdDev(gray)[1][0, 0])


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: the classic blur detector (low = blurred)."""
    sd = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F, ksize=1)[1:-1, 1:-1])[1][0, 0]
    return float(sd * sd)


def saturation(frame_bgr: np.ndarray) -> float:
    """Mean HSV saturation, 0-1."""
    return float(cv2.mean(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2HSV))[1]) / 255.0


def colorfulness(frame_bgr: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness: sigma_rgyb + 0.3 * mu_rgyb."""
    opp = cv2.transform(frame_bgr.astype(np.float32), _RGYB)
    mu, sd = cv2.meanStdDev(opp)
    return float(math.hypot(sd[0, 0], sd[1, 0]) + 0.3 * math.hypot(mu[0, 0], mu[1, 0]))


def luma_entropy(gray: np.ndarray) -> float:
    """Shannon entropy in bits of the 256-bin luma histogram, 0-8."""
    hist = cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    p = hist[hist > 0] / gray.size
    return float(-(p * np.log2(p)).sum())


def overexposed(gray: np.ndarray, level: int = OVER_LEVEL) -> float:
    """Fraction of pixels with luma >= level."""
    return float(np.count_nonzero(gray >= level)) / gray.size


def underexposed(gray: np.ndarray, level: int = UNDER_LEVEL) -> float:
    """Fraction of pixels with luma <= level."""
    return float(np.count_nonzero(gray <= level)) / gray.size


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkaer (1996) fast noise sigma: mean |[1,-2,1]x[1,-2,1] * I| * sqrt(pi/2) / 6."""
    resp = cv2.filter2D(gray, cv2.CV_32F, _IMMERKAER_KERNEL)[1:-1, 1:-1]
    return float(cv2.norm(resp, cv2.NORM_L1)) / resp.size * _IMMERKAER


def edge_density(gray: np.ndarray, level: int = EDGE_LEVEL) -> float:
    """Fraction of pixels whose forward-difference gradient max(|dx|, |dy|) is >= level."""
    grad = cv2.max(cv2.absdiff(gray[:-1, 1:], gray[:-1, :-1]),
                   cv2.absdiff(gray[1:, :-1], gray[:-1, :-1]))
    return float(np.count_nonzero(grad >= level)) / grad.size


def channel_means(frame_bgr: np.ndarray) -> tuple[float, float, float]:
    """Mean of the B, G and R channels."""
    b, g, r, _ = cv2.mean(frame_bgr)
    return float(b), float(g), float(r)


def mean_abs_diff(gray: np.ndarray, prev_gray: np.ndarray) -> float:
    """Mean absolute luma difference between two frames (0 for a frozen feed)."""
    return float(cv2.mean(cv2.absdiff(gray, prev_gray))[0])


def motion_fraction(gray: np.ndarray, prev_gray: np.ndarray, level: int = MOTION_LEVEL) -> float:
    """Fraction of pixels whose luma changed by >= level."""
    diff = cv2.absdiff(gray, prev_gray)
    return float(np.count_nonzero(diff >= level)) / gray.size


def naive_stats(frame_bgr: np.ndarray, prev_gray: np.ndarray | None) -> dict[str, float]:
    """Every IMAGE_FEATURES statistic computed on the full frame (the benchmark baseline)."""
    gray = to_gray(frame_bgr)
    b, g, r = channel_means(frame_bgr)
    nan = float("nan")
    return {
        "brightness": brightness(gray),
        "contrast": contrast(gray),
        "sharpness": laplacian_variance(gray),
        "saturation": saturation(frame_bgr),
        "colorfulness": colorfulness(frame_bgr),
        "entropy": luma_entropy(gray),
        "overexposed": overexposed(gray),
        "underexposed": underexposed(gray),
        "noise": noise_sigma(gray),
        "edge_density": edge_density(gray),
        "mean_b": b,
        "mean_g": g,
        "mean_r": r,
        "diff": nan if prev_gray is None else mean_abs_diff(gray, prev_gray),
        "motion": nan if prev_gray is None else motion_fraction(gray, prev_gray),
    }


# --- the hot path -----------------------------------------------------------------------


class ImageStats:
    """Fixed-cost per-frame statistics: a nearest-neighbour sample plus full-resolution tiles.

    >>> import numpy as np
    >>> s = ImageStats()
    >>> out = np.empty(len(IMAGE_FEATURES), np.float32)
    >>> s.compute(np.full((480, 640, 3), 128, np.uint8), out)
    >>> i, j = IMAGE_FEATURES.index("brightness"), IMAGE_FEATURES.index("sharpness")
    >>> float(out[i]), float(out[j])
    (128.0, 0.0)
    """

    def __init__(
        self,
        sample_size: tuple[int, int] = (96, 72),
        tiles: Sequence[tuple[float, float]] = DEFAULT_TILES,
        tile_size: int = 32,
        ref_width: int = 640,
    ) -> None:
        sw, sh = int(sample_size[0]), int(sample_size[1])
        if sw < 8 or sh < 8:
            raise ValueError(f"sample_size must be at least (8, 8), got {sample_size!r}")
        if not tiles or any(not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0) for x, y in tiles):
            raise ValueError(f"tiles must be (x, y) centres in [0, 1], got {tiles!r}")
        if tile_size < 4:
            raise ValueError(f"tile_size must be >= 4, got {tile_size}")
        if ref_width < 16:
            raise ValueError(f"ref_width must be >= 16, got {ref_width}")
        self._size = (sw, sh)
        self._csize = (max(4, sw // 2), max(4, sh // 2))
        self._tiles = tuple((float(x), float(y)) for x, y in tiles)
        self._ref_width = int(ref_width)
        cell = tile_size + 2
        self._cell = cell
        self._tile_size = int(tile_size)
        npx = float(sw * sh)
        # Scratch, reused every frame.
        self._sample = np.empty((sh, sw, 3), np.uint8)
        self._gray = np.empty((sh, sw), np.uint8)
        self._prev = np.empty((sh, sw), np.uint8)
        self._csample = np.empty((self._csize[1], self._csize[0], 3), np.uint8)
        self._opp = np.empty_like(self._csample)
        self._hsv = np.empty_like(self._csample)
        self._gx = np.empty((sh - 1, sw - 1), np.uint8)
        self._gy = np.empty((sh - 1, sw - 1), np.uint8)
        self._work = np.empty((sh, sw), np.uint8)
        self._hist = np.empty((256, 1), np.float32)
        self._logh = np.empty((256, 1), np.float32)
        self._moments = np.empty((4, 1), np.float32)
        levels = np.arange(256, dtype=np.float64)
        self._weights = np.stack(
            [levels / npx, levels * levels / npx, (levels >= OVER_LEVEL) / npx,
             (levels <= UNDER_LEVEL) / npx]
        ).astype(np.float32)
        self._log2n = math.log2(npx)
        self._npx = npx
        self._nedge = float((sh - 1) * (sw - 1))
        # Tile buffers are sized by _plan_tiles (the tile shape depends on the frame width).
        self._mgray = np.empty((0, 0), np.uint8)
        self._wide = self._mgray
        self._resp = np.empty((2, 0, 0), np.int16)
        self._mask = np.empty((0, 0), np.int16)
        self._n_interior = 1.0
        self._plan: list[tuple[np.ndarray, slice, slice]] = []
        self._step = 1
        self._shape: tuple[int, ...] = ()
        self._has_prev = False

    @property
    def sample_size(self) -> tuple[int, int]:
        """(width, height) of the global sample."""
        return self._size

    def reset(self) -> None:
        """Forget the previous frame (the next diff/motion is NaN)."""
        self._has_prev = False

    def _tile_shape(self, w: int, h: int) -> tuple[int, int]:
        """Interior (rows, cols) of a tile: short and wide when the frame allows it."""
        t = self._tile_size
        rows = min(TILE_ROWS, t)
        while rows < t and -(-t * t // rows) + 2 > w:
            rows *= 2
        rows = min(rows, t)
        return rows, -(-t * t // rows)

    def _plan_tiles(self, shape: tuple[int, ...]) -> None:
        h, w = shape[0], shape[1]
        rows, cols = self._tile_shape(w, h)
        ch, cw = rows + 2, cols + 2
        if cw > w or ch > h:
            cell = self._cell
            raise ValueError(
                f"frame too small for image statistics: {w}x{h} "
                f"(needs at least {cell}x{cell}; lower tile_size)"
            )
        step = max(1, int(round(w / self._ref_width)))
        if cw * step > w or ch * step > h:
            step = 1
        n = len(self._tiles)
        mgray = np.empty((n * ch, cw), np.uint8)
        self._mgray = mgray
        # Laplacian and Immerkaer responses side by side; the mask zeroes each tile's border.
        self._resp = np.empty((2, n * ch, cw), np.int16)
        self._mask = np.zeros((n * ch, cw), np.int16)
        for i in range(n):
            self._mask[i * ch + 1 : (i + 1) * ch - 1, 1:-1] = 1
        self._n_interior = float(n * rows * cols)
        # Every step-th row is read whole (a contiguous run: a few cache lines) straight
        # into luma; the columns are decimated afterwards, in cache. Few rows per tile
        # (each row of a large frame is a separate trip to memory) and wide runs.
        xspan, yspan = cw * step, ch * step
        wide = mgray if step == 1 else np.empty((n * ch, xspan), np.uint8)
        plan = []
        for i, (cx, cy) in enumerate(self._tiles):
            x0 = min(max(int(round(cx * w - xspan / 2)), 0), w - xspan)
            y0 = min(max(int(round(cy * h - yspan / 2)), 0), h - yspan)
            plan.append((wide[i * ch : (i + 1) * ch], slice(y0, y0 + yspan, step),
                         slice(x0, x0 + xspan)))
        self._wide = wide
        self._plan = plan
        self._step = step
        self._shape = shape

    def compute(self, frame_bgr: np.ndarray, out: np.ndarray) -> None:
        """Write len(IMAGE_FEATURES) values for one BGR uint8 frame into ``out``."""
        if frame_bgr.shape != self._shape:
            if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
                raise ValueError(
                    f"image statistics need a BGR uint8 frame of shape (H, W, 3): got "
                    f"{frame_bgr.dtype} {frame_bgr.shape} (convert with cv2.cvtColor first)"
                )
            self._plan_tiles(frame_bgr.shape)
        elif frame_bgr.dtype != np.uint8:
            raise ValueError(f"image statistics need a uint8 frame, got {frame_bgr.dtype}")
        sample, gray, hist, work = self._sample, self._gray, self._hist, self._work
        cv2.resize(frame_bgr, self._size, dst=sample, interpolation=cv2.INTER_NEAREST)
        mgray = self._mgray
        for dst, ys, xs in self._plan:
            cv2.cvtColor(frame_bgr[ys, xs], cv2.COLOR_BGR2GRAY, dst=dst)
        if self._step > 1:  # nearest-neighbour column decimation by an exact integer step
            cv2.resize(self._wide, mgray.shape[::-1], dst=mgray, interpolation=cv2.INTER_NEAREST)

        # Luma: histogram moments give brightness, contrast, exposure and entropy at once.
        cv2.cvtColor(sample, cv2.COLOR_BGR2GRAY, dst=gray)
        cv2.calcHist([gray], [0], None, [256], [0, 256], hist=hist)
        m = np.dot(self._weights, hist, out=self._moments)
        logh = self._logh
        np.maximum(hist, 1.0, out=logh)
        np.log2(logh, out=logh)
        plogp = float(np.dot(hist[:, 0], logh[:, 0]))

        # Colour on a half-size nested sample: one transform to (luma, rg/2, yb/2) whose
        # means also invert back to B, G, R; HSV only for the saturation channel.
        cs = self._csample
        cv2.resize(sample, self._csize, dst=cs, interpolation=cv2.INTER_NEAREST)
        cv2.transform(cs, _OPPONENT, dst=self._opp)
        c_mu, c_sd = cv2.meanStdDev(self._opp)
        l_mu, rg_h, yb_h = c_mu.ravel().tolist()
        _, rg_sd, yb_sd = c_sd.ravel().tolist()
        cv2.cvtColor(cs, cv2.COLOR_BGR2HSV, dst=self._hsv)
        sat = cv2.mean(self._hsv)[1]

        # Edges: forward differences, max(|dx|, |dy|) >= EDGE_LEVEL.
        gx, gy = self._gx, self._gy
        cv2.absdiff(gray[:-1, 1:], gray[:-1, :-1], dst=gx)
        cv2.absdiff(gray[1:, :-1], gray[:-1, :-1], dst=gy)
        cv2.max(gx, gy, dst=gx)
        cv2.threshold(gx, EDGE_LEVEL - 1, 1, cv2.THRESH_BINARY, dst=gx)
        edges = cv2.countNonZero(gx)

        # Tiles: Laplacian variance (blur) and Immerkaer noise over the tile interiors.
        resp = self._resp
        cv2.Laplacian(mgray, cv2.CV_16S, dst=resp[0], ksize=1)
        cv2.filter2D(mgray, cv2.CV_16S, _IMMERKAER_KERNEL, dst=resp[1])
        np.multiply(resp, self._mask, out=resp)
        n_in = self._n_interior
        lap_mu = cv2.sumElems(resp[0])[0] / n_in
        lap_var = cv2.norm(resp[0], cv2.NORM_L2SQR) / n_in - lap_mu * lap_mu
        noise = cv2.norm(resp[1], cv2.NORM_L1) / n_in * _IMMERKAER

        if self._has_prev:
            cv2.absdiff(gray, self._prev, dst=work)
            diff = cv2.mean(work)[0]
            cv2.threshold(work, MOTION_LEVEL - 1, 1, cv2.THRESH_BINARY, dst=work)
            motion = cv2.countNonZero(work) / self._npx
        else:
            diff = motion = math.nan
        self._gray, self._prev = self._prev, gray
        self._has_prev = True

        mean = float(m[0, 0])
        rg_mu, yb_mu = 2.0 * rg_h - 256.0, 2.0 * yb_h - 256.0
        inv = _OPP_TO_BGR
        d0, d1, d2 = l_mu, rg_h - 128.0, yb_h - 128.0
        out[0] = mean
        out[1] = math.sqrt(max(float(m[1, 0]) - mean * mean, 0.0))
        out[2] = lap_var
        out[3] = sat / 255.0
        out[4] = 2.0 * math.hypot(rg_sd, yb_sd) + 0.3 * math.hypot(rg_mu, yb_mu)
        out[5] = self._log2n - plogp / self._npx
        out[6] = m[2, 0]
        out[7] = m[3, 0]
        out[8] = noise
        out[9] = edges / self._nedge
        out[10] = inv[0][0] * d0 + inv[0][1] * d1 + inv[0][2] * d2
        out[11] = inv[1][0] * d0 + inv[1][1] * d1 + inv[1][2] * d2
        out[12] = inv[2][0] * d0 + inv[2][1] * d1 + inv[2][2] * d2
        out[13] = diff
        out[14] = motion
