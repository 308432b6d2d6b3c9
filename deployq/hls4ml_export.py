"""fpga-fixed -> an hls4ml project (Vivado backend, io_parallel, Latency, reuse 1) whose
C simulation computes deployq's fixed-point outputs bit for bit.

hls4ml is given the BN-folded network of the IR as a float64 PyTorch module whose
weights and biases are the plan's integers times their powers of two (exact in float64
and in the decimal text hls4ml writes: a value k * 2^-f has f decimal digits), and one
ap_fixed type per layer field (docs/fpga-fixed.md, "hls4ml"):

  input / layer result   ap_fixed<b, b-f, Q, O_out>        (the input: O = AP_SAT)
  weight                 ap_fixed<b + F - f0, b - f0>      (f0, F: min / max f_w)
  bias, accum            ap_fixed<A, A - (f_x + F), AP_TRN, O_acc>
  ReLU                   a separate layer with the producer's result type (a ReLU
                         after a pool: the IR's clamp [0, inf), its own type)
  unsigned (relu_unsigned) the producer's result ap_fixed<b+1, b+1-f, Q, O_out>, its
                         ReLU's and every later pool's/flatten's ap_ufixed<b, b-f, Q, O_out>
  avg pool accum         ap_fixed<A, A - (f_x + g), AP_TRN, O_acc>   (g: pool_guard_bits)
  max pool, flatten      the input's type (values move unchanged)

hls4ml keeps one type per layer, so a per-channel layer whose f_w differ maps only when
its accumulator cannot overflow (its integers are then scaled by 2^(F - f_w[c]));
export refuses the others. hls4ml's PyTorch front end takes no ReLU6/Hardtanh range,
grouped or depthwise conv, adaptive/global average pool, residual add or concat in this
mapping: `check` names every such layer in one error. Nothing here estimates resources
(that needs the synthesis tools)."""
from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import fixedpoint as FX
from . import graph as G
from .errors import ExportError

Q_MODES = {"trn": "AP_TRN", "rnd": "AP_RND", "rnd_conv": "AP_RND_CONV"}
O_MODES = {"wrap": "AP_WRAP", "sat": "AP_SAT"}
INPUT = "x"                             # the placeholder (forward argument) name
CONFIG = "deployq_hls4ml.json"           # beside the hls4ml project: types and mapping
PROJECT = "project"


def ap_fixed(bits: int, frac: int, quant: str = "trn", overflow: str = "wrap") -> str:
    return f"ap_fixed<{bits},{bits - frac},{Q_MODES[quant]},{O_MODES[overflow]}>"


def ap_ufixed(bits: int, frac: int, quant: str = "trn", overflow: str = "wrap") -> str:
    return f"ap_ufixed<{bits},{bits - frac},{Q_MODES[quant]},{O_MODES[overflow]}>"


def stored_type(layer: FX.FxLayer, overflow: str) -> str:
    """A layer's output as stored: ap_fixed<b>, or ap_ufixed<b> for an unsigned tensor
    (fixedpoint.is_unsigned: its integers are held in b + 1 = layer.bits signed bits)."""
    if layer.unsigned:
        return ap_ufixed(layer.bits - 1, layer.frac, layer.quant, overflow)
    return ap_fixed(layer.bits, layer.frac, layer.quant, overflow)


def name_of(ir_name: str) -> str:
    """The hls4ml (torch.fx) layer name of an IR node."""
    s = re.sub(r"\W", "_", ir_name)
    return s if s[:1].isalpha() else f"l_{s}"


# --- what maps ---------------------------------------------------------------------

