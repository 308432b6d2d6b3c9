"""The TensorFlow graph written from the IR (NHWC inside) and its conversion by the
official TFLite converter into a full-integer .tflite: the only module that imports
TensorFlow (inside convert(), so importing this module stays light).

Two modes, chosen by the plan's calibration setting (see backends/tflite.py):
  plan       every tensor carries a fake-quant op whose range is set on the plan's grid
             (nudged by float32 ulps so that the converter's scale, float32((max - min)
             / (qmax - qmin)), is the plan's scale bit for bit); weights are fed already
             on the grid, so the file holds exactly the plan's parameters and integers.
  converter  no fake-quant; TFLite's representative-dataset calibration picks the
             parameters.

Linear layers are written as 1x1 convolutions between reshapes (TFLite op CONV_2D), so
their weights stay per-channel (per-channel FULLY_CONNECTED fails in the converter's
fake-quant path). The IR's NCHW flatten order is kept by transposing NHWC -> NCHW
before a reshape whose input has spatial extent. Each IR layer is built under the TF
name scope 'L<index>' (a grouped conv's groups under 'L<index>/g<j>'), the input under
'IN': the converter keeps these in tensor names, which is how a .tflite tensor is
mapped back to its IR layer (backends/tflite.py)."""
from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from .. import graph as G
from ..errors import ExportError, UnsupportedOpError
from ..plan import QParams, QuantPlan, quantized_bias

INPUT_SCOPE = "IN"
MAX_NUDGE_ULPS = 64


def check_supported(graph: G.Graph) -> None:
    """Raise UnsupportedOpError for the first layer TFLite int8 cannot run as written."""
    for node in graph.nodes:
        if node.op not in OPS:
            raise UnsupportedOpError(node.op, node.name, "tflite backend", OPS)
        why = CHECKS.get(node.op, lambda n, g: None)(node, graph)
        if why:
            raise UnsupportedOpError(why, node.name, "tflite backend", SUPPORTED)


def _tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    return tf


def convert(graph: G.Graph, plan: QuantPlan, mode: str, calib) -> bytes:
    """The .tflite bytes for graph and plan (mode 'plan' or 'converter')."""
    tf = _tensorflow()
    c, h, w = graph.input_shape
    spec = tf.TensorSpec([None, h, w, c], tf.float32, name=G.INPUT)
    fn = tf.function(lambda x: _Builder(tf, graph, plan, mode).build(x),
                     input_signature=[spec], autograph=False)
    concrete = fn.get_concrete_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    if mode == "converter":
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        nhwc = np.transpose(np.asarray(calib, np.float32), (0, 2, 3, 1))
        conv.representative_dataset = lambda: ([nhwc[i:i + 1]] for i in range(len(nhwc)))
    try:
        with warnings.catch_warnings(), _silenced_fds():
            warnings.simplefilter("ignore")
            return conv.convert()
    except Exception as e:      # the converter raises ConverterError, RuntimeError, ...
        raise ExportError(f"the TFLite converter rejected the graph"
                          f"{_layer_hint(str(e), graph)}: {type(e).__name__}: "
                          f"{_first_line(str(e))}") from None


