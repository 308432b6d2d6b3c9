"""ONNX QDQ backend: the float graph with QuantizeLinear/DequantizeLinear pairs written
from the plan, run by ONNX Runtime, whose graph optimizer fuses each pattern into an
integer kernel (QLinearConv, QGemm, QLinearAdd, ...). export() checks the optimized
graph and refuses a model in which a conv or matmul would still run in float."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .. import graph as G
from ..errors import ExportError, TargetError, UnsupportedOpError
from ..io import atomic_write
from ..plan import QParams, QuantPlan, quantized_bias

ARTIFACT = "model.onnx"
CAPABILITIES = frozenset({"layer_times"})
OUTPUT = "logits"
FLOAT_COMPUTE = {"Conv", "Gemm", "MatMul", "ConvInteger"}
# Storage types. The plan's integers are int8; a uint8 tensor with zero point + 128 is
# the same grid with the same real values. Activations are stored as uint8, the form
# ORT's x86 kernels run (its own s8->u8 rewrite skips a QuantizeLinear with several
# consumers, leaving the neighbouring ops in float). Weights are stored as uint8 too by
# default (option weight_dtype): ORT's U8S8 kernels on AVX2 CPUs without VNNI sum
# u8*s8 products pairwise in saturating int16 (vpmaddubsw) and were measured up to 9
# output LSBs off (tests/backends/test_onnx.py); the U8U8 kernels do not saturate.
U8_SHIFT = 128
# the sigmoid inside SiLU: on the grid TFLite's LOGISTIC uses (docs/tflite-int8-arithmetic.md)
SIGMOID_GRID = QParams(8, np.array([1 / 256], np.float32), np.array([-128]))
QDQ = ("QuantizeLinear", "DequantizeLinear")
log = logging.getLogger(__name__)
WEIGHT_DTYPES = {"uint8": (np.uint8, U8_SHIFT), "int8": (np.int8, 0)}


def export(graph: G.Graph, plan: QuantPlan, target, out_dir: Path,
           calib: np.ndarray | None = None) -> tuple[Path, QuantPlan]:
    opts = target.options
    model = build(graph, plan, int(opts.get("opset", 17)), opts.get("weight_dtype", "uint8"))
    path = Path(out_dir) / ARTIFACT
    atomic_write(path, model.SerializeToString())
    float_ops = sorted(FLOAT_COMPUTE & set(kernels(path)))
    if float_ops:
        raise ExportError(f"ONNX Runtime would run {', '.join(float_ops)} in float after "
                          "optimization; the QDQ pattern was not fused")
    islands = float_islands(path, graph)
    for i in islands:
        log.warning("%s: ONNX Runtime has no integer kernel for %s at layer '%s': it runs "
                    "in float between DequantizeLinear and QuantizeLinear", target.name,
                    i["op"], i["layer"])
    if islands:
        plan = dataclasses.replace(plan, provenance=plan.provenance
                                   | {"onnx_float_islands": islands})
    return path, plan


def load(path: Path, target=None, threads: int = 1) -> "Runner":
    return Runner(Path(path), threads)


class Runner:
    """One ONNX Runtime session. Its input and output grids are read from the model's
    QuantizeLinear/DequantizeLinear constants (stored as uint8 = int8 code + 128)."""
    LAYER_TIMER = "ONNX Runtime profiler"

    def __init__(self, path: Path, threads: int = 1):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path, self.threads = path, threads
        self.input_qp, self.output_qp = _grids(onnx.load(str(path)))

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """int8 codes as the input QuantizeLinear computes them: x / scale in float32,
        rounded half to even (MLAS), plus the zero point, saturated."""
        qp = self.input_qp
        r = np.round(np.asarray(x, np.float32) / np.float32(qp.scale[0]))
        return np.clip(r + qp.zero_point[0], qp.qmin, qp.qmax).astype(np.int8)

    def run_codes(self, q: np.ndarray) -> np.ndarray:
        """int8 output codes for int8 input codes: the codes' real values go in, and
        the input QuantizeLinear gives the same codes back."""
        x = self.input_qp.dequantize(np.asarray(q, np.int64))
        return self.output_qp.quantize(self.run(x)).astype(np.int8)

    def run(self, x: np.ndarray, batch: int = 1024) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        return np.concatenate([self.session.run([OUTPUT], {G.INPUT: x[i:i + batch]})[0]
                               for i in range(0, len(x), batch)])

    def layer_times(self, x: np.ndarray, repeats: int = 20) -> list[dict]:
        """ONNX Runtime's own per-node timings (its profiler), slowest first."""
        return layer_times(self.path, np.asarray(x, np.float32), repeats, self.threads)


