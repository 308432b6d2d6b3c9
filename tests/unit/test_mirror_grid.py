"""mirror.Grid.fake_quant (one autograd node, grids built once) gives exactly the values
and straight-through gradients of the plain expression it replaced, per tensor and per
channel; the comparison sees a gradient that ignores saturation (negative control)."""
import numpy as np
import torch

from deployq import mirror, plan as P


def _expression(t, qp, ste=True):
    shape = [-1 if d == qp.axis else 1 for d in range(t.ndim)] if qp.axis is not None else []
    scale = torch.from_numpy(qp.scale.astype(np.float32)).reshape(shape)
    zp = torch.from_numpy(qp.zero_point.astype(np.float32)).reshape(shape)
    lo, hi = (qp.qmin - zp) * scale, (qp.qmax - zp) * scale
    q = torch.clamp(torch.round(t.detach() / scale) + zp, qp.qmin, qp.qmax)
    inside = ((t >= lo) & (t <= hi)).to(t.dtype) if ste else torch.ones_like(t)
    return ((q - zp) * scale).detach() + (t - t.detach()) * inside


def _value_and_grad(fn, t, w):
    t = t.clone().requires_grad_(True)
    y = fn(t)
    (g,) = torch.autograd.grad((y * w).sum(), t)
    return y.detach(), g


def test_grid_fake_quant_equals_the_expression():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn((6, 3, 4, 4), generator=gen) * 3
    w = torch.randn(t.shape, generator=gen)
    grids = [P.QParams(8, np.array([0.02], np.float32), np.array([5])),
             P.QParams(4, np.array([0.1, 0.3, 0.05], np.float32), np.zeros(3, np.int64), axis=1)]
    for qp in grids:
        grid = mirror.Grid(qp, t.ndim)
        got = _value_and_grad(grid.fake_quant, t, w)
        want = _value_and_grad(lambda v: _expression(v, qp), t, w)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert 0 < (got[1] == 0).float().mean() < 1          # some values saturate
        loose = _value_and_grad(lambda v: _expression(v, qp, ste=False), t, w)
        assert not torch.equal(got[1], loose[1])
