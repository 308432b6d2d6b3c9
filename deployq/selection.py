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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import graph as G
from . import plan as P
from . import targets as T
from .budget import METHODS, Budget, parse_budget  # noqa: F401 (S.METHODS, S.parse_budget)
from .errors import InputError

log = logging.getLogger("deployq")
MAX_STATES = 200_000          # budget cells of the DP; above, costs round up (safe)
POWER_ITERS = 100
HUTCHINSON_ITERS = 32
SAMPLES = 256
MIN_BITS = 3                  # 2-bit (ternary) weights: opt in with min_bits=2
CLIPS = (1.0, 0.75, 0.5)      # candidate weight_clip fractions of the searched methods
MIN_ACT_BITS = 3              # activation floor where the budget allows it: a signed 2-bit
                              # grid leaves a ReLU output one positive level (binary)


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
    applied to d0, subject to sum of costs <= capacity (solve_top with k = 1).
    Raises InputError when even the cheapest options do not fit."""
    return solve_top(layers, capacity, 1, d0)[0]


def solve_top(layers: list[list[Option]], capacity: int, k: int, d0: float = 0.0
              ) -> list[tuple[list[int], float]]:
    """The k best assignments (option index per layer, objective), best first, among
    those whose costs sum to at most capacity (fewer when fewer exist). Exact: every
    map is increasing (gain >= 0), so an assignment whose prefix is not among the k
    smallest D at its used budget is beaten by k others with the same suffix; keeping
    the k smallest per budget cell keeps every member of the top k."""
    if sum(min(o.cost for o in opts) for opts in layers) > capacity:
        raise InputError("budget too small")
    best = np.full((capacity + 1, k), np.inf)
    best[0, 0] = d0
    back = []
    for opts in layers:
        new = np.full((capacity + 1, k), np.inf)
        pick = np.full((capacity + 1, k, 2), -1, np.int64)     # (option, rank before)
        for j, o in enumerate(opts):
            if o.cost > capacity:
                continue
            prev = best[:capacity + 1 - o.cost]
            cand = np.where(np.isfinite(prev), o.gain * prev + o.add, np.inf)
            ranks = np.broadcast_to(np.arange(k), cand.shape)
            both = np.concatenate([new[o.cost:], cand], 1)
            order = np.argsort(both, 1, kind="stable")[:, :k]
            came = np.concatenate([pick[o.cost:], np.stack(
                [np.full(cand.shape, j), ranks], 2)], 1)
            new[o.cost:] = np.take_along_axis(both, order, 1)
            pick[o.cost:] = np.take_along_axis(came, order[:, :, None], 1)
        best, back = new, back + [pick]
    flat = np.argsort(best.ravel(), kind="stable")[:k]
    out = []
    for cell in flat:
        if not np.isfinite(best.ravel()[cell]):
            break
        c, r = divmod(int(cell), k)
        objective, choice = float(best[c, r]), []
        for opts, pick in zip(reversed(layers), reversed(back)):
            j, r = (int(v) for v in pick[c, r])
            choice.append(j)
            c -= opts[j].cost
        out.append((choice[::-1], objective))
    return out


def brute_force(layers: list[list[Option]], capacity: int, d0: float = 0.0
                ) -> tuple[list[int], float]:
    """`solve` by enumeration (for tests and tiny models)."""
    top = brute_force_top(layers, capacity, 1, d0)
    return top[0] if top else (None, math.inf)


def brute_force_top(layers: list[list[Option]], capacity: int, k: int, d0: float = 0.0
                    ) -> list[tuple[list[int], float]]:
    """`solve_top` by enumeration (for tests and tiny models)."""
    found = []
    for choice in itertools.product(*(range(len(o)) for o in layers)):
        if sum(layers[l][j].cost for l, j in enumerate(choice)) > capacity:
            continue
        d = d0
        for l, j in enumerate(choice):
            d = layers[l][j].gain * d + layers[l][j].add
        found.append((list(choice), d))
    return sorted(found, key=lambda t: t[1])[:k]


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
    return lambda x: G.weighted(node, x, w, None)


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
            y = G.weighted(n, xs[0], params[n.name], torch.from_numpy(n.bias))
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


# --- activation bits ------------------------------------------------------------------

@dataclass
class ActGroup:
    """The hidden tensors whose activation_bits one choice sets: a weighted layer's
    output and the unweighted nodes after it up to the next weighted layer (pools,
    reshapes, adds). `noise[b]`: the term the chain adds at that layer for b bits; by
    act_groups the model sqrt(numel / 12) * step (RMS L2 norm of uniform rounding
    noise), replaced by measure_act_noise with the measured logit change referred back
    to the head. `step[b]`: the head's grid step at b bits."""
    head: str
    members: list[str]
    numel: int
    noise: dict
    step: dict = None