def _grids(model: onnx.ModelProto) -> tuple[QParams, QParams]:
    """(input, output) int8 grids from the first QuantizeLinear's and the output
    DequantizeLinear's constants."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    def grid(prefix: str) -> QParams:
        scale = np.atleast_1d(consts[f"{prefix}:scale"]).astype(np.float32)
        zp = np.atleast_1d(consts[f"{prefix}:zp"]).astype(np.int64) - U8_SHIFT
        return QParams(8, scale, zp)
    return grid(f"{G.INPUT}:dq"), grid(OUTPUT)


def layer_times(path: Path, x: np.ndarray, runs: int = 20, threads: int = 1) -> list[dict]:
    """ONNX Runtime's profiler on batch 1: microseconds per run of each node's kernel."""
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, {G.INPUT: x[:1]})
        events = json.loads(Path(session.end_profiling()).read_text())
    total: dict[tuple[str, str], float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = (e["name"][: -len("_kernel_time")], e.get("args", {}).get("op_name", "?"))
            total[key] = total.get(key, 0.0) + e["dur"]
    rows = [{"node": n, "op": op, "us_per_run": v / runs} for (n, op), v in total.items()]
    return sorted(rows, key=lambda r: -r["us_per_run"])


def kernels(path: Path) -> Counter:
    """Op types of the graph ONNX Runtime executes after its optimizations."""
    return Counter(n.op_type for n in optimized_nodes(path))


def float_islands(path: Path, graph: G.Graph | None = None) -> list[dict]:
    """The nodes of the optimized graph that compute in float: those that read the
    output of a DequantizeLinear (an integer kernel reads integers), by IR layer (a
    node ORT made, e.g. by splitting HardSwish, by the first named node it feeds)."""
    nodes = optimized_nodes(path)
    dequantized = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    layers = {n.name for n in graph.nodes} if graph is not None else None
    readers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return [{"layer": _layer_of(n, layers, readers), "op": n.op_type} for n in nodes
            if n.op_type not in QDQ and dequantized & set(n.input)]


def _layer_of(node, layers: set | None, readers: dict) -> str:
    """The IR layer of an optimized node: its name's prefix, or that of the first node
    it feeds whose prefix is a layer."""
    if layers is None:
        return node.name.split(":")[0]
    seen, todo = set(), [node]
    while todo:
        n = todo.pop(0)
        prefix = n.name.split(":")[0]
        if prefix in layers:
            return prefix
        for o in n.output:
            for r in readers.get(o, []):
                if id(r) not in seen:
                    seen.add(id(r))
                    todo.append(r)
    return node.name or node.op_type


def optimized_nodes(path: Path) -> list:
    """The nodes ONNX Runtime executes after its optimizations, in order."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.log_severity_level = 3          # silence the NchwcTransformer warning
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath)
    return list(optimized.graph.node)


# --- building the QDQ graph ----------------------------------------------------------

class _Builder:
    def __init__(self, plan: QuantPlan, weight_dtype: str):
        if weight_dtype not in WEIGHT_DTYPES:
            raise TargetError(f"onnx option weight_dtype={weight_dtype!r}; "
                              f"choose one of {', '.join(WEIGHT_DTYPES)}")
        self.plan = plan
        self.weight_dtype, self.weight_zp = WEIGHT_DTYPES[weight_dtype]
        self.nodes: list[onnx.NodeProto] = []
        self.conv_pads: dict[str, tuple] = {}     # conv layer -> pads of a folded pad
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def dequant(self, name: str, q: np.ndarray, scale: np.ndarray, axis: int | None,
                dtype, zp: int = 0) -> str:
        """An integer initializer (q + zp, stored as dtype) and its DequantizeLinear."""
        per_channel = axis is not None
        s = scale.astype(np.float32) if per_channel else np.float32(scale[0])
        z = np.full(len(scale) if per_channel else (), zp, dtype)
        args = [self.const(f"{name}:q", (q.astype(np.int64) + zp).astype(dtype)),
                self.const(f"{name}:scale", s), self.const(f"{name}:zp", z)]
        extra = {"axis": axis} if per_channel else {}
        return self.node("DequantizeLinear", args, f"{name}:dq", **extra)

    def qdq(self, src: str, qp: QParams, out: str) -> str:
        """Quantize then dequantize the float tensor src with per-tensor parameters."""
        s = self.const(f"{out}:scale", np.float32(qp.scale[0]))
        z = self.const(f"{out}:zp", np.uint8(qp.zero_point[0] + U8_SHIFT))
        q = self.node("QuantizeLinear", [src, s, z], f"{out}:q")
        return self.node("DequantizeLinear", [q, s, z], out)

    def weights(self, node: G.Node) -> tuple[str, str]:
        lp = self.plan.layers[node.name]
        w = self.dequant(f"{node.name}.weight", lp.weight.quantize(node.weight),
                         lp.weight.scale, lp.weight.axis, self.weight_dtype, self.weight_zp)
        bscale = self.plan.bias_scale(node.name, node.inputs[0])
        bq = quantized_bias(node.bias, np.broadcast_to(bscale, node.bias.shape))
        b = self.dequant(f"{node.name}.bias", bq, bscale, lp.weight.axis, np.int32)
        return w, b

    def act(self, node: G.Node, y: str) -> str:
        act = node.attrs.get("act")
        if act is None:
            return y
        lo, hi = act
        if lo == 0 and math.isinf(hi):
            return self.node("Relu", [y], f"{node.name}:relu")
        return self.clip(y, lo, hi, f"{node.name}:clip")

    def clip(self, y: str, lo: float, hi: float, out: str) -> str:
        lo_name = self.const(f"{out}:min", np.float32(lo)) if math.isfinite(lo) else ""
        hi_name = self.const(f"{out}:max", np.float32(hi)) if math.isfinite(hi) else ""
        return self.node("Clip", [y, lo_name, hi_name], out)


