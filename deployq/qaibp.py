"""Quantization-aware certified training (QA-IBP; Lechner, Zikelic, Chatterjee,
Henzinger, Rus, AAAI 2023) with the IBP training schedule of Gowal et al. 2018.

    model, log = train(model, x_train, y_train, eps=4/255, epochs=20, seed=0)

The forward pass is the deployed integer model's, simulated in float: BatchNorm folded
into the conv before it with its running statistics (as graph.capture folds it; the
statistics stay frozen, so training and deployment fold the same numbers), weights on a
symmetric per-output-channel `bits` grid, every activation tensor after a ReLU on an
unsigned `bits` grid of [0, running max], the input on the 1/255 grid. Rounding is
straight-through (forward rounds, backward passes the gradient). Interval bounds go
through the same forward pass: affine layers in centre/radius form, and every rounding
and clamp applied to both ends, which is sound because each is monotone (the exact
integer bounds of deployq.certification are the ones that certify; these train).

Loss: kappa * CE(clean logits) + (1 - kappa) * CE(worst-case logits), where the
worst case takes the lower bound of the true class and the upper bound of the others.
Schedule: one warm-up epoch at eps 0 (kappa 1), then eps ramps linearly to eps * 
eps_factor and kappa to kappa_end over ramp_fraction of the steps; the learning rate
drops tenfold for the last fifth.

Models: a chain of Conv2d, BatchNorm2d/1d, Linear, ReLU, MaxPool2d, AvgPool2d, Flatten,
Dropout, Identity (nn.Sequential children run in order: zoo LeNet). Anything else is
refused with UnsupportedOpError; a model whose forward is not that chain, with
InputError (checked on a probe batch)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError, UnsupportedOpError

LEAVES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.MaxPool2d,
          nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)
INPUT_STEP = 1.0 / 255.0          # the int8 input grid of [0, 1] (minmax calibration)


@dataclass
class Config:
    eps: float = 4 / 255          # the certification target (input units)
    epochs: int = 20
    bits: int = 8                 # weight and activation bits of the deployed model
    eps_factor: float = 1.25      # train at eps * eps_factor (Gowal et al. train above)
    kappa_end: float = 0.5
    ramp_fraction: float = 0.5
    val_fraction: float = 0.1
    batch: int = 128
    lr: float = 1e-3
    seed: int = 0


@dataclass
class Log:
    config: dict
    epochs: list[dict] = field(default_factory=list)


# --- the chain of layers ----------------------------------------------------------

def chain(model: nn.Module) -> list[nn.Module]:
    """The model's leaf layers in execution order (nested nn.Sequential flattened, and
    the children of a plain container in registration order)."""
    if isinstance(model, LEAVES):
        return [model]
    children = list(model.children())
    if not children:
        raise UnsupportedOpError(type(model).__name__, "", "qa-ibp training",
                                 [c.__name__ for c in LEAVES])
    return [leaf for c in children for leaf in chain(c)]


def check_chain(model: nn.Module, layers: list[nn.Module], x: torch.Tensor) -> None:
    """Running the layers in order must give the model's output (eval mode)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        ours = x
        for layer in layers:
            ours = layer(ours)
        same = torch.allclose(ours, model(x), atol=1e-5)
    model.train(was)
    if not same:
        raise InputError("qa-ibp training needs a model whose forward runs its layers in "
                         "order (a chain, like zoo LeNet); this one does not")


