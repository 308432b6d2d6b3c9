"""Interval bound propagation through three semantics of one model:

  float_bounds(graph, lo, hi)     the IR in real arithmetic (float64), standard IBP
                                  (Gowal et al. 2018): the float baseline
  fx_bounds(fx, lo, hi)           fpga-fixed: the integers of deployq.fixedpoint (HLS
                                  ap_fixed rules), every quantization and overflow mode
  S8Program(blob).bounds(lo, hi)  mcu-int8 / mcu-qemu / tflite-int8-ref: the C runtime's
                                  MODE_S8 model file, op by op, with TFLite's reference
                                  int8 rules (runtime/dq_common.h,
                                  docs/tflite-int8-arithmetic.md)

Integer bounds are exact sets of codes: every op of both integer modes is monotone
non-decreasing in each input (rounding shifts, fixed-point multipliers with m >= 0,
saturation, clamps, max, sums, division truncating toward zero by a positive count; a
product by a signed weight is handled by the weight's sign), so the image of a box lies
between the images of its ends. fpga-fixed follows fixedpoint.py term by term where
saturation makes the order matter: each product saturated into the accumulator before
it is added, in the kernel's order (linear: sum_order), and the pool sum term by term.
The two exceptions are handled soundly: a wrapping fit (AP_WRAP) keeps
[wrap(lo), wrap(hi)] only when no value of the interval crosses a wrap boundary and
widens to the full range otherwise; an int32 left shift that could overflow in a
multiplier widens the output to its clamp range. At a point (lo == hi) every function here is the runtime's arithmetic itself
(tests check both against the C runtime on every output)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import fixedpoint as FX
from . import graph as G
from . import rtformat as R
from .errors import InputError, UnsupportedOpError

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


# --- float IBP on the IR ----------------------------------------------------------

def float_bounds(graph: G.Graph, lo: np.ndarray, hi: np.ndarray):
    """Bounds of the float model's outputs over the box [lo, hi] (NCHW)."""
    values = {G.INPUT: (torch.from_numpy(np.asarray(lo, np.float64)),
                        torch.from_numpy(np.asarray(hi, np.float64)))}
    for node in graph.nodes:
        if node.op not in FLOAT_IBP:
            raise UnsupportedOpError(node.op, node.name, "float IBP", FLOAT_IBP)
        values[node.name] = FLOAT_IBP[node.op](node, [values[i] for i in node.inputs])
    lo, hi = values[graph.output]
    return lo.reshape(len(lo), -1).numpy(), hi.reshape(len(hi), -1).numpy()


def _float_affine(node: G.Node, xs):
    (lo, hi), = xs
    w, b = torch.from_numpy(node.weight.astype(np.float64)), torch.from_numpy(
        node.bias.astype(np.float64))
    a = node.attrs
    if node.op == "conv2d":
        op = lambda t, ww, bb: F.conv2d(t, ww, bb, a["stride"], a["padding"], a["dilation"],
                                       a["groups"])
    elif node.op == "conv_transpose":
        op = lambda t, ww, bb: F.conv_transpose2d(t, ww.transpose(0, 1), bb, a["stride"],
                                                 a["padding"], a["output_padding"])
    else:
        op = F.linear
    mid, rad = op((hi + lo) / 2, w, b), op((hi - lo) / 2, w.abs(), None)
    return _float_act(node, (mid - rad, mid + rad))


def _float_act(node: G.Node, b):
    act = node.attrs.get("act")
    return b if act is None else tuple(torch.clamp(t, act[0], act[1]) for t in b)


def _monotone(fn):
    """An op that is non-decreasing in every input: apply it to both ends."""
    return lambda node, xs: (G.FLOAT_OPS[node.op](node, [x[0] for x in xs]),
                             G.FLOAT_OPS[node.op](node, [x[1] for x in xs]))


FLOAT_IBP = {"conv2d": _float_affine, "linear": _float_affine,
             "conv_transpose": _float_affine,
             **{op: _monotone(op) for op in
                ("add", "concat", "maxpool", "avgpool", "gap", "reshape", "clamp",
                 "sigmoid", "tanh", "leaky_relu", "pad", "upsample")}}