def _why_not(options: FX.Options, node: G.Node, previous: str) -> str | None:
    """Why the mapping cannot take this node (every reason), from the graph and the
    target options; None when it can."""
    a, op = node.attrs, node.op
    act = a.get("act")
    reasons = [
        (op in ("add", "concat", "mul", "pad", "upsample", "conv_transpose") + G.POINTWISE,
         f"{op} (not in deployq's hls4ml mapping)"),
        (op not in ("add", "concat", "mul") and node.inputs != [previous],
         "a branch (only a chain of single-input layers maps)"),
        (op == "conv2d" and a.get("groups") != 1,
         "grouped/depthwise conv (hls4ml's PyTorch parser takes groups=1 only)"),
        (op in G.ACT_HOSTS and act not in (None, (0.0, math.inf)),
         f"activation range {act} (ReLU6/Hardtanh: no hls4ml PyTorch layer)"),
        (op == "clamp" and (a.get("lo"), a.get("hi")) != (0.0, math.inf),
         f"clamp to [{a.get('lo')}, {a.get('hi')}] (ReLU6/Hardtanh: no hls4ml PyTorch "
         "layer)"),
        (op == "gap",
         "global/adaptive average pool (AdaptiveAvgPool2d: no hls4ml PyTorch layer)"),
        (op == "reshape" and len(node.shape) != 1,
         "reshape to a feature map (only a flatten maps)"),
        (op in ("maxpool", "avgpool") and (any(a["padding"]) or bool(a.get("ceil_mode"))),
         "pooling with padding or ceil_mode"),
        (op == "avgpool" and options.pool_division != "divide",
         "average pool with pool_division='reciprocal' (hls4ml divides)")]
    why = [r for bad, r in reasons if bad]
    return " and ".join(why) or None


def _why_not_plan(fx: FX.FxModel, node: G.Node) -> str | None:
    """Why the mapping cannot take this node's integers (the plan's scales)."""
    if node.op in ("conv2d", "linear") and not _single_type(fx, fx.layers[node.name]):
        return ("per-channel weight scales with an accumulator that can overflow (hls4ml has "
                "one accumulator type per layer: use granularity='per-tensor' or a wider "
                "acc_bits)")
    return None


def _single_type(fx: FX.FxModel, layer: FX.FxLayer) -> bool:
    f_w = layer.extra["f_w"]
    return f_w.min() == f_w.max() or FX._bound(layer, fx) < 2 ** (fx.options.acc_bits - 1)


def check_graph(graph: G.Graph, options: FX.Options, fx: FX.FxModel | None = None) -> None:
    """One ExportError naming every layer the mapping cannot take, and why (with fx:
    also what the plan's integers rule out); before anything is written."""
    bad, previous = [], G.INPUT
    for node in graph.nodes:
        why = _why_not(options, node, previous) or (fx and _why_not_plan(fx, node))
        if why:
            bad.append(f"'{node.name}': {why}")
        previous = node.name
    if options.acc_overflow == "sat" and options.sum_order != "hwc":
        bad.append("sum_order='chw' with acc_overflow='sat' (hls4ml sums a flattened "
                   "feature map in (h, w, c) order)")
    if bad:
        raise ExportError("hls4ml cannot take these layers: " + "; ".join(bad) +
                          " (docs/fpga-fixed.md, 'hls4ml')")


def check(fx: FX.FxModel) -> None:
    check_graph(fx.graph, fx.options, fx)


# --- the PyTorch module and the per-layer types ------------------------------------

def _f_w(layer: FX.FxLayer) -> np.ndarray:
    return layer.extra["f_w"]


def layer_types(fx: FX.FxModel) -> dict[str, dict[str, str]]:
    """hls4ml name -> {field: ap_fixed type} (docs/fpga-fixed.md's mapping table)."""
    o = fx.options
    types = {INPUT: {"result": ap_fixed(fx.input_bits, fx.input_frac, fx.input_quant, "sat")}}
    for node in fx.graph.nodes:
        layer, name = fx.layers[node.name], name_of(node.name)
        f_x = fx.frac(node.inputs[0])
        result = stored_type(layer, o.out_overflow)
        t = {"result": result}
        if node.op in G.WEIGHTED:
            f0, f1 = int(_f_w(layer).min()), int(_f_w(layer).max())
            b_w = max(int(np.abs(layer.weight).max()).bit_length() + 1, 2)
            acc = ap_fixed(o.acc_bits, f_x + f1, "trn", o.acc_overflow)
            t.update(weight=f"ap_fixed<{b_w + f1 - f0},{b_w - f0}>", bias=acc, accum=acc)
            if node.attrs.get("act"):
                types[name + "_relu"] = {"result": result}
                # unsigned: the conv's result is ap_fixed<b+1>, its ReLU's ap_ufixed<b>
                t["result"] = ap_fixed(layer.bits, layer.frac, layer.quant, o.out_overflow)
        elif node.op == "avgpool":
            t["accum"] = ap_fixed(o.acc_bits, f_x + o.pool_guard_bits, "trn", o.acc_overflow)
        elif node.op == "maxpool":
            src = fx.layers.get(node.inputs[0])
            t["accum"] = (ap_ufixed(src.bits - 1, f_x) if src is not None and src.unsigned
                          else ap_fixed(fx.bits(node.inputs[0]), f_x))
        types[name] = t
    return types


