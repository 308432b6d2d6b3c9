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


# --- APGD (Croce & Hein, ICML 2020) -----------------------------------------------

def _checkpoints(steps: int) -> set[int]:
    """The iterations where APGD may halve its step. The paper's schedule p_0 = 0,
    p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), in whole steps as its
    reference code counts them: intervals of int(0.22 N) steps, each the previous one
    less int(0.03 N), at least int(0.06 N) (each at least 1)."""
    gap, shrink, floor = (max(int(f * steps), 1) for f in (0.22, 0.03, 0.06))
    marks, k = set(), gap
    while k <= steps:
        marks.add(k)
        gap = max(gap - shrink, floor)
        k += gap
    return marks


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target=None) -> torch.Tensor:
    """Per-sample cross-entropy of the true class (to be maximised)."""
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target=None) -> torch.Tensor:
    """Per-sample Difference of Logits Ratio (Croce & Hein 2020), to be maximised.
    Untargeted: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3); targeted at class t:
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), with pi the logits in descending
    order. Shift- and scale-invariant, so it does not vanish on confident models."""
    z = logits
    top = z.sort(1, descending=True).values
    z_y = z.gather(1, y[:, None])[:, 0]
    if target is None:
        other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), -float("inf")).amax(1)
        return -(z_y - other) / (top[:, 0] - top[:, 2] + 1e-12)
    z_t = z.gather(1, target[:, None])[:, 0]
    return -(z_y - z_t) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


LOSSES = {"ce": ce_loss, "dlr": dlr_loss}


def _margin_t(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """True logit minus the largest other: < 0 means misclassified."""
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -float("inf"))
    return logits.gather(1, y[:, None])[:, 0] - other.amax(1)


def _loss_and_grad(model, loss_fn, x, y, target):
    """Per-sample loss, its gradient (each sample's own) and the margin, at x."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    loss = loss_fn(logits, y, target)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad, _margin_t(logits.detach(), y)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.ndim - 1))


def _apgd_run(model, x, y, eps: float, steps: int, norm: str, loss_fn, target, start,
              rho: float = 0.75, alpha: float = 0.75):
    """One APGD run from `start` (Algorithm 1): a first plain step, then steps with
    momentum alpha; at each checkpoint the step of a sample halves and it returns to
    its best point when fewer than rho of the steps since the last checkpoint raised
    its loss, or when neither its step nor its best loss changed. Returns, per sample,
    the iterate of smallest margin (true logit minus the largest other) and that
    margin."""
    marks = _checkpoints(steps)
    eta = torch.full((len(x),), 2.0 * eps)
    cur = start
    loss, grad, margin = _loss_and_grad(model, loss_fn, cur, y, target)
    best_loss, best_x, best_grad = loss.clone(), cur.clone(), grad.clone()
    low_margin, low_x = margin.clone(), cur.clone()
    prev = cur
    rises = torch.zeros(len(x))
    last_mark, mark_eta, mark_loss = 0, eta.clone(), best_loss.clone()
    for k in range(steps):
        z = _project(cur + _view(eta, x) * _direction(grad, norm), x, eps, norm)
        a = 1.0 if k == 0 else alpha
        nxt = _project(cur + a * (z - cur) + (1 - a) * (cur - prev), x, eps, norm)
        prev, cur = cur, nxt
        new_loss, grad, margin = _loss_and_grad(model, loss_fn, cur, y, target)
        rises += (new_loss > loss).float()
        loss = new_loss
        up = loss > best_loss
        best_loss = torch.where(up, loss, best_loss)
        best_x[up], best_grad[up] = cur[up], grad[up]
        lower = margin < low_margin
        low_margin = torch.where(lower, margin, low_margin)
        low_x[lower] = cur[lower]
        if k + 1 in marks:
            stuck = (rises < rho * (k + 1 - last_mark)) | (
                (eta == mark_eta) & (best_loss == mark_loss))
            mark_eta, mark_loss = eta.clone(), best_loss.clone()
            eta = torch.where(stuck, eta / 2, eta)
            cur, grad = cur.clone(), grad.clone()
            cur[stuck], grad[stuck] = best_x[stuck], best_grad[stuck]
            prev = torch.where(_view(stuck, x), cur, prev)
            rises.zero_()
            last_mark = k + 1
    return low_x.detach(), low_margin


def apgd(model, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 100,
         norm: str = "linf", loss: str = "ce", restarts: int = 1, target_classes: int = 0,
         seed: int = 0) -> torch.Tensor:
    """Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", ICML 2020, Algorithm 1), L-inf or L2.

    loss 'ce' (APGD-CE) or 'dlr' (untargeted DLR). With target_classes = k > 0 it is
    APGD-T: the targeted DLR loss towards each of the k classes ranked highest on the
    clean input after the true one, in turn. Each run (restart or target) starts at a
    uniform random point of the eps ball drawn from a generator seeded with `seed`, and
    runs only on the samples no earlier run misclassified. `steps` gradient steps per
    run (steps + 1 gradient evaluations). Returns, per sample, the point of smallest
    margin seen over all runs: a misclassified point when any run found one."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if eps == 0:
        return x.clone()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean = model(x)
    best, margin = x.clone(), _margin_t(clean, y)
    order = clean.argsort(1, descending=True)
    runs = ([(None, LOSSES[loss])] * max(1, restarts) if target_classes <= 0 else
            [(rank, dlr_loss) for rank in range(1, target_classes + 1)
             for _ in range(max(1, restarts))])
    for rank, loss_fn in runs:
        active = torch.nonzero(margin >= 0)[:, 0]
        if not len(active):
            break
        xa, ya = x[active], y[active]
        target = None if rank is None else _target(order[active], ya, rank)
        start = _project(xa + _random_start(xa, eps, norm, gen), xa, eps, norm)
        adv, m = _apgd_run(model, xa, ya, eps, steps, norm, loss_fn, target, start)
        lower = m < margin[active]
        best[active[lower]], margin[active[lower]] = adv[lower], m[lower]
    return best.detach()


