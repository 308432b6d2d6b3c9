"""The weights fingerprint: sha256 over the parameters' names (sorted) and bytes, first 16
hex digits; it identifies the model a plan, a result or a sweep cell was made for. Built
from plain arrays so that a sweep fingerprints a zoo model's shipped weights without
importing torch (models.Model.fingerprint is the same function of its state dict)."""
from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np


def of_arrays(named: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(named):
        h.update(name.encode())
        h.update(np.ascontiguousarray(named[name]).tobytes())
    return h.hexdigest()[:16]


def weights_file(name: str):
    """The shipped weights of zoo model `name` (which may not exist)."""
    return resources.files("deployq") / "weights" / f"{name}.npz"


def of_zoo(name: str) -> str | None:
    """The fingerprint of zoo model `name`'s shipped weights, None without a file (an
    unknown name: loading the model says why)."""
    path = weights_file(name)
    if not path.is_file():
        return None
    with path.open("rb") as f, np.load(f, allow_pickle=False) as arrays:
        return of_arrays({k: arrays[k] for k in arrays.files})
