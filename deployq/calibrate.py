"""Calibration: statistics collected once per model and dataset, turned into a range
per tensor by a method.

Statistics per tensor: min, max, and a histogram over [-a, a] with a = max|x| (an even
number of bins, so |x| folds onto it exactly). Methods:
  minmax      the observed [min, max]
  percentile  the p-th and (100-p)-th percentiles (p from the plan settings)
  mse         the range, shrunk toward zero, that minimises the quantization MSE
  entropy     the |x| threshold minimising KL(P || Q) (TensorRT's method)
Every range includes 0, so zero padding is exact."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import graph as G
from .errors import TargetError

BINS = 4096
METHODS = ("minmax", "percentile", "mse", "entropy")


@dataclass
class TensorStats:
    min: float
    max: float
    hist: np.ndarray          # BINS counts over [-absmax, absmax]

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max), 1e-8)

    def centers(self) -> np.ndarray:
        edges = np.linspace(-self.absmax, self.absmax, BINS + 1)
        return (edges[:-1] + edges[1:]) / 2


def collect(graph: G.Graph, x: np.ndarray, batch: int = 256) -> dict[str, TensorStats]:
    """Statistics of the graph input and every node output over the samples x."""
    batches = [torch.from_numpy(x[i:i + batch]) for i in range(0, len(x), batch)]
    lo, hi = {}, {}
    with torch.no_grad():
        for xb in batches:
            for name, v in _tensors(graph, xb):
                lo[name] = min(lo.get(name, np.inf), float(v.min()))
                hi[name] = max(hi.get(name, -np.inf), float(v.max()))
        hists = {n: np.zeros(BINS) for n in lo}
        for xb in batches:
            for name, v in _tensors(graph, xb):
                a = max(abs(lo[name]), abs(hi[name]), 1e-8)
                hists[name] += torch.histc(v.float(), BINS, -a, a).numpy()
    return {n: TensorStats(lo[n], hi[n], hists[n]) for n in lo}


def _tensors(graph, xb):
    return ((k, v) for k, v in G.run(graph, xb, keep=True).items() if k != "output")


def tensor_range(stats: TensorStats, method: str, bits: int, symmetric: bool,
                 percentile: float = 99.99) -> tuple[float, float]:
    if method not in METHODS:
        raise TargetError(f"unknown calibration method '{method}'; known: {', '.join(METHODS)}")
    lo, hi = RANGE_METHODS[method](stats, bits, symmetric, percentile)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        lo, hi = -max(-lo, hi), max(-lo, hi)
    return float(lo), float(hi)


def _minmax(s, bits, symmetric, p):
    return s.min, s.max


def _percentile(s, bits, symmetric, p):
    cdf = np.cumsum(s.hist) / max(s.hist.sum(), 1)
    c = s.centers()
    lo = c[min(np.searchsorted(cdf, 1 - p / 100), BINS - 1)]
    hi = c[min(np.searchsorted(cdf, p / 100), BINS - 1)]
    return max(lo, s.min), min(hi, s.max)


def _mse(s, bits, symmetric, p):
    alphas = np.linspace(0.2, 1.0, 81)[:, None]
    lo, hi = min(s.min, 0.0) * alphas, max(s.max, 0.0) * alphas
    if symmetric:
        lo, hi = -np.maximum(-lo, hi), np.maximum(-lo, hi)
    levels = 2 ** bits - 1
    scale = np.maximum(hi - lo, 1e-12) / levels
    zp = np.round(-lo / scale)
    c = s.centers()[None, :]
    q = np.clip(np.round(c / scale) + zp, 0, levels)
    err = ((c - (q - zp) * scale) ** 2 * s.hist[None, :]).sum(1)
    best = int(np.argmin(err))
    return float(lo[best, 0]), float(hi[best, 0])


def _entropy(s, bits, symmetric, p):
    half = BINS // 2
    h = s.hist[half:] + s.hist[:half][::-1]          # histogram of |x| over [0, absmax]
    h[0] = h[1]           # the spike of exact zeros (after ReLU) says nothing of the max
    levels = 2 ** bits if s.min >= 0 else 2 ** (bits - 1)
    best_i, best_kl = half, np.inf
    for i in range(levels, half + 1, 16):
        kl = _kl_clipped(h, i, levels)
        if kl < best_kl:
            best_i, best_kl = i, kl
    t = best_i / half * s.absmax
    return max(s.min, -t), min(s.max, t)


def _kl_clipped(h: np.ndarray, i: int, levels: int) -> float:
    """KL(P || Q): P is |x|'s histogram cut at i bins with the clipped mass added to the
    last bin; Q is the cut histogram without that mass, quantized to `levels` levels
    (each level's mass spread evenly over its non-empty bins)."""
    ref = h[:i].copy()
    ref[-1] += h[i:].sum()
    groups = np.array_split(np.arange(i), levels)
    q = np.zeros(i)
    for g in groups:
        nonzero = h[g] > 0
        if nonzero.any():
            q[g[nonzero]] = h[g].sum() / nonzero.sum()
    m = ref > 0
    if ref.sum() == 0 or q[m].min() <= 0:
        return np.inf
    pn, qn = ref[m] / ref.sum(), q[m] / q.sum()
    return float((pn * np.log(pn / qn)).sum())


RANGE_METHODS = {"minmax": _minmax, "percentile": _percentile, "mse": _mse,
                 "entropy": _entropy}
