"""Per-frame image statistics with a cost that does not grow with the frame size.

``ImageStats.compute`` is on the per-frame hot path. It reads the frame once, with one
``cv2.remap`` (nearest neighbour) into a preallocated sample of small **patches**: 3 rows
(``BAND_ROWS``) by ``run_length`` pixels. ``sample_size`` = (width, height) means
``width // run_length`` runs per sampled row and ``height // 3`` bands of 3 rows, at fixed
relative positions spread over the frame (each band's runs are staggered by a golden-ratio
sequence so the runs do not line up in columns). Each patch row is one short contiguous run
in memory (a cache line or two) instead of one cache line per sampled pixel.

Neighbours inside a patch are ``step = round(width / ref_width)`` pixels apart: at 1920 wide
a patch sees the scene at about the scale of a 640-wide frame, which keeps the
neighbourhood statistics (edges, sharpness, noise) comparable across resolutions.

* **Global statistics** (brightness, contrast, colour, exposure, entropy, frame difference)
  use every sample pixel.
* **Edge density** uses forward differences inside each patch (never across two patches).
* **Sharpness and noise** use 3x3 filters at the middle row of each patch, away from the
  ends of its run, so every filter tap is a real neighbour.

The pure functions below are the reference definitions over a full image; ``naive_stats``
applies them to the whole frame (the benchmark's baseline).
"""

from __future__ import annotations

import math
from typing import Optional

import cv2
import numpy as np
import numpy.typing as npt

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
    ("sharpness", "variance of the 4-neighbour Laplacian of luma at the middle row of each "
     "sample patch, neighbours step px apart (low = blurred)", ">= 0"),
    ("saturation", "mean HSV saturation", "0-1"),
    ("colorfulness", "Hasler-Suesstrunk colourfulness (rg/yb opponent spread + 0.3 mean)", ">= 0"),
    ("entropy", "Shannon entropy of the 256-bin luma histogram, Miller-Madow corrected",
     "0-8 bits"),
    ("overexposed", "fraction of luma >= 250", "0-1"),
    ("underexposed", "fraction of luma <= 5", "0-1"),
    ("noise", "noise sigma by Immerkaer's fast method at the middle row of each sample patch",
     ">= 0 (luma)"),
    ("edge_density", "fraction of sample pixels whose forward-difference luma gradient "
     "max(|dx|, |dy|) >= 48, differences taken inside each 3-row patch (neighbours step px "
     "apart; a patch's last row and column have no forward neighbour and are not counted)",
     "0-1"),
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
BAND_ROWS = 3  # rows of a sample patch: enough for 3x3 filters at its middle row
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # per-band stagger of the runs (a low-discrepancy sequence)

_IMMERKAER = math.sqrt(math.pi / 2.0) / 6.0
# Rows give (luma, (R-G)/2 + 128, ((R+G)/2 - B)/2 + 128) from BGR: halved so uint8 holds them.
_OPPONENT = np.array(
    [[0.114, 0.587, 0.299, 0.0], [0.0, -0.5, 0.5, 128.0], [-0.5, 0.25, 0.25, 128.0]], np.float32
)
_OPP_TO_BGR = np.linalg.inv(_OPPONENT[:, :3].astype(np.float64)).tolist()
_IMMERKAER_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
# A BGR (H, W, 3) or grey (H, W) uint8 image.
Image = npt.NDArray[np.uint8]
_RGYB = np.array([[0.0, -1.0, 1.0], [-1.0, 0.5, 0.5]], np.float32)  # R-G, (R+G)/2-B from BGR


# --- reference definitions over a whole image -------------------------------------------


def to_gray(frame_bgr: Image) -> Image:
    """BT.601 luma of a BGR uint8 image."""
    return np.asarray(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY), dtype=np.uint8)


def brightness(gray: Image) -> float:
    """Mean luma, 0-255."""
    return float(cv2.mean(gray)[0])


def contrast(gray: Image) -> float:
    """Standard deviation of luma."""
    return float(cv2.meanStdDev(gray)[1][0, 0])


def laplacian_variance(gray: Image) -> float:
    """Variance of the 4-neighbour Laplacian: the classic blur detector (low = blurred)."""
    sd = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F, ksize=1)[1:-1, 1:-1])[1][0, 0]
    return float(sd * sd)