# hardswish and silu are not monotone: refused by float IBP (one line, the op named)


# --- shared integer helpers -----------------------------------------------------------

def fit_bounds(lo, hi, bits: int, overflow: str):
    """Bounds of fit(v, bits, overflow) over v in [lo, hi]. Saturation is monotone;
    wrapping is monotone between wrap boundaries, so an interval that crosses one
    becomes the full range."""
    if overflow == "sat":
        return FX.fit(lo, bits, "sat"), FX.fit(hi, bits, "sat")
    base = -(1 << (bits - 1))
    same = ((lo - base) >> bits) == ((hi - base) >> bits)
    return (np.where(same, FX.fit(lo, bits, "wrap"), base),
            np.where(same, FX.fit(hi, bits, "wrap"), -base - 1))


def _conv_f64(x: np.ndarray, w: np.ndarray, stride, padding, dilation, groups) -> np.ndarray:
    """An integer convolution computed in float64: exact while every partial sum stays
    below 2^53 (checked by the callers' bounds on |x| * sum|w|)."""
    y = F.conv2d(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64)),
                 None, tuple(stride), tuple(padding), tuple(dilation), groups)
    return np.rint(y.numpy()).astype(np.int64)


def _convt_f64(x: np.ndarray, w: np.ndarray, stride, crop, out_hw) -> np.ndarray:
    """An integer transposed conv (w as (O, I, kh, kw)) in float64, exact as _conv_f64:
    the full output, its leading crop rows and columns dropped, zeros past its end."""
    y = F.conv_transpose2d(torch.from_numpy(x.astype(np.float64)),
                           torch.from_numpy(w.astype(np.float64)).transpose(0, 1), None,
                           tuple(stride)).numpy()
    extra = [max(0, crop[i] + out_hw[i] - y.shape[2 + i]) for i in range(2)]
    y = np.pad(y, ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])))
    y = y[:, :, crop[0]:crop[0] + out_hw[0], crop[1]:crop[1] + out_hw[1]]
    return np.rint(y).astype(np.int64)


def _signed_parts(w: np.ndarray):
    return np.maximum(w, 0), np.minimum(w, 0)


def _check_exact(x_max: int, w: np.ndarray, where: str) -> None:
    if x_max * int(np.abs(w).reshape(len(w), -1).sum(1).max(initial=0)) >= 2 ** 52:
        raise InputError(f"layer '{where}': sums too large for exact bound propagation")


# --- fpga-fixed: deployq.fixedpoint's arithmetic on intervals -------------------------

def fx_bounds(fx: FX.FxModel, lo: np.ndarray, hi: np.ndarray):
    """Bounds of the fixed-point integer outputs over the integer input box (NCHW)."""
    values = {G.INPUT: (np.asarray(lo, np.int64), np.asarray(hi, np.int64))}
    for node in fx.graph.nodes:
        if node.op not in FX_IBP:       # mul: the bounds of a product are not monotone
            raise UnsupportedOpError(node.op, node.name, "fixed-point IBP", FX_IBP)
        values[node.name] = FX_IBP[node.op](*[values[i] for i in node.inputs],
                                            layer=fx.layers[node.name], fx=fx)
    lo, hi = values[fx.graph.output]
    return lo.reshape(len(lo), -1), hi.reshape(len(hi), -1)


def _fx_requant(acc, s, layer: FX.FxLayer, fx: FX.FxModel):
    """FX.requantize on bounds: shift (monotone), fit, activation clamp."""
    lo, hi = (FX.shift(a, s, layer.quant) for a in acc)
    lo, hi = fit_bounds(lo, hi, layer.bits, fx.options.out_overflow)
    return np.clip(lo, *layer.act), np.clip(hi, *layer.act)


def _fx_acc(bias, exact_lo, exact_hi, taps_lo, taps_hi, layer, fx):
    """FX.accumulate on bounds. Wrapping is modular (one fit of fit(bias) + the exact
    sum), and so is saturation when no product or partial sum can leave the range;
    otherwise acc = fit(acc + fit(product)) in the kernel's order is monotone in every
    product (saturation is monotone, and so is a sum of monotone terms), so
    FX.accumulate of the products' lower (upper) bounds is its lower (upper) bound."""
    o = fx.options
    if o.acc_overflow == "wrap" or FX._bound(layer, fx) < 2 ** (o.acc_bits - 1):
        b = FX.fit(bias, o.acc_bits, o.acc_overflow)
        return fit_bounds(b + exact_lo(), b + exact_hi(), o.acc_bits, o.acc_overflow)
    return (FX.accumulate(bias, taps_lo(), fx, np.inf),
            FX.accumulate(bias, taps_hi(), fx, np.inf))


