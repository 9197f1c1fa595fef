"""Per-frame hot-path cost: ImageStats, the BlazeFace decoder and RingBuffer.push.

Run: .venv/bin/python bench/bench_stats.py   (about 20 s; prints a plain-text table)

Frames are the scikit-image photos resized to 640x480 and 1920x1080 with sensor noise,
rotated so every call sees a different frame; the decoder runs on the real BlazeFace
outputs of those frames. The naive full-frame OpenCV statistics are measured in the same run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.buffers import RingBuffer  # noqa: E402
from agent.confidence import CONFIDENCE_FEATURES, make_decoder  # noqa: E402
from agent.inference import Tensor, TensorDetails, load_runtime  # noqa: E402
from agent.stats import IMAGE_FEATURES, Image, ImageStats, naive_stats, to_gray  # noqa: E402
from agent.testdata import blazeface_model_path, photo_path  # noqa: E402

Frame = Image

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")
SIZES = ((640, 480), (1920, 1080))
BUDGET_US = 100.0


def frames(size: tuple[int, int], rng: np.random.Generator) -> list[Frame]:
    """One noisy frame per sample photo at ``size``."""
    out = []
    for name in PHOTOS:
        img = cv2.imread(str(photo_path(name)), cv2.IMREAD_COLOR)
        base = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR).astype(np.float32)
        noise = rng.normal(0, 4, base.shape).astype(np.float32)
        out.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return out


def timeit(fn: Callable[[int], object], n: int) -> tuple[float, float]:
    """Median and p95 in microseconds of fn(i) over n calls (after a short warm-up)."""
    for i in range(min(20, n)):
        fn(i)
    t = np.empty(n)
    clock = time.perf_counter
    for i in range(n):
        t0 = clock()
        fn(i)
        t[i] = clock() - t0
    return float(np.median(t) * 1e6), float(np.percentile(t, 95) * 1e6)


def blazeface_outputs(imgs: list[Frame]) -> tuple[list[TensorDetails], list[list[Tensor]]]:
    """Output details and real BlazeFace outputs for each frame."""
    _, interpreter_cls, _ = load_runtime("auto")  # the runtime fallback lives in one place
    it = interpreter_cls(model_path=str(blazeface_model_path()))
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    details = it.get_output_details()
    outs = []
    for img in imgs:
        x = cv2.cvtColor(cv2.resize(img, (128, 128)), cv2.COLOR_BGR2RGB)
        it.set_tensor(inp, (x.astype(np.float32) / 127.5 - 1.0)[None])
        it.invoke()
        outs.append([it.get_tensor(d["index"]).copy() for d in details])
    return details, outs


def main() -> int:
    """Run the benchmark and print the table."""
    rng = np.random.default_rng(0)
    n = 3000
    rows: list[tuple[str, float, float]] = []
    ours: dict[tuple[int, int], float] = {}
    naive: dict[tuple[int, int], float] = {}
    small = frames(SIZES[0], rng)
    details, outs = blazeface_outputs(small)
    decoder = make_decoder(details, score_threshold=0.5, input_size=(128, 128))
    conf = np.empty(len(CONFIDENCE_FEATURES), np.float32)
    dec_med, dec_p95 = timeit(lambda i: decoder(outs[i % len(outs)], conf), n)
    face_med, face_p95 = timeit(lambda i: decoder(outs[0], conf), n)  # astronaut: one face
    ring = RingBuffer(IMAGE_FEATURES + CONFIDENCE_FEATURES + ("latency_ms", "frame_interval_ms"),
                      4096)
    row = np.zeros(len(ring.names), np.float32)
    push_med, push_p95 = timeit(lambda i: ring.push(float(i), row), n)
    for size in SIZES:
        imgs = small if size == SIZES[0] else frames(size, rng)
        stats = ImageStats()
        vals = np.empty(len(IMAGE_FEATURES), np.float32)
        grays = [to_gray(f) for f in imgs]

        def ours_fn(i: int, s: ImageStats = stats, f: list[Frame] = imgs,
                    v: npt.NDArray[np.float32] = vals) -> None:
            s.compute(f[i % len(f)], v)

        def naive_fn(i: int, f: list[Frame] = imgs, g: list[Frame] = grays) -> object:
            return naive_stats(f[i % len(f)], g[(i + 1) % len(g)])

        med, p95 = timeit(ours_fn, n)
        rows.append((f"ImageStats.compute {size[0]}x{size[1]}", med, p95))
        ours[size] = med
        nmed, np95 = timeit(naive_fn, 60 if size[0] > 1000 else 200)
        rows.append((f"naive full-frame stats {size[0]}x{size[1]}", nmed, np95))
        naive[size] = nmed
    rows.append(("BlazeFace decoder (real outputs, 4 photos)", dec_med, dec_p95))
    rows.append(("BlazeFace decoder (face frame only)", face_med, face_p95))
    rows.append(("RingBuffer.push", push_med, push_p95))

    # The budget uses the face frame: the decoder's costlier path.
    hook_us = {s: ours[s] + face_med + push_med for s in SIZES}
    print(f"{'stage':44s} {'median us':>10s} {'p95 us':>10s}")
    for name, med, p95 in rows:
        print(f"{name:44s} {med:10.1f} {p95:10.1f}")
    print()
    for s in SIZES:
        print(f"hook (stats + face decoder + push) {s[0]}x{s[1]}: {hook_us[s]:7.1f} us "
              f"(budget {BUDGET_US:.0f} us at 640x480); naive/ours stats = "
              f"{naive[s] / ours[s]:6.1f}x")
    ratio = hook_us[SIZES[1]] / hook_us[SIZES[0]]
    print(f"1920x1080 / 640x480 hook ratio: {ratio:.2f} (budget 1.20)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
