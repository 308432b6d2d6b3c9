"""FPGA fixed-point backend: the C reference runtime in HLS ap_fixed arithmetic.

export() writes the runtime's model file (MODE_FX) straight from the IR and the plan:
every tensor's fractional bits are -log2 of its power-of-two plan scale, weights are
the plan's b-bit integers, and all other integers (bias, shifts, clamp ranges,
reciprocals) come from deployq.fixedpoint.lower, the same code the bit-exact NumPy
model runs. Tensors are NHWC in the file; the IR is NCHW, so weights are transposed
and a flatten gets a TRANSPOSE before it to keep PyTorch's element order.
Beside model.dqm, tensors.json names each runtime tensor (index -> IR tensor) and
records the input quantization. docs/fpga-fixed.md describes the arithmetic."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import fixedpoint as FX
from .. import graph as G
from .. import rtformat as F
from ..errors import ExportError, InputError, TargetError
from ..io import atomic_write
from ..plan import QParams, QuantPlan
from . import crunner

ARTIFACT = "model.dqm"
TENSORS = "tensors.json"
CAPABILITIES = crunner.CAPABILITIES | {"mirror", "hls4ml_project", "semantics"}


def export(graph: G.Graph, plan: QuantPlan, target, out_dir: Path, calib=None):
    fx = lower(graph, plan, target)
    blob, names = build(fx)
    out_dir = Path(out_dir)
    path = out_dir / ARTIFACT
    meta = {"input_quant": fx.input_quant, "input_bits": fx.input_bits,
            "input_frac": fx.input_frac, "output_frac": fx.layers[graph.output].frac,
            "output_bits": fx.bits(graph.output),
            "output_shape": list(graph.node(graph.output).shape), "tensors": names,
            "unsigned_zero_points": _unsigned_zero_points(fx, plan, names)}
    atomic_write(out_dir / TENSORS, json.dumps(meta, indent=1).encode())
    atomic_write(path, blob)
    from .. import runtime
    runtime.Model(blob, str(path))            # the loader's validation, once, at export
    return path, plan


def lower(graph: G.Graph, plan: QuantPlan, target) -> FX.FxModel:
    """The fixed-point integers of every layer, after the backend's checks."""
    for node in graph.nodes:
        FX.check_supported(graph, node)
    quant = plan.config.resolve(target, G.INPUT, "input")["rounding"]
    if quant not in FX.QUANT:
        raise TargetError(f"target {target.name}: rounding={quant!r}; "
                          f"choose one of {', '.join(FX.QUANT)}")
    fx = FX.lower(graph, plan, FX.Options.from_target(target), quant)
    for name, layer in fx.layers.items():
        if layer.quant not in FX.QUANT:
            raise TargetError(f"layer '{name}': rounding={layer.quant!r}; "
                              f"choose one of {', '.join(FX.QUANT)}")
    FX.check_ranges(fx)
    return fx


def _unsigned_zero_points(fx: FX.FxModel, plan: QuantPlan, names: list[str]) -> dict:
    """Runtime tensor -> the plan's zero point, for the tensors of unsigned layers (also
    a reshape's extra '<layer>/chw' copies: the same integers, reordered)."""
    zps = {n: int(plan.tensor(n).zero_point[0]) for n, l in fx.layers.items() if l.unsigned}
    return {t: zps[t.split("/")[0]] for t in names if t.split("/")[0] in zps}


def mirror(graph: G.Graph, plan: QuantPlan, target, temperature: float = 1.0):
    """The bit-exact differentiable mirror (deployq.fxmirror) for BPDA attacks: the
    fixed-point forward pass of this target with straight-through gradients."""
    from ..fxmirror import FxMirror
    return FxMirror(lower(graph, plan, target), temperature)


def hls4ml_check(graph: G.Graph, target) -> None:
    """hls4ml is installed and takes every layer of graph (else one error naming each)."""
    from .. import hls4ml_export
    hls4ml_export.import_hls4ml()
    hls4ml_export.check_graph(graph, FX.Options.from_target(target))