def act_groups(graph: G.Graph, stats: dict, target: T.Target, config: P.PlanConfig,
               bits: list[int]) -> list[ActGroup]:
    """One group per weighted layer whose output is not (followed only by unweighted
    nodes into) the logits; the input and the logits keep the target's default bits."""
    groups, current = [], None
    for node in graph.nodes:
        if node.op in G.WEIGHTED:
            current = ActGroup(node.name, [node.name], 0, {})
            groups.append(current)
        elif current is not None:
            current.members.append(node.name)
    groups = [g for g in groups if graph.output not in g.members]
    for g in groups:
        g.numel = sum(int(np.prod(graph.node(m).shape)) for m in g.members)
        head = graph.node(g.head)
        for b in bits:
            s = P.PlanConfig(config.default, {}, {g.head: {"activation_bits": b}}).resolve(
                target, g.head, head.op)
            step = float(P.activation_params(*P._range(stats[g.head], s), s).scale[0])
            g.noise[b] = math.sqrt(int(np.prod(head.shape)) / 12) * step
            g.step = (g.step or {}) | {b: step}
    return groups


ROUNDING = {"trn": torch.floor, "rnd": lambda v: torch.floor(v + 0.5),
            "rnd_conv": torch.round}      # the ap_fixed modes (fixedpoint.py)


def fake_quant(h: torch.Tensor, step: float, bits: int, rounding: str) -> torch.Tensor:
    """h on the symmetric b-bit grid of `step` (saturating), rounded as `rounding`."""
    q = ROUNDING[rounding](h / step).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return q * step


def act_logit_change(graph: G.Graph, group: ActGroup, x: torch.Tensor, bits: int,
                     rounding: str) -> float:
    """RMS over samples of ||f(x) - f_g(x)||_2 at the logits, f_g the float graph with
    only the group's head tensor on its b-bit grid (its pool / reshape members follow
    the same grid, so they add nothing)."""
    values = {G.INPUT: x}
    for node in graph.nodes:
        v = G.FLOAT_OPS[node.op](node, [values[i] for i in node.inputs])
        if node.name == group.head:
            v = fake_quant(v, group.step[bits], bits, rounding)
        values[node.name] = v
    ref = G.run(graph, x)["output"]
    return float((values[graph.output] - ref).flatten(1).norm(dim=1).pow(2).mean().sqrt())


def measure_act_noise(graph: G.Graph, groups: list[ActGroup], x: torch.Tensor,
                      after: dict, rounding: str) -> dict:
    """Replace each group's modelled noise[b] by the measured logit change of rounding
    its head alone to b bits (act_logit_change on x: the calibration inputs, or for the
    adversarial method their float-PGD points, where the bound is taken) divided by
    `after[head]`, the product of the float spectral norms of the weighted layers after
    it: the chain then carries it to the logits as (about) what was measured. The
    Lipschitz product alone over-weights early layers by up to 50x
    (docs/selection.md, looseness); saturation, ReLU zeros (which round exactly) and
    truncation's bias ('trn') are in the measurement, not in the model. Returns the
    measurements for provenance."""
    out = {}
    with torch.no_grad():
        for g in groups:
            change = {b: act_logit_change(graph, g, x, b, rounding) for b in g.noise}
            model = dict(g.noise)
            g.noise = {b: c / max(after[g.head], 1e-12) for b, c in change.items()}
            out[g.head] = {"logit_change": {str(b): v for b, v in change.items()},
                           "modelled_noise": {str(b): v for b, v in model.items()},
                           "gain_after": after[g.head]}
    return out