def build_module(fx: FX.FxModel):
    """A float64 torch module computing the IR with the plan's integer weights."""
    mods: dict[str, nn.Module] = {}
    for node in fx.graph.nodes:
        layer, a, name = fx.layers[node.name], node.attrs, name_of(node.name)
        if node.op in G.WEIGHTED:
            scale = np.exp2(-_f_w(layer).astype(np.float64))
            w = layer.weight * scale.reshape(-1, *[1] * (layer.weight.ndim - 1))
            b = layer.bias * np.exp2(-(fx.frac(node.inputs[0]) + _f_w(layer)).astype(np.float64))
            if node.op == "conv2d":
                m = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], a["stride"], a["padding"],
                              a["dilation"])
            else:
                m = nn.Linear(w.shape[1], w.shape[0])
            m = m.double()
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(w))
                m.bias.copy_(torch.from_numpy(b))
            mods[name] = m
            if a.get("act"):
                mods[name + "_relu"] = nn.ReLU()
        elif node.op == "maxpool":
            mods[name] = nn.MaxPool2d(a["kernel"], a["stride"])
        elif node.op == "avgpool":
            mods[name] = nn.AvgPool2d(a["kernel"], a["stride"])
        elif node.op == "reshape":
            mods[name] = nn.Flatten()
        elif node.op == "clamp":                      # a ReLU the IR did not fold
            mods[name] = nn.ReLU()
    return Chain(mods)


class Chain(nn.Module):
    """The layers in order; forward's argument is the hls4ml input layer 'x'."""

    def __init__(self, mods: dict[str, nn.Module]):
        super().__init__()
        self.order = list(mods)
        for k, m in mods.items():
            self.add_module(k, m)

    def forward(self, x):
        for k in self.order:
            x = getattr(self, k)(x)
        return x


def hls_config(fx: FX.FxModel) -> dict:
    """The hls_config dict for hls4ml.converters.convert_from_pytorch_model."""
    layers = {n: {"Precision": t, "Trace": True} for n, t in layer_types(fx).items()}
    return {"Model": {"Precision": {"default": "ap_fixed<16,6>"}, "ReuseFactor": 1,
                      "Strategy": "Latency", "BramFactor": 1_000_000_000,
                      "TraceOutput": False, "ChannelsLastConversion": "full",
                      "TransposeOutputs": False},
            "InputShape": tuple(fx.graph.input_shape), "LayerName": layers}


def convert(fx: FX.FxModel, out_dir: Path):
    """The hls4ml ModelGraph of `fx` with its project under out_dir (not compiled)."""
    check(fx)
    hls4ml = import_hls4ml()
    model = build_module(fx).eval()
    with contextlib.redirect_stdout(io.StringIO()):         # hls4ml's progress prints
        return hls4ml.converters.convert_from_pytorch_model(
            model, output_dir=str(out_dir), project_name="deployq", backend="Vivado",
            io_type="io_parallel", hls_config=hls_config(fx))


def import_hls4ml():
    try:
        import hls4ml
    except ImportError as e:
        raise ExportError("--hls4ml needs hls4ml: pip install 'deployq[hls4ml]'") from e
    return hls4ml