def hls4ml_project(graph: G.Graph, plan: QuantPlan, target, out_dir: Path) -> Path:
    """The plan's fixed-point integers as an hls4ml project (deployq.hls4ml_export)."""
    from .. import hls4ml_export
    return hls4ml_export.export(lower(graph, plan, target), Path(out_dir))


def certifiable(target) -> None:
    """Every rounding and overflow mode is modelled exactly (deployq.fixedpoint)."""


def semantics(exported, graph: G.Graph, runner):
    from .. import certification as certify
    plan, target = exported.plan, exported.target
    return certify.fx_semantics(exported, graph, runner, lower(graph, plan, target),
                                mirror(graph, plan, target))


def load(path: Path, target=None, threads: int = 1) -> "Runner":
    """threads: accepted for the protocol; the C runtime runs one thread."""
    from .. import runtime
    return Runner(Path(path), runtime.kernels_of(target))


def extras(out_dir: Path) -> dict:
    return crunner.arena_extras(Path(out_dir) / ARTIFACT)


class Runner(crunner.CRunner):
    """Runs model.dqm. The input is quantized as the hardware's input conversion
    would: x * 2^frac rounded by the target's quantization mode (trn: floor), then
    saturated to the input bits. Both grids are powers of two with zero point 0."""

    def __init__(self, path: Path, kernels: str | None = None):
        from .. import runtime
        self.model = runtime.Model(path.read_bytes(), str(path), kernels)
        self.meta = m = json.loads((path.parent / TENSORS).read_text())
        if "output_bits" not in m:
            raise InputError(f"{path.parent / TENSORS} was written by an older deployq; "
                             "re-export the target with 'deployq export'")
        self.names = m["tensors"]                  # runtime tensor index -> IR tensor
        self.input_qp = _grid(m["input_bits"], m["input_frac"])
        self.output_qp = _grid(m["output_bits"], m["output_frac"])

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """NCHW float -> NCHW integer codes."""
        m = self.meta
        return FX.quantize_input(x, m["input_frac"], m["input_bits"], m["input_quant"])

    def run_codes(self, q: np.ndarray) -> np.ndarray:
        """Integer outputs (N, *output shape), in the IR's NCHW order."""
        out = self.raw_codes(q).astype(np.int64)
        shape = self.meta["output_shape"]
        if len(shape) == 3:
            return out.reshape(len(out), shape[1], shape[2], shape[0]).transpose(0, 3, 1, 2)
        return out.reshape(len(out), *shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        return FX.dequantize(self.run_codes(self.quantize(x)), self.meta["output_frac"])

    def layer_of(self, tensor: str) -> str | None:
        """Runtime tensors carry IR names; the extra ones of a reshape ('<layer>/chw',
        '<layer>/chw_out', and '<layer>/hwc', a flatten held channels-last) belong to
        none: their elements are not in the IR's order."""
        return None if tensor.endswith(("/chw", "/chw_out", "/hwc")) else tensor

    def dump(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every tensor for one float sample on its plan's grid (value = scale * (q -
        zero point)): the runtime holds an unsigned tensor's integers u = q - zero point
        (fixedpoint.is_unsigned), so those are shifted back by the plan's -2^(b-1)."""
        tensors = super().dump(x)
        for name, zp in self.meta.get("unsigned_zero_points", {}).items():
            tensors[name] = tensors[name].astype(np.int16) + zp
        return tensors


def _grid(bits: int, frac: int) -> QParams:
    return QParams(bits, np.array([2.0 ** -frac], np.float32), np.zeros(1, np.int64))


# --- IR + integers -> runtime model file ---------------------------------------

