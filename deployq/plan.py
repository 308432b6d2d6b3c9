"""QuantPlan: the one object every exporter and runtime consumes (saved as plan.json).

It holds, per layer, the resolved settings (bits, granularity, scheme, scale rule,
calibration, rounding) and the resulting quantization parameters of the layer's weight
and output tensor, plus those of the graph input. Settings resolve layer name >
layer type (IR op) > model default, and every value is checked against the target.

Conventions (shared by every backend):
  real = scale * (q - zero_point); q = clamp(round(real / scale) + zero_point)
  weights are symmetric (zero point 0), narrow range [-(2^(b-1) - 1), 2^(b-1) - 1],
  per output channel (axis 0) or per tensor; activations use the full range
  [-2^(b-1), 2^(b-1) - 1]; bias is int32 with scale input_scale * weight_scale
  (float32 product), zero point 0. 'pow2' scales are 2^-frac_bits.
  maxpool, avgpool, reshape, clamp and concat keep their inputs' parameters (one set
  for all tensors they connect), as TFLite's int8 kernels require.
  Low-bit weights on a target that executes only `container_bits` (int8: ONNX Runtime,
  LiteRT, MCU): a weight of weight_bits g < 8 is a QParams of bits 8 with grid_bits g.
  Its integers are the g-bit integers j in [-(2^(g-1) - 1), 2^(g-1) - 1] times the step
  k = floor(127 / (2^(g-1) - 1)) (4 bits: k = 18, codes -126..126 in steps of 18), and
  `scale` is the float32 scale of one int8 code, chosen so that k * scale * (2^(g-1) - 1)
  covers the channel's absmax. The stored scale is the one the file carries, so every
  backend computes int8 code * scale exactly as the plan does, and the deployed model
  holds the g-bit grid {j * k * scale} with no rounding of its own.
  sigmoid and tanh outputs have fixed ranges, not calibrated ones: at b bits, sigmoid
  [0, 1 - 2^-b] (8 bits asymmetric: scale 1/256, zero point -128) and tanh
  [-1, 1 - 2^-(b-1)] (scale 1/128, zero point 0), the parameters TFLite's int8
  LOGISTIC and TANH require.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import calibrate, graph as G
from .errors import InputError, TargetError
from .targets import SETTINGS, Target, relu_unsigned

FORMAT, VERSION = "deployq-plan", 1
# Settings an op type takes unless by_type / by_name say otherwise. TRANSPOSE_CONV's
# weights per tensor: the TFLite converter cannot carry a per-channel axis through the
# filter transpose it inserts ("'tfl.transpose' op has mismatched quantized axes").
OP_DEFAULTS = {"conv_transpose": {"granularity": "per-tensor"}}
SHARED_PARAMS = ("maxpool", "avgpool", "reshape", "clamp", "concat", "pad", "upsample")
BIAS_BITS = 32


@dataclass
class QParams:
    bits: int
    scale: np.ndarray                 # float32, shape (1,) or (channels,)
    zero_point: np.ndarray            # int64, same shape
    axis: int | None = None           # channel axis when per-channel
    narrow: bool = False              # symmetric weights omit the lowest code
    grid_bits: int | None = None      # weights on a g-bit grid inside `bits`: every step-th code

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) + int(self.narrow)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def step(self) -> int:
        """k: the distance between the integers of the grid (1 without grid_bits)."""
        if self.grid_bits is None:
            return 1
        return self.qmax // (2 ** (self.grid_bits - 1) - 1)

    def codes(self, r: np.ndarray) -> np.ndarray:
        """Integers (zero point not added) for r = real / scale, rounding half to even;
        on a grid: the nearest multiple of step within the g-bit range."""
        if self.grid_bits is None:
            return np.clip(np.round(r), self.qmin, self.qmax)
        g = 2 ** (self.grid_bits - 1) - 1
        return np.clip(np.round(r / self.step), -g, g) * self.step

    def _bcast(self, a: np.ndarray, ndim: int) -> np.ndarray:
        if self.axis is None:
            return a.reshape(())
        return a.reshape([-1 if d == self.axis else 1 for d in range(ndim)])

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Integers for x, rounding half to even (numpy.round, ONNX QuantizeLinear)."""
        s, z = self._bcast(self.scale, x.ndim), self._bcast(self.zero_point, x.ndim)
        if self.grid_bits is not None:        # weights: zero point 0 (weight_params)
            return self.codes(x / s).astype(np.int32)
        return np.clip(np.round(x / s) + z, self.qmin, self.qmax).astype(np.int32)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        s, z = self._bcast(self.scale, q.ndim), self._bcast(self.zero_point, q.ndim)
        return ((q - z) * s).astype(np.float32)

    def to_json(self) -> dict:
        d = {"bits": self.bits, "scale": [float(v) for v in self.scale],
             "zero_point": [int(v) for v in self.zero_point], "axis": self.axis,
             "narrow": self.narrow}
        if self.grid_bits is not None:        # absent: a plain grid (files stay as before)
            d["grid_bits"] = self.grid_bits
        return d

    @classmethod
    def from_json(cls, d: dict, where: str = "tensor") -> "QParams":
        check_qparams(d, where)
        g = d.get("grid_bits")
        return cls(int(d["bits"]), np.asarray(d["scale"], np.float32),
                   np.asarray(d["zero_point"], np.int64), d.get("axis"), bool(d.get("narrow")),
                   None if g is None else int(g))