def _target(order: torch.Tensor, y: torch.Tensor, rank: int) -> torch.Tensor:
    """The class ranked `rank` (1 = highest) on the clean logits among those != y."""
    others = order[order != y[:, None]].view(len(y), -1)
    return others[:, min(rank, others.shape[1]) - 1]


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
    the margin loss falls. One batched runner_fn call per query on the samples still
    correct, `queries` + 1 calls in all; samples already misclassified stop changing. Seeded: same seed, same result."""
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
        inside = _windows(rng, len(active), side, h, w)
        cand = _new_window(rng, x[active], best[active], inside, eps)
        new = margin(runner_fn(cand), y[active])
        better = new < loss[active]
        best[active[better]] = cand[better]
        loss[active[better]] = new[better]
    return best


def _new_window(rng, x: np.ndarray, best: np.ndarray, inside: np.ndarray, eps: float,
                tries: int = 10) -> np.ndarray:
    """best with its `inside` window set to x + a random +-eps per channel, redrawn
    (up to `tries` times) for the samples where that changes nothing, as the Square
    Attack authors' code does (AutoAttack's and torchattacks' copies draw one window and
    sign for the whole batch and do not redraw): with one channel a plain draw often
    repeats the window's values, a wasted query."""
    n, c = x.shape[:2]
    cand = best.copy()
    todo = np.arange(n)
    for _ in range(tries):
        window = rng.choice([-eps, eps], size=(len(todo), c, 1, 1)).astype(np.float32)
        cand[todo] = np.where(inside[todo], np.clip(x[todo] + window, 0, 1), best[todo])
        same = ~(np.abs(cand[todo] - best[todo]) > 1e-7).any(axis=(1, 2, 3))
        todo = todo[same]
        if not len(todo):
            break
    return cand


def _windows(rng, n: int, side: int, h: int, w: int) -> np.ndarray:
    """(n, 1, h, w) masks, each one side x side square at a uniformly random place."""
    r = rng.integers(0, h - side + 1, size=n)[:, None]
    s = rng.integers(0, w - side + 1, size=n)[:, None]
    rows = (np.arange(h) >= r) & (np.arange(h) < r + side)
    cols = (np.arange(w) >= s) & (np.arange(w) < s + side)
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def _square_side(p_init: float, i: int, queries: int, h: int, w: int) -> int:
    """The paper's schedule, with its iteration marks rescaled from 10,000 queries."""
    it = int(i / queries * 10000)
    marks = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
    p = p_init / 2 ** sum(it > m for m in marks)
    return int(min(max(round(math.sqrt(p * h * w)), 1), h - 1, w - 1)) or 1