def _fx_conv(x, *, layer: FX.FxLayer, fx: FX.FxModel):
    lo, hi = x
    a, w = layer.node.attrs, layer.weight
    _check_exact(2 ** fx.bits(layer.node.inputs[0]), w, layer.node.name)
    wp, wn = _signed_parts(w)
    conv = lambda t, ww: _conv_f64(t, ww, a["stride"], a["padding"], a["dilation"], a["groups"])
    bias = layer.bias[:, None, None]
    acc = _fx_acc(bias, lambda: conv(lo, wp) + conv(hi, wn), lambda: conv(hi, wp) + conv(lo, wn),
                  lambda: _conv_taps(lo, hi, layer), lambda: _conv_taps(hi, lo, layer),
                  layer, fx)
    return _fx_requant(acc, layer.shift[:, None, None], layer, fx)


def _conv_taps(x_for_pos, x_for_neg, layer: FX.FxLayer):
    """The products of FX.conv2d in its order (ky, kx, input channel of the group),
    each at its bound: w * x_for_pos where w > 0, w * x_for_neg where w < 0."""
    a = layer.node.attrs
    (sh, sw), (ph, pw), (dh, dw), g = a["stride"], a["padding"], a["dilation"], a["groups"]
    w = layer.weight
    n_out, c_group, kh, kw = w.shape
    oh, ow = layer.node.shape[1:]
    pads = ((0, 0), (0, 0), (ph, ph), (pw, pw))
    xp, xn = np.pad(x_for_pos, pads), np.pad(x_for_neg, pads)
    group_of = np.arange(n_out) // (n_out // g)
    for ky in range(kh):
        for kx in range(kw):
            sl = (slice(None), slice(None), slice(ky * dh, ky * dh + (oh - 1) * sh + 1, sh),
                  slice(kx * dw, kx * dw + (ow - 1) * sw + 1, sw))
            for ic in range(c_group):
                wk = w[:, ic, ky, kx][:, None, None]
                ch = group_of * c_group + ic
                yield np.maximum(wk, 0) * xp[sl][:, ch] + np.minimum(wk, 0) * xn[sl][:, ch]


def _fx_conv_transpose(x, *, layer: FX.FxLayer, fx: FX.FxModel):
    lo, hi = x
    a, w, node = layer.node.attrs, layer.weight, layer.node
    _check_exact(2 ** fx.bits(node.inputs[0]), w, node.name)
    wp, wn = _signed_parts(w)
    conv = lambda t, ww: _convt_f64(t, ww, a["stride"], a["padding"], node.shape[1:])
    acc = _fx_acc(layer.bias[:, None, None], lambda: conv(lo, wp) + conv(hi, wn),
                  lambda: conv(hi, wp) + conv(lo, wn), lambda: _convt_taps(lo, hi, layer),
                  lambda: _convt_taps(hi, lo, layer), layer, fx)
    return _fx_requant(acc, layer.shift[:, None, None], layer, fx)


def _convt_taps(x_for_pos, x_for_neg, layer: FX.FxLayer):
    """The products of FX.conv_transpose in its order (ky, kx, input channel), each at
    its bound."""
    a, w = layer.node.attrs, layer.weight
    place = lambda t, ky, kx: FX.scattered(t, ky, kx, a["stride"], a["padding"],
                                           layer.node.shape[1:])
    for ky in range(w.shape[2]):
        for kx in range(w.shape[3]):
            xp, xn = place(x_for_pos, ky, kx), place(x_for_neg, ky, kx)
            for ic in range(w.shape[1]):
                wk = w[:, ic, ky, kx][:, None, None]
                yield (np.maximum(wk, 0) * xp[:, ic][:, None]
                       + np.minimum(wk, 0) * xn[:, ic][:, None])