def _act_space(session, tgt: T.Target, config: P.PlanConfig, budget: Budget | None):
    """(groups, allowed bits, capacity in bits) of an activation budget; None without
    one. Refuses targets that execute one activation width only."""
    if budget is None:
        return None
    allowed = sorted(tgt.allowed.get("activation_bits", [tgt.defaults["activation_bits"]]))
    if len(allowed) < 2:
        raise InputError(f"{tgt.name} executes {allowed[0]}-bit activations only; "
                         "--activation-budget needs a target that allows several "
                         "activation_bits (e.g. fpga-fixed)")
    if T.relu_unsigned(tgt):        # an unsigned b-bit tensor needs b + 1 runtime bits
        allowed = [b for b in allowed if b <= P.UNSIGNED_MAX_BITS]
    groups = act_groups(session.graph, session.stats, tgt, config, allowed)
    if not groups:
        raise InputError("the model has no hidden activation to choose bits for")
    n = sum(g.numel for g in groups)
    capacity = budget.capacity(n)
    if capacity < allowed[0] * n:
        raise InputError(f"--activation-budget {budget.text} allows {capacity} activation "
                         f"bits but the smallest choice ({allowed[0]} bits everywhere) "
                         f"needs {allowed[0] * n}; raise it")
    floor = [b for b in allowed if b >= MIN_ACT_BITS]
    if floor and capacity >= floor[0] * n:          # the floor only where it fits
        allowed = floor
        for g in groups:
            g.noise = {b: v for b, v in g.noise.items() if b in allowed}
            g.step = {b: v for b, v in g.step.items() if b in allowed}
    return groups, allowed, capacity


# --- an assignment and its predicted objective --------------------------------------

@dataclass(frozen=True)
class Assignment:
    """(bits, clip) per weighted layer and activation bits per ActGroup (empty without
    an activation budget), in graph order."""
    weights: tuple
    acts: tuple = ()


@dataclass
class Space:
    """What a search may choose and what it costs: layers, their (gain, add) per choice
    (the chain's affine maps), activation groups with their choices, and both
    capacities in bits."""
    layers: list
    table: list                   # per layer: {(bits, clip): (gain, add)}
    capacity: int
    groups: list = None
    act_bits: list = None
    act_capacity: int = 0

    def weight_bits(self, a: Assignment) -> int:
        return sum(l.n * b for l, (b, _) in zip(self.layers, a.weights))

    def activation_bits(self, a: Assignment) -> int:
        return sum(g.numel * b for g, b in zip(self.groups or [], a.acts))

    def fits(self, a: Assignment) -> bool:
        return (self.weight_bits(a) <= self.capacity
                and self.activation_bits(a) <= (self.act_capacity if self.groups else 0))

    def act_add(self, a: Assignment) -> dict:
        """Layer name -> the activation rounding noise its output adds."""
        return {g.head: g.noise[b] for g, b in zip(self.groups or [], a.acts)}

    def predict(self, a: Assignment) -> float:
        """The chain's D_L for an assignment (what the DP minimises)."""
        d, acts = 0.0, self.act_add(a)
        for l, t, k in zip(self.layers, self.table, a.weights):
            gain, add = t[k]
            d = gain * d + add + acts.get(l.node.name, 0.0)
        return d

    def settings(self, a: Assignment) -> dict:
        """by_name plan settings of an assignment."""
        by_name = {l.node.name: _setting(b, c) for l, (b, c) in zip(self.layers, a.weights)}
        for g, b in zip(self.groups or [], a.acts):
            for m in g.members:
                by_name[m] = by_name.get(m, {}) | {"activation_bits": b}
        return by_name


