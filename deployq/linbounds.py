"""Linear relaxation bounds (CROWN / DeepPoly-style back-substitution) of a target's
exact integer semantics, and branch and bound on its activations.

A chain model (conv / linear / max pool / reshape, the LeNet-size models) is read as
a sequence of layers on flat integer vectors in the semantics' own layout:

  affine    acc = W h + b             exact integers (W, b probed from the target's own
                                      accumulation; refused where it could overflow)
  act       codes = g(acc)            the target's requantization, elementwise and
                                      monotone non-decreasing on the box (fpga-fixed:
                                      shift by the quantization mode, fit, clamp;
                                      int8: the fixed-point multiplier, zero point,
                                      clamp), computed by the same functions the
                                      interval bounds use, so it is the runtime at a
                                      point
  maxpool   out = clip(max(window))   windows of the input

Relaxation of an act neuron over its integer accumulator range [L, U]: g is a
non-decreasing staircase, so for a slope s >= 0 the tightest lower line s*acc + c has
c = min over the right ends p of g's steps (and U) of g(p) - s*p, and the tightest
upper line's offset is the max over the left ends (and L). The step ends are found
exactly by bisection on g itself, so rounding (floor for AP_TRN, half up, half away
from zero, double rounding), saturation and clamps (the ReLU) are all captured by the
same rule; the slope is the chord (g(U) - g(L)) / (U - L) or 0, whichever line is
closer to g at the range's middle. Max pool: out >= the input with the largest lower
bound; out <= that input when it dominates the window, else the largest upper bound.

Back-substitution of a linear objective through these relaxations down to the input
box gives its bound (the input box's corner that attains it is a candidate
counterexample). Floating point: every relaxation offset is widened by a margin and
each bound by 1e-9 of the magnitude of its terms before it is rounded to integers.

Branch and bound splits an unstable act neuron's accumulator range at a step of g
(both halves then cover fewer output codes); the branches cover the parent, so a
certificate of every branch certifies the box. A branch whose bounds become empty is
infeasible. Counterexamples are input points, always run exactly."""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp

from . import fixedpoint as FX
from . import ibp

TOL = 1e-9                # relative float64 margin on every bound
MAX_CODES = 512           # an act neuron spanning more output codes gets constant bounds


class NotLinear(Exception):
    """The model (or this box) is outside what the linear relaxation handles."""


@dataclass
class Affine:
    W: sp.csr_matrix             # (n_out, n_in), integer entries
    b: np.ndarray                # (n_out,) float64, integers


@dataclass
class Act:
    g: Callable                  # g(acc int64 array, neuron index array) -> codes
    valid: Callable              # valid(L, U) -> bool array: g monotone on [L, U]
    n: int


@dataclass
class MaxPool:
    groups: np.ndarray           # (k, n_out) input indices, -1: padding
    clip: tuple[int, int]


@dataclass
class Perm:
    index: np.ndarray            # out[k] = h[index[k]] (a transpose)


@dataclass
class Net:
    layers: list
    n_in: int

    @property
    def acts(self) -> list[int]:
        return [i for i, l in enumerate(self.layers) if isinstance(l, Act)]

    def point(self, q: np.ndarray) -> np.ndarray:
        """The integer outputs at points q (N, n_in): the runtime's arithmetic."""
        h = np.asarray(q, np.int64)
        for layer in self.layers:
            if isinstance(layer, Affine):
                h = np.rint((layer.W @ h.T.astype(np.float64)).T + layer.b).astype(np.int64)
            elif isinstance(layer, Act):
                h = layer.g(h, np.broadcast_to(np.arange(layer.n), h.shape))
            elif isinstance(layer, Perm):
                h = h[:, layer.index]
            else:
                h = _pool_point(h, layer)
        return h


def _pool_point(h, layer: MaxPool):
    g = layer.groups
    vals = np.where(g[None] >= 0, h[:, np.maximum(g, 0)], np.iinfo(np.int64).min)
    return np.clip(vals.max(1), *layer.clip)


# --- building the chain from a target's semantics ------------------------------------