def _pads(p) -> list[int]:
    return [p[0], p[1], p[0], p[1]]


def _conv(b: _Builder, n: G.Node, xs: list[str]) -> str:
    """A zero pad before (folded_pads) joins the conv's own padding: ORT has no integer
    Pad kernel, and a Conv's pads may differ per side."""
    w, bias = b.weights(n)
    a = n.attrs
    top, bottom, left, right = b.conv_pads.get(n.name, (0, 0, 0, 0))
    ph, pw = a["padding"]
    y = b.node("Conv", [xs[0], w, bias], f"{n.name}:conv", strides=list(a["stride"]),
               pads=[ph + top, pw + left, ph + bottom, pw + right], dilations=list(a["dilation"]), group=a["groups"],
               kernel_shape=list(n.weight.shape[2:]))
    return b.act(n, y)


def _conv_transpose(b: _Builder, n: G.Node, xs: list[str]) -> str:
    """ConvTranspose; its weight (I, O, kh, kw) is the IR's (O, I, kh, kw) swapped, the
    integers transposed before their DequantizeLinear (per channel on axis 1) so no
    float op sits between them. output_padding adds rows that only the bias reaches."""
    lp, a = b.plan.layers[n.name], n.attrs
    q = np.swapaxes(lp.weight.quantize(n.weight), 0, 1)
    axis = 1 if lp.weight.axis is not None else None
    w = b.dequant(f"{n.name}.weight", q, lp.weight.scale, axis, b.weight_dtype, b.weight_zp)
    bscale = b.plan.bias_scale(n.name, n.inputs[0])
    bq = quantized_bias(n.bias, np.broadcast_to(bscale, n.bias.shape))
    bias = b.dequant(f"{n.name}.bias", bq, bscale, lp.weight.axis, np.int32)
    ph, pw = a["padding"]
    y = b.node("ConvTranspose", [xs[0], w, bias], f"{n.name}:convt",
               strides=list(a["stride"]), pads=[ph, pw, ph, pw],
               output_padding=list(a["output_padding"]),
               kernel_shape=list(n.weight.shape[2:]))
    return b.act(n, y)


def _linear(b: _Builder, n: G.Node, xs: list[str]) -> str:
    w, bias = b.weights(n)
    return b.act(n, b.node("Gemm", [xs[0], w, bias], f"{n.name}:gemm", transB=1))


def _maxpool(b: _Builder, n: G.Node, xs: list[str]) -> str:
    a = n.attrs
    return b.node("MaxPool", xs, f"{n.name}:maxpool", kernel_shape=list(a["kernel"]),
                  strides=list(a["stride"]), pads=_pads(a["padding"]),
                  dilations=list(a["dilation"]), ceil_mode=int(a["ceil_mode"]))


def _avgpool(b: _Builder, n: G.Node, xs: list[str]) -> str:
    a = n.attrs
    return b.node("AveragePool", xs, f"{n.name}:avgpool", kernel_shape=list(a["kernel"]),
                  strides=list(a["stride"]), pads=_pads(a["padding"]),
                  ceil_mode=int(a["ceil_mode"]),
                  count_include_pad=int(a["count_include_pad"]))