class Simulated(nn.Module):
    """The deployed model's forward pass (BN folded, weights and activations on their
    grids), on points and on intervals."""

    def __init__(self, model: nn.Module, bits: int, x_probe: torch.Tensor):
        super().__init__()
        self.model, self.bits = model, bits
        self.layers = chain(model)
        check_chain(model, self.layers, x_probe)
        self.act_max = [torch.zeros(()) for _ in self.layers]
        with torch.no_grad():                    # initial activation ranges
            self.observe = True
            self.forward(x_probe)
            self.observe = False

    def forward(self, x: torch.Tensor, lo=None, hi=None):
        x = _fake_quant(x, INPUT_STEP, 0.0, 1.0)
        if lo is not None:
            lo, hi = _fake_quant(lo, INPUT_STEP, 0.0, 1.0), _fake_quant(hi, INPUT_STEP, 0.0, 1.0)
        i, n = 0, len(self.layers)
        while i < n:
            layer = self.layers[i]
            bn = self.layers[i + 1] if i + 1 < n and isinstance(
                self.layers[i + 1], (nn.BatchNorm2d, nn.BatchNorm1d)) else None
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                w, b = self._folded(layer, bn)
                x, lo, hi = _affine(layer, w, b, x, lo, hi)
                i += 2 if bn is not None else 1
                continue
            if isinstance(layer, nn.ReLU):
                x, lo, hi = self._relu_quant(i, x, lo, hi)
            elif isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm1d)):
                raise UnsupportedOpError("BatchNorm not after a conv or linear", str(i),
                                         "qa-ibp training", [c.__name__ for c in LEAVES])
            elif not isinstance(layer, (nn.Dropout, nn.Identity)):
                x = layer(x)
                if lo is not None:
                    lo, hi = layer(lo), layer(hi)     # monotone: pools, flatten
            i += 1
        return x if lo is None else (x, lo, hi)

    def _folded(self, layer, bn):
        w = layer.weight
        b = layer.bias if layer.bias is not None else torch.zeros(w.shape[0])
        if bn is not None:
            g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w = w * g.view(-1, *[1] * (w.ndim - 1))
            b = (b - bn.running_mean) * g + bn.bias
        qmax = 2 ** (self.bits - 1) - 1
        scale = w.detach().abs().flatten(1).amax(1).clamp_min(1e-8) / qmax
        scale = scale.view(-1, *[1] * (w.ndim - 1))
        return _fake_quant(w, scale, -qmax * scale, qmax * scale), b

    def _relu_quant(self, i, x, lo, hi):
        if self.observe or self.training:
            m = x.detach().max()
            self.act_max[i] = m if self.observe else torch.maximum(
                0.99 * self.act_max[i] + 0.01 * m, torch.zeros(()))
        top = self.act_max[i].clamp_min(1e-6)
        step = top / (2 ** self.bits - 1)
        x = _fake_quant(torch.relu(x), step, 0.0, top)
        if lo is not None:
            lo = _fake_quant(torch.relu(lo), step, 0.0, top)
            hi = _fake_quant(torch.relu(hi), step, 0.0, top)
        return x, lo, hi


def _fake_quant(t: torch.Tensor, step, lo, hi) -> torch.Tensor:
    """t rounded to multiples of step within [lo, hi]; gradient straight through."""
    q = torch.clamp(torch.round(t / step) * step, lo, hi)
    return t + (q - t).detach()


def _affine(layer, w, b, x, lo, hi):
    op = ((lambda t, ww, bb: F.conv2d(t, ww, bb, layer.stride, layer.padding,
                                      layer.dilation, layer.groups))
          if isinstance(layer, nn.Conv2d) else F.linear)
    y = op(x, w, b)
    if lo is None:
        return y, None, None
    mid, rad = op((hi + lo) / 2, w, b), op((hi - lo) / 2, w.abs(), None)
    return y, mid - rad, mid + rad


# --- training ----------------------------------------------------------------------

