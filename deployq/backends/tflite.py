"""TFLite int8 backend: the IR converted to a full-integer .tflite by the official
converter (backends/tfgraph.py builds the TensorFlow graph) and run by LiteRT.

The plan's calibration setting picks the mode: 'plan' writes the plan's parameters and
integers into the file bit for bit; 'converter' lets TFLite's representative-dataset
calibration choose them, and export() reads them back from the file into a new plan.
Each IR layer's tensors carry the TF name scope 'L<index>' (the input's 'IN'); export()
writes the IR layer names beside the file (layers.json), which is how a runner names
the layer of a .tflite tensor.

The runner quantizes its float input as TFLite's QUANTIZE op does (see quantize_input),
feeds int8 NHWC, and dequantizes the int8 logits with the file's output parameters.
The file is read back with deployq.tflite_file (the schema LiteRT ships). TensorFlow is
imported only by export(); load() and run() need ai_edge_litert alone."""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from .. import graph as G
from ..errors import ExportError, TargetError
from ..io import atomic_write
from ..plan import QParams, QuantPlan
from ..tflite_file import TfliteFile
from . import tfgraph
from .tfgraph import INPUT_SCOPE

ARTIFACT = "model.tflite"
LAYERS = "layers.json"          # IR layer names in graph order (scope L<i> -> name)
CAPABILITIES = frozenset({"dump", "semantics"})
KERNELS = {"xnnpack": OpResolverType.AUTO, "reference": OpResolverType.BUILTIN_REF}
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")


# --- running ---------------------------------------------------------------------------

def certifiable(target) -> None:
    """Only the reference kernels: XNNPACK's integers differ from them (docs/tflite.md)."""
    if target.options.get("kernels", "xnnpack") != "reference":
        raise TargetError(f"cannot certify {target.name}: it runs LiteRT's XNNPACK kernels, "
                          "whose arithmetic deployq does not reproduce bit for bit; certify "
                          "its reference-kernel twin (tflite-int8-ref) instead")


def semantics(exported, graph, runner):
    """The .tflite translated to the C runtime's model file, which LiteRT's reference
    kernels match bit for bit (tests/runtime/test_mcu.py)."""
    from .. import certification as certify
    from . import get            # the mcu backend owns that translation (mcu imports us)
    blob, _ = get("mcu").from_tflite((exported.path.parent / ARTIFACT).read_bytes(), 0)
    return certify.s8_semantics(exported, graph, runner, blob)


def load(path: Path, target=None, threads: int = 1) -> "Runner":
    kernels = (target.options.get("kernels", "xnnpack") if target is not None
               else "xnnpack")
    if kernels not in KERNELS:
        raise TargetError(f"tflite option kernels={kernels!r} is unknown; "
                          f"known: {', '.join(KERNELS)}")
    return Runner(Path(path), kernels, threads)