def _fx_linear(x, *, layer: FX.FxLayer, fx: FX.FxModel):
    lo, hi = x
    w = layer.weight
    wp, wn = _signed_parts(w)
    acc = _fx_acc(layer.bias, lambda: lo @ wp.T + hi @ wn.T, lambda: hi @ wp.T + lo @ wn.T,
                  lambda: _linear_taps(lo, hi, layer), lambda: _linear_taps(hi, lo, layer),
                  layer, fx)
    return _fx_requant(acc, layer.shift, layer, fx)


def _linear_taps(x_for_pos, x_for_neg, layer: FX.FxLayer):
    """The products of FX.linear_taps in its order (sum_order), each at its bound."""
    w, order = layer.weight, layer.extra.get("order")
    for i in (range(w.shape[1]) if order is None else order):
        yield (np.maximum(w[:, i], 0) * x_for_pos[:, i:i + 1] +
               np.minimum(w[:, i], 0) * x_for_neg[:, i:i + 1])


def _fx_add(a, b, *, layer: FX.FxLayer, fx: FX.FxModel):
    s1, s2 = layer.extra["shifts"]
    o = fx.options
    acc = fit_bounds((a[0] << s1) + (b[0] << s2), (a[1] << s1) + (b[1] << s2),
                     o.acc_bits, o.acc_overflow)
    return _fx_requant(acc, layer.shift, layer, fx)


def _fx_maxpool(x, *, layer: FX.FxLayer, fx: FX.FxModel):
    return tuple(np.clip(np.max(np.stack(FX._windows(t, layer.node, -(1 << 40))), 0), *layer.act)
                 for t in x)


def _fx_mean(terms, layer: FX.FxLayer, fx: FX.FxModel):
    """FX._scaled_mean on bounds; terms: (lower, upper) bounds of each term in the
    kernel's order. 'divide': FX.pool_sum (wrapping: one fit of the exact sum, widened
    where it crosses a wrap boundary; saturating: monotone per term), then the
    division truncating toward zero (monotone), then requantization. 'reciprocal': the
    exact sum times a reciprocal >= 0 (monotone)."""
    e, o = layer.extra, fx.options
    lo_terms, hi_terms = terms
    if "count" not in e:
        return _fx_requant((sum(lo_terms) * e["reciprocal"], sum(hi_terms) * e["reciprocal"]),
                           layer.shift + e["reciprocal_bits"], layer, fx)
    if o.acc_overflow == "wrap":
        g = e["guard_bits"]
        acc = fit_bounds(sum(lo_terms) << g, sum(hi_terms) << g, o.acc_bits, "wrap")
    else:
        acc = FX.pool_sum(lo_terms, layer, fx), FX.pool_sum(hi_terms, layer, fx)
    return _fx_requant(tuple(FX.divide(a, e["count"]) for a in acc), layer.shift, layer, fx)


def _fx_avgpool(x, *, layer, fx):
    return _fx_mean(tuple(FX._windows(t, layer.node, 0) for t in x), layer, fx)


def _fx_gap(x, *, layer, fx):
    """Pixels in row-major order, as FX.gap."""
    h, w = x[0].shape[2:]
    return _fx_mean(tuple([t[:, :, i:i + 1, j:j + 1] for i in range(h) for j in range(w)]
                          for t in x), layer, fx)


def _fx_each(fn):
    """An op that moves or clamps values: the same function on both ends."""
    return lambda *xs, layer, fx: tuple(fn(*[x[k] for x in xs], layer=layer, fx=fx)
                                        for k in (0, 1))


def _fx_table(x, *, layer, fx):
    return table_bounds(x, layer.extra["table"])


def table_bounds(x, table: np.ndarray):
    """A lookup table (indexed by code & 0xFF) over the codes [lo, hi]: the least and
    largest entry in that range (exact, monotone or not)."""
    lo, hi = (np.asarray(t, np.int64) for t in x)
    codes = np.arange(-128, 128)
    out_lo, out_hi = np.full(lo.shape, np.iinfo(np.int64).max), np.full(lo.shape, -2 ** 62)
    for c in codes:
        inside = (lo <= c) & (c <= hi)
        out_lo = np.where(inside, np.minimum(out_lo, table[c & 0xFF]), out_lo)
        out_hi = np.where(inside, np.maximum(out_hi, table[c & 0xFF]), out_hi)
    return out_lo, out_hi


