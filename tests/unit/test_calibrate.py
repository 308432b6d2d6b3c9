import numpy as np
import pytest
import torch

from deployq import calibrate, graph as G
from deployq.errors import TargetError


def _stats(values: np.ndarray) -> calibrate.TensorStats:
    a = float(np.abs(values).max())
    hist = np.histogram(values, calibrate.BINS, (-a, a))[0].astype(float)
    return calibrate.TensorStats(float(values.min()), float(values.max()), hist)


@pytest.fixture
def heavy_tail():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(0, 1, 100_000), [40.0, -35.0]])


def test_minmax_is_the_observed_range(heavy_tail):
    assert calibrate.tensor_range(_stats(heavy_tail), "minmax", 8, False) == (
        pytest.approx(-35.0), pytest.approx(40.0))


@pytest.mark.parametrize("method", ["percentile", "mse", "entropy"])
def test_clipping_methods_ignore_outliers(heavy_tail, method):
    lo, hi = calibrate.tensor_range(_stats(heavy_tail), method, 8, False, 99.9)
    assert -35 < lo < -2 and 2 < hi < 40


def test_symmetric_ranges_are_symmetric_and_include_zero():
    lo, hi = calibrate.tensor_range(_stats(np.linspace(0.5, 3.0, 1000)), "minmax", 8, True)
    assert lo == -hi == pytest.approx(-3.0)
    lo, hi = calibrate.tensor_range(_stats(np.linspace(0.5, 3.0, 1000)), "minmax", 8, False)
    assert lo == 0.0


def test_unknown_method_is_refused():
    with pytest.raises(TargetError, match="unknown calibration method 'bogus'"):
        calibrate.tensor_range(_stats(np.ones(3)), "bogus", 8, False)


def test_collect_covers_every_tensor(all_ops):
    from tests.conftest import ALL_OPS_SHAPE
    g = G.capture(all_ops, ALL_OPS_SHAPE)
    x = np.random.default_rng(0).random((40, *ALL_OPS_SHAPE), dtype=np.float32)
    stats = calibrate.collect(g, x, batch=16)
    assert set(stats) == {"input"} | {n.name for n in g.nodes}
    with torch.no_grad():
        out = G.run(g, torch.from_numpy(x))["output"].numpy()
    assert stats[g.output].min == pytest.approx(out.min()) and stats[g.output].hist.sum() == out.size
