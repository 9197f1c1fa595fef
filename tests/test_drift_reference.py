"""Reference build, calibration bookkeeping, and save/load with its error messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import ar1

from agent.drift.reference import FORMAT_VERSION, KS_GRID, Reference, build_reference, sketch
from agent.errors import BaselineError

SHA = "ab" * 32
OTHER_SHA = "cd" * 32


def make(values: np.ndarray, **kw) -> Reference:
    names = kw.pop("names", [f"f{i}" for i in range(values.shape[1])])
    args = dict(window_frames=1024, eval_stride_frames=256, fps=30.0, model_sha256=SHA,
                model_path="/models/m.tflite", origin="baseline", source="test stream",
                created=1700000000.0)
    args.update(kw)
    return build_reference(values, names, **args)


@pytest.fixture(scope="module")
def ref() -> Reference:
    data = ar1(1, 20000, 3)
    data[::7, 2] = np.nan  # NaN values are dropped per feature
    return make(data, class_hist=np.array([5.0, 0.0, 7.0]))


def test_sketch_is_evenly_spaced_order_statistics():
    values = np.arange(10000.0)
    sk = sketch(values, 2048)
    assert sk.shape == (2048,) and np.all(np.diff(sk) > 0)
    assert abs(sk[1024] - 5000) <= 3 and sk[0] < 5 and sk[-1] > 9994
    assert np.array_equal(sketch(np.arange(5.0), 5), np.arange(5.0))
    assert sketch(np.arange(3.0), 6).tolist() == [0, 0, 1, 1, 2, 2]


def test_build_fields_and_calibration(ref):
    assert ref.names == ("f0", "f1", "f2")
    assert ref.sketch.shape == (3, 2048)
    assert np.all(np.diff(ref.sketch, axis=1) >= 0)
    assert ref.frames == 20000 and ref.version == FORMAT_VERSION
    # Error budget: alpha = target * P / (features * evaluations per week).
    evals = 604800 * 30.0 / 256
    assert ref.persistence_evals == math.ceil(60 * 30 / 256)
    assert ref.alpha == pytest.approx(1.0 * ref.persistence_evals / (3 * evals))
    assert np.all(ref.rho1 > 0.95) and np.all(ref.rho1 < 0.99)
    assert np.all(ref.threshold >= 2 * ref.null_mean)
    assert np.all(ref.threshold > 1.1 * ref.null_max - 1e-12)
    assert np.all((ref.threshold >= ref.min_ks) & (ref.threshold <= 0.99))
    assert np.allclose(ref.clear_threshold, 0.7 * ref.threshold)
    s = ref.summary("f0")
    assert set(s) == {"mean", "std", "p05", "p50", "p95"}
    assert s["p05"] < s["p50"] < s["p95"]
    with pytest.raises(ValueError, match="unknown feature 'nope'; the reference has f0, f1, f2"):
        ref.summary("nope")
    assert ref._grid.shape == (3, KS_GRID)


def test_threshold_grows_with_autocorrelation_and_target():
    white = make(np.random.default_rng(0).normal(size=(20000, 1)))
    sticky = make(ar1(0, 20000, 1, rho=0.99))
    assert white.threshold[0] == pytest.approx(white.min_ks)  # floor dominates for iid data
    assert sticky.threshold[0] > 2 * white.threshold[0]
    lax = make(ar1(0, 20000, 1, rho=0.99), target_false_alarms_per_week=100.0)
    assert lax.threshold[0] < sticky.threshold[0]


def test_constant_and_missing_features():
    data = np.column_stack([np.ones(5000), np.full(5000, np.nan), ar1(2, 5000, 1)[:, 0]])
    ref = make(data)
    assert ref.threshold[0] == pytest.approx(ref.min_ks)
    assert ref.scale[0] == 1.0
    assert math.isnan(ref.threshold[1]) and np.isnan(ref.sketch[1]).all()
    assert math.isfinite(ref.threshold[2])


def test_build_rejects_bad_input():
    with pytest.raises(BaselineError, match="baseline too short: 1000 frames"):
        make(np.zeros((1000, 2)))
    with pytest.raises(ValueError, match=r"does not match 3 feature names"):
        make(np.zeros((5000, 2)), names=["a", "b", "c"])
    with pytest.raises(ValueError, match="origin must be one of"):
        make(np.zeros((5000, 1)), origin="guess")
    with pytest.raises(ValueError, match="fps must be > 0"):
        make(np.zeros((5000, 1)), fps=0)


def test_save_load_round_trip(ref, tmp_path):
    path = tmp_path / "baseline.npz"
    ref.save(path)
    back = Reference.load(path, expected_sha256=SHA)
    for name in ("sketch", "threshold", "clear_threshold", "psi_edges", "psi_ref", "mean",
                 "scale", "rho1", "class_hist"):
        assert np.array_equal(getattr(back, name), getattr(ref, name), equal_nan=True), name
    for name in ("names", "model_sha256", "model_path", "created", "origin", "source", "frames",
                 "fps", "window_frames", "eval_stride_frames", "persistence_evals", "alpha"):
        assert getattr(back, name) == getattr(ref, name), name
    assert back.summary("f1") == ref.summary("f1")
    assert Reference.from_bytes(ref.to_bytes()).names == ref.names
    assert path.stat().st_size < 100_000


def test_load_missing_file(tmp_path):
    with pytest.raises(BaselineError, match=r"baseline not found: .*nope\.npz \(create one with "
                                            r"edgewatch baseline \.\.\. --out FILE\)"):
        Reference.load(tmp_path / "nope.npz")


def test_load_corrupt_file(ref, tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(ref.to_bytes()[:300])
    with pytest.raises(BaselineError, match=r"baseline is corrupt: .*bad\.npz") as err:
        Reference.load(path)
    assert "\n" not in str(err.value)
    path.write_bytes(b"not a baseline at all")
    with pytest.raises(BaselineError, match="baseline is corrupt"):
        Reference.load(path)


def test_load_hash_mismatch(ref, tmp_path):
    path = tmp_path / "b.npz"
    ref.save(path)
    with pytest.raises(BaselineError, match=r"baseline was made for model sha256 abababababab… "
                                            r"but the agent runs cdcdcdcdcdcd….*rebuild it with "
                                            r"edgewatch baseline"):
        Reference.load(path, expected_sha256=OTHER_SHA)


def test_load_wrong_version(ref, tmp_path, monkeypatch):
    import agent.drift.reference as module

    path = tmp_path / "old.npz"
    monkeypatch.setattr(module, "FORMAT_VERSION", 99)
    ref.save(path)  # version field is the instance's (1); the reader now expects 99
    with pytest.raises(BaselineError, match="baseline format version 1 is not supported"):
        Reference.load(path)


def test_build_logs_one_summary_line_and_no_warning(caplog):
    """Bug 6: a build at the defaults printed a WARNING per highly autocorrelated feature."""
    data = ar1(4, 4000, 4, rho=0.999)
    data[:, 3] = np.nan
    with caplog.at_level("DEBUG", logger="agent.drift.reference"):
        built = make(data, window_frames=300, eval_stride_frames=30)
    assert np.nanmax(built.threshold) > 0.8  # some features see only large shifts
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    info = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert len(info) == 1
    assert "calibrated for 3 features" in info[0] and "see only large shifts" in info[0]
    assert "no data for f3" in info[0]


def test_views_round_trip_and_training_reference(tmp_path):
    frame = make(ar1(5, 3000, 2), view={"kind": "frame", "size": None}, kind="training")
    inp = make(ar1(6, 3000, 2), view={"kind": "input", "size": [128, 128]}, kind="training")
    both = Reference.from_bytes(
        Reference(**{**{k: getattr(frame, k) for k in frame.__dataclass_fields__
                        if frame.__dataclass_fields__[k].init}, "alt": inp}).to_bytes())
    assert both.view_kind == "frame" and both.for_view("input") is not None
    assert both.for_view("input").view["size"] == [128, 128]
    assert both.identity()["kind"] == "training"
    images = make(ar1(7, 300, 2), independent=True)
    assert not images.calibrated and np.isnan(images.threshold).all()
    with pytest.raises(BaselineError, match="needs at least 100"):
        make(ar1(7, 50, 2), independent=True)