def _pad(b: _Builder, n: G.Node, xs: list[str]) -> str:
    top, bottom, left, right = n.attrs["pads"]
    pads = b.const(f"{n.name}:pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
    zero = b.const(f"{n.name}:value", np.float32(0.0))
    return b.node("Pad", [xs[0], pads, zero], f"{n.name}:pad", mode="constant")


def _upsample(b: _Builder, n: G.Node, xs: list[str]) -> str:
    """Resize, nearest, 'asymmetric' coordinates rounded down: in[floor(i / s)]."""
    scales = b.const(f"{n.name}:scales", np.array([1, 1, *n.attrs["scale"]], np.float32))
    return b.node("Resize", [xs[0], "", scales], f"{n.name}:resize", mode="nearest",
                  coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def _reshape(b: _Builder, n: G.Node, xs: list[str]) -> str:
    shape = b.const(f"{n.name}:shape", np.array([-1, *n.shape], np.int64))
    return b.node("Reshape", [xs[0], shape], f"{n.name}:reshape")


def _silu(b: _Builder, n: G.Node, xs: list[str]) -> str:
    """x * sigmoid(x), the sigmoid quantized on LOGISTIC's grid (as TFLite lowers it)."""
    sig = b.qdq(b.node("Sigmoid", xs, f"{n.name}:sigmoid"), SIGMOID_GRID, f"{n.name}:sig_dq")
    return b.node("Mul", [xs[0], sig], f"{n.name}:mul")


OPS = {
    "conv2d": _conv,
    "conv_transpose": _conv_transpose,
    "linear": _linear,
    "add": lambda b, n, xs: b.act(n, b.node("Add", xs, f"{n.name}:add")),
    "mul": lambda b, n, xs: b.act(n, b.node("Mul", xs, f"{n.name}:mul")),
    "concat": lambda b, n, xs: b.node("Concat", xs, f"{n.name}:concat", axis=1),
    "maxpool": _maxpool,
    "avgpool": _avgpool,
    "gap": lambda b, n, xs: b.node("GlobalAveragePool", xs, f"{n.name}:gap"),
    "reshape": _reshape,
    "clamp": lambda b, n, xs: b.clip(xs[0], n.attrs["lo"], n.attrs["hi"], f"{n.name}:clip"),
    "sigmoid": lambda b, n, xs: b.node("Sigmoid", xs, f"{n.name}:sigmoid"),
    "tanh": lambda b, n, xs: b.node("Tanh", xs, f"{n.name}:tanh"),
    "hardswish": lambda b, n, xs: b.node("HardSwish", xs, f"{n.name}:hardswish"),
    "leaky_relu": lambda b, n, xs: b.node("LeakyRelu", xs, f"{n.name}:leaky_relu",
                                          alpha=n.attrs["alpha"]),
    "silu": _silu,
    "pad": _pad,
    "upsample": _upsample,
}


def folded_pads(graph: G.Graph) -> dict[str, str]:
    """Pad layers whose only reader is a conv2d (not the output): pad -> conv."""
    out = {}
    for n in graph.nodes:
        readers = graph.consumers(n.name)
        if n.op == "pad" and len(readers) == 1 and readers[0].op == "conv2d":
            out[n.name] = readers[0].name
    return out


def build(graph: G.Graph, plan: QuantPlan, opset: int = 17,
          weight_dtype: str = "uint8") -> onnx.ModelProto:
    b = _Builder(plan, weight_dtype)
    names = {G.INPUT: b.qdq(G.INPUT, plan.input, f"{G.INPUT}:dq")}
    folded = folded_pads(graph)
    for node in graph.nodes:
        if node.name in folded:         # same grid as its input (plan.SHARED_PARAMS)
            b.conv_pads[folded[node.name]] = node.attrs["pads"]
            names[node.name] = names[node.inputs[0]]
            continue
        if node.op not in OPS:
            raise UnsupportedOpError(node.op, node.name, "onnx backend", OPS)
        y = OPS[node.op](b, node, [names[i] for i in node.inputs])
        out = OUTPUT if node.name == graph.output else f"{node.name}:dq"
        names[node.name] = b.qdq(y, plan.tensor(node.name), out)
    inp = helper.make_tensor_value_info(G.INPUT, TensorProto.FLOAT, ["N", *graph.input_shape])
    out = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT,
                                        ["N", *graph.node(graph.output).shape])
    g = helper.make_graph(b.nodes, "deployq", [inp], [out], b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="deployq")
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model
