"""Per-layer weight bit-width selection under a size budget (docs/selection.md).

    plan = select(session, "fpga-fixed", "4bits", method="adversarial", eps=0.1)

Every method chooses, for each conv2d / linear layer, one of the target's allowed
weight_bits (at least min_bits) and a weight clipping fraction (the grid spans that
fraction of each channel's largest |weight|), so that the packed weight bits (sum over
layers of weights x bits; biases are not counted) fit the budget, and returns a
QuantPlan whose config names the chosen settings per layer (activations keep the
target's default bits).

Methods (all but 'uniform' share one exact solver, `solve`):
  adversarial  minimise a bound D_L on ||f_q(x + delta) - f(x + delta)||_2, how far
               the quantized network's logits move from the float network's at an
               input under an L-inf perturbation of size eps:
               D_0 = 0,  D_l = Lhat_l(b_l) D_{l-1} + e_l(b_l)
                                + eps sqrt(d) P_<l ||Q_b(W_l) - W_l||_op
               (e_l: measured RMS of ||(Q_b(W_l) - W_l) h|| on calibration inputs;
               Lhat_l: the larger spectral norm of the quantized and the float layer
               operator; P_<l: product of the float layers' spectral norms before l;
               d: input size)
  noise        the same with eps = 0 (quantization noise only)
  hessian      HAWQ-v2: sum_l Tr(H_l) / n_l * ||W_l - Q_b(W_l)||^2
  uniform      the same bits everywhere, the largest that fits, no clipping
The recursion is a chain of increasing affine maps, so keeping, per layer and used
budget, the smallest D is exact (dynamic programming on the budget in bits).
"""
from __future__ import annotations

import itertools
import logging
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import graph as G
from . import plan as P
from . import targets as T
from .errors import InputError

log = logging.getLogger("deployq")
METHODS = ("adversarial", "noise", "hessian", "uniform")
MAX_STATES = 200_000          # budget cells of the DP; above, costs round up (safe)
POWER_ITERS = 100
HUTCHINSON_ITERS = 32
SAMPLES = 256
MIN_BITS = 3                  # 2-bit (ternary) weights: opt in with min_bits=2
CLIPS = (1.0, 0.75, 0.5)      # candidate weight_clip fractions of the searched methods


# --- budget --------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    """At most `bits` packed weight bits in total (what either unit says)."""
    text: str
    unit: str            # 'bits' (average per weight) or 'bytes'
    value: float

    def capacity(self, n_weights: int) -> int:
        if self.unit == "bits":
            return math.floor(self.value * n_weights + 1e-9)
        return math.floor(self.value * 8 + 1e-9)


_BUDGET = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(bits?|b|bytes?|kb|kib)\s*$", re.I)
_BYTES = {"b": 1, "byte": 1, "bytes": 1, "kb": 1024, "kib": 1024}


def parse_budget(text: str) -> Budget:
    """'4.0bits' (average bits per weight) or '12KB' / '3000B' (packed weight bytes,
    1 KB = 1024 bytes)."""
    m = _BUDGET.match(str(text))
    if not m:
        raise InputError(f"--budget {text!r} is not a budget; give average weight bits "
                         "like '4bits' or packed weight bytes like '12KB' or '3000B'")
    value, unit = float(m.group(1)), m.group(2).lower()
    if unit.startswith("bit"):
        return Budget(text, "bits", value)
    return Budget(text, "bytes", value * _BYTES[unit])