FX_IBP = {"conv2d": _fx_conv, "conv_transpose": _fx_conv_transpose,
          "linear": _fx_linear, "add": _fx_add, "maxpool": _fx_maxpool,
          "avgpool": _fx_avgpool, "gap": _fx_gap, "reshape": _fx_each(FX.reshape),
          "concat": _fx_each(FX.concat), "clamp": _fx_each(FX.clamp),
          "pad": _fx_each(FX.pad), "upsample": _fx_each(FX.upsample),
          **{op: _fx_table for op in FX.ACTIVATIONS}}


# --- MODE_S8: the C runtime's model file, TFLite reference int8 rules ------------------

def srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dq_srdhm: round(a * b / 2^31) half away from zero (C truncating division)."""
    ab = a * b
    v = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    q = np.where(v >= 0, v >> 31, -((-v) >> 31))
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, q)


def rounding_divide_by_pot(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    mask = (np.int64(1) << e) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + ((x & mask) > threshold)


def _wrap32(x: np.ndarray) -> np.ndarray:
    return ((x - INT32_MIN) & 0xFFFFFFFF) + INT32_MIN


def mbqm(x: np.ndarray, m: np.ndarray, shift: np.ndarray, rounding: int) -> np.ndarray:
    """dq_mul_by_quantized_multiplier, int32 values in int64 arrays."""
    x, m, shift = (np.asarray(v, np.int64) for v in (x, m, shift))
    if rounding == 1:                                   # DQ_ROUND_SINGLE
        total = 31 - shift
        return np.clip((x * m + (np.int64(1) << (total - 1))) >> total, INT32_MIN, INT32_MAX)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    return rounding_divide_by_pot(srdhm(_wrap32(x << left), m), right)


def _mbqm_overflows(x: np.ndarray, shift: np.ndarray, rounding: int) -> np.ndarray:
    """Where x * 2^shift leaves int32 (the double-rounding path wraps there, which is
    not monotone)."""
    if rounding == 1:
        return np.zeros(np.shape(x), bool)
    v = np.asarray(x, np.int64) << np.maximum(np.asarray(shift, np.int64), 0)
    return (v < INT32_MIN) | (v > INT32_MAX)


def requant_bounds(lo, hi, m, shift, rounding: int, out_offset: int, act_min: int,
                   act_max: int):
    """dq_requantize_s8 on bounds: monotone, except where the multiplier's left shift
    could overflow and the interval is not a point (widened to the clamp range)."""
    out = [np.clip(mbqm(t, m, shift, rounding) + out_offset, act_min, act_max) for t in (lo, hi)]
    wide = (_mbqm_overflows(lo, shift, rounding) | _mbqm_overflows(hi, shift, rounding)) & (lo != hi)
    return np.where(wide, act_min, out[0]), np.where(wide, act_max, out[1])


@dataclass
class S8Tensor:
    dims: tuple[int, int, int]
    zero_point: int


@dataclass
class S8Op:
    type: str
    inputs: list[int]
    output: int
    params: np.ndarray
    data: list[np.ndarray]


DATA_TYPES = {"conv2d": (np.int8, np.int32, np.int32, np.int32),
              "depthwise_conv2d": (np.int8, np.int32, np.int32, np.int32),
              "transpose_conv": (np.int8, np.int32, np.int32, np.int32),
              "fully_connected": (np.int8, np.int32, np.int32, np.int32),
              "logistic": (np.int8,), "tanh": (np.int8,)}
OP_NAMES = {code: name for name, code in R.OPS.items()}


class S8Program:
    """A MODE_S8 model file (rtformat) read back: what the C runtime executes."""

    def __init__(self, blob: bytes):
        h = np.frombuffer(blob[:R.HEADER.itemsize], R.HEADER)[0]
        if h["magic"] != b"DQRT" or int(h["mode"]) != R.MODE_S8:
            raise InputError("not an int8 (MODE_S8) runtime model file")
        at = R.HEADER.itemsize
        tensors = np.frombuffer(blob[at:at + int(h["n_tensors"]) * R.TENSOR.itemsize], R.TENSOR)
        at += len(tensors) * R.TENSOR.itemsize
        ops = np.frombuffer(blob[at:at + int(h["n_ops"]) * R.OP.itemsize], R.OP)
        data = blob[at + len(ops) * R.OP.itemsize:]
        self.tensors = [S8Tensor(tuple(int(d) for d in t["dims"]), int(t["zero_point"]))
                        for t in tensors]
        self.ops = [self._op(rec, data) for rec in ops]
        self.input, self.output = int(h["input"]), int(h["output"])

    @staticmethod
    def _op(rec, data: bytes) -> S8Op:
        name = OP_NAMES[int(rec["type"])]
        arrays = [np.frombuffer(data, dt, int(rec["data_count"][k]), int(rec["data_offset"][k]))
                  .astype(np.int64) for k, dt in enumerate(DATA_TYPES.get(name, ()))]
        return S8Op(name, [int(i) for i in rec["inputs"][:int(rec["n_inputs"])]],
                    int(rec["output"]), rec["params"].astype(np.int64), arrays)

    @property
    def input_dims(self) -> tuple[int, int, int]:
        return self.tensors[self.input].dims

    def bounds(self, lo: np.ndarray, hi: np.ndarray):
        """Bounds of the int8 outputs over the box of int8 inputs, (N, H, W, C) each."""
        n = len(lo)
        values = {self.input: (np.asarray(lo, np.int64).reshape(n, *self.input_dims),
                               np.asarray(hi, np.int64).reshape(n, *self.input_dims))}
        for op in self.ops:
            if op.type not in S8_IBP:
                raise UnsupportedOpError(op.type, str(op.output), "int8 bound propagation", S8_IBP)
            values[op.output] = S8_IBP[op.type](self, op, [values[i] for i in op.inputs])
        lo, hi = values[self.output]
        return lo.reshape(n, -1), hi.reshape(n, -1)

    def run(self, q: np.ndarray) -> np.ndarray:
        """The int8 outputs at a point (N, input bytes): the bounds of a point."""
        return self.bounds(q, q)[0]

    def dims(self, t: int) -> tuple[int, int, int]:
        return self.tensors[t].dims


def _out_pads(p, in_hw, out_hw, kernel, dilation=(1, 1)):
    """(top, bottom, left, right) padding so the windows of the output fit."""
    pads = []
    for axis, before in ((0, p[2]), (1, p[3])):
        need = (out_hw[axis] - 1) * p[axis] + (kernel[axis] - 1) * dilation[axis] + 1
        pads += [int(before), max(0, need - in_hw[axis] - int(before))]
    return pads


def _nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _s8_conv(prog: S8Program, op: S8Op, xs):
    (lo, hi), = xs
    acc_lo, acc_hi = _s8_conv_acc(prog, op, lo, hi)
    mult, shift = op.data[2], op.data[3]
    return _s8_requant(prog, op, acc_lo, acc_hi, mult, shift)


def _s8_conv_acc(prog: S8Program, op: S8Op, lo, hi):
    """The accumulators' bounds (bias included) of CONV_2D / DEPTHWISE_CONV_2D, NHWC."""
    p, (filt, bias, mult, shift) = op.params, op.data
    in_dims, out_dims = prog.dims(op.inputs[0]), prog.dims(op.output)
    kh, kw = int(p[10]), int(p[11])
    if op.type == "depthwise_conv2d":
        w, groups = filt.reshape(kh, kw, -1).transpose(2, 0, 1)[:, None], in_dims[2]
    else:
        w = filt.reshape(out_dims[2], kh, kw, -1).transpose(0, 3, 1, 2)
        groups = in_dims[2] // w.shape[1]
    off = -prog.tensors[op.inputs[0]].zero_point
    _check_exact(256, w, str(op.output))
    t, b, l, r = _out_pads(p, in_dims, out_dims, (kh, kw), (p[4], p[5]))
    pad = lambda v: np.pad(_nchw(v + off), ((0, 0), (0, 0), (t, b), (l, r)))
    xl, xh = pad(lo), pad(hi)
    wp, wn = _signed_parts(w)
    conv = lambda x, ww: _conv_f64(x, ww, (p[0], p[1]), (0, 0), (p[4], p[5]), groups)
    acc_lo = (conv(xl, wp) + conv(xh, wn)).transpose(0, 2, 3, 1) + bias
    acc_hi = (conv(xh, wp) + conv(xl, wn)).transpose(0, 2, 3, 1) + bias
    return acc_lo, acc_hi