def _probe(acc_fn, in_shape) -> Affine:
    """W, b of an exact integer affine map by evaluating it on 0 and the unit vectors."""
    n = int(np.prod(in_shape))
    base = acc_fn(np.zeros((1, *in_shape), np.int64)).reshape(1, -1)
    cols = acc_fn(np.eye(n, dtype=np.int64).reshape(n, *in_shape)).reshape(n, -1) - base
    return Affine(sp.csr_matrix(cols.T.astype(np.float64)), base[0].astype(np.float64))


def _flat_param(values, shape, channel_axis: int) -> np.ndarray:
    """A per-channel parameter (length C or 1) broadcast over a layer's shape, flattened."""
    v = np.asarray(values, np.int64).reshape(-1)
    view = [1] * len(shape)
    view[channel_axis] = len(v) if len(v) > 1 else 1
    return np.broadcast_to(v.reshape(view), shape).reshape(-1).copy()


def from_fx(fx: FX.FxModel) -> Net:
    shape = fx.graph.input_shape
    layers, prev = [], "input"
    for node in fx.graph.nodes:
        if node.inputs != [prev]:
            raise NotLinear(f"{node.name}: not a chain")
        layer, prev = fx.layers[node.name], node.name
        if node.op in ("conv2d", "linear"):
            layers += _fx_affine(layer, fx, shape)
        elif node.op == "maxpool":
            idx = np.arange(int(np.prod(shape))).reshape(1, *shape)
            groups = np.stack([w.reshape(-1) for w in FX._windows(idx, node, -1)])
            layers.append(MaxPool(groups, tuple(int(a) for a in layer.act)))
        elif node.op != "reshape":
            raise NotLinear(f"{node.name}: op {node.op}")
        shape = tuple(node.shape)
    return Net(layers, int(np.prod(fx.graph.input_shape)))


def _fx_affine(layer: FX.FxLayer, fx: FX.FxModel, in_shape):
    o = fx.options
    if FX._bound(layer, fx) >= 2 ** (o.acc_bits - 1):
        raise NotLinear(f"{layer.node.name}: the accumulator could overflow")
    w, a = layer.weight, layer.node.attrs
    if layer.node.op == "conv2d":
        acc = lambda x: ibp._conv_f64(x, w, a["stride"], a["padding"], a["dilation"], a["groups"])
    else:
        acc = lambda x: x.reshape(len(x), -1) @ w.T
    aff = _probe(acc, in_shape)
    out_shape = tuple(layer.node.shape)
    aff.b = aff.b + _flat_param(FX.fit(layer.bias, o.acc_bits, o.acc_overflow), out_shape, 0)
    shift = _flat_param(layer.shift, out_shape, 0)
    g = lambda v, i: FX.requantize(v, shift[i], layer, fx)

    def valid(lo, hi):
        if fx.options.out_overflow == "sat":
            return np.ones(np.shape(lo), bool)
        base = -(1 << (layer.bits - 1))
        s = [FX.shift(t, shift, layer.quant) for t in (lo, hi)]
        return ((s[0] - base) >> layer.bits) == ((s[1] - base) >> layer.bits)
    return [aff, Act(g, valid, len(shift))]


def from_s8(prog: ibp.S8Program) -> Net:
    layers, prev = [], prog.input
    for op in prog.ops:
        if op.inputs != [prev]:
            raise NotLinear(f"op {op.type}: not a chain")
        prev = op.output
        in_dims, out_dims = prog.dims(op.inputs[0]), prog.dims(op.output)
        if op.type in ("conv2d", "depthwise_conv2d", "fully_connected"):
            layers += _s8_affine(prog, op, in_dims, out_dims)
        elif op.type == "max_pool":
            idx = np.arange(int(np.prod(in_dims))).reshape(1, *in_dims)
            groups = np.stack([w.reshape(-1) for w in
                               ibp._windows(idx, op.params, in_dims, out_dims, -1)])
            layers.append(MaxPool(groups, (int(op.params[8]), int(op.params[9]))))
        elif op.type == "transpose":
            idx = np.arange(int(np.prod(in_dims))).reshape(1, *in_dims)
            layers.append(Perm(ibp._transpose(prog, op, [idx])[0].reshape(-1)))
        elif op.type != "reshape":
            raise NotLinear(f"op {op.type}")
    return Net(layers, int(np.prod(prog.input_dims)))