def saturation(frame_bgr: Image) -> float:
    """Mean HSV saturation, 0-1."""
    return float(cv2.mean(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2HSV))[1]) / 255.0


def colorfulness(frame_bgr: Image) -> float:
    """Hasler & Suesstrunk (2003) colourfulness: sigma_rgyb + 0.3 * mu_rgyb."""
    opp = cv2.transform(frame_bgr.astype(np.float32), _RGYB)
    mu, sd = cv2.meanStdDev(opp)
    return float(math.hypot(sd[0, 0], sd[1, 0]) + 0.3 * math.hypot(mu[0, 0], mu[1, 0]))


def luma_entropy(gray: Image) -> float:
    """Shannon entropy in bits of the 256-bin luma histogram, 0-8.

    With the Miller-Madow correction ((bins used - 1) / (2 N ln 2)), which removes most of
    the downward bias of a histogram entropy from a few thousand sampled pixels.
    """
    hist = cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    p = hist[hist > 0] / gray.size
    return min(8.0, float(-(p * np.log2(p)).sum() + (p.size - 1) / (2 * gray.size * math.log(2))))


def overexposed(gray: Image, level: int = OVER_LEVEL) -> float:
    """Fraction of pixels with luma >= level."""
    return float(np.count_nonzero(gray >= level)) / gray.size


def underexposed(gray: Image, level: int = UNDER_LEVEL) -> float:
    """Fraction of pixels with luma <= level."""
    return float(np.count_nonzero(gray <= level)) / gray.size


def noise_sigma(gray: Image) -> float:
    """Immerkaer (1996) fast noise sigma: mean |[1,-2,1]x[1,-2,1] * I| * sqrt(pi/2) / 6."""
    resp = cv2.filter2D(gray, cv2.CV_32F, _IMMERKAER_KERNEL)[1:-1, 1:-1]
    return float(cv2.norm(resp, cv2.NORM_L1)) / resp.size * _IMMERKAER


def edge_density(gray: Image, level: int = EDGE_LEVEL) -> float:
    """Fraction of pixels whose forward-difference gradient max(|dx|, |dy|) is >= level."""
    grad = cv2.max(cv2.absdiff(gray[:-1, 1:], gray[:-1, :-1]),
                   cv2.absdiff(gray[1:, :-1], gray[:-1, :-1]))
    return float(np.count_nonzero(grad >= level)) / grad.size


def channel_means(frame_bgr: Image) -> tuple[float, float, float]:
    """Mean of the B, G and R channels."""
    b, g, r, _ = cv2.mean(frame_bgr)
    return float(b), float(g), float(r)


def mean_abs_diff(gray: Image, prev_gray: Image) -> float:
    """Mean absolute luma difference between two frames (0 for a frozen feed)."""
    return float(cv2.mean(cv2.absdiff(gray, prev_gray))[0])


def motion_fraction(gray: Image, prev_gray: Image, level: int = MOTION_LEVEL) -> float:
    """Fraction of pixels whose luma changed by >= level."""
    diff = cv2.absdiff(gray, prev_gray)
    return float(np.count_nonzero(diff >= level)) / gray.size