def s8_acc(prog: S8Program, op: S8Op, x: np.ndarray) -> np.ndarray:
    """The exact int32 accumulators (bias included) of a conv or fully connected op at
    the points x (N, *input dims, NHWC): what the runtime requantizes."""
    x = np.asarray(x, np.int64)
    if op.type == "fully_connected":
        return _s8_fc_acc(prog, op, x, x)[0]
    return _s8_conv_acc(prog, op, x, x)[0]


def _s8_transpose_conv(prog: S8Program, op: S8Op, xs):
    """TRANSPOSE_CONV: the input offset, the sums of the positive and negative weights
    at the box's ends (a sum of products is monotone in each), the bias, requantized."""
    (lo, hi), = xs
    p, (filt, bias, mult, shift) = op.params, op.data
    in_dims, out_dims = prog.dims(op.inputs[0]), prog.dims(op.output)
    w = filt.reshape(out_dims[2], int(p[10]), int(p[11]), in_dims[2]).transpose(0, 3, 1, 2)
    off = -prog.tensors[op.inputs[0]].zero_point
    _check_exact(256, w, str(op.output))
    xl, xh = _nchw(lo + off), _nchw(hi + off)
    wp, wn = _signed_parts(w)
    conv = lambda x, ww: _convt_f64(x, ww, (p[0], p[1]), (p[2], p[3]), out_dims[:2])
    acc_lo = (conv(xl, wp) + conv(xh, wn)).transpose(0, 2, 3, 1) + bias
    acc_hi = (conv(xh, wp) + conv(xl, wn)).transpose(0, 2, 3, 1) + bias
    return _s8_requant(prog, op, acc_lo, acc_hi, mult, shift)