@contextlib.contextmanager
def _silenced_fds():
    """The converter's calibrator writes to the process's stdout/stderr from C++."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _layer_hint(message: str, graph: G.Graph) -> str:
    m = re.search(r"\bL(\d+)/", message)
    return f" at layer '{graph.nodes[int(m.group(1))].name}'" if m else ""


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if "error" in ln.lower()]
    return (lines[0] if lines else text.strip().splitlines()[0] if text.strip() else "")[:300]


# --- fake-quant ranges on the plan's grid --------------------------------------------

def fake_quant_range(scale: np.float32, zero_point: int, qmin: int, qmax: int
                     ) -> tuple[np.float32, np.float32]:
    """float32 (min, max) on the grid of (scale, zero_point) for which the converter's
    float32((max - min) / (qmax - qmin)) (difference in double) is exactly scale."""
    s = np.float32(scale)
    lo = np.float32((qmin - zero_point) * float(s))
    hi = np.float32((qmax - zero_point) * float(s))
    for step in range(MAX_NUDGE_ULPS + 1):
        for cand_lo, cand_hi in _nudged(lo, hi, step, zero_point, qmin, qmax):
            if np.float32((float(cand_hi) - float(cand_lo)) / (qmax - qmin)) == s:
                return cand_lo, cand_hi
    raise ExportError(f"no float32 range gives scale {float(s)!r} with zero point "
                      f"{zero_point} within {MAX_NUDGE_ULPS} ulps")


def _nudged(lo, hi, step, zp, qmin, qmax):
    """Candidates step ulps away; the end that is exactly 0 (zp at qmin/qmax) stays."""
    out = []
    for d in ((step, 0), (-step, 0), (0, step), (0, -step)) if step else ((0, 0),):
        a = _ulps(lo, d[1]) if zp != qmin else lo
        b = _ulps(hi, d[0]) if zp != qmax else hi
        out.append((np.float32(a), np.float32(b)))
    return out


def _ulps(v: np.float32, n: int) -> np.float32:
    direction = np.float32(np.inf if n > 0 else -np.inf)
    for _ in range(abs(n)):
        v = np.nextafter(v, direction, dtype=np.float32)
    return v


# --- building the TF graph -----------------------------------------------------------

@dataclass
class _Builder:
    tf: object
    graph: G.Graph
    plan: QuantPlan
    mode: str
    values: dict = field(default_factory=dict)

    def build(self, x):
        tf = self.tf
        with tf.name_scope(INPUT_SCOPE):
            self.values[G.INPUT] = self.fq(x, G.INPUT)
        for i, node in enumerate(self.graph.nodes):
            with tf.name_scope(f"L{i}"):
                y = OPS[node.op](self, node, [self.values[n] for n in node.inputs])
                self.values[node.name] = self.fq(y, node.name)
        return self.values[self.graph.output]

    def fq(self, y, name: str):
        """y with the plan's parameters for tensor `name` (plan mode; else y)."""
        if self.mode != "plan":
            return y
        qp = self.plan.tensor(name)
        lo, hi = fake_quant_range(qp.scale[0], int(qp.zero_point[0]), qp.qmin, qp.qmax)
        return self.tf.quantization.fake_quant_with_min_max_vars(
            y, float(lo), float(hi), num_bits=qp.bits, narrow_range=False)

    def weight(self, node: G.Node, w_tf: np.ndarray, channel_axis: int,
               channels: slice = slice(None)):
        """The weight constant (TF layout, output channels on channel_axis; these are
        the layer's `channels`), fed on the plan's grid and fake-quantized (plan mode)."""
        if self.mode != "plan":
            return self.tf.constant(w_tf)
        qp = _channel_slice(self.plan.layers[node.name].weight, channels)
        scale = np.broadcast_to(qp.scale, (w_tf.shape[channel_axis],)).astype(np.float32)
        moved = np.moveaxis(w_tf, channel_axis, -1)
        grid = _on_grid(moved, scale, qp)
        ranges = [fake_quant_range(s, 0, qp.qmin, qp.qmax) for s in scale]
        tf = self.tf
        if qp.axis is None:
            fq = tf.quantization.fake_quant_with_min_max_vars(
                tf.constant(grid), float(ranges[0][0]), float(ranges[0][1]),
                num_bits=qp.bits, narrow_range=True)
        else:
            fq = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                tf.constant(grid), np.array([r[0] for r in ranges], np.float32),
                np.array([r[1] for r in ranges], np.float32), num_bits=qp.bits,
                narrow_range=True)
        return _moveaxis_tf(tf, fq, -1, channel_axis, w_tf.ndim)

    def bias(self, node: G.Node, channels: slice):
        """The float bias, in plan mode rounded onto the int32 grid the converter derives
        (input scale * weight scale), so its rounding cannot differ from the plan's."""
        b = node.bias[channels]
        if self.mode != "plan":
            return self.tf.constant(b)
        scale = np.broadcast_to(self.plan.bias_scale(node.name, node.inputs[0]),
                                node.bias.shape)[channels]
        q = quantized_bias(b, scale)
        return self.tf.constant((q.astype(np.float64) * scale.astype(np.float64))
                                .astype(np.float32))

    def act(self, node: G.Node, y):
        """The fused activation range: relu / relu6 / [-1, 1] fuse into the producer;
        any other clamp is quantized once before it (same parameters, so exact)."""
        act = node.attrs.get("act")
        if act is None:
            return y
        lo, hi = act
        tf = self.tf
        if lo == 0 and math.isinf(hi):
            return tf.nn.relu(y)
        if (lo, hi) == (0, 6):
            return tf.nn.relu6(y)
        if (lo, hi) != (-1, 1):
            y = self.fq(y, node.name)
        return _clip(tf, y, lo, hi)