def select(session, target: str | T.Target, budget: str | Budget,
           method: str = "adversarial", eps: float = 0.1, settings: dict | None = None,
           targets_dir=None, samples: int = SAMPLES, provenance: dict | None = None,
           min_bits: int = MIN_BITS, clips: tuple[float, ...] = CLIPS,
           activation_budget: str | Budget | None = None, refine: int = 0,
           refine_options: dict | None = None,
           max_clean_drop: float | None = None) -> P.QuantPlan:
    """A plan for `target` whose per-layer weight bits fit `budget`, chosen by `method`
    among the allowed bits >= min_bits and (except 'uniform') the weight_clip
    fractions `clips`. `settings`: extra default settings for every layer (e.g.
    {'rounding': 'rnd'}). `activation_budget` (targets allowing several
    activation_bits): also choose each hidden tensor's bits under it. `refine` = K > 0:
    measure the DP's K best on a validation split and improve the best by local search
    (deployq.refine; `refine_options`: its samples, steps, evals, and the objective's
    sources, queries and penalty: by default a Square check on the mirror).
    max_clean_drop (points; refine only): no plan whose validation clean accuracy is
    more than this many points below the uniform plan's may be chosen
    (deployq.refine)."""
    if method not in METHODS:
        raise InputError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    if not 0 <= eps <= 1:
        raise InputError(f"--eps must lie in [0, 1] (input units), got {eps}")
    if not clips or not all(0 < c <= 1 for c in clips):
        raise InputError(f"--clips must be fractions in (0, 1], e.g. '1,0.75,0.5'; got {clips}")
    check_refine(refine, max_clean_drop)
    tgt = target if isinstance(target, T.Target) else T.get(target, targets_dir)
    budget = budget if isinstance(budget, Budget) else parse_budget(budget)
    if isinstance(activation_budget, str):
        activation_budget = parse_budget(activation_budget)
    check_unsigned(session.graph, tgt, settings, activation_budget)
    allowed = sorted(tgt.allowed.get("weight_bits", [tgt.defaults["weight_bits"]]))
    bits = [b for b in allowed if b >= min_bits]
    if not bits:
        raise InputError(f"--min-bits {min_bits} leaves no weight_bits of {tgt.name} "
                         f"(allowed: {allowed}); lower it")
    config = P.PlanConfig(default=dict(settings or {}))
    clips = (1.0,) if method == "uniform" else tuple(sorted(set(clips), reverse=True))
    acts = _act_space(session, tgt, config, activation_budget)
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
    rounding = (settings or {}).get("rounding") or tgt.defaults.get("rounding", "rnd")
    space, info = _space(session, layers, capacity, acts, method, eps, samples, rounding)
    found = _choose(space, method, max(refine, 1))
    record = {"method": method, "budget": budget.text, "budget_bits": capacity,
              "eps": eps if method == "adversarial" else None, "min_bits": bits[0],
              "measurements": info}
    if refine:
        from . import refine as R
        options = dict(refine_options or {})
        with_uniform = options.pop("uniform_candidates", False)
        origins = [f"dp-{i}" for i in range(len(found))]
        if method in ("adversarial", "noise"):
            extra: dict = {}                          # assignment -> its first origin
            for a, o in diverse(space, found[0].acts) + (
                    uniform_candidates(space, found[0].acts) if with_uniform else []):
                if a not in found:
                    extra.setdefault(a, o)
            extra = list(extra.items())
            found, origins = found + [a for a, _ in extra], origins + [o for _, o in extra]
        if max_clean_drop is not None:
            options |= {"max_clean_drop": max_clean_drop, "reference": Assignment(
                _uniform(space.layers, space.capacity), _uniform_acts(space))}
        best, record["refinement"] = R.refine(session, tgt, space, found, config, eps,
                                              origins=origins, **options)
    else:
        best = found[0]
    record |= _describe(space, best, n_total, activation_budget)
    plan_config = P.PlanConfig(dict(settings or {}), {}, space.settings(best))
    prov = dict(provenance or {}) | {"selection": record}
    return P.make(session.graph, session.stats, tgt, plan_config, prov)


def check_unsigned(graph: G.Graph, tgt: T.Target, settings: dict | None,
                   activation_budget) -> None:
    """With relu_unsigned, a plan's unsigned tensors hold at most P.UNSIGNED_MAX_BITS
    (7) bits. With an activation budget the choices stop there (_act_space); without
    one every tensor gets the default activation_bits, refused here (before any
    measuring) when that is more and the model has a tensor that would be unsigned."""
    if not T.relu_unsigned(tgt) or activation_budget is not None:
        return
    bits = (settings or {}).get("activation_bits") or tgt.defaults["activation_bits"]
    if bits <= P.UNSIGNED_MAX_BITS or not any(
            P.nonnegative(graph, c) for c in P.shared_classes(graph)):
        return
    raise InputError(f"{tgt.name} has relu_unsigned = true and {bits}-bit activations: "
                     f"an unsigned tensor holds at most {P.UNSIGNED_MAX_BITS} bits; give "
                     f"--activation-budget (e.g. 4bits: 3..{P.UNSIGNED_MAX_BITS} bits per "
                     f"tensor) or set [defaults] activation_bits <= {P.UNSIGNED_MAX_BITS} "
                     "in the target's TOML")


def check_refine(refine, max_clean_drop=None) -> None:
    """The refinement's arguments: K a whole number >= 0; max_clean_drop None or a
    number of points >= 0, and only with K > 0."""
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise InputError(f"--refine must be a whole number >= 0 (candidates), got {refine!r}")
    from .refine import check_max_clean_drop
    check_max_clean_drop(max_clean_drop)
    if max_clean_drop is not None and not refine:
        raise InputError("--max-clean-drop constrains the refinement's measured plans; "
                         "give --refine K > 0 with it")