def _s8_affine(prog, op, in_dims, out_dims):
    mult, shift = op.data[2], op.data[3]
    aff = _probe(lambda x: ibp.s8_acc(prog, op, x), in_dims)
    m, s = _flat_param(mult, out_dims, 2), _flat_param(shift, out_dims, 2)
    p, zp = op.params, prog.tensors[op.output].zero_point
    r, lo_, hi_ = int(p[7]), int(p[8]), int(p[9])
    g = lambda v, i: ibp.requant_bounds(v, v, m[i], s[i], r, zp, lo_, hi_)[0]
    valid = lambda lo, hi: ~(ibp._mbqm_overflows(lo, s, r) | ibp._mbqm_overflows(hi, s, r))
    return [aff, Act(g, valid, len(m))]


def build(sem) -> Net:
    """The chain of sem's integer model (raises NotLinear where it is not one)."""
    model = sem.model                   # certification.Semantics: FxModel, S8Program or None
    if isinstance(model, FX.FxModel):
        return from_fx(model)
    if isinstance(model, ibp.S8Program):
        return from_s8(model)
    raise NotLinear("no integer model")


# --- bounds ---------------------------------------------------------------------------

@dataclass
class Relax:
    """Per act neuron: lower line sl*acc + cl, upper line su*acc + cu, and the codes'
    bounds."""
    sl: np.ndarray
    cl: np.ndarray
    su: np.ndarray
    cu: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def relax(act: Act, L: np.ndarray, U: np.ndarray) -> Relax:
    """The relaxation of g over each neuron's integer range [L, U] (see the module)."""
    idx = np.arange(act.n)
    if not act.valid(L, U).all():
        raise NotLinear("requantization not monotone on the box")
    gL, gU = act.g(L, idx), act.g(U, idx)
    r = Relax(np.zeros(act.n), gL.astype(float), np.zeros(act.n), gU.astype(float),
              gL, gU)
    open_ = np.flatnonzero((gL < gU) & (gU - gL <= MAX_CODES))
    if not len(open_):
        return r
    # (neuron, code) pairs: the first acc reaching each code above g(L)
    span = (gU - gL)[open_]
    who = np.repeat(open_, span)
    code = gL[who] + 1 + (np.arange(len(who)) - np.repeat(np.cumsum(span) - span, span))
    a, b = L[who].copy(), U[who].copy()       # g(a) < code <= g(b)
    while (b - a > 1).any():
        mid = (a + b) // 2
        ok = act.g(mid, who) >= code
        b, a = np.where(ok, mid, b), np.where(ok, a, mid)
    gb, gb1 = act.g(b, who), act.g(b - 1, who)
    Lo, Uo = L[open_].astype(float), U[open_].astype(float)
    chord = (gU[open_] - gL[open_]) / (Uo - Lo)
    pos = np.searchsorted(open_, who)
    best = {}
    for name, pts, vals, ends, evals, pick in (
            ("lower", b - 1, gb1, Uo, gU[open_], np.minimum),
            ("upper", b, gb, Lo, gL[open_], np.maximum)):
        lines = []
        for slope in (chord, np.zeros_like(chord)):
            off = evals - slope * ends
            pick.at(off, pos, vals - slope[pos] * pts)
            lines.append((slope, off))
        mid = (Lo + Uo) / 2
        at = [s * mid + c for s, c in lines]
        use0 = at[1] > at[0] if name == "lower" else at[1] < at[0]
        best[name] = (np.where(use0, lines[1][0], lines[0][0]),
                      np.where(use0, lines[1][1], lines[0][1]))
    margin = 1e-9 * (1 + chord * np.maximum(np.abs(Lo), np.abs(Uo)))
    r.sl[open_], r.cl[open_] = best["lower"][0], best["lower"][1] - margin
    r.su[open_], r.cu[open_] = best["upper"][0], best["upper"][1] + margin
    return r


@dataclass
class State:
    """A box of input codes and, per act layer, its neurons' accumulator ranges."""
    xlo: np.ndarray
    xhi: np.ndarray
    acc: dict = field(default_factory=dict)       # layer index -> (L, U) int64
    relax: dict = field(default_factory=dict)     # layer index -> Relax
    codes: dict = field(default_factory=dict)     # layer index -> (lo, hi) of its output
    splits: dict = field(default_factory=dict)    # layer index -> neurons split here


