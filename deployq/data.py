"""Datasets. Every dataset is (N, C, H, W) float32 in [0, 1] with int64 labels, split
into train and test; calibration samples are drawn, seeded, from train only, so the
test split never informs a quantization parameter.

Specs accepted by load():
  digits                  scikit-learn's bundled 8x8 digits (the embedded default)
  fashion-mnist[:DIR]     IDX files (default DIR: where Debian's dataset-fashion-mnist
                          package installs them)
  PATH/                   a directory of IDX files named like MNIST's
  PATH.npz                arrays x (N,C,H,W, float in [0,1]) and y; optional x_test, y_test
                          (without them, a test fifth is drawn shuffled and stratified
                          by label with the run's seed)
from_arrays() takes the same arrays from Python: (x, y), (x, y, x_test, y_test) or a
dict with those keys.

Inputs are used as given: any normalization (mean/std) must be inside the model, since
every target quantizes the [0, 1] input itself."""
from __future__ import annotations

import gzip
import importlib.util
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
TEST_FRACTION = 0.2
IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    note: str | None = None     # how the splits were made, when deployq made them

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def calibration(self, n: int, seed: int = 0) -> np.ndarray:
        """n training samples chosen by a seeded permutation (never test samples)."""
        idx = np.random.default_rng(seed).permutation(len(self.x_train))[:n]
        return self.x_train[np.sort(idx)]

    def test(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first n test samples (all when n is None): the same set on every run."""
        return self.x_test[:n], self.y_test[:n]


def load(spec: str = "digits", seed: int = 0) -> Dataset:
    if spec == "digits":
        return _digits(seed)
    if spec == "fashion-mnist" or spec.startswith("fashion-mnist:"):
        folder = Path(spec.partition(":")[2] or FASHION_MNIST_DIR)
        if not folder.is_dir():
            raise InputError(
                f"Fashion-MNIST not found in {folder}: install Debian's "
                "'dataset-fashion-mnist' package or pass --data fashion-mnist:DIR")
        return _idx_dir(folder, "fashion-mnist")
    path = Path(spec)
    if path.suffix == ".npz":
        return _npz(path, seed)
    if path.is_dir():
        return _idx_dir(path, path.name)
    raise InputError(f"unknown dataset '{spec}': use digits, fashion-mnist[:DIR], "
                     "a directory of IDX files or an .npz file with x and y")


def _digits(seed: int) -> Dataset:
    # The CSV that sklearn.datasets.load_digits reads, read directly: importing
    # sklearn.datasets costs 1.7 s.
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise InputError("the digits dataset needs scikit-learn: pip install scikit-learn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(csv, delimiter=",", dtype=np.float32)
    x = (table[:, :-1] / 16.0).reshape(-1, 1, 8, 8)
    y = table[:, -1].astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(x))
    n_test = len(x) // 5
    test, train = idx[:n_test], idx[n_test:]
    return Dataset("digits", x[train], y[train], x[test], y[test])


def _idx_dir(folder: Path, name: str) -> Dataset:
    arrays = {key: _read_idx(_find_idx(folder, stem)) for key, stem in IDX_FILES.items()}
    for key in ("x_train", "x_test"):
        arrays[key] = (arrays[key].astype(np.float32) / 255.0)[:, None]
    for key in ("y_train", "y_test"):
        arrays[key] = arrays[key].astype(np.int64)
    return _checked(Dataset(name, **arrays), str(folder))


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise InputError(f"{folder} has no {stem}[.gz]: an IDX dataset directory needs "
                     f"{', '.join(IDX_FILES.values())}")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise InputError(f"{path} is not a readable IDX file ({e})") from None


def _npz(path: Path, seed: int = 0) -> Dataset:
    if not path.is_file():
        raise InputError(f"data file {path} does not exist")
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile,
            NotImplementedError) as e:
        raise InputError(f"cannot read {path} as .npz ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]}); save it with "
                         "numpy.savez(path, x=x, y=y)") from None
    return _from_dict(arrays, path.stem, path, seed)


def from_arrays(arrays, seed: int = 0, name: str = "arrays") -> Dataset:
    """A Dataset from Python arrays: (x, y), (x, y, x_test, y_test), a dict with those
    keys, or a Dataset (returned as it is); checked as an .npz is."""
    if isinstance(arrays, Dataset):
        return _checked(arrays, arrays.name)
    if isinstance(arrays, (tuple, list)) and len(arrays) in (2, 4):
        arrays = dict(zip(("x", "y", "x_test", "y_test"), arrays))
    if not isinstance(arrays, dict):
        raise InputError("data arrays must be (x, y), (x, y, x_test, y_test) or a dict "
                         "with keys x, y and optionally x_test, y_test")
    return _from_dict({k: np.asarray(v) for k, v in arrays.items()}, name, name, seed)


def _from_dict(arrays: dict, name: str, where, seed: int) -> Dataset:
    if "x" not in arrays or "y" not in arrays:
        raise InputError(f"{where} must hold arrays 'x' (N,C,H,W) and 'y' (N,); "
                         f"found {sorted(arrays)}")
    x, y = _images(arrays["x"], where, "x"), _labels(arrays["y"], where, "y")
    if "x_test" in arrays and "y_test" in arrays:
        ds = Dataset(name, x, y, _images(arrays["x_test"], where, "x_test"),
                     _labels(arrays["y_test"], where, "y_test"))
    else:
        ds = _split(name, x, y, seed, where)
    return _checked(ds, str(where))


def _split(name: str, x: np.ndarray, y: np.ndarray, seed: int, where) -> Dataset:
    """A test fifth drawn shuffled and stratified by label (scikit-learn's
    train_test_split with the seed), so that class-sorted data still tests every
    class; plain shuffled when a class has a single sample."""
    if len(x) < 2 or y.shape != (len(x),):
        return Dataset(name, x, y, x[:0], y[:0])      # refused by _checked, with the shape
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(x))
    n_test = max(1, int(round(TEST_FRACTION * len(x))))
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 and len(counts) <= min(n_test, len(x) - n_test) else None
    train, test = train_test_split(idx, test_size=n_test, shuffle=True,
                                   random_state=seed, stratify=stratify)
    note = (f"{where} has no x_test/y_test: {len(test)} test samples drawn from its "
            f"{len(x)}, shuffled{' and stratified by label' if stratify is not None else ''}"
            f" (seed {seed})")
    return Dataset(name, x[train], y[train], x[test], y[test], note)


def _images(a: np.ndarray, path, key: str) -> np.ndarray:
    """Real numbers (integer or float arrays) as float32; anything else refused."""
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer)
                                   or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"data {path}: {key} must hold real numbers in [0, 1], got dtype "
                         f"{a.dtype}; convert it with x.astype('float32')")
    return a.astype(np.float32)


def _labels(a: np.ndarray, path, key: str) -> np.ndarray:
    """Class labels as int64. Integer arrays, and float arrays of whole numbers, are
    labels; a fractional, non-finite, bool, complex or string label is refused (a
    float label would otherwise be truncated into a wrong class)."""
    whole = (np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all()
             and (a == np.round(a)).all())
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or whole):
        raise InputError(f"data {path}: {key} must hold integer class labels, got dtype "
                         f"{a.dtype}" + (" with fractional values" if np.issubdtype(
                             a.dtype, np.floating) else "") + "; give labels 0..K-1 as "
                         "integers (y.astype('int64'))")
    return a.astype(np.int64)


def check_labels(ds: Dataset, num_classes: int | None, where: str) -> None:
    """Every label names one of the model's num_classes outputs."""
    if num_classes is None:
        return
    top = int(max(ds.y_train.max(), ds.y_test.max()))
    if top >= num_classes:
        raise InputError(f"{where}: labels go up to {top} but the model has {num_classes} "
                         f"outputs; labels must be 0..{num_classes - 1} (choose the data the "
                         "model was trained for)")


def _checked(ds: Dataset, where: str) -> Dataset:
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        if x.ndim != 4:
            raise InputError(f"{where}: x must be (N, C, H, W), got shape {x.shape}")
        if y.shape != (len(x),):
            raise InputError(f"{where}: y must be ({len(x)},) to match x, got {y.shape}")
        if len(x) == 0 or x[0].size == 0:
            raise InputError(f"{where}: a split is empty (shape {x.shape}); give at least "
                             "one training and one test sample")
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise InputError(f"{where}: x must be finite and in [0, 1], got "
                             f"[{x.min():.3g}, {x.max():.3g}]; divide by 255 first")
        if y.min() < 0:
            raise InputError(f"{where}: labels must be >= 0, got {y.min()}")
    if ds.x_train.shape[1:] != ds.x_test.shape[1:]:
        raise InputError(f"{where}: train and test shapes differ: "
                         f"{ds.x_train.shape[1:]} vs {ds.x_test.shape[1:]}")
    return ds