def _describe(space: Space, a: Assignment, n_total: int, act_budget) -> dict:
    used = space.weight_bits(a)
    names = [l.node.name for l in space.layers]
    out = {"bits": {k: b for k, (b, _) in zip(names, a.weights)},
           "weight_clip": {k: c for k, (_, c) in zip(names, a.weights)},
           "predicted_objective": space.predict(a), "weight_bits_total": used,
           "average_bits": used / n_total, "weight_bytes": math.ceil(used / 8)}
    if space.groups:
        n = sum(g.numel for g in space.groups)
        out |= {"activation_budget": act_budget.text, "activation_budget_bits":
                space.act_capacity,
                "activation_bits": {g.head: b for g, b in zip(space.groups, a.acts)},
                "average_activation_bits": space.activation_bits(a) / n,
                "activation_bytes": math.ceil(space.activation_bits(a) / 8)}
    return out


def _act_measure(session, layers, groups, info, method, eps, samples, rounding) -> dict:
    """measure_act_noise on the calibration samples (noise) or on their float-PGD
    points at eps (adversarial: PGD-10 on the float model, labels from the data)."""
    from . import attacks as A
    xl, yl = _labelled(session.dataset, samples, session.seed)
    x = torch.from_numpy(np.asarray(xl, np.float32))
    if method == "adversarial" and eps > 0:
        x = A.pgd(session.model.module, x, torch.from_numpy(yl).long(), eps, 10,
                  seed=session.seed)
    after, gain = {}, 1.0
    for layer in reversed(layers):
        after[layer.node.name] = gain
        gain *= info[layer.node.name]["lipschitz_float"]
    return measure_act_noise(session.graph, groups, x, after, rounding)


def _space(session, layers, capacity, acts, method, eps, samples,
           rounding: str = "trn") -> tuple[Space, dict]:
    """The search space with each choice's affine map (uniform: all zero)."""
    graph = session.graph
    groups, act_bits, act_capacity = acts or (None, None, 0)
    if method == "uniform":
        table = [{k: (1.0, 0.0) for k in l.choices} for l in layers]
        return Space(layers, table, capacity, groups, act_bits, act_capacity), {}
    if method == "hessian":
        xl, yl = _labelled(session.dataset, samples, session.seed)
        traces = hessian_traces(graph, xl, yl, layers, seed=session.seed)
        table = [{k: (1.0, max(traces[l.node.name], 0.0) / l.n
                      * float(((l.quantized[k] - l.node.weight) ** 2).sum()))
                  for k in l.choices} for l in layers]
        info = {"hessian_trace": traces}
    else:
        x = session.dataset.calibration(samples, session.seed)
        eps_l2 = eps * math.sqrt(int(np.prod(graph.input_shape)))
        rows, info = _adversarial_options(graph, layers, _inputs(graph, x),
                                          eps_l2 if method == "adversarial" else 0.0,
                                          session.seed)
        table = [dict(zip(l.choices, r)) for l, r in zip(layers, rows)]
        if groups:
            info = info | {"activations": _act_measure(session, layers, groups, info,
                                                       method, eps, samples, rounding)}
    return Space(layers, table, capacity, groups, act_bits, act_capacity), info


def _choose(space: Space, method: str, k: int) -> list[Assignment]:
    """Up to k assignments, the DP's best first. Without activation groups: the k best
    weight assignments. With them (adversarial, noise): coordinate descent on the chain,
    weights with activations at 8 bits, then activations with those weights, then
    weights again; the candidates are the last weight DP's k best and the activation
    DP's k best (each exact for its coordinate). uniform and hessian: the same
    activation bits everywhere, the largest that fit."""
    if method == "uniform":
        return [Assignment(_uniform(space.layers, space.capacity), _uniform_acts(space))]
    acts = tuple(max(space.act_bits) for _ in space.groups or [])
    if not space.groups or method == "hessian":
        top = _weight_top(space, _uniform_acts(space), k)
        return top
    best = _weight_top(space, acts, 1)[0]
    best = _act_top(space, best.weights, 1)[0]
    top = _weight_top(space, best.acts, k)
    more = _act_top(space, top[0].weights, k)
    return list(dict.fromkeys(top + more))


