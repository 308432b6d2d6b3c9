"""Differentiable mirrors of a target's integer arithmetic, for gradient attacks (BPDA).

A mirror runs the graph IR in float torch with every weight, bias and tensor rounded to
the grid its plan gives (scale, zero point, bits), so its forward pass follows the
integer model; rounding is straight-through (Athalye, Carlini, Wagner, ICML 2018, BPDA;
Bengio et al. 2013): forward rounds, backward passes the gradient unchanged inside the
representable range and zero where the tensor saturates, as fake-quantization training
does. `temperature` divides the logits (Gupta & Ajanthan, arXiv 2003.13511) so softmax
gradients do not vanish on confident integer models.

A mirror is an approximation: the runtimes requantize with fixed-point multipliers and
their own rounding rules. `agreement` measures how often it matches the runtime, and
every report states it.

build(target, graph, plan): a backend module that declares the 'mirror' hook supplies
its own (mirror(graph, plan, target, temperature) -> torch callable, e.g. for
fixed-point arithmetic that a scale grid does not describe); otherwise the plan-grid
mirror below.
"""
from __future__ import annotations

import numpy as np
import torch

from . import graph as G
from . import plan as P

ROUNDING = ("half_even", "half_away")


def _round(t: torch.Tensor, rounding: str) -> torch.Tensor:
    if rounding == "half_away":
        return torch.sign(t) * torch.floor(t.abs() + 0.5)
    return torch.round(t)                          # half to even


class Grid:
    """A QParams' scale, zero point and representable range as torch tensors shaped to
    broadcast against the tensor they quantize, built once (a mirror is called
    hundreds of times per attack)."""

    def __init__(self, qp: P.QParams, ndim: int):
        shape = [-1 if d == qp.axis else 1 for d in range(ndim)] if qp.axis is not None else []
        self.scale = torch.from_numpy(qp.scale.astype(np.float32)).reshape(shape)
        self.zp = torch.from_numpy(qp.zero_point.astype(np.float32)).reshape(shape)
        self.qmin, self.qmax = qp.qmin, qp.qmax
        self.lo, self.hi = (qp.qmin - self.zp) * self.scale, (qp.qmax - self.zp) * self.scale

    def fake_quant(self, t: torch.Tensor, rounding: str = "half_even") -> torch.Tensor:
        """t on the grid, with a straight-through gradient: identity where t lies
        within the grid's range, zero where it saturates."""
        return _FakeQuant.apply(t, self, rounding)


class _FakeQuant(torch.autograd.Function):
    """Grid.fake_quant as one autograd node: the forward values and the gradient
    (grad * inside) of ((q - zp) * scale).detach() + (t - t.detach()) * inside, without
    recording the eight elementwise ops of that expression."""

    @staticmethod
    def forward(ctx, t, grid, rounding):
        q = torch.clamp(_round(t / grid.scale, rounding) + grid.zp, grid.qmin, grid.qmax)
        if t.requires_grad:
            ctx.save_for_backward(((t >= grid.lo) & (t <= grid.hi)).to(t.dtype))
        return (q - grid.zp) * grid.scale

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None


def fake_quant(t: torch.Tensor, qp: P.QParams, rounding: str = "half_even") -> torch.Tensor:
    """t on qp's grid, with a straight-through gradient (Grid.fake_quant)."""
    return Grid(qp, t.ndim).fake_quant(t, rounding)


class GridMirror:
    """The graph on the plan's grids; call it on float (N, C, H, W) in [0, 1]."""

    def __init__(self, graph: G.Graph, plan: P.QuantPlan, temperature: float = 1.0):
        self.graph, self.plan, self.temperature = graph, plan, float(temperature)
        first = next(iter(plan.layers.values()))
        self.rounding = first.settings.get("rounding", "half_even")
        self.nodes = [_quantized_weights(n, plan) for n in graph.nodes]
        self.grids = {}                 # (tensor name, ndim) -> Grid, built on first use

    def _grid(self, name: str, t: torch.Tensor) -> Grid:
        key = (name, t.ndim)
        if key not in self.grids:
            qp = self.plan.input if name == G.INPUT else self.plan.tensor(name)
            self.grids[key] = Grid(qp, t.ndim)
        return self.grids[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        values = {G.INPUT: self._grid(G.INPUT, x).fake_quant(x, self.rounding)}
        for node in self.nodes:
            y = G.FLOAT_OPS[node.op](node, [values[i] for i in node.inputs])
            values[node.name] = self._grid(node.name, y).fake_quant(y)
        return values[self.graph.output] / self.temperature

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Untempered logits on the output grid, as the runtime's runner returns them."""
        with torch.no_grad():
            return (self(torch.from_numpy(np.asarray(x, np.float32)))
                    * self.temperature).numpy()


def _quantized_weights(node: G.Node, plan: P.QuantPlan) -> G.Node:
    """The node with its weight on the plan's grid and its bias on the int32 grid of
    input scale x weight scale."""
    if node.op not in G.WEIGHTED:
        return node
    w = plan.layers[node.name].weight
    bscale = np.broadcast_to(plan.bias_scale(node.name, node.inputs[0]), node.bias.shape)
    bias = (P.quantized_bias(node.bias, bscale) * bscale).astype(np.float32)
    return G.Node(node.name, node.op, node.inputs, node.shape, node.attrs,
                  w.dequantize(w.quantize(node.weight)), bias)


def build(target, graph: G.Graph, plan: P.QuantPlan, temperature: float = 1.0):
    """The mirror of `target`: its backend's own `mirror` function when it has one,
    else the plan-grid mirror."""
    from . import backends
    module = backends.get(target.backend)
    if backends.supports(module, "mirror"):
        return module.mirror(graph, plan, target, temperature)
    return GridMirror(graph, plan, temperature)


def agreement(mirror_logits: np.ndarray, runner_logits: np.ndarray,
              output: P.QParams, runner_output: P.QParams | None = None) -> dict:
    """How closely a mirror follows a runtime on the same inputs: top-1 agreement, and
    when both sit on the same output grid, the fraction of samples whose integer
    outputs are all identical, of identical values, and the largest difference in LSBs
    (None when the grids differ)."""
    top1 = float((mirror_logits.argmax(1) == runner_logits.argmax(1)).mean())
    result = {"top1": top1, "identical": None, "identical_values": None, "max_lsb": None}
    if runner_output is not None and runner_output.to_json() != output.to_json():
        return result
    diff = np.abs(output.quantize(mirror_logits).astype(np.int64)
                  - output.quantize(runner_logits))
    return result | {"identical": float((diff == 0).all(1).mean()),
                     "identical_values": float((diff == 0).mean()),
                     "max_lsb": int(diff.max())}
