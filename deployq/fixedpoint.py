"""Bit-exact NumPy model of the FPGA fixed-point arithmetic (HLS ap_fixed semantics),
written from the IR and the plan, independently of the C runtime (runtime/dq_common.h
states the same rules; tests/runtime/test_fpga.py checks every output agrees).

A tensor with b bits and f fractional bits holds integers q in [-2^(b-1), 2^(b-1) - 1]
meaning q * 2^-f. Two parts:

  lower(graph, plan, options) -> FxModel    the integers of every layer (weights, bias,
                                            shifts, clamp ranges), shared with the
                                            file writer (deployq/backends/fpga.py)
  run_int(fx, q) -> outputs                 the integer forward pass, one function per
                                            IR op on int64 NCHW arrays with batch

Each op function takes (x..., layer, options) and uses only shift/fit/clip, so a torch
port (straight-through rounding) can follow it line by line. docs/fpga-fixed.md has the
formulas."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import graph as G
from .errors import ExportError, TargetError, UnsupportedOpError
from .plan import SHARED_PARAMS
from .targets import relu_unsigned

QUANT = {"trn": 0, "rnd": 1, "rnd_conv": 2}        # dq_fx_quant
OVERFLOW = {"wrap": 0, "sat": 1}                   # dq_fx_overflow
SUM_ORDER = ("hwc", "chw")                        # a flattened map's order in a linear
POOL_DIVISION = ("divide", "reciprocal")
LIMITS = {"acc_bits": (8, 32), "reciprocal_bits": (1, 16), "pool_guard_bits": (0, 8)}
BIAS_LIMIT = 2 ** 30                               # the loader's bound on bias values


@dataclass
class Options:
    """Target options (targets/fpga-fixed.toml [options])."""
    acc_bits: int = 32
    acc_overflow: str = "wrap"
    out_overflow: str = "sat"
    reciprocal_bits: int = 16
    sum_order: str = "hwc"
    pool_division: str = "divide"
    pool_guard_bits: int = 0

    @classmethod
    def from_target(cls, target) -> "Options":
        opts = {k: v for k, v in target.options.items() if k in cls.__dataclass_fields__}
        o = cls(**opts)
        relu_unsigned(target)          # checked here too: a given plan skips plan.make
        for key, (lo, hi) in LIMITS.items():
            if not lo <= getattr(o, key) <= hi:
                raise TargetError(f"target {target.name}: {key}={getattr(o, key)}; "
                                  f"choose {lo}..{hi}")
        for key in ("acc_overflow", "out_overflow"):
            if getattr(o, key) not in OVERFLOW:
                raise TargetError(f"target {target.name}: {key}={getattr(o, key)!r}; "
                                  f"choose {' or '.join(OVERFLOW)}")
        for key, allowed in (("sum_order", SUM_ORDER), ("pool_division", POOL_DIVISION)):
            if getattr(o, key) not in allowed:
                raise TargetError(f"target {target.name}: {key}={getattr(o, key)!r}; "
                                  f"choose {' or '.join(allowed)}")
        return o


# --- the arithmetic (dq_common.h: dq_fx_shift, dq_fx_fit) ------------------------------

def shift(x: np.ndarray, s, quant: str) -> np.ndarray:
    """x / 2^s with the quantization mode (s may be an array; s <= 0 shifts left)."""
    x = np.asarray(x, np.int64)
    s = np.asarray(s, np.int64)
    sp = np.maximum(s, 0)
    floor = x >> sp                                   # arithmetic: toward -infinity
    rem = x - (floor << sp)                           # in [0, 2^s)
    half = (np.int64(1) << sp) >> 1
    if quant == "trn":
        r = floor
    elif quant == "rnd":
        r = floor + (rem >= half)
    else:                                             # rnd_conv: half to even
        r = floor + ((rem > half) | ((rem == half) & ((floor & 1) == 1)))
    return np.where(s > 0, r, x << np.maximum(-s, 0))


def fit(x: np.ndarray, bits: int, overflow: str) -> np.ndarray:
    """x in `bits` bits, two's complement: saturated (sat) or low bits kept (wrap)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    x = np.asarray(x, np.int64)
    if overflow == "sat":
        return np.clip(x, lo, hi)
    return ((x - lo) & ((1 << bits) - 1)) + lo