def _s8_requant(prog: S8Program, op: S8Op, lo, hi, mult, shift):
    p = op.params
    return requant_bounds(lo, hi, mult, shift, int(p[7]), prog.tensors[op.output].zero_point,
                          int(p[8]), int(p[9]))


def _s8_fc(prog: S8Program, op: S8Op, xs):
    (lo, hi), = xs
    acc_lo, acc_hi = _s8_fc_acc(prog, op, lo, hi)
    out = _s8_requant(prog, op, acc_lo, acc_hi, op.data[2], op.data[3])
    return tuple(o.reshape(len(o), *prog.dims(op.output)) for o in out)


def _s8_fc_acc(prog: S8Program, op: S8Op, lo, hi):
    filt, bias, mult, shift = op.data
    w = filt.reshape(len(bias), -1)
    off = -prog.tensors[op.inputs[0]].zero_point
    xl, xh = lo.reshape(len(lo), -1) + off, hi.reshape(len(hi), -1) + off
    wp, wn = _signed_parts(w)
    return xl @ wp.T + xh @ wn.T + bias, xh @ wp.T + xl @ wn.T + bias


def _s8_add(prog: S8Program, op: S8Op, xs):
    """Each input offset, scaled up, rescaled (monotone), summed, requantized."""
    p = op.params
    zp = [prog.tensors[i].zero_point for i in op.inputs]
    r = int(p[7])
    scaled = [[mbqm((x - zp[k]) << p[0], p[1 + 2 * k], p[2 + 2 * k], r) for x in xs[k]]
              for k in (0, 1)]
    return requant_bounds(scaled[0][0] + scaled[1][0], scaled[0][1] + scaled[1][1], p[5], p[6],
                          r, prog.tensors[op.output].zero_point, int(p[8]), int(p[9]))


def _windows(x, p, in_dims, out_dims, fill):
    kh, kw = int(p[10]), int(p[11])
    t, b, l, r = _out_pads(p, in_dims, out_dims, (kh, kw))
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=fill)
    oh, ow = out_dims[:2]
    return [xp[:, ky:ky + (oh - 1) * p[0] + 1:p[0], kx:kx + (ow - 1) * p[1] + 1:p[1]]
            for ky in range(kh) for kx in range(kw)]


