"""MCU int8 backend: the C reference runtime in TFLite Micro's int8 arithmetic.

export() converts the graph with the TFLite backend (same plan, same converter) and
translates that .tflite into the runtime's model file, taking every integer (weights,
biases, zero points) from it and computing multipliers, shifts and activation ranges by
LiteRT's reference-kernel rules (docs/tflite-int8-arithmetic.md). The runner quantizes
its input as LiteRT's reference QUANTIZE does and runs the C library through ctypes.
Target option 'rounding_variant': 'double' (TFLite/TFLM default) or 'single' (CMSIS-NN's
TFLITE_SINGLE_ROUNDING build)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import graph as G
from .. import rtformat as F
from ..errors import ExportError, TargetError, UnsupportedOpError
from ..io import atomic_write
from ..plan import QuantPlan
from ..tflite_file import TfliteFile
from . import crunner, tflite

ARTIFACT = "model.dqm"
NAMES = "tensors.json"          # the .tflite tensor name of each runtime tensor
ROUNDING = {"double": 0, "single": 1}
CAPABILITIES = crunner.CAPABILITIES | {"c_project", "semantics"}


def export(graph: G.Graph, plan: QuantPlan, target, out_dir: Path, calib=None):
    tfl_path, plan = tflite.export(graph, plan, target, out_dir, calib)
    rounding = target.options.get("rounding_variant", "double")
    if rounding not in ROUNDING:
        raise TargetError(f"target {target.name}: rounding_variant={rounding!r}; "
                          f"choose {' or '.join(ROUNDING)}")
    try:
        blob, names = from_tflite(tfl_path.read_bytes(), ROUNDING[rounding])
    except UnsupportedOpError as e:          # name the IR layer, not the .tflite tensor
        layer = tflite.layer_of_tensor(e.layer, tflite.layer_names(out_dir)) or e.layer
        raise UnsupportedOpError(e.op, layer, f"{target.name}: the C runtime has no "
                                 "kernel for it", OPS) from None
    path = Path(out_dir) / ARTIFACT
    atomic_write(path, blob)
    atomic_write(Path(out_dir) / NAMES, json.dumps(names, indent=0).encode())
    from .. import runtime
    runtime.Model(blob, str(path))            # the loader's validation, once, at export
    return path, plan


def certifiable(target) -> None:
    """Every target of this backend runs the C runtime's (= LiteRT reference) integers."""


def semantics(exported, graph: G.Graph, runner):
    from .. import certification as certify
    return certify.s8_semantics(exported, graph, runner,
                                (exported.path.parent / ARTIFACT).read_bytes())


def load(path: Path, target=None, threads: int = 1) -> "Runner":
    """threads: accepted for the protocol; the C runtime runs one thread."""
    from .. import runtime
    return Runner(Path(path), runtime.kernels_of(target))


def extras(out_dir: Path) -> dict:
    return crunner.arena_extras(Path(out_dir) / ARTIFACT)


def c_project(artifact: Path, out_dir: Path, inputs: np.ndarray | None = None,
              kernels: str = "opt") -> Path:
    """A self-contained Cortex-M C project for the exported model (deployq.cproject),
    its test vectors the float NCHW `inputs` quantized as this runner does (None: 20
    seeded random rows), its header with the input and output quantization; kernels:
    the set its Makefile builds (opt: the DSP-extension kernels, or ref)."""
    from ..cproject import write_c_project
    runner = Runner(Path(artifact), "ref")
    rows = None if inputs is None else runner.rows(inputs)
    return write_c_project(artifact, out_dir, rows, (runner.input_qp, runner.output_qp),
                           kernels)


class Runner(crunner.CRunner):
    """Runs model.dqm; input and output scales come from the model.tflite beside it,
    tensor names and layers from the tensors.json and layers.json beside it."""

    def __init__(self, path: Path, kernels: str | None = None):
        from .. import runtime
        self.model = runtime.Model(path.read_bytes(), str(path), kernels)
        f = TfliteFile.read(path.parent / tflite.ARTIFACT)
        self.input_qp, self.output_qp = (f.qparams(t) for t in (f.graph.inputs[0],
                                                                f.graph.outputs[0]))
        self.names = json.loads((path.parent / NAMES).read_text())
        self.layers = tflite.layer_names(path.parent)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """NCHW float -> NCHW int8 codes, rounded as LiteRT's reference QUANTIZE."""
        return tflite.quantize_input(x, self.input_qp, "reference")

    def run_codes(self, q: np.ndarray) -> np.ndarray:
        """int8 output codes for NCHW int8 input codes."""
        return self.raw_codes(q)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.output_qp.dequantize(self.run_codes(self.quantize(x)).astype(np.int32))

    def layer_of(self, tensor: str) -> str | None:
        return tflite.layer_of_tensor(tensor, self.layers)