# --- the exact solver ----------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """One candidate for one layer: its cost (budget cells) and the affine map
    D -> gain * D + add it applies to the running objective."""
    cost: int
    gain: float
    add: float


def solve(layers: list[list[Option]], capacity: int, d0: float = 0.0
          ) -> tuple[list[int], float]:
    """Indices of the options (one per layer) minimising the composed affine maps
    applied to d0, subject to sum of costs <= capacity. Exact: every map is
    increasing (gain >= 0), so a smaller D at the same used budget is never worse.
    Raises InputError when even the cheapest options do not fit."""
    if sum(min(o.cost for o in opts) for opts in layers) > capacity:
        raise InputError("budget too small")
    best = np.full(capacity + 1, np.inf)
    best[0] = d0
    back = []
    for opts in layers:
        new = np.full(capacity + 1, np.inf)
        pick = np.full(capacity + 1, -1, np.int64)
        for j, o in enumerate(opts):
            if o.cost > capacity:
                continue
            cand = o.gain * best[:capacity + 1 - o.cost] + o.add
            cand[~np.isfinite(best[:capacity + 1 - o.cost])] = np.inf
            seg = new[o.cost:]
            better = cand < seg
            seg[better] = cand[better]
            pick[o.cost:][better] = j
        best, back = new, back + [pick]
    c = int(np.argmin(best))
    objective = float(best[c])
    choice = []
    for opts, pick in zip(reversed(layers), reversed(back)):
        j = int(pick[c])
        choice.append(j)
        c -= opts[j].cost
    return choice[::-1], objective


def brute_force(layers: list[list[Option]], capacity: int, d0: float = 0.0
                ) -> tuple[list[int], float]:
    """`solve` by enumeration (for tests and tiny models)."""
    best = (None, math.inf)
    for choice in itertools.product(*(range(len(o)) for o in layers)):
        if sum(layers[l][j].cost for l, j in enumerate(choice)) > capacity:
            continue
        d = d0
        for l, j in enumerate(choice):
            d = layers[l][j].gain * d + layers[l][j].add
        if d < best[1]:
            best = (list(choice), d)
    return best


# --- spectral norms ------------------------------------------------------------------

def operator_norm(fn, in_shape: tuple[int, ...], iters: int = POWER_ITERS,
                  seed: int = 0, tol: float = 1e-6) -> float:
    """Largest singular value of the linear map fn (batched torch callable on
    (1, *in_shape)) by power iteration on fn^T fn; the adjoint is fn's vector-Jacobian
    product (autograd), so strides, padding, dilation and groups are the real ones."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((1, *in_shape), generator=gen, dtype=torch.float64)
    x /= x.norm()
    sigma = 0.0
    for _ in range(iters):
        x.requires_grad_(True)
        y = fn(x)
        (z,) = torch.autograd.grad(y, x, grad_outputs=y.detach())   # fn^T fn x
        x = z.detach()
        norm = float(x.norm())
        if norm == 0:
            return 0.0
        x /= norm
        new = math.sqrt(norm)
        if abs(new - sigma) <= tol * new:
            return new
        sigma = new
    return sigma


def layer_operator(node: G.Node, weight: np.ndarray):
    """The bias-free linear map of a conv2d / linear node with `weight`, in float64."""
    w = torch.from_numpy(np.asarray(weight, np.float64))
    if node.op == "linear":
        return lambda x: F.linear(x, w)
    a = node.attrs
    return lambda x: F.conv2d(x, w, None, a["stride"], a["padding"], a["dilation"],
                              a["groups"])


def layer_norm(graph: G.Graph, node: G.Node, weight: np.ndarray, seed: int = 0) -> float:
    return operator_norm(layer_operator(node, weight), graph.shape_of(node.inputs[0]),
                         seed=seed)


# --- per-layer measurements ----------------------------------------------------------

@dataclass
class Layer:
    node: G.Node
    n: int                            # number of weights
    quantized: dict                   # (bits, clip) -> dequantized weight (plan's grid)

    @property
    def choices(self) -> list[tuple[int, float]]:
        """The candidate (bits, clip) pairs, bits ascending."""
        return list(self.quantized)


def _layers(graph: G.Graph, target: T.Target, config: P.PlanConfig, bits: list[int],
            clips: tuple[float, ...]) -> list[Layer]:
    out = []
    for node in graph.nodes:
        if node.op not in G.WEIGHTED:
            continue
        q = {}
        for b, c in itertools.product(bits, clips):
            cfg = P.PlanConfig(config.default, config.by_type,
                               {**config.by_name, node.name: _setting(b, c)})
            qp = P.weight_params(node.weight, cfg.resolve(target, node.name, node.op),
                                 target.container_bits)
            q[b, c] = qp.dequantize(qp.quantize(node.weight))
        out.append(Layer(node, int(node.weight.size), q))
    return out


def _setting(bits: int, clip: float) -> dict:
    """A layer's plan settings for one choice (weight_clip only when it clips)."""
    return {"weight_bits": bits} | ({"weight_clip": clip} if clip != 1 else {})


def _inputs(graph: G.Graph, x: np.ndarray) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return G.run(graph, torch.from_numpy(np.asarray(x, np.float32)), keep=True)


def output_errors(graph: G.Graph, layer: Layer, h: torch.Tensor) -> dict[tuple, float]:
    """(bits, clip) -> RMS over samples of ||(Q(W) - W) h||_2 at the layer's output."""
    out = {}
    for key, wq in layer.quantized.items():
        delta = layer_operator(layer.node, wq - layer.node.weight)
        with torch.no_grad():
            e = delta(h.double()).flatten(1).norm(dim=1)
        out[key] = float(e.pow(2).mean().sqrt())
    return out