class Runner:
    """One LiteRT interpreter; run() takes float NCHW in [0, 1] and returns logits."""

    def __init__(self, path: Path, kernels: str = "xnnpack", threads: int = 1):
        self.path, self.kernels = path, kernels
        self.interp = Interpreter(model_path=str(path), num_threads=threads,
                                  experimental_op_resolver_type=KERNELS[kernels])
        inp, out = self.interp.get_input_details()[0], self.interp.get_output_details()[0]
        self.input_index, self.output_index = inp["index"], out["index"]
        self.input_qp, self.output_qp = _qparams(inp), _qparams(out)
        self.layers = layer_names(path.parent)
        self.batch = None

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """NCHW float -> NCHW int8 codes, as this kernel set's QUANTIZE rounds."""
        return quantize_input(x, self.input_qp, self.kernels)

    def run(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return np.concatenate([self.run_int8(self.quantize(x[i:i + batch]))
                               for i in range(0, len(x), batch)])

    def run_int8(self, q: np.ndarray) -> np.ndarray:
        """Logits for int8 NCHW input codes: the int8 output, dequantized."""
        return self.output_qp.dequantize(self.run_codes(q).astype(np.int64))

    def run_codes(self, q: np.ndarray) -> np.ndarray:
        """The int8 output codes for int8 NCHW input codes."""
        if self.batch != len(q):
            shape = (len(q), *np.transpose(q, (0, 2, 3, 1)).shape[1:])
            self.interp.resize_tensor_input(self.input_index, shape)
            self.interp.allocate_tensors()
            self.batch = len(q)
        self.interp.set_tensor(self.input_index,
                               np.ascontiguousarray(np.transpose(q, (0, 2, 3, 1)), np.int8))
        self.interp.invoke()
        return self.interp.get_tensor(self.output_index).copy()

    def dump(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every int8 activation tensor for one float sample, by tensor name (a second
        interpreter that keeps all tensors)."""
        with warnings.catch_warnings():        # "intended for debugging": it is
            warnings.simplefilter("ignore")
            interp = Interpreter(model_path=str(self.path), num_threads=1,
                                 experimental_op_resolver_type=KERNELS[self.kernels],
                                 experimental_preserve_all_tensors=True)
        interp.allocate_tensors()
        q = self.quantize(np.asarray(x, np.float32)[None])
        interp.set_tensor(self.input_index, np.ascontiguousarray(np.transpose(q, (0, 2, 3, 1))))
        interp.invoke()
        produced = TfliteFile.read(self.path).produced() | {self.input_index}
        return {d["name"]: interp.get_tensor(d["index"]).reshape(-1).copy()
                for d in interp.get_tensor_details()
                if d["index"] in produced and d["dtype"] == np.int8}

    def layer_of(self, tensor: str) -> str | None:
        return layer_of_tensor(tensor, self.layers)


def layer_names(folder: Path) -> list[str]:
    """The IR layer names in graph order, as export() wrote them beside the .tflite
    (tensor names refer to layer i by the scope 'L<i>/'); [] for a foreign file."""
    path = Path(folder) / LAYERS
    return json.loads(path.read_text()) if path.is_file() else []


def layer_of_tensor(name: str, layers: list[str]) -> str | None:
    """The IR layer of a tensor name such as 'L3/Conv2D;L3/add' ('input' for the input
    scope), or None."""
    if name.startswith(f"{INPUT_SCOPE}/"):
        return G.INPUT
    return _scope_layer(name, layers)


def _scope_layer(name: str, layers: list[str]) -> str | None:
    """The layer of the first scope 'L<i>/' in a name such as 'L3/Conv2D;L3/add'."""
    m = re.search(r"(?:^|[;/])L(\d+)/", name)
    if m and int(m.group(1)) < len(layers):
        return layers[int(m.group(1))]
    return None


def quantize_input(x: np.ndarray, qp: QParams, kernels: str = "xnnpack") -> np.ndarray:
    """int8 codes for float x as LiteRT's QUANTIZE op (float32 -> int8) computes them.
    Measured (tests/backends/test_tflite.py), the two kernel sets differ on ties:
      xnnpack / optimized  x * float32(1 / scale), rounded half to even
      reference            x / scale in float32, rounded half away from zero
    then plus the zero point, saturated to [-128, 127]."""
    x = np.asarray(x, np.float32)
    s = np.float32(qp.scale[0])
    if kernels == "reference":
        v = (x / s).astype(np.float64)
        r = np.trunc(v + np.copysign(0.5, v))
    else:
        r = np.round(x * (np.float32(1) / s))
    return np.clip(r + qp.zero_point[0], qp.qmin, qp.qmax).astype(np.int8)


def _qparams(detail: dict, axis: int | None = None, narrow: bool = False) -> QParams:
    q = detail["quantization_parameters"]
    return QParams(8, np.asarray(q["scales"], np.float32),
                   np.asarray(q["zero_points"], np.int64), axis, narrow)


# --- export ----------------------------------------------------------------------------

def export(graph: G.Graph, plan: QuantPlan, target, out_dir: Path,
           calib: np.ndarray | None = None) -> tuple[Path, QuantPlan]:
    """Write out_dir/model.tflite; return it and the plan it carries."""
    tfgraph.check_supported(graph)
    mode = _mode(plan)
    if mode == "converter" and (calib is None or len(calib) == 0):
        raise ExportError("calibration=converter needs calibration samples")
    data = tfgraph.convert(graph, plan, mode, calib)
    path = Path(out_dir) / ARTIFACT
    atomic_write(path, data)
    atomic_write(Path(out_dir) / LAYERS, json.dumps([n.name for n in graph.nodes]).encode())
    contents = read(path, graph)
    contents.check_integer()
    if mode == "converter":
        return path, contents.as_plan(plan)
    return path, plan


def _mode(plan: QuantPlan) -> str:
    calibs = {lp.settings["calibration"] for lp in plan.layers.values()}
    if "converter" in calibs and len(calibs) > 1:
        raise TargetError(f"calibration=converter applies to the whole model, but the plan "
                          f"mixes {sorted(calibs)}")
    return "converter" if "converter" in calibs else "plan"


# --- reading a .tflite back --------------------------------------------------------------

@dataclass
class Contents:
    """What a .tflite holds, by IR name: activation parameters of the input and every
    layer, weight parameters and int8 weights (IR layout), int32 biases, and the ops."""
    graph: G.Graph
    activations: dict            # IR tensor name -> QParams
    weights: dict                # layer -> QParams (axis 0 when per-channel)
    int_weights: dict            # layer -> int8 array, IR layout (O, I/g, kh, kw) / (O, I)
    int_biases: dict             # layer -> int32 array
    ops: list                    # (op name, layer or None, input dtypes, output dtypes)

    def check_integer(self) -> None:
        """ExportError naming the layer of any op left in float, or any QUANTIZE /
        DEQUANTIZE (a float fallback) inside the graph."""
        for op, layer, in_types, out_types in self.ops:
            where = f"layer '{layer}'" if layer else "an unnamed op"
            if op in ("QUANTIZE", "DEQUANTIZE"):
                raise ExportError(f"the .tflite has a {op} op at {where}: part of the graph "
                                  "was not quantized (float fallback)")
            bad = [t for t in in_types + out_types if t not in ("int8", "int32")]
            if bad:
                raise ExportError(f"the .tflite runs {op} at {where} on {bad[0]} tensors; "
                                  "only int8 (int32 bias/shape) is allowed")

    def as_plan(self, plan: QuantPlan) -> QuantPlan:
        """plan with every parameter replaced by the file's (converter mode)."""
        new = QuantPlan.from_json(plan.to_json())
        new.input = self.activations[G.INPUT]
        for name, lp in new.layers.items():
            lp.output = self.activations[name]
            if name in self.weights:
                lp.weight = self.weights[name]
        new.provenance["calibrated_by"] = "tflite-converter"
        return new


def read(path: Path, graph: G.Graph) -> Contents:
    """Read the parameters and ops of a .tflite written by export() for graph."""
    f = TfliteFile.read(path)
    layers = [n.name for n in graph.nodes]
    tensor_layer = {i: _scope_layer(f.tensor_name(i), layers)
                    for i in range(len(f.graph.tensors))}
    tensor_layer[int(f.graph.outputs[0])] = graph.output
    acts = {G.INPUT: f.qparams(int(f.graph.inputs[0]))}
    weights, iw, ib = {}, {}, {}
    for op in f.operators:
        out = int(op.outputs[0])
        layer = tensor_layer.get(out)
        if layer is not None:
            acts[layer] = f.qparams(out)
        if f.op_name(op) in WEIGHT_OPS and layer is not None:
            _collect_weight(f, op, graph.node(layer), weights)
    for node in graph.nodes:                      # a layer with no op of its own
        if node.name not in acts:
            acts[node.name] = acts[node.inputs[0]]
    _finish_weights(graph, weights, iw, ib)
    summary = [(f.op_name(op), tensor_layer.get(int(op.outputs[0])),
                [f.dtype(i) for i in op.inputs if i >= 0], [f.dtype(i) for i in op.outputs])
               for op in f.operators]
    return Contents(graph, acts, weights, iw, ib, summary)


def _group_of(name: str) -> int:
    m = re.search(r"/g(\d+)/", name)
    return int(m.group(1)) if m else 0


def _collect_weight(f: TfliteFile, op, node: G.Node, weights) -> None:
    """Append one conv op's weights (a grouped conv has one op per group)."""
    w_idx, b_idx = int(op.inputs[1]), int(op.inputs[2])
    w = f.const(w_idx)
    if f.op_name(op) == "DEPTHWISE_CONV_2D":               # (1, kh, kw, O)
        w_ir = np.transpose(w, (3, 0, 1, 2))
    else:                                                  # (O, kh, kw, I)
        w_ir = np.transpose(w, (0, 3, 1, 2))
    if node.op == "linear":
        w_ir = w_ir.reshape(w_ir.shape[0], -1)
    group = _group_of(f.tensor_name(int(op.outputs[0])))
    scales = f.quant(w_idx)[0]
    per_tensor = len(scales) == 1
    scales = np.broadcast_to(scales, (w_ir.shape[0],)) if per_tensor else scales
    entry = weights.setdefault(node.name, {})
    entry[group] = (w_ir, scales, f.const(b_idx), per_tensor)


def _finish_weights(graph, weights, iw, ib) -> None:
    for name, groups in list(weights.items()):
        parts = [groups[g] for g in sorted(groups)]
        iw[name] = np.concatenate([p[0] for p in parts]).astype(np.int8)
        ib[name] = np.concatenate([p[2] for p in parts]).astype(np.int32)
        scales = np.concatenate([p[1] for p in parts]).astype(np.float32)
        per_tensor = all(p[3] for p in parts) and len(set(scales.tolist())) == 1
        weights[name] = (QParams(8, scales[:1].copy(), np.zeros(1, np.int64), None, True)
                         if per_tensor else
                         QParams(8, scales, np.zeros(len(scales), np.int64), 0, True))