@dataclass
class LayerPlan:
    op: str
    settings: dict
    output: QParams
    weight: QParams | None = None

    def to_json(self) -> dict:
        d = {"op": self.op, "settings": self.settings, "output": self.output.to_json()}
        if self.weight is not None:
            d["weight"] = self.weight.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict, where: str = "layer") -> "LayerPlan":
        _need(d, dict, where, "an object with op, settings, output (and weight)")
        _need(d.get("op"), str, f"{where} op", "a string")
        _need(d.get("settings"), dict, f"{where} settings", "an object")
        w = d.get("weight")
        return cls(d["op"], d["settings"], QParams.from_json(d["output"], f"{where} output"),
                   QParams.from_json(w, f"{where} weight") if w else None)


@dataclass
class PlanConfig:
    """Settings overrides, resolved layer name > layer type (IR op) > default."""
    default: dict = field(default_factory=dict)
    by_type: dict = field(default_factory=dict)
    by_name: dict = field(default_factory=dict)

    def resolve(self, target: Target, layer: str, op: str) -> dict:
        settings = {**target.defaults, **self.default, **OP_DEFAULTS.get(op, {}),
                    **self.by_type.get(op, {}), **self.by_name.get(layer, {})}
        for key in SETTINGS:
            target.check(key, settings[key], f"layer '{layer}'")
        return settings

    def check_names(self, graph: G.Graph) -> None:
        unknown = set(self.by_name) - {n.name for n in graph.nodes}
        if unknown:
            raise InputError(f"plan settings name unknown layers {sorted(unknown)}; "
                             f"layers: {', '.join(n.name for n in graph.nodes)}")

    def to_json(self) -> dict:
        return {"default": self.default, "by_type": self.by_type, "by_name": self.by_name}