def hessian_traces(graph: G.Graph, x: np.ndarray, y: np.ndarray, layers: list[Layer],
                   iters: int = HUTCHINSON_ITERS, seed: int = 0) -> dict[str, float]:
    """Hutchinson estimates of Tr(d^2 loss / dW_l^2) for each layer (mean cross-entropy
    of the float graph on (x, y)): E[v^T H v] with Rademacher v."""
    params = {l.node.name: torch.from_numpy(l.node.weight.copy()).requires_grad_(True)
              for l in layers}
    loss = F.cross_entropy(_forward(graph, torch.from_numpy(x), params),
                           torch.from_numpy(y).long())
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    sums = dict.fromkeys(params, 0.0)
    for _ in range(iters):
        vs = [torch.randint(0, 2, p.shape, generator=gen).float() * 2 - 1
              for p in params.values()]
        hv = torch.autograd.grad(grads, list(params.values()), grad_outputs=vs,
                                 retain_graph=True)
        for name, v, h in zip(params, vs, hv):
            sums[name] += float((v * h).sum())
    return {k: v / iters for k, v in sums.items()}


def _forward(graph: G.Graph, x: torch.Tensor, params: dict) -> torch.Tensor:
    values = {G.INPUT: x}
    for n in graph.nodes:
        xs = [values[i] for i in n.inputs]
        if n.name in params:
            b = torch.from_numpy(n.bias)
            if n.op == "linear":
                y = F.linear(xs[0], params[n.name], b)
            else:
                a = n.attrs
                y = F.conv2d(xs[0], params[n.name], b, a["stride"], a["padding"],
                             a["dilation"], a["groups"])
            values[n.name] = G._act(n, y)
        else:
            values[n.name] = G.FLOAT_OPS[n.op](n, xs)
    return values[graph.output]


# --- methods -------------------------------------------------------------------------

def _costs(layers: list[Layer], capacity: int) -> tuple[int, dict]:
    """Budget cell size in bits and (layer index, bits) -> cost in cells. Exact (cell =
    gcd of the layer sizes) unless that needs more than MAX_STATES cells; then costs
    round up, so every answer still fits."""
    cell = math.gcd(*[l.n for l in layers])
    if capacity // cell > MAX_STATES:
        cell = math.ceil(capacity / MAX_STATES)
    return cell, {(i, b): math.ceil(l.n * b / cell)
                  for i, l in enumerate(layers) for b, _ in l.choices}


def _adversarial_options(graph, layers, hs, eps_l2: float, seed: int
                         ) -> tuple[list[list[tuple[float, float]]], dict]:
    """Per layer and choice (gain, add) of the map
    D -> max(||Q(W)||_op, ||W||_op) * D + e + eps_l2 * P_<l * ||Q(W) - W||_op
    (P_<l: product of the float spectral norms of the layers before), and the
    measurements for provenance."""
    options, info, before = [], {}, 1.0
    for layer in layers:
        node = layer.node
        errs = output_errors(graph, layer, hs[node.inputs[0]])
        float_norm = layer_norm(graph, node, node.weight, seed)
        norms = {k: layer_norm(graph, node, layer.quantized[k], seed) for k in layer.choices}
        deltas = {k: layer_norm(graph, node, layer.quantized[k] - node.weight, seed)
                  for k in layer.choices}
        options.append([(max(norms[k], float_norm), errs[k] + eps_l2 * before * deltas[k])
                        for k in layer.choices])
        info[node.name] = {"lipschitz_float": float_norm, "lipschitz_before": before,
                           "lipschitz": _by_choice(norms), "error_norm": _by_choice(deltas),
                           "output_error": _by_choice(errs)}
        before *= float_norm
    return options, info


def _by_choice(d: dict) -> dict:
    """JSON keys: '4' for (4 bits, no clipping), '4@0.5' for clip 0.5."""
    return {(f"{b}" if c == 1 else f"{b}@{c:g}"): v for (b, c), v in d.items()}