def quantize_input(x: np.ndarray, frac: int, bits: int, quant: str) -> np.ndarray:
    """Float x -> integers: x * 2^frac rounded by the quantization mode, saturated."""
    v = np.asarray(x, np.float64) * 2.0 ** frac       # exact: a power-of-two scaling
    r = {"trn": np.floor(v), "rnd": np.floor(v + 0.5), "rnd_conv": np.round(v)}[quant]
    r = np.clip(r, -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return r.astype(np.int64)


def dequantize(q: np.ndarray, frac: int) -> np.ndarray:
    return (np.asarray(q, np.float64) * 2.0 ** -frac).astype(np.float32)


# --- lowering: the integers of each layer ---------------------------------------------

@dataclass
class FxLayer:
    node: G.Node
    bits: int                      # output bits
    frac: int                      # output fractional bits
    quant: str                     # requantization mode (plan setting 'rounding')
    act: tuple[int, int]           # output clamp range, integers
    weight: np.ndarray | None = None     # int64, IR layout (O, I/g, kh, kw) or (O, I)
    bias: np.ndarray | None = None       # int64 (O,), units 2^-(frac_in + frac_w[o])
    shift: np.ndarray | None = None      # int64 (O,) or (1,): accumulator -> output
    extra: dict = field(default_factory=dict)   # add: common/in shifts; pools: reciprocal
    unsigned: bool = False         # an unsigned (bits-1)-bit tensor held in `bits` bits


@dataclass
class FxModel:
    graph: G.Graph
    options: Options
    input_bits: int
    input_frac: int
    input_quant: str
    layers: dict[str, FxLayer]

    def frac(self, name: str) -> int:
        return self.input_frac if name == G.INPUT else self.layers[name].frac

    def bits(self, name: str) -> int:
        return self.input_bits if name == G.INPUT else self.layers[name].bits


def frac_bits(scale: np.ndarray, where: str) -> np.ndarray:
    """-log2(scale) per element; a scale that is not a power of two is refused."""
    s = np.asarray(scale, np.float64)
    f = -np.log2(s)
    if not np.all(np.isfinite(f)) or not np.array_equal(f, np.round(f)):
        raise TargetError(f"{where}: scale {s.tolist()[:4]} is not a power of two; the "
                          "fixed-point target needs the plan setting scale='pow2'")
    return np.round(f).astype(np.int64)


def act_range(act, frac: int, bits: int) -> tuple[int, int]:
    """A real clamp range [lo, hi] as integers: the representable values inside it,
    within the tensor's range."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if act is None:
        return qmin, qmax
    lo = qmin if math.isinf(act[0]) else math.ceil(act[0] * 2.0 ** frac)
    hi = qmax if math.isinf(act[1]) else math.floor(act[1] * 2.0 ** frac)
    lo, hi = min(max(lo, qmin), qmax), min(max(hi, qmin), qmax)
    return lo, max(lo, hi)


def reciprocal(count, bits: int):
    """round(2^bits / count), half up (count: a number or an array)."""
    return ((1 << bits) + count // 2) // count


def window_counts(graph: G.Graph, node: G.Node):
    """The divisor of an average: kh * kw, or with count_include_pad=False and padding
    an (oh, ow) array of each window's elements inside the input (dq_avg_pool_fx)."""
    a, (h, w) = node.attrs, graph.shape_of(node.inputs[0])[1:]
    if node.op == "gap":
        return h * w
    if a["count_include_pad"] or not any(a["padding"]):
        return a["kernel"][0] * a["kernel"][1]
    per_axis = []
    for size, k, s, p, out in zip((h, w), a["kernel"], a["stride"], a["padding"],
                                  node.shape[1:]):
        start = np.arange(out) * s - p
        per_axis.append(np.minimum(start + k, size) - np.maximum(start, 0))
    return np.outer(*per_axis).astype(np.int64)


def lower(graph: G.Graph, plan, options: Options, input_quant: str) -> FxModel:
    fx = FxModel(graph, options, plan.input.bits,
                 int(frac_bits(plan.input.scale, "input")[0]), input_quant, {})
    for node in graph.nodes:
        fx.layers[node.name] = _lower_node(fx, node, plan.layers[node.name])
    return fx


def _lower_node(fx: FxModel, node: G.Node, lp) -> FxLayer:
    bits, frac = lp.output.bits, int(frac_bits(lp.output.scale, f"layer '{node.name}'")[0])
    unsigned = is_unsigned(fx, node, lp.output)
    bits += unsigned
    quant = lp.settings.get("rounding", "trn")
    layer = FxLayer(node, bits, frac, quant, act_range(node.attrs.get("act"), frac, bits),
                    unsigned=unsigned)
    if node.op == "clamp":
        layer.act = act_range((node.attrs["lo"], node.attrs["hi"]), frac, bits)
    if unsigned:                  # the ReLU into ap_ufixed<b>: [0, 2^b - 1]
        layer.act = (max(layer.act[0], 0), min(layer.act[1], (1 << (bits - 1)) - 1))
    if node.op in G.WEIGHTED:
        _lower_weighted(fx, layer, lp)
        if node.op == "linear":
            layer.extra["order"] = sum_order(fx, node)
    elif node.op == "add":
        fa, fb = (fx.frac(i) for i in node.inputs)
        common = max(fa, fb)
        layer.extra = {"common": common, "shifts": (common - fa, common - fb)}
        layer.shift = np.array([common - frac], np.int64)
    elif node.op in ACTIVATIONS:
        layer.extra = {"table": activation_table(node, fx.frac(node.inputs[0]),
                                                 fx.bits(node.inputs[0]), layer)}
    elif node.op == "mul":
        layer.shift = np.array([sum(fx.frac(i) for i in node.inputs) - frac], np.int64)
    elif node.op in ("avgpool", "gap"):
        count = window_counts(fx.graph, node)
        o = fx.options
        if o.pool_division == "divide":
            g = o.pool_guard_bits
            layer.extra = {"count": count, "guard_bits": g}
            layer.shift = np.array([fx.frac(node.inputs[0]) + g - frac], np.int64)
        else:
            rb = o.reciprocal_bits
            layer.extra = {"reciprocal": reciprocal(count, rb), "reciprocal_bits": rb}
            layer.shift = np.array([fx.frac(node.inputs[0]) - frac], np.int64)

    return layer


def is_unsigned(fx: FxModel, node: G.Node, qp) -> bool:
    """The plan stores this output as an unsigned b-bit tensor (zero point -2^(b-1):
    targets.relu_unsigned); its integers u = q - zp are then held in b + 1 signed
    bits and clamped to [0, 2^b - 1]. Allowed only where the tensor is >= 0 by
    construction (a fused ReLU, or a pool/reshape/clamp/concat/pad/upsample of unsigned
    inputs), since the clamp at 0 must change nothing; any other zero point is refused."""
    zp = np.asarray(qp.zero_point)
    if not zp.any():
        return False
    where = f"layer '{node.name}'"
    if len(zp) != 1 or int(zp[0]) != -(1 << (qp.bits - 1)):
        raise TargetError(f"{where}: zero point {zp.tolist()[:4]}; the fixed-point target "
                          "takes 0 (signed) or -2^(bits-1) (unsigned, relu_unsigned)")
    act = node.attrs.get("act")
    relu = act is not None and act[0] >= 0
    moved = node.op in SHARED_PARAMS and all(i != G.INPUT and fx.layers[i].unsigned
                                      for i in node.inputs)
    if not (relu or moved):
        raise TargetError(f"{where}: an unsigned output (zero point -2^(bits-1)) on a "
                          "tensor that can be negative; make the plan with deployq")
    if qp.bits + 1 > 8:
        raise TargetError(f"{where}: an unsigned {qp.bits}-bit output needs {qp.bits + 1} "
                          "bits in the runtime (at most 8); use activation_bits <= 7")
    return True


# Pointwise activations are ROMs (Hardsigmoid is captured as a depthwise conv) (docs/fpga-fixed.md): one entry per input code, the
# function of its real value in float64, rounded by the layer's quantization mode and
# saturated into the output (then clamped to its activation range).
ACTIVATIONS = {
    "sigmoid": lambda x, a: 1.0 / (1.0 + np.exp(-x)),
    "tanh": lambda x, a: np.tanh(x),
    "hardswish": lambda x, a: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "silu": lambda x, a: x / (1.0 + np.exp(-x)),
    "leaky_relu": lambda x, a: np.where(x >= 0, x, x * a.get("alpha", 0.0)),
}


def activation_table(node: G.Node, f_in: int, bits_in: int, layer: FxLayer) -> np.ndarray:
    """256 int64 entries: table[q & 0xFF] is the output integer for input code q
    (codes outside the input's bits stay 0)."""
    codes = np.arange(-(1 << (bits_in - 1)), 1 << (bits_in - 1), dtype=np.int64)
    y = ACTIVATIONS[node.op](codes * 2.0 ** -f_in, node.attrs) * 2.0 ** layer.frac
    r = {"trn": np.floor(y), "rnd": np.floor(y + 0.5), "rnd_conv": np.round(y)}[layer.quant]
    table = np.zeros(256, np.int64)
    table[codes & 0xFF] = np.clip(fit(np.clip(r, -2.0 ** 40, 2.0 ** 40).astype(np.int64),
                                      layer.bits, "sat"), *layer.act)
    return table


def activation(x: np.ndarray, *, layer: FxLayer, fx: FxModel) -> np.ndarray:
    """The ROM lookup."""
    return layer.extra["table"][np.asarray(x, np.int64) & 0xFF]


def _lower_weighted(fx: FxModel, layer: FxLayer, lp) -> None:
    node = layer.node
    f_in = fx.frac(node.inputs[0])
    f_w = np.broadcast_to(frac_bits(lp.weight.scale, f"weights of '{node.name}'"),
                          (len(node.weight),))
    layer.weight = lp.weight.quantize(node.weight).astype(np.int64)
    # bias in accumulator units, rounded half to even (numpy.round, as the plan's
    # quantized_bias); bounded by the loader's +-2^30
    exact = node.bias.astype(np.float64) * np.exp2((f_in + f_w).astype(np.float64))
    layer.bias = np.clip(np.round(exact), -BIAS_LIMIT, BIAS_LIMIT).astype(np.int64)
    layer.shift = (f_in + f_w - layer.frac).astype(np.int64)
    layer.extra = {"f_w": f_w.astype(np.int64)}


def sum_order(fx: FxModel, node: G.Node) -> np.ndarray | None:
    """The order a linear layer adds its inputs in, as input indices, or None for
    0..n-1. With sum_order='hwc', a linear fed by a flatten of a (C, H, W) map adds in
    channels-last order (h, w, c), as an HLS kernel on channels-last data (hls4ml) does."""
    src = fx.graph.node(node.inputs[0]) if node.inputs[0] != G.INPUT else None
    if fx.options.sum_order != "hwc" or src is None or src.op != "reshape":
        return None
    if any(c.op != "linear" for c in fx.graph.nodes if src.name in c.inputs):
        return None                    # the flatten's other readers need PyTorch's order
    shape = fx.graph.shape_of(src.inputs[0])
    if len(shape) != 3 or shape[0] == 1 or shape[1] * shape[2] == 1:
        return None
    return np.arange(math.prod(shape)).reshape(shape).transpose(1, 2, 0).reshape(-1)


# --- the integer forward pass ----------------------------------------------------------

def run_int(fx: FxModel, q: np.ndarray) -> np.ndarray:
    """Integer input (N, *input_shape) NCHW -> integer output (N, *output_shape)."""
    return run_all(fx, q)[fx.graph.output]


def run_all(fx: FxModel, q: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor's integers, by IR name (the input as 'input')."""
    values = {G.INPUT: np.asarray(q, np.int64)}
    for node in fx.graph.nodes:
        values[node.name] = OPS[node.op](*[values[i] for i in node.inputs],
                                         layer=fx.layers[node.name], fx=fx)
    return values


def run(fx: FxModel, x: np.ndarray) -> np.ndarray:
    """Float input in [0, 1] -> dequantized float output."""
    q = quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant)
    return dequantize(run_int(fx, q), fx.layers[fx.graph.output].frac)


def requantize(acc: np.ndarray, s: np.ndarray, layer: FxLayer, fx: FxModel) -> np.ndarray:
    """Accumulator -> output: shift with the quantization mode, fit, activation clamp."""
    v = fit(shift(acc, s, layer.quant), layer.bits, fx.options.out_overflow)
    return np.clip(v, *layer.act)


def accumulate(bias: np.ndarray, taps, fx: FxModel, bound: float) -> np.ndarray:
    """bias + sum of products in the accumulator type, as an HLS kernel whose products
    and sums are held in it (hls4ml: mult[i] = x * w; acc = bias; acc += mult[i]):
    acc = fit(bias); acc = fit(acc + fit(product)) for each product in order.

    taps: an iterable of products in the order the hardware adds them. Wrapping is
    modular, so one fit at the end equals all of these fits; so is saturation when no
    product or partial sum can leave the range (bound: the largest possible |partial
    sum|, which bounds every product too)."""
    o = fx.options
    acc = fit(bias, o.acc_bits, o.acc_overflow)
    if o.acc_overflow == "wrap" or bound < 2 ** (o.acc_bits - 1):
        return fit(acc + sum(taps), o.acc_bits, o.acc_overflow)
    for t in taps:
        acc = fit(acc + fit(t, o.acc_bits, "sat"), o.acc_bits, "sat")
    return acc


def _bound(layer: FxLayer, fx: FxModel) -> float:
    x_max = 2 ** (fx.bits(layer.node.inputs[0]) - 1)
    w = np.abs(layer.weight).reshape(len(layer.weight), -1).sum(1)
    return float(np.max(np.abs(layer.bias) + w * x_max))


def conv2d(x: np.ndarray, *, layer: FxLayer, fx: FxModel) -> np.ndarray:
    """Taps added in the order ky, kx, input channel of the group (dq_conv2d_fx)."""
    a = layer.node.attrs
    (sh, sw), (ph, pw), (dh, dw), g = a["stride"], a["padding"], a["dilation"], a["groups"]
    w = layer.weight
    n_out, c_group, kh, kw = w.shape
    oh, ow = layer.node.shape[1:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    group_of = np.arange(n_out) // (n_out // g)

    def taps():
        for ky in range(kh):
            for kx in range(kw):
                win = xp[:, :, ky * dh:ky * dh + (oh - 1) * sh + 1:sh,
                         kx * dw:kx * dw + (ow - 1) * sw + 1:sw]
                for ic in range(c_group):
                    yield win[:, group_of * c_group + ic] * w[:, ic, ky, kx][:, None, None]
    acc = accumulate(layer.bias[:, None, None], taps(), fx, _bound(layer, fx))
    return requantize(acc, layer.shift[:, None, None], layer, fx)


def scattered(x, ky: int, kx: int, stride, padding, out_hw):
    """x (N, C, H, W) placed where tap (ky, kx) of a transposed conv sends it: input
    (iy, ix) at output (iy * s - p + ky, ...), zero elsewhere, positions outside the
    output dropped. Works on NumPy arrays and torch tensors alike."""
    zeros = np.zeros if isinstance(x, np.ndarray) else _torch_zeros(x)
    out = zeros((x.shape[0], x.shape[1], *out_hw))
    rows = _placed(x.shape[2], ky, stride[0], padding[0], out_hw[0])
    cols = _placed(x.shape[3], kx, stride[1], padding[1], out_hw[1])
    if rows and cols:
        (i0, i1, o0, o1), (j0, j1, q0, q1) = rows, cols
        out[:, :, o0:o1:stride[0], q0:q1:stride[1]] = x[:, :, i0:i1, j0:j1]
    return out


def _placed(size: int, k: int, s: int, p: int, out: int):
    """(first, end) input indices whose output i * s - p + k lies in [0, out), and the
    (first, end) output indices they land on; None when there are none."""
    first = max(0, -(-(p - k) // s))
    end = min(size, (out - 1 + p - k) // s + 1)
    if end <= first:
        return None
    return first, end, first * s - p + k, (end - 1) * s - p + k + 1


def _torch_zeros(x):
    import torch
    return lambda shape: torch.zeros(shape, dtype=x.dtype)


def conv_transpose(x: np.ndarray, *, layer: FxLayer, fx: FxModel) -> np.ndarray:
    """Taps added in the order ky, kx, input channel (dq_transpose_conv_fx); a tap that
    sends nothing to an output adds zero there, which no accumulator mode changes."""
    a = layer.node.attrs
    w = layer.weight                                  # (O, I, kh, kw)
    n_in, (kh, kw) = w.shape[1], w.shape[2:]
    out_hw = layer.node.shape[1:]

    def taps():
        for ky in range(kh):
            for kx in range(kw):
                placed = scattered(x, ky, kx, a["stride"], a["padding"], out_hw)
                for ic in range(n_in):
                    yield placed[:, ic][:, None] * w[:, ic, ky, kx][:, None, None]
    acc = accumulate(layer.bias[:, None, None], taps(), fx, _bound(layer, fx))
    return requantize(acc, layer.shift[:, None, None], layer, fx)


def linear(x: np.ndarray, *, layer: FxLayer, fx: FxModel) -> np.ndarray:
    w = layer.weight
    o = fx.options
    if o.acc_overflow == "wrap" or _bound(layer, fx) < 2 ** (o.acc_bits - 1):
        acc = fit(fit(layer.bias, o.acc_bits, o.acc_overflow) + x @ w.T, o.acc_bits,
                  o.acc_overflow)
    else:
        acc = accumulate(layer.bias, linear_taps(x, layer), fx, math.inf)
    return requantize(acc, layer.shift, layer, fx)


def linear_taps(x: np.ndarray, layer: FxLayer):
    """The products of a linear layer in its summation order (sum_order)."""
    w, order = layer.weight, layer.extra.get("order")
    idx = range(w.shape[1]) if order is None else order
    return (x[:, i:i + 1] * w[:, i] for i in idx)


def add(a: np.ndarray, b: np.ndarray, *, layer: FxLayer, fx: FxModel) -> np.ndarray:
    """Both inputs aligned to the common fractional bits, added, fitted, requantized."""
    s1, s2 = layer.extra["shifts"]
    acc = fit((a << s1) + (b << s2), fx.options.acc_bits, fx.options.acc_overflow)
    return requantize(acc, layer.shift, layer, fx)


def mul(a: np.ndarray, b: np.ndarray, *, layer: FxLayer, fx: FxModel) -> np.ndarray:
    """The exact product (frac_a + frac_b fractional bits; a (C, 1, 1) gate broadcasts)
    fitted into the accumulator, requantized (dq_mul_fx)."""
    acc = fit(a * b, fx.options.acc_bits, fx.options.acc_overflow)
    return requantize(acc, layer.shift, layer, fx)


def _windows(x: np.ndarray, node: G.Node, fill: int):
    """Every (ky, kx) slice of the padded input that a pooling window reads."""
    a = node.attrs
    (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
    oh, ow = node.shape[1:]
    extra_h = max(0, (oh - 1) * sh + kh - x.shape[2] - 2 * ph)     # ceil_mode
    extra_w = max(0, (ow - 1) * sw + kw - x.shape[3] - 2 * pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)),
                constant_values=fill)
    return [xp[:, :, ky:ky + (oh - 1) * sh + 1:sh, kx:kx + (ow - 1) * sw + 1:sw]
            for ky in range(kh) for kx in range(kw)]


def maxpool(x: np.ndarray, *, layer: FxLayer, fx: FxModel) -> np.ndarray:
    """Padding never wins (windows always hold an input value)."""
    out = np.max(np.stack(_windows(x, layer.node, -(1 << 40))), 0)
    return np.clip(out, *layer.act)


def divide(total: np.ndarray, count: int) -> np.ndarray:
    """total / count truncated toward zero (ap_fixed's division, C's integer '/')."""
    q = np.abs(total) // count
    return np.where(total < 0, -q, q)


def pool_sum(terms: list, layer: FxLayer, fx: FxModel) -> np.ndarray:
    """The window sum in the pool accumulator: acc = 0; acc = fit(acc + (x << g)) per
    term in order (one fit of the exact sum when no partial sum can leave the range)."""
    o, g = fx.options, layer.extra["guard_bits"]
    bound = len(terms) * 2 ** (fx.bits(layer.node.inputs[0]) - 1 + g)
    if o.acc_overflow == "wrap" or bound < 2 ** (o.acc_bits - 1):
        return fit(sum(terms) << g, o.acc_bits, o.acc_overflow)
    acc = np.zeros_like(terms[0])
    for t in terms:
        acc = fit(acc + (t << g), o.acc_bits, "sat")
    return acc


def _scaled_mean(terms: list, layer: FxLayer, fx: FxModel) -> np.ndarray:
    """pool_division 'divide' (hls4ml's avg(): acc = sum of x in the accumulator type of
    f_in + g fractional bits, acc /= n, then cast to the output type):
    requantize(pool_sum / n truncated toward zero, f_in + g - f_out).
    'reciprocal': sum * reciprocal >> (reciprocal_bits + f_in - f_out) (dq_pool_fx)."""
    e = layer.extra
    if "count" in e:
        return requantize(divide(pool_sum(terms, layer, fx), e["count"]), layer.shift,
                          layer, fx)
    return requantize(sum(terms) * e["reciprocal"], layer.shift + e["reciprocal_bits"],
                      layer, fx)


def avgpool(x: np.ndarray, *, layer: FxLayer, fx: FxModel) -> np.ndarray:
    """Padding counts as zero; the divisor is kh * kw, or each window's elements inside
    the input (count_include_pad=False: window_counts)."""
    return _scaled_mean(_windows(x, layer.node, 0), layer, fx)


def gap(x: np.ndarray, *, layer: FxLayer, fx: FxModel) -> np.ndarray:
    """Pixels in row-major order."""
    h, w = x.shape[2:]
    return _scaled_mean([x[:, :, i:i + 1, j:j + 1] for i in range(h) for j in range(w)],
                        layer, fx)


def reshape(x: np.ndarray, *, layer: FxLayer, fx: FxModel) -> np.ndarray:
    return x.reshape((len(x), *layer.node.shape))


def concat(*xs: np.ndarray, layer: FxLayer, fx: FxModel) -> np.ndarray:
    return np.concatenate(xs, 1)


def clamp(x: np.ndarray, *, layer: FxLayer, fx: FxModel) -> np.ndarray:
    return np.clip(x, *layer.act)


def pad(x: np.ndarray, *, layer: FxLayer, fx: FxModel) -> np.ndarray:
    top, bottom, left, right = layer.node.attrs["pads"]
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def upsample(x: np.ndarray, *, layer: FxLayer, fx: FxModel) -> np.ndarray:
    sh, sw = layer.node.attrs["scale"]
    return np.repeat(np.repeat(x, sh, 2), sw, 3)


OPS = {"conv2d": conv2d, "conv_transpose": conv_transpose,
       "linear": linear, "add": add, "mul": mul, "maxpool": maxpool,
       "avgpool": avgpool, "gap": gap, "reshape": reshape, "concat": concat, "clamp": clamp,
       "pad": pad, "upsample": upsample, **{op: activation for op in ACTIVATIONS}}


def check_supported(graph: G.Graph, node: G.Node, backend: str = "fpga") -> None:
    """Refuse what the fixed-point kernels cannot compute as the IR means it."""
    a, why = node.attrs, None
    if node.op == "maxpool" and tuple(a["dilation"]) != (1, 1):
        why = "maxpool with dilation"
    elif node.op == "avgpool" and _floor_shape(graph, node) != tuple(node.shape[1:]):
        why = "avgpool with ceil_mode adding windows (their divisor would differ)"
    elif node.op not in OPS:
        why = node.op
    if why:
        raise UnsupportedOpError(why, node.name, f"{backend} backend", OPS)


def _floor_shape(graph: G.Graph, node: G.Node) -> tuple[int, int]:
    a, hw = node.attrs, graph.shape_of(node.inputs[0])[1:]
    return tuple((hw[i] + 2 * a["padding"][i] - a["kernel"][i]) // a["stride"][i] + 1
                 for i in range(2))


def check_ranges(fx: FxModel) -> None:
    """The loader's bounds (dq_validate.c), with a message naming the layer."""
    for name, layer in fx.layers.items():
        if not -16 <= layer.frac <= 24:
            raise ExportError(f"layer '{name}': output scale 2^{-layer.frac} outside "
                              "2^-24..2^16, the runtime's range of fractional bits")
        if layer.shift is not None and not np.all((layer.shift >= -24) & (layer.shift <= 48)):
            raise ExportError(f"layer '{name}': requantization shifts {layer.shift.tolist()} "
                              "outside -24..48 (a weight or output scale far from the others)")
        if layer.node.op == "mul" and layer.shift[0] < -24:
            raise ExportError(f"layer '{name}': output has more than 24 fractional bits "
                              "beyond the product's")
        if layer.node.op == "add" and max(layer.extra["shifts"]) > 16:
            raise ExportError(f"layer '{name}': inputs' fractional bits differ by more than 16")
        if layer.node.op in ("avgpool", "gap") and abs(int(layer.shift[0])) > 8 + \
                layer.extra.get("guard_bits", 0):
            raise ExportError(f"layer '{name}': input and output fractional bits differ by "
                              "more than 8")