# --- .tflite -> runtime model ----------------------------------------------------

class _Reader(TfliteFile):
    """The .tflite being translated, and the runtime tensors and ops made from it."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.index: dict[int, int] = {}          # tflite tensor -> runtime tensor
        self.tensors: list[F.Tensor] = []
        self.ops: list[F.Op] = []

    def act(self, t: int) -> int:
        """The runtime index of activation tensor t (created on first use)."""
        if t not in self.index:
            tensor = self.graph.tensors[t]
            shape = [int(d) for d in tensor.shape][1:]
            dims = tuple([1] * (3 - len(shape)) + shape)
            if len(dims) != 3 or tensor.type != self.S.TensorType.INT8:
                raise ExportError(f"tensor '{tensor.name.decode()}' is not an int8 tensor of "
                                  "rank <= 4; the MCU runtime cannot hold it")
            self.index[t] = len(self.tensors)
            self.tensors.append(F.Tensor(dims, int(self.quant(t)[1][0])))
        return self.index[t]

    def act_range(self, op, out: int) -> tuple[int, int]:
        """TFLite's CalculateActivationRangeQuantized: Q(f) = zp + roundf(f / scale)."""
        fused = getattr(op.builtinOptions, "fusedActivationFunction", 0)
        scale, zp = self.quant(out)
        q = lambda f: int(zp[0]) + F.round_half_away(float(np.float32(f) / scale[0]))
        A = self.S.ActivationFunctionType
        lo, hi = {A.NONE: (-128, 127), A.RELU: (q(0.0), 127), A.RELU6: (q(0.0), q(6.0)),
                  A.RELU_N1_TO_1: (q(-1.0), q(1.0))}.get(fused, (None, None))
        if lo is None:
            raise UnsupportedOpError(f"fused activation {fused}", self.layer(out), "mcu", OPS)
        return max(-128, lo), min(127, hi)

    def layer(self, t: int) -> str:
        return self.tensor_name(t)


def _padding(S, padding: int, size: int, k: int, stride: int, dil: int) -> int:
    """Leading padding by TFLite's rule (padding.h)."""
    eff = (k - 1) * dil + 1
    out = (size + stride - 1) // stride if padding == S.Padding.SAME else (size + stride - eff) // stride
    return max((out - 1) * stride + eff - size, 0) // 2