def select(session, target: str | T.Target, budget: str | Budget,
           method: str = "adversarial", eps: float = 0.1, settings: dict | None = None,
           targets_dir=None, samples: int = SAMPLES, provenance: dict | None = None,
           min_bits: int = MIN_BITS, clips: tuple[float, ...] = CLIPS) -> P.QuantPlan:
    """A plan for `target` whose per-layer weight bits fit `budget`, chosen by `method`
    among the allowed bits >= min_bits and (except 'uniform') the weight_clip
    fractions `clips`. `settings`: extra default settings for every layer (e.g.
    {'rounding': 'rnd'})."""
    if method not in METHODS:
        raise InputError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    if not 0 <= eps <= 1:
        raise InputError(f"--eps must lie in [0, 1] (input units), got {eps}")
    if not clips or not all(0 < c <= 1 for c in clips):
        raise InputError(f"--clips must be fractions in (0, 1], e.g. '1,0.75,0.5'; got {clips}")
    tgt = target if isinstance(target, T.Target) else T.get(target, targets_dir)
    budget = budget if isinstance(budget, Budget) else parse_budget(budget)
    allowed = sorted(tgt.allowed.get("weight_bits", [tgt.defaults["weight_bits"]]))
    bits = [b for b in allowed if b >= min_bits]
    if not bits:
        raise InputError(f"--min-bits {min_bits} leaves no weight_bits of {tgt.name} "
                         f"(allowed: {allowed}); lower it")
    config = P.PlanConfig(default=dict(settings or {}))
    clips = (1.0,) if method == "uniform" else tuple(sorted(set(clips), reverse=True))
    layers = _layers(session.graph, tgt, config, bits, clips)
    if not layers:
        raise InputError("the model has no conv2d or linear layer to choose bits for")
    n_total = sum(l.n for l in layers)
    capacity = budget.capacity(n_total)
    if capacity < bits[0] * n_total:
        raise InputError(f"--budget {budget.text} allows {capacity} weight bits but the "
                         f"smallest choice ({bits[0]} bits everywhere) needs "
                         f"{bits[0] * n_total} ({bits[0] * n_total / 8:.0f} bytes, "
                         f"{bits[0]}.0bits); raise the budget or lower --min-bits")
    chosen, objective, info = _choose(session, layers, capacity, method, eps, samples)
    used = sum(l.n * chosen[l.node.name][0] for l in layers)
    record = {"method": method, "budget": budget.text, "budget_bits": capacity,
              "eps": eps if method == "adversarial" else None,
              "bits": {k: b for k, (b, _) in chosen.items()},
              "weight_clip": {k: c for k, (_, c) in chosen.items()},
              "predicted_objective": objective, "weight_bits_total": used,
              "average_bits": used / n_total, "weight_bytes": math.ceil(used / 8),
              "min_bits": bits[0], "measurements": info}
    by_name = {name: _setting(b, c) for name, (b, c) in chosen.items()}
    plan_config = P.PlanConfig(dict(settings or {}), {}, by_name)
    prov = dict(provenance or {}) | {"selection": record}
    return P.make(session.graph, session.stats, tgt, plan_config, prov)


def _choose(session, layers, capacity, method, eps, samples):
    """((bits, clip) per layer name, predicted objective, measurements)."""
    graph = session.graph
    if method == "uniform":
        for b in sorted({b for l in layers for b, _ in l.choices}, reverse=True):
            if sum(l.n * b for l in layers) <= capacity:
                return {l.node.name: (b, 1.0) for l in layers}, None, {}
    x = session.dataset.calibration(samples, session.seed)
    cell, costs = _costs(layers, capacity)
    if method == "hessian":
        xl, yl = _labelled(session.dataset, samples, session.seed)
        traces = hessian_traces(graph, xl, yl, layers, seed=session.seed)
        table = [[(1.0, max(traces[l.node.name], 0.0) / l.n
                   * float(((l.quantized[k] - l.node.weight) ** 2).sum()))
                  for k in l.choices] for l in layers]
        info = {"hessian_trace": traces}
    else:
        eps_l2 = eps * math.sqrt(int(np.prod(graph.input_shape)))
        table, info = _adversarial_options(graph, layers, _inputs(graph, x),
                                           eps_l2 if method == "adversarial" else 0.0,
                                           session.seed)
    options = [[Option(costs[i, b], g, a) for (b, _), (g, a) in zip(l.choices, table[i])]
               for i, l in enumerate(layers)]
    choice, objective = solve(options, capacity // cell)
    return ({l.node.name: l.choices[j] for l, j in zip(layers, choice)}, objective,
            info | {"cell_bits": cell})


def _labelled(ds, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The calibration samples (Dataset.calibration's seeded choice) with labels."""
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds.x_train))[:n])
    return ds.x_train[idx], ds.y_train[idx]
