"""Adversarial attacks as plain functions.

Shapes and units, for every function here: x is float32 (N, C, H, W) with values in
[0, 1]; y holds the N integer labels; eps is in the same units as x (eps = 8/255 is
eight grey levels of an 8-bit image). Every result is an x_adv of x's shape with
||x_adv - x|| <= eps in the attack's norm and values in [0, 1].

White-box attacks (fgsm, pgd) take `model`, a differentiable torch callable
x -> logits (a float model, or a mirror of an integer runtime). The black-box
square_attack takes only a numpy callable x -> logits: a runtime Runner's run().
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

NORMS = ("linf", "l2")


def _loss_grad(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(sum of cross-entropy)/dx: the sum, so each sample's gradient is its own."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow, Shlens, Szegedy, ICLR 2015), L-inf:
    x + eps * sign(grad_x loss), clipped to [0, 1]. A zero gradient moves nothing."""
    if eps == 0:
        return x.clone()
    return (x + eps * _loss_grad(model, x, y).sign()).clamp(0, 1).detach()


def pgd(model, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, norm: str = "linf", restarts: int = 1,
        random_start: bool = True, seed: int = 0) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al., ICLR 2018) on the cross-entropy loss.

    norm 'linf': steps of step_size * sign(grad), projected to the eps box; 'l2': steps
    of step_size * grad / ||grad||_2, projected to the eps ball. step_size defaults to
    2.5 * eps / steps. Each restart begins at a uniform random point of the ball (when
    random_start) drawn from a generator seeded with `seed`; per sample, the first
    restart that misclassifies is kept, else the last one's result."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if eps == 0:
        return x.clone()
    step_size = 2.5 * eps / steps if step_size is None else step_size
    gen = torch.Generator().manual_seed(seed)
    best = x.clone()
    fooled = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(max(1, restarts)):
        adv = x + _random_start(x, eps, norm, gen) if random_start else x.clone()
        adv = _project(adv.clamp(0, 1), x, eps, norm)
        for _ in range(steps):
            adv = _project(adv + step_size * _direction(_loss_grad(model, adv, y), norm),
                           x, eps, norm)
        with torch.no_grad():
            wrong = model(adv).argmax(1) != y
        take = ~fooled
        best[take] = adv[take]
        fooled |= wrong
    return best.detach()


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    length = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / length.view(-1, *[1] * (grad.ndim - 1))


def _random_start(x: torch.Tensor, eps: float, norm: str, gen) -> torch.Tensor:
    if norm == "linf":
        return (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    d = torch.randn(x.shape, generator=gen)
    d = d / d.flatten(1).norm(dim=1).view(-1, *[1] * (x.ndim - 1))
    r = torch.rand(len(x), generator=gen) ** (1 / x[0].numel())   # uniform in the ball
    return d * (eps * r).view(-1, *[1] * (x.ndim - 1))


def _project(adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The point of the eps ball around x nearest adv, then clipped to [0, 1]."""
    d = (adv - x).detach()
    if norm == "linf":
        d = d.clamp(-eps, eps)
    else:
        length = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        d = d * (eps / length).clamp(max=1).view(-1, *[1] * (d.ndim - 1))
    return (x + d).clamp(0, 1)


# --- black box ----------------------------------------------------------------------

def margin(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """logit of the true class minus the largest other logit: < 0 means misclassified."""
    true = logits[np.arange(len(y)), y]
    other = logits.copy()
    other[np.arange(len(y)), y] = -np.inf
    return true - other.max(1)


def square_attack(runner_fn, x: np.ndarray, y: np.ndarray, eps: float, queries: int = 100,
                  seed: int = 0, p_init: float = 0.3) -> np.ndarray:
    """Square Attack, L-inf (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020): a
    score-based black-box random search that only calls runner_fn(x) -> logits.

    Starts from vertical stripes of +-eps, then each query changes one random square
    window (side from the paper's schedule of p_init over `queries`) of every still
    correctly classified sample to a random +-eps per channel, keeping the change when
    the margin loss falls. One batched runner_fn call per query, `queries` + 1 calls in
    all; samples already misclassified stop changing. Seeded: same seed, same result."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    if eps == 0 or queries < 1:
        return x.copy()
    n, c, h, w = x.shape
    stripes = rng.choice([-eps, eps], size=(n, c, 1, w)).astype(np.float32)
    best = np.clip(x + stripes, 0, 1)
    loss = margin(runner_fn(best), y)
    for i in range(queries):
        active = np.flatnonzero(loss > 0)
        if not len(active):
            break
        side = _square_side(p_init, i, queries, h, w)
        cand = best[active].copy()
        for k, j in enumerate(active):
            r, s = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            window = rng.choice([-eps, eps], size=(c, 1, 1)).astype(np.float32)
            cand[k, :, r:r + side, s:s + side] = np.clip(
                x[j, :, r:r + side, s:s + side] + window, 0, 1)
        new = margin(runner_fn(cand), y[active])
        better = new < loss[active]
        best[active[better]] = cand[better]
        loss[active[better]] = new[better]
    return best


def _square_side(p_init: float, i: int, queries: int, h: int, w: int) -> int:
    """The paper's schedule, with its iteration marks rescaled from 10,000 queries."""
    it = int(i / queries * 10000)
    marks = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
    p = p_init / 2 ** sum(it > m for m in marks)
    return int(min(max(round(math.sqrt(p * h * w)), 1), h - 1, w - 1)) or 1