def _conv(r: _Reader, op, depthwise: bool) -> None:
    x, w, b = op.inputs[:3]
    o = op.outputs[0]
    opt, S = op.builtinOptions, r.S
    in_dims = r.tensors[r.act(x)].dims
    weight = r.const(w)
    kh, kw = weight.shape[1:3]
    out_ch = weight.shape[3] if depthwise else weight.shape[0]
    mult, shift = _multipliers(r, x, w, o, out_ch)
    lo, hi = r.act_range(op, o)
    params = {"stride_h": opt.strideH, "stride_w": opt.strideW,
              "pad_top": _padding(S, opt.padding, in_dims[0], kh, opt.strideH, opt.dilationHFactor),
              "pad_left": _padding(S, opt.padding, in_dims[1], kw, opt.strideW, opt.dilationWFactor),
              "dilation_h": opt.dilationHFactor, "dilation_w": opt.dilationWFactor,
              "groups": (out_ch // in_dims[2]) if depthwise else in_dims[2] // weight.shape[3],
              "rounding": r.rounding, "act_min": lo, "act_max": hi, "kernel_h": kh, "kernel_w": kw}
    bias = r.const(b).astype(np.int32) if b >= 0 else np.zeros(out_ch, np.int32)
    r.ops.append(F.Op("depthwise_conv2d" if depthwise else "conv2d", [r.act(x)], r.act(o),
                      params, [weight.reshape(-1), bias, mult, shift]))


def _transpose_conv(r: _Reader, op) -> None:
    """TRANSPOSE_CONV (inputs: output shape, filter O,kh,kw,I, input, optional bias):
    the leading crop by padding.h's rule applied to the output size (transpose_conv.cc),
    multipliers as CONV_2D's (PopulateConvolutionQuantizationParams)."""
    _, w, x = op.inputs[:3]
    b = op.inputs[3] if len(op.inputs) > 3 else -1
    o = op.outputs[0]
    opt, S = op.builtinOptions, r.S
    out_dims = r.tensors[r.act(o)].dims
    weight = r.const(w)
    out_ch, kh, kw = weight.shape[:3]
    mult, shift = _multipliers(r, x, w, o, out_ch)
    lo, hi = r.act_range(op, o)
    params = {"stride_h": opt.strideH, "stride_w": opt.strideW,
              "pad_top": _padding(S, opt.padding, out_dims[0], kh, opt.strideH, 1),
              "pad_left": _padding(S, opt.padding, out_dims[1], kw, opt.strideW, 1),
              "dilation_h": 1, "dilation_w": 1, "groups": 1,
              "rounding": r.rounding, "act_min": lo, "act_max": hi, "kernel_h": kh, "kernel_w": kw}
    bias = r.const(b).astype(np.int32) if b >= 0 else np.zeros(out_ch, np.int32)
    r.ops.append(F.Op("transpose_conv", [r.act(x)], r.act(o), params,
                      [weight.reshape(-1), bias, mult, shift]))


def _multipliers(r: _Reader, x: int, w: int, o: int, channels: int):
    """Per output channel, QuantizeMultiplier(double(s_in) * double(s_w) / double(s_out))
    as conv.cc's Prepare computes it (a per-tensor scale is broadcast)."""
    s_in, s_out = float(r.quant(x)[0][0]), float(r.quant(o)[0][0])
    pairs = [F.quantize_multiplier(s_in * float(sw) / s_out)
             for sw in np.broadcast_to(r.quant(w)[0], (channels,))]
    return (np.array([m for m, _ in pairs], np.int32), np.array([s for _, s in pairs], np.int32))


def _fully_connected(r: _Reader, op) -> None:
    x, w, b = op.inputs[:3]
    o = op.outputs[0]
    weight = r.const(w)
    mult, shift = _multipliers(r, x, w, o, weight.shape[0])
    lo, hi = r.act_range(op, o)
    bias = r.const(b).astype(np.int32) if b >= 0 else np.zeros(weight.shape[0], np.int32)
    r.ops.append(F.Op("fully_connected", [r.act(x)], r.act(o),
                      {"rounding": r.rounding, "act_min": lo, "act_max": hi},
                      [weight.reshape(-1), bias, mult, shift]))


def _add(r: _Reader, op) -> None:
    a, b = op.inputs[:2]
    o = op.outputs[0]
    s1, s2, so = (float(r.quant(t)[0][0]) for t in (a, b, o))
    twice_max = 2.0 * max(s1, s2)
    m1 = F.quantize_multiplier(s1 / twice_max)
    m2 = F.quantize_multiplier(s2 / twice_max)
    mo = F.quantize_multiplier(twice_max / float(np.float32((1 << 20) * np.float32(so))))
    lo, hi = r.act_range(op, o)
    params = {0: 20, 1: m1[0], 2: m1[1], 3: m2[0], 4: m2[1], 5: mo[0], 6: mo[1],
              "rounding": r.rounding, "act_min": lo, "act_max": hi}
    r.ops.append(F.Op("add", [r.act(a), r.act(b)], r.act(o), params))


def _mul(r: _Reader, op) -> None:
    """MUL (mul.cc Prepare): QuantizeMultiplier(double(s1) * double(s2) / double(s_out));
    either input may broadcast (a dimension of 1) against the output."""
    a, b = op.inputs[:2]
    o = op.outputs[0]
    if _is_const(r, a):
        a, b = b, a                     # x * c = c * x: the constant second
    s1, s2, so = (float(r.quant(t)[0][0]) for t in (a, b, o))
    m, shift = F.quantize_multiplier(s1 * s2 / so)
    lo, hi = r.act_range(op, o)
    params = {"multiplier": m, "shift": shift, "rounding": r.rounding, "act_min": lo,
              "act_max": hi}
    if not _is_const(r, b):
        r.ops.append(F.Op("mul", [r.act(a), r.act(b)], r.act(o), params))
        return
    c = r.const(b)                      # a constant operand travels in the op's data
    dims = tuple([1] * (4 - c.ndim) + list(c.shape))[1:]
    params |= {"const_zero_point": int(r.quant(b)[1][0]), "const_h": dims[0],
               "const_w": dims[1], "const_c": dims[2]}
    r.ops.append(F.Op("mul", [r.act(a)], r.act(o), params, [c.reshape(-1)]))


def _is_const(r: _Reader, t: int) -> bool:
    data = r.model.buffers[r.graph.tensors[t].buffer].data
    return data is not None and len(data) > 0


def _pool(r: _Reader, op, kind: str) -> None:
    x, o = op.inputs[0], op.outputs[0]
    opt, S = op.builtinOptions, r.S
    in_dims = r.tensors[r.act(x)].dims
    lo, hi = r.act_range(op, o)
    params = {"stride_h": opt.strideH, "stride_w": opt.strideW,
              "pad_top": _padding(S, opt.padding, in_dims[0], opt.filterHeight, opt.strideH, 1),
              "pad_left": _padding(S, opt.padding, in_dims[1], opt.filterWidth, opt.strideW, 1),
              "act_min": lo, "act_max": hi, "kernel_h": opt.filterHeight,
              "kernel_w": opt.filterWidth}
    r.ops.append(F.Op(kind, [r.act(x)], r.act(o), params))


def _mean(r: _Reader, op) -> None:
    """QuantizedMeanOrSum: QM(s_in / s_out) with 1/n folded in (reduce.h)."""
    x, axes, o = op.inputs[0], op.inputs[1], op.outputs[0]
    if sorted(int(a) % 4 for a in r.const(axes).reshape(-1)) != [1, 2]:
        raise UnsupportedOpError("MEAN over other axes than H, W", r.layer(o), "mcu", OPS)
    h, w, _ = r.tensors[r.act(x)].dims
    m, shift = F.quantize_multiplier(float(r.quant(x)[0][0]) / float(r.quant(o)[0][0]))
    n = h * w
    k = min(n.bit_length() - 1, 32, 31 + shift)
    params = {1: (m << k) // n, 2: shift - k, "rounding": r.rounding}
    r.ops.append(F.Op("mean", [r.act(x)], r.act(o), params))


def _axis(r: _Reader, t: int, axis: int) -> int:
    rank = len(r.graph.tensors[t].shape)
    return (axis % rank) - 1 + (3 - (rank - 1))


def _concat(r: _Reader, op) -> None:
    o = op.outputs[0]
    axis = _axis(r, o, op.builtinOptions.axis)
    r.ops.append(F.Op("concat", [r.act(t) for t in op.inputs], r.act(o), {0: axis}))


def _reshape(r: _Reader, op) -> None:
    r.ops.append(F.Op("reshape", [r.act(op.inputs[0])], r.act(op.outputs[0])))


def _transpose(r: _Reader, op) -> None:
    perm = [int(p) for p in r.const(op.inputs[1]).reshape(-1)]
    if len(perm) != 4 or perm[0] != 0:
        raise UnsupportedOpError(f"TRANSPOSE {perm}", r.layer(op.outputs[0]), "mcu", OPS)
    r.ops.append(F.Op("transpose", [r.act(op.inputs[0])], r.act(op.outputs[0]),
                      {i: p - 1 for i, p in enumerate(perm[1:])}))


def _split(r: _Reader, op) -> None:
    axis_t, x = op.inputs[:2]
    axis = _axis(r, x, int(r.const(axis_t).reshape(-1)[0]))
    begin = 0
    for o in op.outputs:
        r.ops.append(F.Op("slice", [r.act(x)], r.act(o), {0: axis, 1: begin}))
        begin += r.tensors[r.act(o)].dims[axis]


def _min_max(r: _Reader, op, is_min: bool) -> None:
    x, c = op.inputs[:2]
    o = op.outputs[0]
    if [q.tolist() for q in r.quant(c)] != [q.tolist() for q in r.quant(x)]:
        raise UnsupportedOpError("MINIMUM/MAXIMUM with a differently quantized constant",
                                 r.layer(o), "mcu", OPS)
    v = int(r.const(c).reshape(-1)[0])
    lo, hi = (-128, v) if is_min else (v, 127)
    r.ops.append(F.Op("clamp", [r.act(x)], r.act(o), {"act_min": lo, "act_max": hi}))


def _pad(r: _Reader, op, mode: int) -> None:
    x, pads_t = op.inputs[:2]
    pads = r.const(pads_t).reshape(-1, 2)[1:]
    if mode:
        mode = 1 if op.builtinOptions.mode == r.S.MirrorPadMode.REFLECT else 2
    params = {i: int(v) for i, v in enumerate(pads.reshape(-1))} | {6: mode}
    r.ops.append(F.Op("pad", [r.act(x)], r.act(op.outputs[0]), params))


# --- activations (docs/tflite-int8-arithmetic.md, "Activations") ----------------------

def _scales(r: _Reader, op) -> tuple[np.float32, int, np.float32, int]:
    (si, zi), (so, zo) = (r.quant(t) for t in (op.inputs[0], op.outputs[0]))
    return np.float32(si[0]), int(zi[0]), np.float32(so[0]), int(zo[0])


def _libm(name: str):
    import ctypes
    import ctypes.util
    fn = getattr(ctypes.CDLL(ctypes.util.find_library("m")), name)
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return lambda v: np.float32(fn(float(v)))


TRANSFORMS = {  # LiteRT's float transforms, in float32 with C's libm (expf, tanhf)
    "LOGISTIC": lambda v: np.float32(1.0) / (np.float32(1.0) + _libm("expf")(-v)),
    "TANH": lambda v: _libm("tanhf")(v),
}


def lut_table(transform, s_in, zp_in, s_out, zp_out) -> np.ndarray:
    """TFLite's int8 LUT (LUTPopulate), in float32: table[uint8(q)] = clamp(zp_out +
    round_half_away(f(s_in * (q - zp_in)) * (1 / s_out)))."""
    inverse = np.float32(1.0) / s_out
    table = np.zeros(256, np.int8)
    for q in range(-128, 128):
        y = transform(np.float32(s_in * np.float32(q - zp_in)))
        v = F.round_half_away(float(np.float32(y * inverse))) + zp_out
        table[q & 0xFF] = min(max(v, -128), 127)
    return table


def _lut(r: _Reader, op, kind: str) -> None:
    table = lut_table(TRANSFORMS[r.op_name(op)], *_scales(r, op))
    r.ops.append(F.Op(kind, [r.act(op.inputs[0])], r.act(op.outputs[0]), {}, [table]))


def _int16_multiplier(real: float) -> tuple[int, int]:
    """QuantizeMultiplier, then DownScaleInt32ToInt16Multiplier: (m + 2^15) >> 16,
    saturated at 2^15 - 1."""
    m, e = F.quantize_multiplier(real)
    return (32767 if m >= 2 ** 31 - 1 - 2 ** 15 else (m + 2 ** 15) >> 16), e


def _hard_swish(r: _Reader, op) -> None:
    """HardSwishPrepare's multipliers, each computed in float32."""
    s_in, _, s_out, _ = _scales(r, op)
    hires = np.float32(np.float32(1.0 / 128.0) * s_in)
    out_m, out_e = _int16_multiplier(float(np.float32(hires / s_out)))
    relu_m, relu_e = _int16_multiplier(float(np.float32(hires / np.float32(3.0 / 32768.0))))
    if out_e > 0:
        raise UnsupportedOpError("HARD_SWISH with output scale < input scale / 128",
                                 r.layer(op.outputs[0]), "mcu", OPS)
    params = {"output_multiplier_int16": out_m, "output_exponent": out_e,
              "reluish_multiplier_int16": relu_m, "reluish_exponent": relu_e}
    r.ops.append(F.Op("hard_swish", [r.act(op.inputs[0])], r.act(op.outputs[0]), params))


def _leaky_relu(r: _Reader, op, alpha: np.float32 | None, lo_hi=(-128, 127)) -> None:
    """LEAKY_RELU (LeakyReluPrepare: float32 s_in * alpha / s_out and s_in / s_out); the
    RELU family is the same with alpha's multiplier the identity's and its range."""
    s_in, _, s_out, _ = _scales(r, op)
    ident = F.quantize_multiplier(float(np.float32(s_in / s_out)))
    neg = ident if alpha is None else F.quantize_multiplier(
        float(np.float32(np.float32(s_in * alpha) / s_out)))
    params = {"identity_multiplier": ident[0], "identity_shift": ident[1],
              "alpha_multiplier": neg[0], "alpha_shift": neg[1], "rounding": r.rounding,
              "act_min": lo_hi[0], "act_max": lo_hi[1]}
    r.ops.append(F.Op("leaky_relu", [r.act(op.inputs[0])], r.act(op.outputs[0]), params))


RELU_RANGES = {"RELU": (0.0, None), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0),
               "RELU_0_TO_1": (0.0, 1.0)}


def _relu(r: _Reader, op) -> None:
    """QuantizedReluX: requantize by s_in / s_out, clamp to [zp + roundf(lo / s),
    zp + roundf(hi / s)] (127 for no upper bound). With input and output quantized
    alike the requantization is exact and this is CLAMP."""
    lo, hi = RELU_RANGES[r.op_name(op)]
    _, _, s_out, zp = _scales(r, op)
    q = lambda f: zp + F.round_half_away(float(np.float32(f) / s_out))
    rng = (max(-128, q(lo)), 127 if hi is None else min(127, q(hi)))
    x, o = op.inputs[0], op.outputs[0]
    if [a.tolist() for a in r.quant(x)] == [a.tolist() for a in r.quant(o)]:
        r.ops.append(F.Op("clamp", [r.act(x)], r.act(o), {"act_min": rng[0],
                                                          "act_max": rng[1]}))
    else:
        _leaky_relu(r, op, None, rng)
def _resize_nearest(r: _Reader, op) -> None:
    """RESIZE_NEAREST_NEIGHBOR by integer factors without align_corners or half-pixel
    centres: a copy of int8 codes (input and output share their parameters)."""
    x, o, opt = op.inputs[0], op.outputs[0], op.builtinOptions
    (h, w, _), (oh, ow, _) = (r.tensors[r.act(t)].dims for t in (x, o))
    if opt.alignCorners or opt.halfPixelCenters or oh % h or ow % w:
        raise UnsupportedOpError("RESIZE_NEAREST_NEIGHBOR with align_corners, half-pixel "
                                 "centres or a non-integer factor", r.layer(o), "mcu", OPS)
    r.ops.append(F.Op("resize_nearest", [r.act(x)], r.act(o)))


OPS = {
    "CONV_2D": lambda r, op: _conv(r, op, False),
    "DEPTHWISE_CONV_2D": lambda r, op: _conv(r, op, True),
    "TRANSPOSE_CONV": _transpose_conv,
    "FULLY_CONNECTED": _fully_connected,
    "ADD": _add,
    "MUL": _mul,
    "MAX_POOL_2D": lambda r, op: _pool(r, op, "max_pool"),
    "AVERAGE_POOL_2D": lambda r, op: _pool(r, op, "avg_pool"),
    "MEAN": _mean,
    "CONCATENATION": _concat,
    "RESHAPE": _reshape,
    "TRANSPOSE": _transpose,
    "SPLIT": _split,
    "MINIMUM": lambda r, op: _min_max(r, op, True),
    "MAXIMUM": lambda r, op: _min_max(r, op, False),
    "PAD": lambda r, op: _pad(r, op, 0),
    "MIRROR_PAD": lambda r, op: _pad(r, op, 1),
    "LOGISTIC": lambda r, op: _lut(r, op, "logistic"),
    "TANH": lambda r, op: _lut(r, op, "tanh"),
    "HARD_SWISH": _hard_swish,
    "LEAKY_RELU": lambda r, op: _leaky_relu(r, op, np.float32(op.builtinOptions.alpha)),
    **{name: _relu for name in RELU_RANGES},
    "RESIZE_NEAREST_NEIGHBOR": _resize_nearest,
}


# The batch-dependent output size of a TRANSPOSE_CONV (SHAPE of the input, a slice of
# it, packed with the constant H, W, C): int32 arithmetic the runtime does not need, as
# its tensors are per sample and TRANSPOSE_CONV takes its size from its output tensor.
SHAPE_OPS = ("SHAPE", "STRIDED_SLICE", "PACK")


def _is_shape_arithmetic(r: _Reader, op) -> bool:
    return all(r.graph.tensors[t].type == r.S.TensorType.INT32 for t in op.outputs)


def from_tflite(data: bytes, rounding: int = 0) -> tuple[bytes, list[str]]:
    """The runtime model file for an int8 .tflite, and the .tflite name of each of its
    tensors."""
    r = _Reader(data)
    r.rounding = rounding
    g = r.graph
    inp = r.act(g.inputs[0])
    for op in r.operators:
        name = r.op_name(op)
        if name in SHAPE_OPS and _is_shape_arithmetic(r, op):
            continue
        if name not in OPS:
            raise UnsupportedOpError(name, r.layer(op.outputs[0]), "mcu backend", OPS)
        OPS[name](r, op)
    names = [""] * len(r.tensors)
    for t, i in r.index.items():
        names[i] = r.layer(t)
    return F.pack(F.MODE_S8, r.tensors, r.ops, inp, r.index[g.outputs[0]]), names