def naive_stats(frame_bgr: Image, prev_gray: Optional[Image]) -> dict[str, float]:
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
    """Fixed-cost per-frame statistics from one clustered sample of small 3-row patches.

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
        sample_size: tuple[int, int] = (64, 36),
        run_length: int = 4,
        ref_width: int = 640,
    ) -> None:
        sw, sh = int(sample_size[0]), int(sample_size[1])
        if sw < 8 or sh < 8:
            raise ValueError(f"sample_size must be at least (8, 8), got {sample_size!r}")
        if not 4 <= run_length <= sw:
            raise ValueError(f"run_length must be in 4..{sw} (the sample width), got {run_length}")
        if ref_width < 16:
            raise ValueError(f"ref_width must be >= 16, got {ref_width}")
        length = int(run_length)
        runs = sw // length
        bands = sh // BAND_ROWS
        self._runs, self._length, self._bands = runs, length, bands
        self._ref_width = int(ref_width)
        rows, cols = bands * BAND_ROWS, runs * length
        self._size = (cols, rows)
        npx = float(rows * cols)
        # Scratch, reused every frame.
        self._sample = np.empty((rows, cols, 3), np.uint8)
        self._gray = np.empty((rows, cols), np.uint8)
        self._prev = np.empty((rows, cols), np.uint8)
        self._opp = np.empty_like(self._sample)
        self._hsv = np.empty_like(self._sample)
        self._gx = np.empty((rows, cols - 1), np.uint8)
        self._gy = np.empty((rows - 1, cols), np.uint8)
        self._work = np.empty((rows, cols), np.uint8)
        self._resp = np.empty((2, rows, cols), np.int16)
        self._hist = np.empty((256, 1), np.float32)
        self._logh = np.empty((256, 1), np.float32)
        self._moments = np.empty((4, 1), np.float32)
        # Patch geometry: which gradient and filter responses lie inside a patch.
        r, c = np.arange(rows)[:, None], np.arange(cols)[None, :]
        edge_mask = (r % BAND_ROWS < BAND_ROWS - 1) & (c % length < length - 1)
        self._edge_mask = edge_mask[:-1, :-1].astype(np.uint8)
        inner = (c % length > 0) & (c % length < length - 1)
        self._inner_mask = np.repeat(inner, bands, axis=0).astype(np.uint8)
        self._n_inner = float(bands * runs * (length - 2))
        levels = np.arange(256, dtype=np.float64)
        self._weights = np.stack(
            [levels / npx, levels * levels / npx, (levels >= OVER_LEVEL) / npx,
             (levels <= UNDER_LEVEL) / npx]
        ).astype(np.float32)
        self._log2n = math.log2(npx)
        self._npx = npx
        self._map = np.empty((rows, cols, 2), np.int16)
        self._step = 1
        self._shape: tuple[int, ...] = ()
        self._has_prev = False

    @property
    def sample_size(self) -> tuple[int, int]:
        """(width, height) of the sample: pixels per sampled row, sampled rows."""
        return self._size

    @property
    def step(self) -> int:
        """Distance in pixels between sampled neighbours for the current frame size."""
        return self._step

    def reset(self) -> None:
        """Forget the previous frame (the next diff/motion is NaN)."""
        self._has_prev = False

    def sample_coords(self, shape: tuple[int, ...]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(ys, xs) frame coordinates of every sample pixel for a frame of ``shape``."""
        h, w = int(shape[0]), int(shape[1])
        cols, rows = self._size
        if cols > w or rows > h:
            raise ValueError(
                f"frame too small for image statistics: {w}x{h} (needs at least "
                f"{cols}x{rows}; lower [stats] sample_width/sample_height)"
            )
        runs, length, bands = self._runs, self._length, self._bands
        step = max(1, int(round(w / self._ref_width)))
        while step > 1 and (cols * step > w or rows * step > h):
            step -= 1
        pitch, span = w / runs, length * step
        free = pitch - span  # room left beside a run: the stagger moves runs within it
        ys = np.empty((rows, cols), np.int64)
        xs = np.empty((rows, cols), np.int64)
        offs = np.arange(length) * step
        for j in range(bands):
            yc = (j + 0.5) * h / bands
            y0 = min(max(int(math.floor(yc - BAND_ROWS * step / 2 + 0.5)), 0),
                     h - BAND_ROWS * step)
            shift = ((j * _GOLDEN) % 1.0 - 0.5) * free
            for k in range(runs):
                x0 = int(math.floor((k + 0.5) * pitch + shift - span / 2 + 0.5))
                x0 = min(max(x0, 0), w - span)
                for r in range(BAND_ROWS):
                    ys[j * BAND_ROWS + r, k * length : (k + 1) * length] = y0 + r * step
                    xs[j * BAND_ROWS + r, k * length : (k + 1) * length] = x0 + offs
        self._step = step
        return ys, xs

    def _plan(self, shape: tuple[int, ...]) -> None:
        ys, xs = self.sample_coords(shape)
        if max(shape[0], shape[1]) > 32767:  # beyond int16 remap coordinates
            self._map = np.dstack([xs, ys]).astype(np.float32)
        else:
            self._map = np.dstack([xs, ys]).astype(np.int16)
        self._shape = shape

    def compute(self, frame_bgr: Image, out: npt.NDArray[np.float32]) -> None:
        """Write len(IMAGE_FEATURES) values for one BGR uint8 frame into ``out``."""
        if frame_bgr.shape != self._shape:
            if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
                raise ValueError(
                    f"image statistics need a BGR uint8 frame of shape (H, W, 3): got "
                    f"{frame_bgr.dtype} {frame_bgr.shape} (convert with cv2.cvtColor first)"
                )
            self._plan(frame_bgr.shape)
        elif frame_bgr.dtype != np.uint8:
            raise ValueError(f"image statistics need a uint8 frame, got {frame_bgr.dtype}")
        sample, gray, hist, work = self._sample, self._gray, self._hist, self._work
        # The one read of the frame: every patch row is a short run (a cache line or two).
        cv2.remap(frame_bgr, self._map, None, cv2.INTER_NEAREST, dst=sample)  # type: ignore[call-overload]  # stub lacks map2=None
        cv2.cvtColor(sample, cv2.COLOR_BGR2GRAY, dst=gray)

        # Luma: histogram moments give brightness, contrast, exposure and entropy at once.
        cv2.calcHist([gray], [0], None, [256], [0, 256], hist=hist)
        m = np.dot(self._weights, hist, out=self._moments)
        logh = self._logh
        np.maximum(hist, 1.0, out=logh)
        np.log2(logh, out=logh)
        plogp = float(np.dot(hist[:, 0], logh[:, 0]))

        # Colour: one transform to (luma, rg/2, yb/2) whose means also invert back to
        # B, G, R; HSV only for the saturation channel.
        cv2.transform(sample, _OPPONENT, dst=self._opp)
        c_mu, c_sd = cv2.meanStdDev(self._opp)
        cv2.cvtColor(sample, cv2.COLOR_BGR2HSV, dst=self._hsv)
        sat = cv2.mean(self._hsv)[1]

        # Edges inside each patch: forward differences, max(|dx|, |dy|) >= EDGE_LEVEL.
        gx, gy = self._gx, self._gy
        cv2.absdiff(gray[:, 1:], gray[:, :-1], dst=gx)
        cv2.absdiff(gray[1:], gray[:-1], dst=gy)
        grad = gy[:, :-1]
        cv2.max(gx[:-1], grad, dst=grad)
        cv2.threshold(grad, EDGE_LEVEL - 1, 1, cv2.THRESH_BINARY, dst=grad)
        edges = cv2.mean(grad, mask=self._edge_mask)[0]

        # Middle row of each band, inside each run: Laplacian variance and Immerkaer noise.
        lap, imm = self._resp
        cv2.Laplacian(gray, cv2.CV_16S, dst=lap, ksize=1)
        cv2.filter2D(gray, cv2.CV_16S, _IMMERKAER_KERNEL, dst=imm)
        _, lap_sd = cv2.meanStdDev(lap[1::BAND_ROWS], mask=self._inner_mask)
        noise = cv2.norm(imm[1::BAND_ROWS], cv2.NORM_L1, self._inner_mask) / self._n_inner

        if self._has_prev:
            cv2.absdiff(gray, self._prev, dst=work)
            diff = cv2.mean(work)[0]
            cv2.threshold(work, MOTION_LEVEL - 1, 1, cv2.THRESH_BINARY, dst=work)
            motion = cv2.countNonZero(work) / self._npx
        else:
            diff = motion = math.nan
        self._gray, self._prev = self._prev, gray
        self._has_prev = True

        mean, m2, over, under = m[:, 0].tolist()
        l_mu, rg_h, yb_h = c_mu[:, 0].tolist()
        _, rg_sd, yb_sd = c_sd[:, 0].tolist()
        rg_mu, yb_mu = 2.0 * rg_h - 256.0, 2.0 * yb_h - 256.0
        (b0, b1, b2), (g0, g1, g2), (r0, r1, r2) = _OPP_TO_BGR
        d1, d2 = rg_h - 128.0, yb_h - 128.0
        sd = float(lap_sd[0, 0])
        out[:] = (
            mean,
            math.sqrt(max(m2 - mean * mean, 0.0)),
            sd * sd,
            sat / 255.0,
            2.0 * math.hypot(rg_sd, yb_sd) + 0.3 * math.hypot(rg_mu, yb_mu),
            min(8.0, self._log2n - plogp / self._npx
                + (np.count_nonzero(hist) - 1) / (2 * self._npx * math.log(2))),
            over,
            under,
            noise * _IMMERKAER,
            edges,
            b0 * l_mu + b1 * d1 + b2 * d2,
            g0 * l_mu + g1 * d1 + g2 * d2,
            r0 * l_mu + r1 * d1 + r2 * d2,
            diff,
            motion,
        )