def _s8_pool(prog: S8Program, op: S8Op, xs):
    """Windows clipped to the input: padding never counts (max: it never wins; average:
    the divisor is the number of positions inside)."""
    p = op.params
    in_dims, out_dims = prog.dims(op.inputs[0]), prog.dims(op.output)
    out = []
    for x in xs[0]:
        if op.type == "max_pool":
            v = np.max(np.stack(_windows(x, p, in_dims, out_dims, -(1 << 20))), 0)
        else:
            total = sum(_windows(x, p, in_dims, out_dims, 0))
            count = sum(_windows(np.ones_like(x), p, in_dims, out_dims, 0))
            v = div_round_away(total, count)
        out.append(np.clip(v, p[8], p[9]))
    return tuple(out)


def div_round_away(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """dq_div_round_away: C truncating division of num -/+ den/2 (monotone in num)."""
    v = np.where(num > 0, num + den // 2, num - den // 2)
    q = np.abs(v) // den
    return np.where(v < 0, -q, q)


def _s8_mean(prog: S8Program, op: S8Op, xs):
    p = op.params
    h, w, _ = prog.dims(op.inputs[0])
    off = -prog.tensors[op.inputs[0]].zero_point * h * w
    lo, hi = (x.sum((1, 2), keepdims=True) + off for x in xs[0])
    return requant_bounds(lo, hi, p[1], p[2], int(p[7]), prog.tensors[op.output].zero_point,
                          -128, 127)


def _move(fn):
    return lambda prog, op, xs: tuple(fn(prog, op, [x[k] for x in xs]) for k in (0, 1))


def _reshape(prog, op, xs):
    return xs[0].reshape(len(xs[0]), *prog.dims(op.output))


def _concat(prog, op, xs):
    return np.concatenate(xs, int(op.params[0]) + 1)


def _transpose(prog, op, xs):
    return xs[0].transpose(0, *(int(a) + 1 for a in op.params[:3]))


def _clamp(prog, op, xs):
    return np.clip(xs[0], op.params[8], op.params[9])


def _slice(prog, op, xs):
    axis, begin = int(op.params[0]), int(op.params[1])
    size = prog.dims(op.output)[axis]
    return np.take(xs[0], np.arange(begin, begin + size), axis + 1)


def _pad_source(n_out: int, before: int, n: int, mode: int) -> np.ndarray:
    """dq_move.c pad_source for every output index (-1: the constant)."""
    j = np.arange(n_out) - before
    if mode == 0:
        return np.where((j >= 0) & (j < n), j, -1)
    lo = -j if mode == 1 else -j - 1
    hi = 2 * n - 2 - j if mode == 1 else 2 * n - 1 - j
    return np.where(j < 0, lo, np.where(j >= n, hi, j))


def _pad(prog, op, xs):
    x, p = xs[0], op.params
    out = x
    for axis in range(3):
        src = _pad_source(prog.dims(op.output)[axis], int(p[2 * axis]), x.shape[axis + 1],
                          int(p[6]))
        taken = np.take(out, np.maximum(src, 0), axis + 1)
        shape = [1, 1, 1, 1]
        shape[axis + 1] = -1
        out = np.where(src.reshape(shape) < 0, prog.tensors[op.inputs[0]].zero_point, taken)
    return out


S8_IBP = {"conv2d": _s8_conv, "depthwise_conv2d": _s8_conv,
          "transpose_conv": _s8_transpose_conv, "fully_connected": _s8_fc,
          "add": _s8_add, "max_pool": _s8_pool, "avg_pool": _s8_pool, "mean": _s8_mean,
          "reshape": _move(_reshape), "concat": _move(_concat),
          "transpose": _move(_transpose), "clamp": _move(_clamp), "slice": _move(_slice),
          "pad": _move(_pad),
          # LOGISTIC, TANH: tables; HARD_SWISH and LEAKY_RELU are refused (one line)
          **{op: (lambda prog, op, xs: table_bounds(xs[0], op.data[0]))
             for op in ("logistic", "tanh")}}