def worst_logits(lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Upper bounds for the wrong classes, the lower bound for the true one."""
    onehot = F.one_hot(y, hi.shape[1]).bool()
    return torch.where(onehot, lo, hi)


def certified(lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    worst = worst_logits(lo, hi, y)
    others = worst.masked_fill(F.one_hot(y, hi.shape[1]).bool(), -math.inf)
    return lo.gather(1, y[:, None])[:, 0] > others.max(1).values


def split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """(train, validation) carved from the training data, seeded."""
    if not 0 < fraction < 1:
        raise InputError(f"validation fraction must be in (0, 1), got {fraction}")
    idx = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, int(len(x) * fraction))
    v, t = idx[:n_val], idx[n_val:]
    return (x[t], y[t]), (x[v], y[v])


def train(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray,
          config: Config | None = None,
          progress: Callable[[int, int, dict], None] | None = None, target=None,
          **overrides) -> tuple[nn.Module, Log]:
    """QA-IBP training of `model` (float checkpoint or fresh) on (x_train, y_train):
    float32 (N, C, H, W) in [0, 1] and int labels. A validation split is carved from
    them (config.val_fraction, seeded). `target` (a targets.Target or its name) sets
    the simulated bits to its default weight bits; overrides (eps, epochs, seed, ...)
    set Config fields. progress(epoch, epochs, entry) is called after each epoch.
    Returns the model (eval mode; BN statistics as given) and the log. The certificate
    of the result is computed on the target itself (deployq.certification)."""
    if target is not None:
        from . import targets as T
        tgt = T.get(target) if isinstance(target, str) else target
        overrides.setdefault("bits", int(tgt.defaults["weight_bits"]))
    cfg = Config(**{**(config.__dict__ if config else {}), **overrides})
    check_config(cfg)
    torch.manual_seed(cfg.seed)
    (xt, yt), (xv, yv) = split(x_train, y_train, cfg.val_fraction, cfg.seed)
    xt, yt = torch.from_numpy(xt), torch.from_numpy(yt)
    sim = Simulated(model, cfg.bits, torch.from_numpy(xv[:256]))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    steps_per_epoch = math.ceil(len(xt) / cfg.batch)
    total = cfg.epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(cfg.seed)
    log, step = Log(dict(cfg.__dict__)), 0
    for epoch in range(cfg.epochs):
        t0 = time.time()
        model.eval()                     # BN statistics frozen; dropout off
        sim.train()
        if epoch == int(cfg.epochs * 0.8):
            for g in opt.param_groups:
                g["lr"] = cfg.lr / 10
        losses = []
        for idx in torch.randperm(len(xt), generator=gen).split(cfg.batch):
            eps, kappa = schedule(step, steps_per_epoch, total, cfg)
            losses.append(_step(sim, opt, xt[idx], yt[idx], eps, kappa))
            step += 1
        sim.eval()
        entry = {"epoch": epoch + 1, "eps": eps, "kappa": kappa,
                 "loss": float(np.mean(losses)), "seconds": round(time.time() - t0, 1)}
        entry |= evaluate(sim, xv, yv, cfg.eps)
        log.epochs.append(entry)
        if progress:
            progress(epoch + 1, cfg.epochs, entry)
    model.eval()
    return model, log


def check_config(cfg: Config) -> None:
    if not 0 < cfg.eps <= 1:
        raise InputError(f"eps must be in (0, 1], got {cfg.eps}")
    if cfg.epochs < 1 or cfg.batch < 1:
        raise InputError(f"epochs and batch must be at least 1, got {cfg.epochs}, {cfg.batch}")
    if not 2 <= cfg.bits <= 8:
        raise InputError(f"bits must be 2..8, got {cfg.bits}")


def schedule(step: int, steps_per_epoch: int, total: int, cfg: Config) -> tuple[float, float]:
    """(eps, kappa) at a step: 0 and 1 for the warm-up epoch, then linear ramps."""
    warm = steps_per_epoch if cfg.epochs > 1 else 0
    ramp = max(1, int(total * cfg.ramp_fraction))
    t = min(1.0, max(0.0, (step - warm) / ramp))
    return cfg.eps * cfg.eps_factor * t, 1.0 - (1.0 - cfg.kappa_end) * t


def _step(sim: Simulated, opt, x, y, eps: float, kappa: float) -> float:
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    logits, blo, bhi = sim(x, lo, hi)
    loss = kappa * F.cross_entropy(logits, y)
    if kappa < 1:
        loss = loss + (1 - kappa) * F.cross_entropy(worst_logits(blo, bhi, y), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def evaluate(sim: Simulated, x: np.ndarray, y: np.ndarray, eps: float,
             batch: int = 1000) -> dict:
    """Clean accuracy of the simulated quantized model and the fraction its interval
    bounds certify at eps (a training signal; deployq.certification certifies)."""
    clean = cert = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb, yb = torch.from_numpy(x[i:i + batch]), torch.from_numpy(y[i:i + batch])
            logits, lo, hi = sim(xb, (xb - eps).clamp(0, 1), (xb + eps).clamp(0, 1))
            clean += int((logits.argmax(1) == yb).sum())
            cert += int(certified(lo, hi, yb).sum())
    return {"val_clean": clean / len(x), "val_certified": cert / len(x)}