def _on_grid(w: np.ndarray, scale: np.ndarray, qp: QParams) -> np.ndarray:
    """w (channels last) replaced by plan-integer * scale, in float32 (the integers of
    QParams.quantize, including a low-bit grid's multiples of its step)."""
    q = qp.codes(w / scale)
    return (q * scale.astype(np.float64)).astype(np.float32)


def _moveaxis_tf(tf, t, src: int, dst: int, ndim: int):
    src, dst = src % ndim, dst % ndim
    if src == dst:
        return t
    perm = [d for d in range(ndim) if d != src]
    perm.insert(dst, src)
    return tf.transpose(t, perm)


def _clip(tf, y, lo: float, hi: float):
    if math.isfinite(hi):
        y = tf.minimum(y, np.float32(hi))
    if math.isfinite(lo):
        y = tf.maximum(y, np.float32(lo))
    return y


def _channels_last(node_shape) -> bool:
    return len(node_shape) == 3


# --- padding ---------------------------------------------------------------------------

def _out_size(size: int, k: int, s: int, p: int, ceil: bool = False) -> int:
    num = size + 2 * p - k
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= size + p:       # PyTorch drops a window starting in padding
        out -= 1
    return out


def _same_ok(size: int, k: int, s: int, p: int, out: int) -> bool:
    """TF 'SAME' uses the same windows: same output size and leading pad."""
    same_out = -(-size // s)
    total = max((same_out - 1) * s + k - size, 0)
    return same_out == out and total // 2 == p


def _trailing_pad(size: int, k: int, s: int, p: int, out: int) -> int:
    return max((out - 1) * s + k - size - p, 0)


def _mirror_ok(size: int, k: int, s: int, p: int, out: int) -> bool:
    """Averages that exclude padding equal averages over a SYMMETRIC mirror pad when
    every window that overlaps padding overlaps it by exactly half the window: each
    valid element then counts twice, and the count doubles with it."""
    if k != 2 * p or p > size:
        return False
    for i in range(out):
        start, end = i * s - p, i * s - p + k - 1
        over = max(0, -start) + max(0, end - (size - 1))
        if over not in (0, p):
            return False
    return True


def _pads(tf, x, pads_hw, mode: str = "CONSTANT"):
    (t, b), (l, r) = pads_hw
    if not (t or b or l or r):
        return x
    return tf.pad(x, [[0, 0], [t, b], [l, r], [0, 0]], mode=mode)


def _window(node: G.Node, graph: G.Graph, k, s, p, dil=(1, 1), ceil: bool = False):
    """Per axis (size, effective kernel, stride, pad, out) of a windowed op."""
    _, h, w = graph.shape_of(node.inputs[0])
    keff = [(k[i] - 1) * dil[i] + 1 for i in range(2)]
    return [(size, keff[i], s[i], p[i], node.shape[1 + i]) for i, size in enumerate((h, w))]


def _spatial(tf, x, axes, pad_mode="CONSTANT"):
    """(x, 'SAME'|'VALID'): SAME when it gives the same windows, else explicit pads."""
    if all(a[3] == 0 and _trailing_pad(*a) == 0 for a in axes):
        return x, "VALID"
    if all(_same_ok(*a) for a in axes):
        return x, "SAME"
    return _pads(tf, x, [(a[3], _trailing_pad(*a)) for a in axes], pad_mode), "VALID"


def _mirror_max_ok(size: int, k: int, s: int, p: int, out: int) -> bool:
    """A SYMMETRIC pad leaves each window's max unchanged when no window overlaps the
    padding by more elements than it has inside the input."""
    if max(p, _trailing_pad(size, k, s, p, out)) > size:
        return False
    for i in range(out):
        start, end = i * s - p, i * s - p + k - 1
        over = max(0, -start) + max(0, end - (size - 1))
        if over > k - over:
            return False
    return True


# --- op table --------------------------------------------------------------------------

def _conv(b: _Builder, n: G.Node, xs):
    a, tf = n.attrs, b.tf
    axes = _window(n, b.graph, n.weight.shape[2:], a["stride"], a["padding"], a["dilation"])
    x, padding = _spatial(tf, xs[0], axes)
    g, cin, cout = a["groups"], n.weight.shape[1] * a["groups"], n.weight.shape[0]
    if g == 1:
        return _conv_group(b, n, x, padding, slice(None))
    if g == cin:
        return _depthwise(b, n, x, padding)
    parts = tf.split(x, g, axis=3)
    per = cout // g
    ys = []
    for j, part in enumerate(parts):
        with tf.name_scope(f"g{j}"):
            y = _conv_group(b, n, part, padding, slice(j * per, (j + 1) * per))
            ys.append(b.fq(y, n.name))
    return tf.concat(ys, axis=3)


def _conv_group(b: _Builder, n: G.Node, x, padding: str, channels: slice):
    a, tf = n.attrs, b.tf
    w = np.transpose(n.weight[channels], (2, 3, 1, 0))           # (kh, kw, I, O)
    w_tf = b.weight(n, w, -1, channels)
    y = tf.nn.conv2d(x, w_tf, [1, *a["stride"], 1], padding,
                     dilations=[1, *a["dilation"], 1])
    return b.act(n, tf.nn.bias_add(y, b.bias(n, channels)))


def _conv_transpose(b: _Builder, n: G.Node, xs):
    """TRANSPOSE_CONV: the output size given, the leading crop TFLite derives from it
    by the padding type graph.conv_transpose_mode found at capture; bias after."""
    a, tf = n.attrs, b.tf
    cout, _, kh, kw = n.weight.shape
    mode = G.conv_transpose_mode(b.graph.shape_of(n.inputs[0])[1:], n.shape[1:], (kh, kw),
                                 a["stride"], a["padding"])
    w_tf = b.weight(n, np.transpose(n.weight, (2, 3, 0, 1)), 2)     # (kh, kw, O, I)
    shape = tf.stack([tf.shape(xs[0])[0], n.shape[1], n.shape[2], cout])
    y = tf.nn.conv2d_transpose(xs[0], w_tf, shape, [1, *a["stride"], 1], mode)
    return b.act(n, tf.nn.bias_add(y, b.bias(n, slice(None))))


def _channel_slice(qp: QParams, channels: slice) -> QParams:
    if qp.axis is None or channels == slice(None):
        return qp
    return replace(qp, scale=qp.scale[channels], zero_point=qp.zero_point[channels])


def _depthwise(b: _Builder, n: G.Node, x, padding: str):
    a, tf = n.attrs, b.tf
    cout, _, kh, kw = n.weight.shape
    w = np.transpose(n.weight.reshape(cout, kh, kw), (1, 2, 0))[:, :, None, :]
    wq = b.weight(n, w, -1)                           # (kh, kw, 1, C*m), per channel
    cin = a["groups"]
    wq = tf.reshape(wq, [kh, kw, cin, cout // cin])
    y = tf.nn.depthwise_conv2d(x, wq, [1, *a["stride"], 1], padding,
                               dilations=list(a["dilation"]))
    return b.act(n, tf.nn.bias_add(y, b.bias(n, slice(None))))


def _linear(b: _Builder, n: G.Node, xs):
    """A 1x1 convolution between reshapes (per-channel weights, op CONV_2D)."""
    tf = b.tf
    cout, cin = n.weight.shape
    x = tf.reshape(xs[0], [-1, 1, 1, cin])
    w = b.weight(n, n.weight.T.reshape(1, 1, cin, cout), -1)
    y = b.act(n, tf.nn.bias_add(tf.nn.conv2d(x, w, 1, "VALID"), b.bias(n, slice(None))))
    y = b.fq(y, n.name)
    return tf.reshape(y, [-1, cout])


def _maxpool(b: _Builder, n: G.Node, xs):
    """SAME when it has the same windows, else a SYMMETRIC mirror pad: a mirrored
    element lies in the same window, so the max is unchanged (see _mirror_max_ok)."""
    a, tf = n.attrs, b.tf
    axes = _window(n, b.graph, a["kernel"], a["stride"], a["padding"])
    x, padding = _spatial(tf, xs[0], axes, pad_mode="SYMMETRIC")
    return tf.nn.max_pool2d(x, list(a["kernel"]), list(a["stride"]), padding)


def _avgpool(b: _Builder, n: G.Node, xs):
    a, tf = n.attrs, b.tf
    axes = _window(n, b.graph, a["kernel"], a["stride"], a["padding"])
    if a["count_include_pad"]:
        x, padding = _pads(tf, xs[0], [(p, _trailing_pad(*ax)) for ax in axes
                                       for p in [ax[3]]]), "VALID"
    elif all(_same_ok(*ax) for ax in axes) or not any(a["padding"]):
        x, padding = _spatial(tf, xs[0], axes)
    elif all(_mirror_ok(*ax) for ax in axes):
        x = _pads(tf, xs[0], [(ax[3], _trailing_pad(*ax)) for ax in axes], "SYMMETRIC")
        padding = "VALID"
    else:
        return _avgpool_recounted(b, n, xs[0], axes)
    return tf.nn.avg_pool2d(x, list(a["kernel"]), list(a["stride"]), padding)


def _avgpool_recounted(b: _Builder, n: G.Node, x, axes):
    """count_include_pad=False where no TFLite padding gives the windows: the average
    over the zero-padded map (AVERAGE_POOL_2D, VALID), quantized on the output's grid
    (|it| <= |output|), times the constant kh * kw / count per output position (MUL).
    Two roundings: within about one LSB of the exact average, not bit-equal to it."""
    a, tf = n.attrs, b.tf
    padded = _pads(tf, x, [(ax[3], _trailing_pad(*ax)) for ax in axes])
    y = b.fq(tf.nn.avg_pool2d(padded, list(a["kernel"]), list(a["stride"]), "VALID"), n.name)
    counts = [_counts(*ax) for ax in axes]
    factor = (a["kernel"][0] * a["kernel"][1]) / np.outer(counts[0], counts[1])
    return tf.multiply(y, tf.constant(factor[None, :, :, None].astype(np.float32)))


def _counts(size: int, k: int, s: int, p: int, out: int) -> np.ndarray:
    """Per output index along one axis: the window's elements inside the input."""
    starts = np.arange(out) * s - p
    return np.minimum(starts + k, size) - np.maximum(starts, 0)


def _reshape(b: _Builder, n: G.Node, xs):
    tf = b.tf
    x, src = xs[0], b.graph.shape_of(n.inputs[0])
    if _channels_last(src) and src[1] * src[2] > 1:
        x = tf.transpose(x, [0, 3, 1, 2])                    # NHWC -> NCHW order
    y = tf.reshape(x, [-1, *n.shape])
    if _channels_last(n.shape):
        y = tf.transpose(y, [0, 2, 3, 1]) if n.shape[1] * n.shape[2] > 1 else \
            tf.reshape(y, [-1, 1, 1, n.shape[0]])
    return y


def _concat(b: _Builder, n: G.Node, xs):
    return b.tf.concat(xs, axis=3 if _channels_last(n.shape) else 1)


def _add(b: _Builder, n: G.Node, xs):
    return b.act(n, b.tf.add(xs[0], xs[1]))


def _fixed_fq(b: _Builder, y, lo: float, hi: float):
    """y fake-quantized to int8 over [lo, hi] with zero point -128 (plan mode): an inner
    tensor of a lowering, whose parameters are fixed by the function, not calibrated."""
    if b.mode != "plan":
        return y
    scale = np.float32((hi - lo) / 255.0)
    f_lo, f_hi = fake_quant_range(scale, -128, -128, 127)
    return b.tf.quantization.fake_quant_with_min_max_vars(y, float(f_lo), float(f_hi),
                                                          num_bits=8, narrow_range=False)


def _hardswish(b: _Builder, n: G.Node, xs):
    """x * relu6(x + 3) / 6: the pattern the converter fuses into HARD_SWISH."""
    x = xs[0]
    return x * b.tf.nn.relu6(x + np.float32(3.0)) * np.float32(1.0 / 6.0)


def _silu(b: _Builder, n: G.Node, xs):
    """x * sigmoid(x): LOGISTIC (output 1/256, zero point -128) then MUL."""
    return xs[0] * _fixed_fq(b, b.tf.math.sigmoid(xs[0]), 0.0, 255.0 / 256.0)


def _mul(b: _Builder, n: G.Node, xs):
    """MUL; a (C, 1, 1) gate is (N, 1, 1, C) here and broadcasts over H and W."""
    return b.act(n, b.tf.multiply(xs[0], xs[1]))


def _upsample(b: _Builder, n: G.Node, xs):
    """RESIZE_NEAREST_NEIGHBOR without align_corners or half-pixel centres: in[floor(i *
    in / out)], PyTorch's 'nearest' (for integer factors in[i // s])."""
    _, h, w = n.shape
    return b.tf.compat.v1.image.resize_nearest_neighbor(xs[0], [h, w], align_corners=False,
                                                         half_pixel_centers=False)


OPS = {
    "conv2d": _conv,
    "conv_transpose": _conv_transpose,
    "linear": _linear,
    "add": _add,
    "mul": _mul,
    "concat": _concat,
    "maxpool": _maxpool,
    "avgpool": _avgpool,
    "gap": lambda b, n, xs: b.tf.reduce_mean(xs[0], axis=[1, 2], keepdims=True),
    "reshape": _reshape,
    "clamp": lambda b, n, xs: _clip(b.tf, xs[0], n.attrs["lo"], n.attrs["hi"]),
    "sigmoid": lambda b, n, xs: b.tf.math.sigmoid(xs[0]),
    "tanh": lambda b, n, xs: b.tf.math.tanh(xs[0]),
    "leaky_relu": lambda b, n, xs: b.tf.nn.leaky_relu(xs[0], n.attrs["alpha"]),
    "hardswish": _hardswish,
    "silu": _silu,
    "pad": lambda b, n, xs: _pads(b.tf, xs[0], [n.attrs["pads"][:2], n.attrs["pads"][2:]]),
    "upsample": _upsample,
}
SUPPORTED = ["conv2d", "conv_transpose", "linear", "add", "mul", "concat", "maxpool (no dilation)",
             "avgpool", "gap",
             "reshape", "clamp", "pad", "upsample", "sigmoid", "tanh", "leaky_relu",
             "hardswish", "silu"]


def _check_maxpool(n: G.Node, g: G.Graph) -> str | None:
    a = n.attrs
    if tuple(a["dilation"]) != (1, 1):
        return f"maxpool with dilation {tuple(a['dilation'])} (MAX_POOL_2D has none)"
    axes = _window(n, g, a["kernel"], a["stride"], a["padding"])
    if all(_same_ok(*ax) for ax in axes) or all(_mirror_max_ok(*ax) for ax in axes):
        return None
    return (f"maxpool kernel {tuple(a['kernel'])} stride {tuple(a['stride'])} padding "
            f"{tuple(a['padding'])} ceil_mode={a['ceil_mode']} (windows TFLite cannot pad)")


def _check_avgpool(n: G.Node, g: G.Graph) -> str | None:
    a = n.attrs
    axes = _window(n, g, a["kernel"], a["stride"], a["padding"])
    if a["ceil_mode"] and any(out != _out_size(size, k, s, p)
                              for size, k, s, p, out in axes):
        return "avgpool with ceil_mode adding partial windows"
    return None


CHECKS = {"maxpool": _check_maxpool, "avgpool": _check_avgpool}
