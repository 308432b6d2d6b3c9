"""The graph IR every later stage reads, and its capture from PyTorch.

A Graph is a topologically ordered list of Nodes. Each node produces one tensor named
like the node; the graph input is the tensor 'input'. Shapes exclude the batch and are
NCHW, as in PyTorch. Capture goes through torch.export, so a module and a saved .pt2
program take the same path. After capture BatchNorm is folded into the conv or linear
before it, and ReLU / ReLU6 / Hardtanh / clamp are folded into the producer's 'act'
range [lo, hi] when it is the producer's only consumer.

IR ops and their attrs:
  conv2d   stride, padding, dilation, groups, act   weight (O, I/g, kh, kw), bias (O,)
  linear   act                                      weight (O, I), bias (O,)
  add      act                                      two inputs of one shape
  mul      act                                      two inputs: one shape, or the
                                                    second (C, 1, 1) against (C, H, W)
                                                    (squeeze-and-excitation)
  concat   (channel axis)                           two or more inputs
  maxpool  kernel, stride, padding, dilation, ceil_mode
  avgpool  kernel, stride, padding, ceil_mode, count_include_pad
  gap      global average pool to (C, 1, 1)
  reshape  (target shape is the node's shape)
  clamp    lo, hi
  sigmoid, tanh, hardswish, silu     pointwise, no attrs
  leaky_relu   alpha                              pointwise
Dropout / Dropout2d are identities (eval). A final Softmax / LogSoftmax is dropped at
capture with a note: the graph ends at the logits, which attacks and comparisons use
(softmax outputs mask gradients); a softmax anywhere else is refused.
  pad      pads (top, bottom, left, right): zeros around H and W
  upsample scale (sh, sw): nearest neighbour, integer factors (out[i] = in[i // s])
  conv_transpose  stride, padding, output_padding, act   weight (O, I, kh, kw) (PyTorch's
           (I, O, kh, kw) swapped), bias (O,): input (iy, ix) adds x * w[:, :, ky, kx]
           at output (iy * s - p + ky, ...); groups 1, no dilation, and only paddings
           TFLite's TRANSPOSE_CONV derives from the output size (SAME or VALID)

A 1-D signal (C, L) is held as the map (C, 1, L): Conv1d is a conv2d with a 1-row
kernel, and every target runs it as one.
Multiplying or adding a constant (a number, or one per channel) is captured as a 1x1
depthwise conv2d (a linear with a diagonal weight on a vector): weight c, bias d. Every
target already runs that op in integers, and a BatchNorm or activation after it folds
as after any conv. Hardsigmoid is the same: x / 6 + 1/2 with the activation range
[0, 1], so every target runs it as a depthwise conv (no MUL).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError, UnsupportedOpError

INPUT = "input"
WEIGHTED = ("conv2d", "linear", "conv_transpose")
ACT_HOSTS = ("conv2d", "linear", "add", "mul", "conv_transpose")
POINTWISE = ("sigmoid", "tanh", "hardswish", "silu", "leaky_relu")
log = logging.getLogger("deployq")


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    shape: tuple[int, ...]
    attrs: dict = field(default_factory=dict)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None


@dataclass
class Graph:
    input_shape: tuple[int, ...]
    nodes: list[Node]

    @property
    def output(self) -> str:
        return self.nodes[-1].name

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.input_shape if name == INPUT else self.node(name).shape


# --- capture ------------------------------------------------------------------------

def capture(module: torch.nn.Module, input_shape: tuple[int, ...],
            program: torch.export.ExportedProgram | None = None) -> Graph:
    """The IR of a module (exported here) or of an already exported program."""
    if program is None:
        program = _export(module, input_shape)
    graph = _from_program(program)
    _check_input_shape(graph, input_shape)
    return _fuse_activations(_fold_batchnorm(graph))


def _export(module: torch.nn.Module, input_shape: tuple[int, ...]):
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.CRITICAL)      # torch logs its own traceback on failure
    try:
        return torch.export.export(module.eval(), (torch.zeros((1, *input_shape)),))
    except Exception as e:
        raise InputError(f"torch.export could not trace the model on input {(1, *input_shape)} "
                         f"({type(e).__name__}: {str(e).strip().splitlines()[0][:160]}); "
                         "does --data have the shape the model takes?") from None
    finally:
        torch_log.setLevel(level)


def _check_input_shape(graph: Graph, input_shape: tuple[int, ...]) -> None:
    if tuple(graph.input_shape) != tuple(input_shape):
        raise InputError(f"the model takes input {graph.input_shape} but the data is "
                         f"{tuple(input_shape)}; choose --data that matches the model")


def _from_program(program) -> Graph:
    sig = program.graph_signature
    consts = {**program.state_dict, **getattr(program, "constants", {})}
    tensors = {**{k: consts[v] for k, v in sig.inputs_to_parameters.items()},
               **{k: consts[v] for k, v in sig.inputs_to_buffers.items()},
               **{k: consts[v] for k, v in sig.inputs_to_lifted_tensor_constants.items()}}
    user_inputs = [n for n in program.graph.nodes
                   if n.op == "placeholder" and n.name not in tensors]
    if len(user_inputs) != 1:
        raise InputError(f"the model must take exactly one tensor input, it takes "
                         f"{len(user_inputs)}")
    names = {user_inputs[0].name: INPUT}
    shape = tuple(user_inputs[0].meta["val"].shape[1:])
    ctx = _Capture(tensors, names, [], set(), {}, shape)
    for fx_node in program.graph.nodes:
        if fx_node.op == "call_function":
            ctx.add(fx_node)
        elif fx_node.op == "output":
            outs = fx_node.args[0]
            if len(outs) != 1:
                raise InputError(f"the model must return one tensor, it returns {len(outs)}")
            ctx.finish(outs[0])
    return Graph(shape, ctx.nodes)


@dataclass
class _Capture:
    tensors: dict            # placeholder name -> parameter/buffer tensor
    names: dict              # fx node name -> IR tensor name (aliases resolved)
    nodes: list
    used: set
    dropped: dict            # fx node name of a dropped softmax -> its layer name
    input_shape: tuple = ()

    def add(self, fx_node) -> None:
        key = str(fx_node.target)
        handler = ATEN.get(key)
        layer = self.layer_name(fx_node)
        if handler is None:
            raise UnsupportedOpError(key, layer, "capture", SUPPORTED_TORCH)
        result = handler(self, fx_node, layer)
        if isinstance(result, Node):
            self.nodes.append(result)
            self.names[fx_node.name] = result.name
        else:                                   # an alias of an existing tensor
            self.names[fx_node.name] = result

    def finish(self, out) -> None:
        late = [layer for fx_name, layer in self.dropped.items() if fx_name != out.name]
        if late:
            raise UnsupportedOpError("softmax before the last layer", late[0], "capture",
                                     SUPPORTED_TORCH)
        if self.dropped:
            log.info("capture: the final %s is dropped; the graph outputs its logits "
                     "(what attacks and comparisons use)", next(iter(self.dropped.values())))
        if not self.nodes or self.names.get(out.name) != self.nodes[-1].name:
            raise InputError("the model output must be the last computed tensor")

    def layer_name(self, fx_node) -> str:
        stack = fx_node.meta.get("nn_module_stack") or {}
        path, cls = list(stack.values())[-1] if stack else ("", "")
        cls = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
        leaf = cls.startswith("torch.nn.")           # a torch layer: its path names it
        name = path if (leaf and path) else (f"{path}.{fx_node.name}" if path else fx_node.name)
        base, i = name, 1
        while name in self.used or name == INPUT:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def arg(self, a) -> str:
        return self.names[a.name]

    def shape_of(self, name: str) -> tuple[int, ...]:
        return next(n.shape for n in self.nodes if n.name == name) if name != INPUT \
            else self.input_shape


    def param(self, a) -> np.ndarray | None:
        if a is None:
            return None
        if a.name not in self.tensors:
            raise InputError(f"'{a.name}' must be a parameter, not a computed tensor")
        return self.tensors[a.name].detach().cpu().numpy().astype(np.float32)


def _shape(fx_node) -> tuple[int, ...]:
    """The per-sample shape; a signal (C, L) as the map (C, 1, L)."""
    shape = tuple(int(d) for d in fx_node.meta["val"].shape[1:])
    return (shape[0], 1, shape[1]) if len(shape) == 2 else shape


def _pair(v) -> tuple[int, int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return (int(v[0]), int(v[-1]))


def _get(args, i, default):
    return args[i] if len(args) > i else default


def _conv(c, n, layer):
    a = n.args
    return _conv_node(c, n, layer, a[1], _get(a, 2, None), _get(a, 3, 1), _get(a, 4, 0),
                      _get(a, 5, 1), _get(a, 6, 1))


def _transposed(c, n, layer):
    """aten.conv_transpose2d: input, weight (I, O/g, kh, kw), bias, stride, padding,
    output_padding, groups, dilation."""
    a = n.args
    return _conv_transpose_node(c, n, layer, a[1], _get(a, 2, None), _get(a, 3, 1),
                                _get(a, 4, 0), _get(a, 5, 0), _get(a, 6, 1), _get(a, 7, 1))


def _transposed1d(c, n, layer):
    raise UnsupportedOpError("ConvTranspose1d (ConvTranspose2d is supported)", layer,
                             "capture", SUPPORTED_TORCH)


def tflite_transpose_padding(size: int, out: int, k: int, stride: int) -> dict[str, int]:
    """The leading padding TFLite's TRANSPOSE_CONV derives from its output size, by
    padding type, for the types whose forward conv of `out` gives `size` (TF's check):
    VALID 0; SAME max((ceil(out / s) - 1) * s + k - out, 0) // 2 (padding.h)."""
    pads = {}
    if (out - k) // stride + 1 == size and out >= k:
        pads["VALID"] = 0
    if -(-out // stride) == size:
        pads["SAME"] = max((size - 1) * stride + k - out, 0) // 2
    return pads


def conv_transpose_mode(in_hw, out_hw, kernel, stride, padding) -> str | None:
    """The TFLite padding type ('SAME'/'VALID') that gives PyTorch's padding on both
    axes, or None."""
    per_axis = [tflite_transpose_padding(in_hw[i], out_hw[i], kernel[i], stride[i])
                for i in range(2)]
    for mode in ("VALID", "SAME"):
        if all(p.get(mode) == padding[i] for i, p in enumerate(per_axis)):
            return mode
    return None


def _conv_transpose_node(c, n, layer, weight, bias, stride, padding, output_padding,
                         groups, dilation):
    """conv_transpose IR node, weight held as (O, I, kh, kw) like a conv2d's (per output
    channel along axis 0). Only what LiteRT's TRANSPOSE_CONV computes: groups 1, no
    dilation, and a padding its SAME or VALID rule gives for this output size."""
    weight, bias = c.param(weight), c.param(bias)
    src = c.arg(n.args[0])
    stride, padding = _pair(stride), _pair(padding)
    out = _shape(n)
    why = None
    if weight.ndim != 4 or int(groups) != 1 or _pair(dilation) != (1, 1):
        why = "groups > 1 or dilation > 1"
    elif conv_transpose_mode(c.shape_of(src)[1:], out[1:], weight.shape[2:], stride,
                             padding) is None:
        why = (f"padding {padding} with stride {stride}, kernel {tuple(weight.shape[2:])} "
               f"and output_padding {_pair(output_padding)}: LiteRT's TRANSPOSE_CONV "
               "crops by its SAME/VALID rule only (e.g. kernel 2 stride 2 padding 0, or "
               "kernel 4 stride 2 padding 1)")
    if why:
        raise UnsupportedOpError(f"ConvTranspose2d with {why}", layer, "capture",
                                 SUPPORTED_TORCH)
    attrs = dict(stride=stride, padding=padding, output_padding=_pair(output_padding),
                 act=None)
    weight = np.ascontiguousarray(weight.transpose(1, 0, 2, 3))
    bias = np.zeros(weight.shape[0], np.float32) if bias is None else bias
    return Node(layer, "conv_transpose", [src], out, attrs, weight, bias)


def _convolution(c, n, layer):
    a = n.args           # input, weight, bias, stride, padding, dilation, transposed, ...
    if a[6]:             # ... transposed, output_padding, groups
        return _conv_transpose_node(c, n, layer, a[1], a[2], a[3], a[4], a[7], a[8], a[5])
    return _conv_node(c, n, layer, a[1], a[2], a[3], a[4], a[5], a[8])


def _conv1d(c, n, layer):
    a = n.args
    return _conv_node(c, n, layer, a[1], _get(a, 2, None), (1, _one(_get(a, 3, 1))),
                      _conv1d_padding(_get(a, 4, 0)), (1, _one(_get(a, 5, 1))), _get(a, 6, 1))


def _one(v) -> int:
    return int(v[0] if isinstance(v, (list, tuple)) else v)


def _conv1d_padding(p):
    return p if isinstance(p, str) else (0, _one(p))


def _conv_node(c, n, layer, weight, bias, stride, padding, dilation, groups):
    weight, bias = c.param(weight), c.param(bias)
    if weight.ndim == 3:                                   # Conv1d: a 1-row kernel
        weight = weight[:, :, None, :]
    if weight.ndim != 4:
        raise UnsupportedOpError(f"conv with {weight.ndim - 2}-d kernel", layer, "capture",
                                 SUPPORTED_TORCH)
    src = c.arg(n.args[0])
    if isinstance(padding, str):
        src, padding = _same(c, n, layer, src, padding, weight.shape[2:], dilation)
    attrs = dict(stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation),
                 groups=int(groups), act=None)
    bias = np.zeros(weight.shape[0], np.float32) if bias is None else bias
    return Node(layer, "conv2d", [src], _shape(n), attrs, weight, bias)


def _same(c, n, layer, src, padding, kernel, dilation):
    """padding='valid' or 'same' (stride 1): per axis d * (k - 1) zeros, the odd one
    after (PyTorch's rule). Symmetric totals stay the conv's padding; otherwise a pad
    node goes first. Returns (input tensor, conv padding)."""
    if padding == "valid":
        return src, (0, 0)
    total = [d * (k - 1) for d, k in zip(_pair(dilation), kernel)]
    if all(t % 2 == 0 for t in total):
        return src, tuple(t // 2 for t in total)
    (th, tw), (C, H, W) = total, c.shape_of(src)
    pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    node = Node(f"{layer}/pad", "pad", [src], (C, H + th, W + tw), {"pads": pads})
    c.nodes.append(node)
    return node.name, (0, 0)


def _pad(c, n, layer):
    """constant_pad_nd / F.pad / ZeroPad2d: zeros around H and W, any amounts >= 0."""
    a = n.args
    pad = [int(v) for v in a[1]]
    mode = _get(a, 2, "constant") if str(n.target) == "aten.pad.default" else "constant"
    value = _get(a, 3 if str(n.target) == "aten.pad.default" else 2, 0) or 0
    pad += [0] * (4 - len(pad))
    if mode != "constant" or value != 0 or any(pad[4:]) or min(pad) < 0 or len(pad) > 6:
        raise UnsupportedOpError(f"pad {pad} mode={mode!r} value={value} (only zeros "
                                 "around H and W)", layer, "capture", SUPPORTED_TORCH)
    left, right, top, bottom = pad[:4]
    return Node(layer, "pad", [c.arg(a[0])], _shape(n), {"pads": (top, bottom, left, right)})


def _upsample(c, n, layer):
    """Nearest neighbour by integer factors (shapes give them; PyTorch's 'nearest'
    reads in[floor(i * in / out)], which is in[i // s] for out = s * in)."""
    (ch, h, w), out = _shape(n.args[0]), _shape(n)
    if out[1] % h or out[2] % w:
        raise UnsupportedOpError(f"upsample {h}x{w} -> {out[1]}x{out[2]} (only integer "
                                 "factors)", layer, "capture", SUPPORTED_TORCH)
    return Node(layer, "upsample", [c.arg(n.args[0])], out,
                {"scale": (out[1] // h, out[2] // w)})


def _linear(c, n, layer):
    weight = c.param(n.args[1])
    bias = c.param(_get(n.args, 2, None))
    bias = np.zeros(weight.shape[0], np.float32) if bias is None else bias
    if len(_shape(n)) != 1:
        raise UnsupportedOpError("linear on a non-flat input", layer, "capture",
                                 SUPPORTED_TORCH)
    return Node(layer, "linear", [c.arg(n.args[0])], _shape(n), {"act": None}, weight, bias)


def _batchnorm(c, n, layer):
    a = n.args
    w, b, mean, var = (c.param(x) for x in a[1:5])
    eps = float(a[7] if str(n.target) == "aten.batch_norm.default" else a[6])  # schemas differ
    scale = (w if w is not None else 1.0) / np.sqrt(var + eps)
    shift = (b if b is not None else 0.0) - mean * scale
    return Node(layer, "batchnorm", [c.arg(a[0])], _shape(n),
                {"scale": scale.astype(np.float32), "shift": shift.astype(np.float32)})


def _clamp_node(c, n, layer, lo, hi):
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    return Node(layer, "clamp", [c.arg(n.args[0])], _shape(n), {"lo": lo, "hi": hi})


def _maxpool(c, n, layer):
    a = n.args
    k = _pair(a[1])
    attrs = dict(kernel=k, stride=_pair(_get(a, 2, None) or k), padding=_pair(_get(a, 3, 0)),
                 dilation=_pair(_get(a, 4, 1)), ceil_mode=bool(_get(a, 5, False)))
    return Node(layer, "maxpool", [c.arg(a[0])], _shape(n), attrs)


def _avgpool(c, n, layer):
    a = n.args
    if _get(a, 6, None) is not None:
        raise UnsupportedOpError("avg_pool2d with divisor_override", layer, "capture",
                                 SUPPORTED_TORCH)
    k = _pair(a[1])
    attrs = dict(kernel=k, stride=_pair(_get(a, 2, None) or k), padding=_pair(_get(a, 3, 0)),
                 ceil_mode=bool(_get(a, 4, False)), count_include_pad=bool(_get(a, 5, True)))
    return Node(layer, "avgpool", [c.arg(a[0])], _shape(n), attrs)


def _adaptive_avgpool(c, n, layer):
    if tuple(_pair(n.args[1])) != (1, 1):
        raise UnsupportedOpError(f"adaptive_avg_pool2d to {tuple(n.args[1])} (only 1x1)",
                                 layer, "capture", SUPPORTED_TORCH)
    return Node(layer, "gap", [c.arg(n.args[0])], _shape(n))


def _mean(c, n, layer):
    rank = len(n.args[0].meta["val"].shape)
    dims = sorted(d % rank for d in n.args[1])
    if dims != {4: [2, 3], 3: [2]}.get(rank):           # a signal's L is its H, W
        raise UnsupportedOpError(f"mean over dims {list(n.args[1])} (only spatial H, W)",
                                 layer, "capture", SUPPORTED_TORCH)
    gap = Node(layer, "gap", [c.arg(n.args[0])], _shape(n.args[0])[:1] + (1, 1))
    if _get(n.args, 2, False):
        return gap
    c.nodes.append(gap)
    return Node(c.layer_name(n), "reshape", [gap.name], _shape(n))


def _reshape(c, n, layer):
    src = c.arg(n.args[0])
    if _shape(n) == _shape(n.args[0]):
        return src
    return Node(layer, "reshape", [src], _shape(n))


def _computed(c, a) -> bool:
    """a is a tensor the model computes (not a number, parameter or constant)."""
    return isinstance(a, torch.fx.Node) and a.name in c.names


def _const(c, a) -> np.ndarray:
    """A number or a constant tensor operand, as float32."""
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        return np.float32(a)
    return c.param(a)


def _affine(c, n, layer, x, scale, shift):
    """x * scale + shift with constants (numbers or one per channel): a 1x1 depthwise
    conv2d on a (C, H, W) map, a linear with a diagonal weight on a vector."""
    shape = _shape(n)
    if _shape(x) != shape or len(shape) not in (1, 3):
        raise UnsupportedOpError(f"arithmetic with a constant on shape {shape} (only "
                                 "(C, H, W) maps and vectors, not broadcast larger)",
                                 layer, "capture", SUPPORTED_TORCH)
    s, t = (_per_channel(np.asarray(v, np.float32), shape, layer) for v in (scale, shift))
    if len(shape) == 1:
        return Node(layer, "linear", [c.arg(x)], shape, {"act": None}, np.diag(s), t)
    ch = shape[0]
    attrs = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=ch, act=None)
    return Node(layer, "conv2d", [c.arg(x)], shape, attrs, s.reshape(ch, 1, 1, 1), t)


def _per_channel(v: np.ndarray, shape: tuple[int, ...], layer: str) -> np.ndarray:
    """One value per channel of a constant that broadcasts to (1, *shape)."""
    try:
        full = np.broadcast_to(v, (1, *shape))[0]
    except ValueError:
        full = None
    per = None if full is None else full.reshape(shape[0], -1)[:, 0]
    if per is None or not np.array_equal(full, np.broadcast_to(
            per.reshape((-1,) + (1,) * (len(shape) - 1)), shape)):
        raise UnsupportedOpError(f"a constant of shape {tuple(v.shape)} that varies inside "
                                 "a channel (only a number or one value per channel)",
                                 layer, "capture", SUPPORTED_TORCH)
    return per.astype(np.float32)


def _mul(c, n, layer):
    a, b = n.args[:2]
    if _computed(c, a) and _computed(c, b):
        return _mul_tensors(c, n, layer, a, b)
    x, k = (a, b) if _computed(c, a) else (b, a)
    return _affine(c, n, layer, x, _const(c, k), 0.0)


def _mul_tensors(c, n, layer, a, b):
    """Elementwise, or a (C, 1, 1) gate times a (C, H, W) map, in that order."""
    out, sa, sb = _shape(n), _shape(a), _shape(b)
    if sa != out:
        (a, sa), (b, sb) = (b, sb), (a, sa)
    gate = len(out) == 3 and sb == (out[0], 1, 1)
    if sa != out or not (sb == out or gate):
        raise UnsupportedOpError(f"mul of shapes {_shape(n.args[0])} and {_shape(n.args[1])} "
                                 "(only equal shapes, or (C, 1, 1) times (C, H, W))", layer,
                                 "capture", SUPPORTED_TORCH)
    return Node(layer, "mul", [c.arg(a), c.arg(b)], out, {"act": None})


def _div(c, n, layer):
    a, b = n.args[:2]
    if n.kwargs.get("rounding_mode") or not _computed(c, a) or _computed(c, b):
        raise UnsupportedOpError("division other than by a constant", layer, "capture",
                                 SUPPORTED_TORCH)
    return _affine(c, n, layer, a, 1.0 / _const(c, b), 0.0)


def _sub(c, n, layer):
    """p - alpha * q (sub) or q - alpha * p (rsub), one of them a constant."""
    p, q = n.args[:2] if "rsub" not in str(n.target) else n.args[1::-1]
    alpha = float(n.kwargs.get("alpha", 1))
    if _computed(c, p) == _computed(c, q):
        raise UnsupportedOpError("sub of two tensors", layer, "capture", SUPPORTED_TORCH)
    if _computed(c, p):
        return _affine(c, n, layer, p, 1.0, -alpha * _const(c, q))
    return _affine(c, n, layer, q, -alpha, _const(c, p))


def _add(c, n, layer):
    a, b = n.args[:2]
    alpha = float(n.kwargs.get("alpha", 1))
    if not (_computed(c, a) and _computed(c, b)):
        x, k = (a, b) if _computed(c, a) else (b, a)
        return _affine(c, n, layer, x, 1.0 if x is a else alpha, _const(c, k) *
                       (alpha if x is a else 1.0))
    if n.kwargs.get("alpha", 1) != 1 or _shape(a) != _shape(b):
        raise UnsupportedOpError("add with alpha or broadcasting", layer, "capture",
                                 SUPPORTED_TORCH)
    return Node(layer, "add", [c.arg(a), c.arg(b)], _shape(n), {"act": None})


def _cat(c, n, layer):
    dim = _get(n.args, 1, 0)
    if dim % len(n.meta["val"].shape) != 1:
        raise UnsupportedOpError(f"cat on dim {dim} (only channels, dim 1)", layer,
                                 "capture", SUPPORTED_TORCH)
    return Node(layer, "concat", [c.arg(x) for x in n.args[0]], _shape(n))


def _identity(c, n, layer):
    return c.arg(n.args[0])


def _pointwise(op: str, alpha_default: float | None = None):
    """A handler for a pointwise activation IR op (leaky_relu carries its slope)."""
    def handler(c, n, layer):
        attrs = {} if alpha_default is None else {"alpha": float(_get(n.args, 1,
                                                                       alpha_default))}
        return Node(layer, op, [c.arg(n.args[0])], _shape(n), attrs)
    return handler


def _hardsigmoid(c, n, layer):
    """clamp(x / 6 + 1/2, 0, 1): the affine node with activation range [0, 1]."""
    node = _affine(c, n, layer, n.args[0], np.float32(1.0 / 6.0), np.float32(0.5))
    node.attrs["act"] = (0.0, 1.0)
    return node


def _softmax(c, n, layer):
    """Kept only as the model's output (checked in finish): an alias of its input."""
    c.dropped[n.name] = layer
    return c.arg(n.args[0])


def _getitem(c, n, layer):
    src, index = n.args
    if index != 0 or "batch_norm" not in str(src.target):
        raise UnsupportedOpError("a tuple-returning op", layer, "capture", SUPPORTED_TORCH)
    return c.arg(src)


ATEN = {
    "aten.conv2d.default": _conv,
    "aten.convolution.default": _convolution,
    "aten.conv2d.padding": _conv,
    "aten.conv1d.default": _conv1d,
    "aten.conv_transpose2d.input": _transposed,
    "aten.conv_transpose1d.default": _transposed1d,
    "aten.conv1d.padding": _conv1d,
    "aten.constant_pad_nd.default": _pad,
    "aten.pad.default": _pad,
    "aten.upsample_nearest2d.vec": _upsample,
    "aten.upsample_nearest2d.default": _upsample,
    "aten.unsqueeze.default": _reshape,
    "aten.squeeze.dim": _reshape,
    "aten.squeeze.dims": _reshape,
    "aten.linear.default": _linear,
    "aten.batch_norm.default": _batchnorm,
    "aten._native_batch_norm_legit_no_training.default": _batchnorm,
    "aten.relu.default": lambda c, n, l: _clamp_node(c, n, l, 0.0, None),
    "aten.relu_.default": lambda c, n, l: _clamp_node(c, n, l, 0.0, None),
    "aten.relu6.default": lambda c, n, l: _clamp_node(c, n, l, 0.0, 6.0),
    "aten.hardtanh.default": lambda c, n, l: _clamp_node(
        c, n, l, _get(n.args, 1, -1.0), _get(n.args, 2, 1.0)),
    "aten.hardtanh_.default": lambda c, n, l: _clamp_node(
        c, n, l, _get(n.args, 1, -1.0), _get(n.args, 2, 1.0)),
    "aten.clamp.default": lambda c, n, l: _clamp_node(
        c, n, l, _get(n.args, 1, None), _get(n.args, 2, None)),
    "aten.max_pool2d.default": _maxpool,
    "aten.avg_pool2d.default": _avgpool,
    "aten.adaptive_avg_pool2d.default": _adaptive_avgpool,
    "aten.mean.dim": _mean,
    "aten.flatten.using_ints": _reshape,
    "aten.view.default": _reshape,
    "aten.reshape.default": _reshape,
    "aten._unsafe_view.default": _reshape,
    "aten.add.Tensor": _add,
    "aten.add.Scalar": _add,
    "aten.sub.Tensor": _sub,
    "aten.sub.Scalar": _sub,
    "aten.rsub.Scalar": _sub,
    "aten.mul.Tensor": _mul,
    "aten.mul.Scalar": _mul,
    "aten.div.Tensor": _div,
    "aten.div.Scalar": _div,
    "aten.cat.default": _cat,
    "aten.dropout.default": _identity,
    "aten.dropout_.default": _identity,
    "aten.feature_dropout.default": _identity,
    "aten.feature_dropout_.default": _identity,
    "aten.alpha_dropout.default": _identity,
    "aten.softmax.int": _softmax,
    "aten._softmax.default": _softmax,
    "aten.log_softmax.int": _softmax,
    "aten._log_softmax.default": _softmax,
    **{f"aten.{name}{tail}.default": _pointwise(op)
       for name, op in (("sigmoid", "sigmoid"), ("tanh", "tanh"), ("hardswish", "hardswish"),
                        ("silu", "silu"))
       for tail in ("", "_")},
    "aten.hardsigmoid.default": _hardsigmoid,
    "aten.hardsigmoid_.default": _hardsigmoid,
    "aten.leaky_relu.default": _pointwise("leaky_relu", 0.01),
    "aten.leaky_relu_.default": _pointwise("leaky_relu", 0.01),
    "aten.contiguous.default": _identity,
    "aten.clone.default": _identity,
    "aten.alias.default": _identity,
    "aten.detach.default": _identity,
    "<built-in function getitem>": _getitem,
}
SUPPORTED_TORCH = ["Conv2d (padding: numbers, 'same', 'valid')", "Conv1d",
                   "ConvTranspose2d (groups 1; padding as TFLite SAME/VALID gives it)",
                   "ZeroPad2d / F.pad (zeros)", "Upsample / interpolate (nearest, integer)", "Linear", "BatchNorm2d", "ReLU", "ReLU6", "Hardtanh", "clamp",
                   "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d(1)", "mean(H,W)",
                   "flatten/view/reshape", "add", "mul (equal shapes or (C,1,1) x (C,H,W))",
                   "+ - * / by a constant (number or per channel)", "cat(dim=1)", "Dropout",
                   "Dropout2d", "Identity", "Sigmoid", "Tanh", "Hardswish", "Hardsigmoid", "SiLU",
                   "LeakyReLU", "Softmax/LogSoftmax (final, dropped)"]


# --- graph passes ---------------------------------------------------------------

def _fold_batchnorm(graph: Graph) -> Graph:
    nodes = []
    for node in graph.nodes:
        if node.op != "batchnorm":
            nodes.append(node)
            continue
        prev = next((p for p in nodes if p.name == node.inputs[0]), None)
        if prev is None or prev.op not in WEIGHTED or len(graph.consumers(prev.name)) != 1:
            raise UnsupportedOpError("BatchNorm not after a conv or linear", node.name,
                                     "capture", SUPPORTED_TORCH)
        s, t = node.attrs["scale"], node.attrs["shift"]
        prev.weight = (prev.weight * s.reshape((-1,) + (1,) * (prev.weight.ndim - 1))
                       ).astype(np.float32)
        prev.bias = (prev.bias * s + t).astype(np.float32)
        _rename_input(graph.nodes, node.name, prev.name)
    return Graph(graph.input_shape, nodes)


def _fuse_activations(graph: Graph) -> Graph:
    nodes = []
    for node in graph.nodes:
        prev = next((p for p in nodes if p.name == node.inputs[0]), None)
        if (node.op == "clamp" and prev is not None and prev.op in ACT_HOSTS
                and len(graph.consumers(prev.name)) == 1):
            lo, hi = prev.attrs["act"] or (-math.inf, math.inf)
            prev.attrs["act"] = (max(lo, node.attrs["lo"]), min(hi, node.attrs["hi"]))
            _rename_input(graph.nodes, node.name, prev.name)
        else:
            nodes.append(node)
    return Graph(graph.input_shape, nodes)


def _rename_input(nodes: list[Node], old: str, new: str) -> None:
    for n in nodes:
        n.inputs = [new if i == old else i for i in n.inputs]


# --- float execution (calibration and checks) -------------------------------------

def run(graph: Graph, x: torch.Tensor, keep: bool = False) -> dict[str, torch.Tensor]:
    """Float forward pass of the IR. Returns {'output': logits}, plus every tensor
    by name when keep is True."""
    values = {INPUT: x}
    for node in graph.nodes:
        values[node.name] = FLOAT_OPS[node.op](node, [values[i] for i in node.inputs])
    out = values[graph.output]
    return values | {"output": out} if keep else {"output": out}


def _act(node: Node, y: torch.Tensor) -> torch.Tensor:
    act = node.attrs.get("act")
    return y if act is None else torch.clamp(y, act[0], act[1])


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def weighted(node: Node, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
    """The linear map of a WEIGHTED node with weight w (IR layout) and bias b."""
    if node.op == "linear":
        return F.linear(x, w, b)
    a = node.attrs
    if node.op == "conv_transpose":
        return F.conv_transpose2d(x, w.transpose(0, 1), b, a["stride"], a["padding"],
                                  a["output_padding"])
    return F.conv2d(x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"])


FLOAT_OPS = {
    "conv2d": lambda n, xs: _act(n, F.conv2d(xs[0], _t(n.weight), _t(n.bias), n.attrs["stride"],
                                             n.attrs["padding"], n.attrs["dilation"],
                                             n.attrs["groups"])),
    "conv_transpose": lambda n, xs: _act(n, weighted(n, xs[0], _t(n.weight), _t(n.bias))),
    "linear": lambda n, xs: _act(n, F.linear(xs[0], _t(n.weight), _t(n.bias))),
    "add": lambda n, xs: _act(n, xs[0] + xs[1]),
    "mul": lambda n, xs: _act(n, xs[0] * xs[1]),
    "concat": lambda n, xs: torch.cat(xs, 1),
    "maxpool": lambda n, xs: F.max_pool2d(xs[0], n.attrs["kernel"], n.attrs["stride"],
                                          n.attrs["padding"], n.attrs["dilation"],
                                          ceil_mode=n.attrs["ceil_mode"]),
    "avgpool": lambda n, xs: F.avg_pool2d(xs[0], n.attrs["kernel"], n.attrs["stride"],
                                          n.attrs["padding"], n.attrs["ceil_mode"],
                                          n.attrs["count_include_pad"]),
    "gap": lambda n, xs: xs[0].mean((2, 3), keepdim=True),
    "reshape": lambda n, xs: xs[0].reshape((xs[0].shape[0], *n.shape)),
    "clamp": lambda n, xs: torch.clamp(xs[0], n.attrs["lo"], n.attrs["hi"]),
    "sigmoid": lambda n, xs: torch.sigmoid(xs[0]),
    "tanh": lambda n, xs: torch.tanh(xs[0]),
    "hardswish": lambda n, xs: F.hardswish(xs[0]),
    "silu": lambda n, xs: F.silu(xs[0]),
    "leaky_relu": lambda n, xs: F.leaky_relu(xs[0], n.attrs["alpha"]),
    "pad": lambda n, xs: F.pad(xs[0], _torch_pads(n.attrs["pads"])),
    "upsample": lambda n, xs: xs[0].repeat_interleave(n.attrs["scale"][0], 2)
                                   .repeat_interleave(n.attrs["scale"][1], 3),
}


def _torch_pads(pads) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) -> F.pad's (left, right, top, bottom)."""
    top, bottom, left, right = pads
    return (left, right, top, bottom)