@dataclass
class QuantPlan:
    target: str
    input: QParams
    layers: dict[str, LayerPlan]
    config: PlanConfig = field(default_factory=PlanConfig)
    provenance: dict = field(default_factory=dict)

    def tensor(self, name: str) -> QParams:
        return self.input if name == G.INPUT else self.layers[name].output

    def bias_scale(self, layer: str, input_name: str) -> np.ndarray:
        w = self.layers[layer].weight
        return (self.tensor(input_name).scale.astype(np.float32)
                * w.scale.astype(np.float32)).astype(np.float32)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "target": self.target,
                "provenance": self.provenance, "config": self.config.to_json(),
                "input": self.input.to_json(),
                "layers": {k: v.to_json() for k, v in self.layers.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "QuantPlan":
        _need(d, dict, "the file", "a JSON object (a plan.json written by deployq)")
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise InputError(f"not a deployq plan of version {VERSION} "
                             f"(format={d.get('format')!r}, version={d.get('version')!r})")
        _need(d.get("target"), str, "target", "a target name")
        _need(d.get("layers"), dict, "layers", "an object {layer name: layer}")
        cfg = d.get("config", {})
        _need(cfg, dict, "config", "an object")
        return cls(d["target"], QParams.from_json(d.get("input"), "input"),
                   {k: LayerPlan.from_json(v, f"layer '{k}'") for k, v in d["layers"].items()},
                   PlanConfig(cfg.get("default", {}), cfg.get("by_type", {}),
                              cfg.get("by_name", {})), d.get("provenance", {}))

    def save(self, path: Path) -> None:
        from .io import atomic_write
        atomic_write(Path(path), json.dumps(self.to_json(), indent=1).encode())

    @classmethod
    def load(cls, path: Path) -> "QuantPlan":
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except InputError as e:
            raise InputError(f"plan {path}: {e}") from None
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
            raise InputError(f"cannot read plan {path}: {type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]}") from None


# --- checking a plan file: every value in range before any backend sees it ----------

MAX_BITS = 16


def _need(value, kind, where: str, what: str) -> None:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise InputError(f"{where} must be {what}, got {type(value).__name__} {value!r:.60}; "
                         "make the plan with deployq (export or select)")


def _bad(where: str, what: str) -> InputError:
    return InputError(f"{where} {what}; make the plan with deployq (export or select) or "
                      "fix that value")


def check_qparams(d, where: str) -> None:
    """A tensor's quantization parameters as JSON: bits 2..16, finite positive scales,
    zero points on the integer grid, axis None or 0, grid_bits 2..bits."""
    _need(d, dict, where, "an object with bits, scale and zero_point")
    bits = d.get("bits")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= MAX_BITS:
        raise _bad(f"{where} bits", f"is {bits!r}, not a whole number in 2..{MAX_BITS}")
    scale, zp = d.get("scale"), d.get("zero_point")
    for key, v in (("scale", scale), ("zero_point", zp)):
        if not isinstance(v, list) or not v or not all(
                isinstance(e, (int, float)) and not isinstance(e, bool) for e in v):
            raise _bad(f"{where} {key}", f"is {v!r:.60}, not a non-empty list of numbers")
    if len(scale) != len(zp):
        raise _bad(where, f"has {len(scale)} scales but {len(zp)} zero points")
    bad = [s for s in scale if not (math.isfinite(s) and 1e-30 < s < 1e30)]
    if bad:
        raise _bad(f"{where} scale", f"holds {bad[0]!r}; scales must be finite and > 0")
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    bad = [z for z in zp if int(z) != z or not lo <= z <= hi]
    if bad:
        raise _bad(f"{where} zero_point", f"{bad[0]!r} is outside [{lo}, {hi}] (or not whole)")
    if d.get("axis") not in (None, 0):
        raise _bad(f"{where} axis", f"is {d.get('axis')!r}; use 0 (per channel) or null")
    if d.get("axis") is None and len(scale) != 1:
        raise _bad(where, f"has {len(scale)} scales but no channel axis")
    g = d.get("grid_bits")
    if g is not None and (not isinstance(g, int) or isinstance(g, bool) or not 2 <= g <= bits):
        raise _bad(f"{where} grid_bits", f"is {g!r}, not a whole number in 2..{bits}")


# --- making a plan ---------------------------------------------------------------

def make(graph: G.Graph, stats: dict[str, calibrate.TensorStats], target: Target,
         config: PlanConfig | None = None, provenance: dict | None = None) -> QuantPlan:
    config = config or PlanConfig()
    config.check_names(graph)
    settings = {n.name: config.resolve(target, n.name, n.op) for n in graph.nodes}
    settings[G.INPUT] = config.resolve(target, G.INPUT, "input")
    ops = {n.name: n.op for n in graph.nodes}
    ranges = {name: FIXED_RANGES[ops[name]](s["activation_bits"])
              if ops.get(name) in FIXED_RANGES else _range(stats[name], s)
              for name, s in settings.items()}
    acts = {}
    unsigned = relu_unsigned(target)
    for members in shared_classes(graph):
        head = members[0]
        if unsigned and nonnegative(graph, members):
            hi = max(_range(stats[m], settings[m], symmetric=False)[1] for m in members)
            qp = unsigned_params(hi, settings[head], f"layer '{head}'")
        else:
            lo = min(ranges[m][0] for m in members)
            hi = max(ranges[m][1] for m in members)
            qp = activation_params(lo, hi, settings[head])
        acts.update({m: qp for m in members})
    layers = {n.name: LayerPlan(n.op, settings[n.name], acts[n.name],
                                weight_params(n.weight, settings[n.name],
                                              target.container_bits)
                                if n.op in G.WEIGHTED else None)
              for n in graph.nodes}
    return QuantPlan(target.name, acts[G.INPUT], layers, _pin_input(config, settings[G.INPUT]),
                     provenance or {})


def _pin_input(config: PlanConfig, resolved: dict) -> PlanConfig:
    """config with the input's rounding written in: every layer carries its resolved
    settings, and the input's must travel with the plan too, not follow the target's
    default when the plan is exported later (a plan trained with `trn` stays `trn`)."""
    if "rounding" not in resolved or "rounding" in config.by_type.get("input", {}):
        return config
    by_type = {**config.by_type,
               "input": {**config.by_type.get("input", {}), "rounding": resolved["rounding"]}}
    return PlanConfig(config.default, by_type, config.by_name)


FIXED_RANGES = {"sigmoid": lambda bits: (0.0, 1.0 - 2.0 ** -bits),
                "tanh": lambda bits: (-1.0, 1.0 - 2.0 ** (1 - bits))}


def _range(stats: calibrate.TensorStats, s: dict,
           symmetric: bool | None = None) -> tuple[float, float]:
    # 'converter': the target calibrates itself and its backend replaces these ranges
    method = "minmax" if s["calibration"] == "converter" else s["calibration"]
    if symmetric is None:
        symmetric = s["activation_scheme"] == "symmetric"
    return calibrate.tensor_range(stats, method, s["activation_bits"], symmetric,
                                  s.get("percentile", 99.99))


# --- unsigned post-ReLU activations (fpga-fixed option relu_unsigned) ----------------
# A tensor that is >= 0 by construction is stored as an unsigned b-bit value
# u in [0, 2^b - 1] meaning u * scale (HLS ap_ufixed<b, I>). In the plan it is the
# b-bit QParams with zero point -2^(b-1): real = scale * (q - zp), q in [qmin, qmax],
# which is exactly that grid, so everything that reads plans (bits, bytes, fake
# quantization in harden) sees b bits and the unsigned grid. deployq.fixedpoint lowers
# it to integers u held in b+1 signed bits, clamped to [0, 2^b - 1].
UNSIGNED_MAX_BITS = 7        # u fits the C runtime's <= 8-bit signed storage as b+1 bits


def nonnegative(graph: G.Graph, members: list[str]) -> bool:
    """Every tensor of a shared-parameter class is >= 0 by construction: its producer
    ends in a clamp to [lo >= 0, ...] (a fused ReLU/ReLU6), or it is a pool, reshape,
    clamp, concat, pad or upsample, whose inputs are members of the same class. The
    graph input never is (its grid is the user's data's)."""
    for m in members:
        if m == G.INPUT:
            return False
        node = graph.node(m)
        act = node.attrs.get("act")
        if node.op not in SHARED_PARAMS and (act is None or act[0] < 0):
            return False
    return True


def unsigned_params(hi: float, s: dict, where: str) -> QParams:
    """The unsigned b-bit grid [0, (2^b - 1) * scale] covering [0, hi] (see above)."""
    bits = s["activation_bits"]
    if bits > UNSIGNED_MAX_BITS:
        raise TargetError(f"{where}: relu_unsigned with activation_bits={bits}: an unsigned "
                          f"{bits}-bit value needs {bits + 1} signed bits in the runtime, "
                          f"which holds at most 8; use activation_bits <= "
                          f"{UNSIGNED_MAX_BITS} or relu_unsigned = false")
    scale = _scale(max(hi, 1e-8) / (2 ** bits - 1), s)
    return QParams(bits, np.array([scale], np.float32), np.array([-(2 ** (bits - 1))]))


def shared_classes(graph: G.Graph) -> list[list[str]]:
    """Tensors that must share parameters, as lists headed by their first producer."""
    parent = {G.INPUT: G.INPUT} | {n.name: n.name for n in graph.nodes}

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a

    for n in graph.nodes:
        if n.op in SHARED_PARAMS:
            for i in n.inputs:
                ra, rb = find(i), find(n.name)
                if ra != rb:
                    parent[rb] = ra
    order = [G.INPUT] + [n.name for n in graph.nodes]
    classes: dict[str, list[str]] = {}
    for name in order:
        classes.setdefault(find(name), []).append(name)
    return sorted(classes.values(), key=lambda m: order.index(m[0]))


def activation_params(lo: float, hi: float, s: dict) -> QParams:
    bits = s["activation_bits"]
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if s["activation_scheme"] == "symmetric":
        scale = _scale(max(-lo, hi, 1e-8) / qmax, s)
        return QParams(bits, np.array([scale], np.float32), np.array([0]))
    scale = _scale(max(hi - lo, 1e-8) / (qmax - qmin), s)
    zp = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return QParams(bits, np.array([scale], np.float32), np.array([zp]))


def weight_params(w: np.ndarray, s: dict, container_bits: int | None = None) -> QParams:
    """Symmetric narrow-range weight parameters at s['weight_bits']; below a target's
    container_bits, the grid of that many bits inside the container (module docstring).
    The grid spans s['weight_clip'] (default 1) times each channel's largest |weight|;
    larger weights saturate at the largest code."""
    bits = s["weight_bits"]
    if s["weight_scheme"] != "symmetric":
        raise TargetError(f"weight_scheme {s['weight_scheme']!r} is not implemented; "
                          "use 'symmetric'")
    grid = container_bits is not None and bits < container_bits
    if grid and s.get("calibration") == "converter":
        raise TargetError(f"weight_bits={bits} is held on the {container_bits}-bit grid the "
                          "plan computes; calibration 'converter' lets the converter choose "
                          "its own weights: choose a plan calibration (e.g. 'minmax')")
    qp = QParams(container_bits if grid else bits, np.ones(1, np.float32),
                 np.zeros(1, np.int64), narrow=True, grid_bits=bits if grid else None)
    per_channel = s["granularity"] == "per-channel"
    clip = s.get("weight_clip", 1.0)
    if not isinstance(clip, (int, float)) or isinstance(clip, bool) or not 0 < clip <= 1:
        raise InputError(f"weight_clip must be a number in (0, 1] (the fraction of each "
                         f"channel's largest |weight| the grid spans), got {clip!r}")
    absmax = clip * (np.abs(w).reshape(len(w), -1).max(1) if per_channel
                     else np.array([np.abs(w).max()]))
    qmax = (2 ** (bits - 1) - 1) * qp.step           # the largest code the grid uses
    qp.scale = np.array([_scale(max(a, 1e-8) / qmax, s) for a in absmax], np.float32)
    qp.zero_point = np.zeros(len(qp.scale), np.int64)
    qp.axis = 0 if per_channel else None
    return qp


def _scale(scale: float, s: dict) -> float:
    """The scale as stored: float32, or the power of two at or above it."""
    if s["scale"] == "pow2":
        return float(2.0 ** math.ceil(math.log2(scale)))
    return float(np.float32(scale))


def quantized_bias(bias: np.ndarray, scale: np.ndarray) -> np.ndarray:
    lim = 2 ** (BIAS_BITS - 1) - 1
    return np.clip(np.round(bias / scale.astype(np.float64)), -lim, lim).astype(np.int32)