class _Writer:
    def __init__(self, fx: FX.FxModel):
        self.fx = fx
        self.index: dict[str, int] = {}
        self.tensors: list[F.Tensor] = []
        self.names: list[str] = []
        self.ops: list[F.Op] = []

    def tensor(self, name: str, dims: tuple[int, int, int] | None = None) -> int:
        """The runtime index of IR tensor `name` (dims: an extra tensor's own shape)."""
        if name not in self.index:
            shape = self.fx.graph.shape_of(name)
            self.index[name] = len(self.tensors)
            self.tensors.append(F.Tensor(dims or hwc(shape, name), 0, self.fx.bits(name),
                                         self.fx.frac(name)))
            self.names.append(name)
        return self.index[name]

    def extra(self, name: str, like: str, dims: tuple[int, int, int]) -> int:
        """A runtime-only tensor with the quantization of IR tensor `like`."""
        self.index[name] = len(self.tensors)
        self.tensors.append(F.Tensor(dims, 0, self.fx.bits(like), self.fx.frac(like)))
        self.names.append(name)
        return self.index[name]


def hwc(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(shape) == 3:
        return (shape[1], shape[2], shape[0])
    if len(shape) == 1:
        return (1, 1, shape[0])
    raise ExportError(f"tensor '{name}' has shape {shape}; the fixed-point runtime holds "
                      "(C, H, W) or (N,) tensors")


def _requant_params(layer: FX.FxLayer, fx: FX.FxModel) -> dict:
    o = fx.options
    return {"rounding": FX.QUANT[layer.quant], "act_min": layer.act[0],
            "act_max": layer.act[1], "acc_bits": o.acc_bits,
            "acc_overflow": FX.OVERFLOW[o.acc_overflow],
            "out_overflow": FX.OVERFLOW[o.out_overflow]}


def _conv(w: _Writer, layer: FX.FxLayer) -> None:
    n, a = layer.node, layer.node.attrs
    x = w.tensor(n.inputs[0])
    in_ch = w.fx.graph.shape_of(n.inputs[0])[0]
    weight = layer.weight.astype(np.int8)
    n_out, _, kh, kw = weight.shape
    depthwise = a["groups"] == in_ch and in_ch > 1
    params = {"stride_h": a["stride"][0], "stride_w": a["stride"][1],
              "pad_top": a["padding"][0], "pad_left": a["padding"][1],
              "dilation_h": a["dilation"][0], "dilation_w": a["dilation"][1],
              "groups": n_out // in_ch if depthwise else a["groups"],
              "kernel_h": kh, "kernel_w": kw, **_requant_params(layer, w.fx)}
    filt = weight[:, 0].transpose(1, 2, 0) if depthwise else weight.transpose(0, 2, 3, 1)
    w.ops.append(F.Op("depthwise_conv2d" if depthwise else "conv2d", [x], w.tensor(n.name),
                      params, _requant_data(filt, layer)))


def _conv_transpose(w: _Writer, layer: FX.FxLayer) -> None:
    """TRANSPOSE_CONV with the IR's own padding as the leading crop (groups 1)."""
    n, a = layer.node, layer.node.attrs
    weight = layer.weight.astype(np.int8)
    kh, kw = weight.shape[2:]
    params = {"stride_h": a["stride"][0], "stride_w": a["stride"][1],
              "pad_top": a["padding"][0], "pad_left": a["padding"][1],
              "dilation_h": 1, "dilation_w": 1, "groups": 1,
              "kernel_h": kh, "kernel_w": kw, **_requant_params(layer, w.fx)}
    w.ops.append(F.Op("transpose_conv", [w.tensor(n.inputs[0])], w.tensor(n.name), params,
                      _requant_data(weight.transpose(0, 2, 3, 1), layer)))


def _requant_data(filt: np.ndarray, layer: FX.FxLayer) -> list[np.ndarray]:
    """data: filter, bias, (multiplier: unused in FX), shift."""
    return [filt.reshape(-1), layer.bias.astype(np.int32), np.zeros(0, np.int32),
            layer.shift.astype(np.int32)]


def _linear(w: _Writer, layer: FX.FxLayer) -> None:
    """The kernel adds inputs in memory order: with sum_order 'hwc' the flatten before
    left its input channels-last (_reshape), and the weight columns follow it."""
    n, weight = layer.node, layer.weight
    if layer.extra.get("order") is not None:
        weight = weight[:, layer.extra["order"]]
    w.ops.append(F.Op("fully_connected", [w.tensor(n.inputs[0])], w.tensor(n.name),
                      _requant_params(layer, w.fx),
                      _requant_data(weight.astype(np.int8), layer)))


def _add(w: _Writer, layer: FX.FxLayer) -> None:
    n = layer.node
    params = {0: layer.extra["common"], **_requant_params(layer, w.fx)}
    w.ops.append(F.Op("add", [w.tensor(i) for i in n.inputs], w.tensor(n.name), params))


def _mul(w: _Writer, layer: FX.FxLayer) -> None:
    """The shift is the tensors' frac_in1 + frac_in2 - frac_out (dq_invoke.c)."""
    n = layer.node
    w.ops.append(F.Op("mul", [w.tensor(i) for i in n.inputs], w.tensor(n.name),
                      _requant_params(layer, w.fx)))


def _window(layer: FX.FxLayer) -> dict:
    a = layer.node.attrs
    return {"stride_h": a["stride"][0], "stride_w": a["stride"][1],
            "pad_top": a["padding"][0], "pad_left": a["padding"][1],
            "kernel_h": a["kernel"][0], "kernel_w": a["kernel"][1],
            "act_min": layer.act[0], "act_max": layer.act[1]}


def _mean_params(layer: FX.FxLayer, w: _Writer) -> dict:
    """pool_division 'reciprocal': reciprocal, reciprocal_bits; 'divide': pool_division
    1, the guard bits and the accumulator (fixedpoint._scaled_mean)."""
    o, e = w.fx.options, layer.extra
    p = {"rounding": FX.QUANT[layer.quant], "act_min": layer.act[0],
         "act_max": layer.act[1], "out_overflow": FX.OVERFLOW[o.out_overflow]}
    n = layer.node
    exclude = int(n.op == "avgpool" and np.ndim(e.get("count", e.get("reciprocal"))) > 0)
    p["exclude_pad"] = exclude          # the kernel counts each window (and its reciprocal)
    if "count" in e:
        return p | {"pool_division": 1, "guard_bits": e["guard_bits"],
                    "acc_bits": o.acc_bits, "acc_overflow": FX.OVERFLOW[o.acc_overflow]}
    return p | {"reciprocal": 0 if exclude else e["reciprocal"],
                "reciprocal_bits": e["reciprocal_bits"]}


def _maxpool(w: _Writer, layer: FX.FxLayer) -> None:
    n = layer.node
    w.ops.append(F.Op("max_pool", [w.tensor(n.inputs[0])], w.tensor(n.name), _window(layer)))


def _avgpool(w: _Writer, layer: FX.FxLayer) -> None:
    n = layer.node
    w.ops.append(F.Op("avg_pool", [w.tensor(n.inputs[0])], w.tensor(n.name),
                      _window(layer) | _mean_params(layer, w)))


def _gap(w: _Writer, layer: FX.FxLayer) -> None:
    n = layer.node
    w.ops.append(F.Op("mean", [w.tensor(n.inputs[0])], w.tensor(n.name), _mean_params(layer, w)))


def _concat(w: _Writer, layer: FX.FxLayer) -> None:
    n = layer.node
    w.ops.append(F.Op("concat", [w.tensor(i) for i in n.inputs], w.tensor(n.name), {0: 2}))


def _clamp(w: _Writer, layer: FX.FxLayer) -> None:
    n = layer.node
    w.ops.append(F.Op("clamp", [w.tensor(n.inputs[0])], w.tensor(n.name),
                      {"act_min": layer.act[0], "act_max": layer.act[1]}))


def _pad(w: _Writer, layer: FX.FxLayer) -> None:
    n = layer.node
    top, bottom, left, right = n.attrs["pads"]
    params = {"before_h": top, "after_h": bottom, "before_w": left, "after_w": right,
              "pad_mode": 0}
    w.ops.append(F.Op("pad", [w.tensor(n.inputs[0])], w.tensor(n.name), params))


def _upsample(w: _Writer, layer: FX.FxLayer) -> None:
    """RESIZE_NEAREST with neither flag: in[floor(i * in / out)] = in[i // s]."""
    n = layer.node
    w.ops.append(F.Op("resize_nearest", [w.tensor(n.inputs[0])], w.tensor(n.name)))


def _reshape(w: _Writer, layer: FX.FxLayer) -> None:
    """A reshape in NCHW element order: HWC -> CHW memory (TRANSPOSE), a RESHAPE, and
    CHW -> HWC again when the result is a feature map. Where H*W == 1 or C == 1 both
    orders coincide and the TRANSPOSE is left out."""
    n = layer.node
    src, shape = n.inputs[0], w.fx.graph.shape_of(n.inputs[0])
    x = w.tensor(src)
    if _hwc_flatten(w.fx, n):
        # the runtime tensor holds the flatten in (h, w, c) order: not the IR's element
        # order, so it is named apart (its consumers read it through the IR name)
        t = w.extra(f"{n.name}/hwc", n.name, (1, 1, n.shape[0]))
        w.index[n.name] = t
        w.ops.append(F.Op("reshape", [x], t))
        return
    if len(shape) == 3 and shape[0] > 1 and shape[1] * shape[2] > 1:
        t = w.extra(f"{n.name}/chw", src, (shape[0], shape[1], shape[2]))
        w.ops.append(F.Op("transpose", [x], t, {0: 2, 1: 0, 2: 1}))
        x = t
    out = n.shape
    if len(out) == 3 and out[0] > 1 and out[1] * out[2] > 1:
        t = w.extra(f"{n.name}/chw_out", n.name, (out[0], out[1], out[2]))
        w.ops.append(F.Op("reshape", [x], t))
        w.ops.append(F.Op("transpose", [t], w.tensor(n.name), {0: 1, 1: 2, 2: 0}))
        return
    w.ops.append(F.Op("reshape", [x], w.tensor(n.name)))


def _hwc_flatten(fx: FX.FxModel, node: G.Node) -> bool:
    """A flatten whose consumers add its elements channels-last (sum_order 'hwc')."""
    return any(fx.layers[c.name].extra.get("order") is not None
               for c in fx.graph.nodes if node.name in c.inputs and c.op == "linear")


# In FX mode the four activation op codes run one ROM kernel; the table, not the code,
# is the function. SiLU takes the code of its family.
ACTIVATION_CODES = {"sigmoid": "logistic", "tanh": "tanh",
                    "hardswish": "hard_swish", "silu": "hard_swish",
                    "leaky_relu": "leaky_relu"}


def _activation(w: _Writer, layer: FX.FxLayer) -> None:
    n = layer.node
    w.ops.append(F.Op(ACTIVATION_CODES[n.op], [w.tensor(n.inputs[0])], w.tensor(n.name), {},
                      [layer.extra["table"].astype(np.int8)]))


OPS = {"conv2d": _conv, "conv_transpose": _conv_transpose,
       "linear": _linear, "add": _add, "mul": _mul, "maxpool": _maxpool,
       "avgpool": _avgpool, "gap": _gap, "concat": _concat, "clamp": _clamp,
       "reshape": _reshape, "pad": _pad, "upsample": _upsample,
       **{op: _activation for op in ACTIVATION_CODES}}


def build(fx: FX.FxModel) -> tuple[bytes, list[str]]:
    """The model file and the IR name of each runtime tensor (by index)."""
    w = _Writer(fx)
    inp = w.tensor(G.INPUT)
    for node in fx.graph.nodes:
        OPS[node.op](w, fx.layers[node.name])
    blob = F.pack(F.MODE_FX, w.tensors, w.ops, inp, w.index[fx.graph.output])
    return blob, w.names