def _uniform(layers, capacity) -> tuple:
    for b in sorted({b for l in layers for b, _ in l.choices}, reverse=True):
        if sum(l.n * b for l in layers) <= capacity:
            return tuple((b, 1.0) for _ in layers)
    raise InputError("budget too small")


def _uniform_acts(space: Space) -> tuple:
    if not space.groups:
        return ()
    n = sum(g.numel for g in space.groups)
    b = max(b for b in space.act_bits if b * n <= space.act_capacity)
    return tuple(b for _ in space.groups)


def _weight_top(space: Space, acts: tuple, k: int, fixed: dict | None = None
                ) -> list[Assignment]:
    """The k best weight assignments with activation bits `acts`; fixed: layer index ->
    the one (bits, clip) that layer may take."""
    cell, costs = _costs(space.layers, space.capacity)
    noise = space.act_add(Assignment((), acts))
    keys = [[c for c in l.choices if not fixed or i not in fixed or c == fixed[i]]
            for i, l in enumerate(space.layers)]
    options = [[Option(costs[i, b], *_plus(t[(b, c)], noise.get(l.node.name, 0.0)))
                for b, c in ks] for i, (l, t, ks) in enumerate(zip(space.layers, space.table, keys))]
    return [Assignment(tuple(ks[j] for ks, j in zip(keys, choice)), acts)
            for choice, _ in solve_top(options, space.capacity // cell, k)]


def diverse(space: Space, acts: tuple) -> list[tuple[Assignment, str]]:
    """(assignment, origin) for each (bits, clip) of the layer with the most weights
    that fits: the DP's best with that layer fixed there. The DP's K best usually
    differ only in the small layers (on LeNet, classifier.1 holds 96% of the weights
    and every top plan gives it the same bits and clip), which moves robust accuracy
    little; these candidates differ where the budget goes, so the measurement, not the
    bound, decides the large layer's bits and clip. The local search cannot reach them
    (one move changes the large layer by one step only when one other layer pays)."""
    big = max(range(len(space.layers)), key=lambda i: space.layers[i].n)
    out = []
    for key in space.layers[big].choices:
        try:
            found = _weight_top(space, acts, 1, {big: key})
        except InputError:                       # that choice alone breaks the budget
            continue
        if found:
            b, c = key
            out.append((found[0], f"largest-{b}" + (f"@{c:g}" if c != 1 else "")))
    return out


def uniform_candidates(space: Space, acts: tuple) -> list[tuple[Assignment, str]]:
    """(assignment, origin) for each clip: every layer at the uniform plan's bits with
    that clip (refine_options 'uniform_candidates'). On a model whose weights spread
    over many layers the chain's ranking (it over-weights early layers, "How loose")
    can put the uniform plan far below its K best; as a candidate the measurement
    compares the DP's plans with it, so the refined plan is never worse than uniform
    on the validation objective."""
    bits = _uniform(space.layers, space.capacity)[0][0]
    clips = sorted({c for l in space.layers for b, c in l.choices if b == bits}, reverse=True)
    out = []
    for c in clips:
        if all((bits, c) in l.choices for l in space.layers):
            out.append((Assignment(tuple((bits, c) for _ in space.layers), acts),
                        f"uniform-{bits}" + (f"@{c:g}" if c != 1 else "")))
    return out


def _act_top(space: Space, weights: tuple, k: int) -> list[Assignment]:
    """The k best activation assignments for fixed weights: one DP stage per weighted
    layer; those without a group have one option of cost 0."""
    group = {g.head: g for g in space.groups}
    cell = math.gcd(*[g.numel for g in space.groups])
    options = []
    for l, t, key in zip(space.layers, space.table, weights):
        gain, add = t[key]
        g = group.get(l.node.name)
        options.append([Option(g.numel * b // cell, gain, add + g.noise[b])
                        for b in space.act_bits] if g else [Option(0, gain, add)])
    found = []
    for choice, _ in solve_top(options, space.act_capacity // cell, k):
        acts = tuple(space.act_bits[j] for l, j in zip(space.layers, choice)
                     if l.node.name in group)
        found.append(Assignment(weights, acts))
    return found


def _plus(gain_add: tuple, extra: float) -> tuple:
    return gain_add[0], gain_add[1] + extra


def _labelled(ds, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The calibration samples (Dataset.calibration's seeded choice) with labels."""
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds.x_train))[:n])
    return ds.x_train[idx], ds.y_train[idx]