def _interval(layer, lo, hi):
    if isinstance(layer, Affine):
        Wp, Wn = layer.W.maximum(0), layer.W.minimum(0)
        return (np.floor(Wp @ lo + Wn @ hi + layer.b + 0.5),
                np.floor(Wp @ hi + Wn @ lo + layer.b + 0.5))
    if isinstance(layer, Perm):
        return lo[layer.index], hi[layer.index]
    v = [np.where(layer.groups >= 0, t[np.maximum(layer.groups, 0)], -np.inf).max(0)
         for t in (lo, hi)]
    return tuple(np.clip(t, *layer.clip) for t in v)


def backsub(net: Net, st: State, A: np.ndarray, top: int, record: dict | None = None):
    """Lower bounds of A @ (output of layer `top`) over the state's box: (bounds,
    input coefficients). record: layer index -> coefficients on that act layer's codes
    (pool: ("pool", index) -> on its outputs), full width. A is carried on a subset of
    columns (cols): past an act layer only its unstable neurons have a slope."""
    const = np.zeros(len(A))
    mag = np.zeros(len(A))
    cols = np.arange(A.shape[1])
    for i in range(top, -1, -1):
        layer = net.layers[i]
        if isinstance(layer, Act):
            if record is not None:
                record[i] = _widen(A, cols, layer.n)
            r = st.relax[i]
            Ap, An = np.maximum(A, 0), np.minimum(A, 0)
            cl, cu = r.cl[cols], r.cu[cols]
            const += Ap @ cl + An @ cu
            mag += Ap @ np.abs(cl) - An @ np.abs(cu)
            keep = np.flatnonzero((r.sl[cols] != 0) | (r.su[cols] != 0))
            cols = cols[keep]
            A = Ap[:, keep] * r.sl[cols] + An[:, keep] * r.su[cols]
        elif isinstance(layer, Affine):
            b = layer.b[cols]
            const += A @ b
            mag += np.abs(A) @ np.abs(b)
            W = layer.W[cols]
            used = np.unique(W.indices)
            A = np.asarray((W[:, used].T @ A.T).T)
            cols = used
        elif isinstance(layer, Perm):
            cols = layer.index[cols]
        else:
            if record is not None:
                record[("pool", i)] = _widen(A, cols, layer.groups.shape[1])
            A, cols, const, mag = _pool_back(layer, st, i, A, cols, const, mag)
    Ap, An = np.maximum(A, 0), np.minimum(A, 0)
    xlo, xhi = st.xlo[cols], st.xhi[cols]
    value = const + Ap @ xlo + An @ xhi
    mag += np.abs(A) @ np.maximum(np.abs(xlo), np.abs(xhi))
    return value - TOL * (mag + 1), _widen(A, cols, len(st.xlo))


def _widen(A, cols, n):
    full = np.zeros((len(A), n))
    full[:, cols] = A
    return full


def _pool_back(layer: MaxPool, st: State, i: int, A, cols, const, mag):
    """out >= h[star] (the input with the largest lower bound); out <= h[star] where it
    dominates its window, else out <= the window's largest upper bound."""
    lo, hi = st.codes[i - 1] if i > 0 else (st.xlo, st.xhi)
    if lo.min() < layer.clip[0] or hi.max() > layer.clip[1]:
        raise NotLinear("max pool clamps")
    g = layer.groups[:, cols]
    n = len(cols)
    glo = np.where(g >= 0, lo[np.maximum(g, 0)], -np.inf)
    ghi = np.where(g >= 0, hi[np.maximum(g, 0)], -np.inf)
    k = glo.argmax(0)
    star = g[k, np.arange(n)]
    best_lo = glo[k, np.arange(n)]
    ghi_others = np.where(np.arange(len(g))[:, None] == k[None], -np.inf, ghi).max(0)
    dom = best_lo >= ghi_others
    ub = ghi.max(0)
    Ap, An = np.maximum(A, 0), np.minimum(A, 0)
    keep = Ap + An * dom
    loose = An * ~dom
    const = const + loose @ ub
    mag = mag + np.abs(loose) @ np.abs(ub)
    used, where = np.unique(star, return_inverse=True)
    P = sp.csr_matrix((np.ones(n), (np.arange(n), where)), shape=(n, len(used)))
    return np.asarray((P.T @ keep.T).T), used, const, mag