def export(fx: FX.FxModel, out_dir: Path) -> Path:
    """Write the hls4ml project (out_dir/project) and out_dir/deployq_hls4ml.json (the
    types per layer and the input quantization). Refuses unmappable layers first."""
    check(fx)
    out_dir = Path(out_dir)
    hls_model = convert(fx, out_dir / PROJECT)
    with contextlib.redirect_stdout(io.StringIO()):
        hls_model.write()
    meta = {"hls4ml_version": import_hls4ml().__version__, "backend": "Vivado",
            "io_type": "io_parallel", "input_shape": list(fx.graph.input_shape),
            "input": {"bits": fx.input_bits, "frac": fx.input_frac, "quant": fx.input_quant},
            "layers": {name_of(n): n for n in fx.layers}, "types": layer_types(fx)}
    from .io import atomic_write
    atomic_write(out_dir / CONFIG, json.dumps(meta, indent=1).encode())
    return out_dir / PROJECT


# --- the C simulation against deployq -------------------------------------------------

def simulate(hls_model, fx: FX.FxModel, q: np.ndarray) -> dict[str, np.ndarray]:
    """hls4ml's C simulation (compiled by trace()) on deployq's integer input q (NCHW):
    the integers of every traced layer by hls4ml name, NCHW, and of the output as
    'output'. A value off the layer's grid raises (it would not be bit-comparable)."""
    x = np.ascontiguousarray(q * 2.0 ** -fx.input_frac, dtype=np.float64)
    with contextlib.redirect_stdout(io.StringIO()):
        pred, trace = hls_model.trace(x)
    names = {name_of(n): n for n in fx.layers}
    names.update({name_of(n) + "_relu": n for n in fx.layers})
    out = {"output": _ints(pred, fx.layers[fx.graph.output].frac, "output")}
    for name, v in trace.items():
        if name in names:
            node = fx.graph.node(names[name])
            ints = _ints(v, fx.layers[node.name].frac, name)
            if ints.ndim == 4:                                  # channels-last -> NCHW
                ints = ints.transpose(0, 3, 1, 2)
            out[name] = ints.reshape(len(q), *node.shape)
    out["output"] = out["output"].reshape(len(q), *fx.graph.node(fx.graph.output).shape)
    return out


def _ints(v: np.ndarray, frac: int, name: str) -> np.ndarray:
    s = np.asarray(v, np.float64) * 2.0 ** frac
    if not np.array_equal(s, np.round(s)):
        raise ExportError(f"hls4ml layer '{name}': values off the 2^-{frac} grid")
    return np.round(s).astype(np.int64)


def expected(fx: FX.FxModel, q: np.ndarray) -> dict[str, np.ndarray]:
    """deployq's integers under hls4ml's names: NAME is a layer's result before its
    ReLU (the requantized accumulator), NAME_relu and pools/flattens the IR tensor."""
    import dataclasses
    values = FX.run_all(fx, q)
    out = {"output": values[fx.graph.output]}
    for node in fx.graph.nodes:
        layer, name = fx.layers[node.name], name_of(node.name)
        if node.op in G.WEIGHTED and node.attrs.get("act"):
            lo, hi = -(1 << (layer.bits - 1)), (1 << (layer.bits - 1)) - 1
            bare = dataclasses.replace(layer, act=(lo, hi))
            out[name] = FX.OPS[node.op](*[values[i] for i in node.inputs], layer=bare, fx=fx)
            out[name + "_relu"] = values[node.name]
        else:
            out[name] = values[node.name]
    return out


def agreement(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
    """Per traced tensor (and 'output'): the fraction of samples whose every element is
    identical, and over all: 'all_elements' (fraction of identical elements)."""
    res, same, total = {}, 0, 0
    for name, g in got.items():
        w = want[name].reshape(g.shape)
        res[name] = float(np.mean(np.all((g == w).reshape(len(g), -1), 1)))
        same, total = same + int(np.sum(g == w)), total + g.size
    res["all_elements"] = same / max(total, 1)
    return res
