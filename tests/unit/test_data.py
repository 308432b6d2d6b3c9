import gzip
import struct

import numpy as np
import pytest

from deployq import data as D
from deployq.errors import InputError
from tests.conftest import needs_fashion


def test_digits_splits_are_seeded_disjoint_and_in_range():
    a, b = D.load("digits", seed=0), D.load("digits", seed=0)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert a.x_train.shape[1:] == (1, 8, 8) and len(a.x_train) + len(a.x_test) == 1797
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    train = {r.tobytes() for r in a.x_train}
    calib = a.calibration(100, seed=1)
    assert all(r.tobytes() in train for r in calib)
    assert not np.array_equal(D.load("digits", seed=1).x_test, a.x_test)


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_directory(tmp_path):
    rng = np.random.default_rng(0)
    for key, stem in D.IDX_FILES.items():
        n = 20 if "train" in key else 10
        arr = rng.integers(0, 256, (n, 5, 5)) if key.startswith("x") else rng.integers(0, 10, n)
        _write_idx(tmp_path / f"{stem}.gz", arr)
    ds = D.load(str(tmp_path))
    assert ds.x_train.shape == (20, 1, 5, 5) and ds.y_test.shape == (10,)


def test_corrupt_idx_file_is_one_clear_error(tmp_path):
    for stem in D.IDX_FILES.values():
        (tmp_path / stem).write_bytes(b"\x00\x00\x0d\x03garbage")
    with pytest.raises(InputError, match="not a readable IDX file"):
        D.load(str(tmp_path))


def test_npz(tmp_path):
    x = np.random.default_rng(0).random((50, 1, 4, 4), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(50) % 3)
    ds = D.load(str(tmp_path / "d.npz"))
    assert len(ds.x_test) == 10 and ds.num_classes == 3


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((5, 4, 4)), "y": np.zeros(5)}, r"must be \(N, C, H, W\)"),
    ({"x": np.full((5, 1, 4, 4), 255.0), "y": np.zeros(5)}, r"in \[0, 1\]"),
    ({"x": np.zeros((5, 1, 4, 4)), "y": np.zeros(4)}, "to match x"),
    ({"images": np.zeros((5, 1, 4, 4))}, "must hold arrays 'x'"),
])
def test_bad_npz_is_refused(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=message):
        D.load(str(tmp_path / "bad.npz"))


def test_unknown_spec_and_missing_fashion_dir():
    with pytest.raises(InputError, match="unknown dataset 'cifar'"):
        D.load("cifar")
    with pytest.raises(InputError, match="dataset-fashion-mnist"):
        D.load("fashion-mnist:/nonexistent")


@needs_fashion
def test_fashion_mnist_from_debian_package():
    ds = D.load("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