def _layer_codes(net: Net, st: State, i: int):
    if i < 0:
        return st.xlo, st.xhi
    return st.codes[i]


def propagate(net: Net, st: State, start: int = 0) -> bool:
    """Fill the state's ranges from layer `start` on: interval bounds, tightened by
    back-substitution for unstable neurons, intersected with the ranges already known.
    False when some range becomes empty (the state holds no input)."""
    for i in range(start, len(net.layers)):
        layer = net.layers[i]
        lo, hi = _layer_codes(net, st, i - 1)
        if isinstance(layer, Act):
            L, U = st.acc[i]
            st.relax[i] = relax(layer, L, U)
            st.codes[i] = st.relax[i].lo, st.relax[i].hi
            continue
        lo2, hi2 = _interval(layer, lo.astype(float), hi.astype(float))
        if isinstance(layer, Affine):
            nxt = i + 1
            L, U = lo2.astype(np.int64), hi2.astype(np.int64)
            act = net.layers[nxt]
            if nxt in st.acc:
                L, U = np.maximum(L, st.acc[nxt][0]), np.minimum(U, st.acc[nxt][1])
            rows = np.flatnonzero(act.g(L, np.arange(act.n)) < act.g(U, np.arange(act.n)))
            rows = np.union1d(rows, st.splits.get(nxt, [])).astype(np.int64)
            if i > 0:
                L, U = _tighten(net, st, i, L, U, rows)
            if (L > U).any():
                return False
            st.acc[nxt] = (L, U)
            st.codes[i] = (L, U)
        else:
            st.codes[i] = (lo2.astype(np.int64), hi2.astype(np.int64))
    return True


def _tighten(net: Net, st: State, i: int, L, U, rows):
    """Back-substitution bounds of affine layer i's outputs `rows` (those the interval
    bounds leave unstable: split ones included, so a split the box contradicts shows
    as an empty range)."""
    if not len(rows):
        return L, U
    W = net.layers[i].W[rows].toarray()
    A = np.concatenate([W, -W])
    b = net.layers[i].b[rows]
    low, _ = backsub(net, st, A, i - 1)
    m = len(rows)
    L, U = L.copy(), U.copy()
    L[rows] = np.maximum(L[rows], np.ceil(low[:m] + b))
    U[rows] = np.minimum(U[rows], np.floor(-low[m:] + b))
    return L, U


def margins(net: Net, st: State, y: int, record: dict | None = None):
    """Lower bounds of out[y] - out[j] for every j (j == y: 0) and input coefficients."""
    n_out = len(st.codes[len(net.layers) - 1][0])
    A = -np.eye(n_out)
    A[:, y] += 1
    A = np.delete(A, y, 0)
    low, coef = backsub(net, st, A, len(net.layers) - 1, record)
    return np.insert(np.ceil(low), y, 0), np.insert(coef, y, 0, 0)


def certified_by(low: np.ndarray, y: int) -> bool:
    """out[y] beats out[j] (strictly for j < y: argmax takes the first on ties)."""
    need = (np.arange(len(low)) < y).astype(float)
    need[y] = 0
    return bool((low >= need).all())


def output_bounds(net: Net, qlo: np.ndarray, qhi: np.ndarray):
    """Per-class bounds of the integer outputs over the box (back-substitution; each
    intersected with the interval bounds): for soundness checks."""
    st = State(np.asarray(qlo, float), np.asarray(qhi, float))
    if not propagate(net, st):
        raise NotLinear("empty box")
    top = len(net.layers) - 1
    lo, hi = st.codes[top]
    n = len(lo)
    low, _ = backsub(net, st, np.concatenate([np.eye(n), -np.eye(n)]), top)
    return np.maximum(lo, np.ceil(low[:n])).astype(np.int64), \
        np.minimum(hi, np.floor(-low[n:])).astype(np.int64)


# --- branch and bound on activations -------------------------------------------------

def _split_choice(net: Net, st: State, record: dict, worst: int):
    """The unstable act neuron whose relaxation loosens the worst margin most: the
    margin's coefficient on its code times the gap between its lines at mid-range;
    for a neuron read by a max pool, also the coefficient on the pool's output times
    its codes' width (a pool whose max is not settled bounds by a constant, which
    zeroes the neurons' own coefficients)."""
    best, where = 0.0, None
    last = len(net.layers) - 1
    for i in st.relax:
        if i not in record or i == last:      # splitting the outputs decorrelates them
            continue
        r = st.relax[i]
        L, U = st.acc[i]
        unstable = r.lo < r.hi
        if not unstable.any():
            continue
        mid = (L + U) / 2
        gap = (r.su * mid + r.cu) - (r.sl * mid + r.cl)
        score = np.abs(record[i][worst]) * gap
        pool = record.get(("pool", i + 1))
        if pool is not None:
            groups = net.layers[i + 1].groups
            via = np.zeros(len(gap))
            for row in groups:
                ok = row >= 0
                np.maximum.at(via, row[ok], np.abs(pool[worst])[ok])
            score = np.maximum(score, via * (r.hi - r.lo))
        score = np.where(unstable, score, -1)
        j = int(np.argmax(score))
        if score[j] > best:
            best, where = score[j], (i, j)
    return where


def _children(net: Net, st: State, i: int, j: int):
    """The neuron's range split at the step of g nearest the middle of its codes."""
    act = net.layers[i]
    L, U = st.acc[i]
    a, b = int(L[j]), int(U[j])
    lo, hi = act.g(np.array([a]), np.array([j]))[0], act.g(np.array([b]), np.array([j]))[0]
    target = (lo + hi + 1) // 2                       # first acc with g >= target
    while b - a > 1:
        m = (a + b) // 2
        if act.g(np.array([m]), np.array([j]))[0] >= target:
            b = m
        else:
            a = m
    out = []
    for rng in ((int(L[j]), b - 1), (b, int(U[j]))):
        child = State(st.xlo, st.xhi, dict(st.acc), dict(st.relax), dict(st.codes),
                      dict(st.splits))
        child.splits[i] = list(st.splits.get(i, [])) + [j]
        cl, cu = L.copy(), U.copy()
        cl[j], cu[j] = rng
        child.acc[i] = (cl, cu)
        out.append(child)
    return out


def verify(net: Net, point: Callable, qlo, qhi, y: int, time_limit: float,
           clock: Callable = time.monotonic):
    """Branch and bound over act splits: ('certified' | 'falsified' | 'undecided' |
    'stuck', counterexample codes or None, branches). 'stuck': a branch with no unstable
    neuron left is neither certified nor refuted (the caller falls back to input
    splitting, which is complete)."""
    start = clock()
    root = State(np.asarray(qlo, float), np.asarray(qhi, float))
    if not propagate(net, root):
        return "certified", None, 1
    heap, count, tie = [], 0, 0

    def push(st, from_layer):
        nonlocal tie, count
        count += 1
        if from_layer is not None and not propagate(net, st, from_layer):
            return None                               # infeasible: no input here
        record = {}
        low, coef = margins(net, st, y, record)
        if certified_by(low, y):
            return None
        worst = int(np.argmin(low - (np.arange(len(low)) < y)))
        q = np.where(coef[worst] >= 0, st.xlo, st.xhi).astype(np.int64)
        out = point(q[None])[0]
        if out.argmax() != y:
            return q
        tie += 1
        heapq.heappush(heap, (float(low[worst]), tie, st, record, worst - (worst > y)))
        return None

    cex = push(root, None)
    while cex is None and heap:
        if clock() - start > time_limit:
            return "undecided", None, count
        _, _, st, record, row = heapq.heappop(heap)
        choice = _split_choice(net, st, record, row)
        if choice is None:
            return "stuck", None, count
        i, j = choice
        for child in _children(net, st, i, j):
            cex = push(child, i)
            if cex is not None:
                break
    if cex is not None:
        return "falsified", cex, count
    return "certified", None, count
