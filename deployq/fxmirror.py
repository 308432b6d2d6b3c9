"""A differentiable, bit-exact mirror of the FPGA fixed-point target, for BPDA attacks.

FxMirror runs deployq.fixedpoint's integer forward pass in float64 torch: the same
integers (every weight, bias, shift, clamp range and reciprocal comes from
fixedpoint.lower; none is recomputed here), the same op order, and the rounding and
fitting done by fixedpoint.shift / fixedpoint.fit themselves on the detached values.
Its forward output is therefore fixedpoint.run_int's (and so the C runtime's) bit for
bit; tests/unit/test_fxmirror.py checks both.

Exactness of float64. Every tensor holds integers. Products are at most 2^7 * 2^7
(8-bit tensors and weights), biases are bounded by 2^30 (fixedpoint.BIAS_LIMIT), and
an accumulator is fitted to acc_bits <= 32 bits, so every partial sum of a conv,
linear, add or pooling window stays far below 2^53 and is an exact float64 integer in
any summation order; multiplying by a power of two (shifts, the input scaling, the
output's 2^-frac) is exact too. FxMirror checks the bound per layer on construction.

Backward is straight-through (Bengio et al. 2013; Athalye et al. 2018, BPDA), in real
units the identity of each op's exact (unrounded, unfitted) value:
  shift by s           d/dx = 2^-s (identity in real units: x 2^-f_acc -> y 2^-f_out)
  fit, SAT / clamp     identity where the exact value lies in the range, zero where
                       it saturates (as mirror.fake_quant)
  fit, WRAP            identity everywhere: a wrap is a jump of 2^bits, whose
                       derivative is zero almost everywhere, and the identity is what
                       the unwrapped value's gradient would be (a wrapped model is
                       then attacked as if it did not wrap)
  SAT accumulator added tap by tap, each product saturated first
                       (fixedpoint.accumulate's order, used only when a partial sum
                       can leave the range): the gradient of one saturation of the
                       exact sum
  average pool         'divide': the exact mean sum * 2^g / n (the truncation of the
                       quotient is straight-through)
  input quantization   x -> x * 2^f_in: identity inside [qmin, qmax] * 2^-f_in, zero
                       where the input saturates
  max pool             to the window's maximum (torch's max)
Logits are q_out * 2^-f_out divided by `temperature`."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from . import fixedpoint as FX
from . import graph as G

EXACT = 2 ** 53                    # float64 holds every integer of magnitude below this


def _int(t: torch.Tensor) -> np.ndarray:
    """The detached integer values of a float64 tensor."""
    return t.detach().numpy().astype(np.int64)


def _float(q: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(q, np.float64))


def _ste(exact: np.ndarray, x: torch.Tensor, scale=1.0, mask=None) -> torch.Tensor:
    """`exact` forward, gradient d/dx = scale * mask (mask: 1 where the value passes)."""
    if not x.requires_grad:
        return _float(exact)
    return _Ste.apply(x, _float(exact), scale, mask)


class _Ste(torch.autograd.Function):
    """_ste as one autograd node: forward the exact integers (bits untouched), backward
    (grad * mask) * scale, the gradient _float(exact) + (x - x.detach()) * scale * mask
    would have, without recording its elementwise ops."""

    @staticmethod
    def forward(ctx, x, exact, scale, mask):
        ctx.scale, ctx.mask = scale, mask
        return exact

    @staticmethod
    def backward(ctx, grad):
        if ctx.mask is not None:
            grad = grad * ctx.mask
        return grad * ctx.scale, None, None, None


def _inside(x: torch.Tensor, lo, hi) -> torch.Tensor | None:
    """The gradient mask of _ste: 1 where lo <= x <= hi. None where x needs no gradient
    (_ste then ignores the mask; a mirror's forward without gradients, e.g. a black-box
    attack's queries, spent a fifth of its time on these masks)."""
    if not x.requires_grad:
        return None
    return ((x >= lo) & (x <= hi)).to(x.dtype).detach()


def _range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def shift(x: torch.Tensor, s: np.ndarray, quant: str) -> torch.Tensor:
    """fixedpoint.shift forward; gradient 2^-s."""
    s = np.asarray(s, np.int64)
    return _ste(FX.shift(_int(x), s, quant), x, _float(np.exp2(-s.astype(np.float64))))


def fit(x: torch.Tensor, bits: int, overflow: str) -> torch.Tensor:
    """fixedpoint.fit forward; gradient identity (WRAP), or inside the range (SAT)."""
    mask = _inside(x, *_range(bits)) if overflow == "sat" else None
    return _ste(FX.fit(_int(x), bits, overflow), x, mask=mask)


def clip(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    return _ste(np.clip(_int(x), lo, hi), x, mask=_inside(x, lo, hi))


def quantize_input(x: torch.Tensor, fx: FX.FxModel) -> torch.Tensor:
    """fixedpoint.quantize_input (the Runner's conversion) with a straight-through
    gradient; x float32, the result float64 integers."""
    x = x.float()                                              # as the Runner
    v = x.double() * 2.0 ** fx.input_frac                      # exact
    q = FX.quantize_input(x.detach().numpy(), fx.input_frac, fx.input_bits, fx.input_quant)
    return _ste(q, v, mask=_inside(v, *_range(fx.input_bits)))


def requantize(acc: torch.Tensor, s: np.ndarray, layer: FX.FxLayer,
               fx: FX.FxModel) -> torch.Tensor:
    """fixedpoint.requantize: shift, fit, activation clamp."""
    v = fit(shift(acc, s, layer.quant), layer.bits, fx.options.out_overflow)
    return clip(v, *layer.act)


def _accumulate(raw: torch.Tensor, bias: np.ndarray, fx: FX.FxModel, taps,
                bound: float) -> torch.Tensor:
    """fixedpoint.accumulate of bias + the products whose exact sum is `raw` (bias
    included). `taps()` yields the int64 products in the hardware's order; it is used
    only when a SAT partial sum could leave the range."""
    o = fx.options
    if o.acc_overflow == "wrap" or bound < 2 ** (o.acc_bits - 1):
        exact = FX.fit(FX.fit(bias, o.acc_bits, o.acc_overflow) + (_int(raw) - bias),
                       o.acc_bits, o.acc_overflow)
    else:
        exact = FX.accumulate(bias, taps(), fx, bound)
    mask = _inside(raw, *_range(o.acc_bits)) if o.acc_overflow == "sat" else None
    return _ste(exact, raw, mask=mask)


def conv2d(x: torch.Tensor, *, layer: FX.FxLayer, fx: FX.FxModel, w: torch.Tensor):
    a = layer.node.attrs
    (sh, sw), (ph, pw), (dh, dw), g = a["stride"], a["padding"], a["dilation"], a["groups"]
    bias = layer.bias[:, None, None]
    raw = F.conv2d(x, w, _float(layer.bias), (sh, sw), (ph, pw), (dh, dw), g)

    def taps():                          # fixedpoint.conv2d's order: ky, kx, channel
        wi = layer.weight
        n_out, c_group, kh, kw = wi.shape
        oh, ow = layer.node.shape[1:]
        xp = np.pad(_int(x), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        group_of = np.arange(n_out) // (n_out // g)
        for ky in range(kh):
            for kx in range(kw):
                win = xp[:, :, ky * dh:ky * dh + (oh - 1) * sh + 1:sh,
                         kx * dw:kx * dw + (ow - 1) * sw + 1:sw]
                for ic in range(c_group):
                    yield win[:, group_of * c_group + ic] * wi[:, ic, ky, kx][:, None, None]
    acc = _accumulate(raw, bias, fx, taps, FX._bound(layer, fx))
    return requantize(acc, layer.shift[:, None, None], layer, fx)


def conv_transpose(x: torch.Tensor, *, layer: FX.FxLayer, fx: FX.FxModel, w: torch.Tensor):
    a = layer.node.attrs
    raw = F.conv_transpose2d(x, w.transpose(0, 1), _float(layer.bias), a["stride"],
                             a["padding"], a["output_padding"])

    def taps():                          # fixedpoint.conv_transpose's order: ky, kx, channel
        xi, wi = _int(x), layer.weight
        for ky in range(wi.shape[2]):
            for kx in range(wi.shape[3]):
                placed = FX.scattered(xi, ky, kx, a["stride"], a["padding"],
                                      layer.node.shape[1:])
                for ic in range(wi.shape[1]):
                    yield placed[:, ic][:, None] * wi[:, ic, ky, kx][:, None, None]
    acc = _accumulate(raw, layer.bias[:, None, None], fx, taps, FX._bound(layer, fx))
    return requantize(acc, layer.shift[:, None, None], layer, fx)


def linear(x: torch.Tensor, *, layer: FX.FxLayer, fx: FX.FxModel, w: torch.Tensor):
    raw = F.linear(x, w, _float(layer.bias))

    def taps():                          # fixedpoint.linear's order (sum_order)
        return FX.linear_taps(_int(x), layer)
    acc = _accumulate(raw, layer.bias, fx, taps, FX._bound(layer, fx))
    return requantize(acc, layer.shift, layer, fx)


def add(a: torch.Tensor, b: torch.Tensor, *, layer: FX.FxLayer, fx: FX.FxModel, w=None):
    s1, s2 = layer.extra["shifts"]
    acc = fit(a * 2.0 ** s1 + b * 2.0 ** s2, fx.options.acc_bits, fx.options.acc_overflow)
    return requantize(acc, layer.shift, layer, fx)


def mul(a: torch.Tensor, b: torch.Tensor, *, layer: FX.FxLayer, fx: FX.FxModel, w=None):
    """fixedpoint.mul; the product's gradient (exact below 2^53: |a * b| <= 2^14)."""
    acc = fit(a * b, fx.options.acc_bits, fx.options.acc_overflow)
    return requantize(acc, layer.shift, layer, fx)


def _windows(x: torch.Tensor, node: G.Node, fill: float) -> list[torch.Tensor]:
    """fixedpoint._windows: every (ky, kx) slice of the padded input."""
    a = node.attrs
    (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
    oh, ow = node.shape[1:]
    extra_h = max(0, (oh - 1) * sh + kh - x.shape[2] - 2 * ph)     # ceil_mode
    extra_w = max(0, (ow - 1) * sw + kw - x.shape[3] - 2 * pw)
    xp = F.pad(x, (pw, pw + extra_w, ph, ph + extra_h), value=fill)
    return [xp[:, :, ky:ky + (oh - 1) * sh + 1:sh, kx:kx + (ow - 1) * sw + 1:sw]
            for ky in range(kh) for kx in range(kw)]


def maxpool(x: torch.Tensor, *, layer: FX.FxLayer, fx: FX.FxModel, w=None):
    out = torch.stack(_windows(x, layer.node, -float(1 << 40))).max(0).values
    return clip(out, *layer.act)


def _scaled_mean(terms: list[torch.Tensor], layer: FX.FxLayer, fx: FX.FxModel):
    """fixedpoint._scaled_mean. pool_division 'divide': the truncated quotient forward,
    the exact mean (sum * 2^g / n) backward."""
    e = layer.extra
    if "count" in e:
        exact = FX.divide(FX.pool_sum([_int(t) for t in terms], layer, fx), e["count"])
        mean = _ste(exact, sum(terms), _float(2.0 ** e["guard_bits"] / np.asarray(e["count"])))
        return requantize(mean, layer.shift, layer, fx)
    return requantize(sum(terms) * _float(np.asarray(e["reciprocal"], np.float64)),
                      layer.shift + e["reciprocal_bits"], layer, fx)


def avgpool(x: torch.Tensor, *, layer: FX.FxLayer, fx: FX.FxModel, w=None):
    return _scaled_mean(_windows(x, layer.node, 0.0), layer, fx)


def gap(x: torch.Tensor, *, layer: FX.FxLayer, fx: FX.FxModel, w=None):
    h, w_ = x.shape[2:]
    return _scaled_mean([x[:, :, i:i + 1, j:j + 1] for i in range(h) for j in range(w_)],
                        layer, fx)


def reshape(x: torch.Tensor, *, layer: FX.FxLayer, fx: FX.FxModel, w=None):
    return x.reshape((len(x), *layer.node.shape))


def concat(*xs: torch.Tensor, layer: FX.FxLayer, fx: FX.FxModel, w=None):
    return torch.cat(xs, 1)


def clamp(x: torch.Tensor, *, layer: FX.FxLayer, fx: FX.FxModel, w=None):
    return clip(x, *layer.act)


TORCH_ACTIVATIONS = {
    "sigmoid": lambda x, a: torch.sigmoid(x), "tanh": lambda x, a: torch.tanh(x),
    "hardswish": lambda x, a: F.hardswish(x),
    "silu": lambda x, a: F.silu(x),
    "leaky_relu": lambda x, a: F.leaky_relu(x, a.get("alpha", 0.0)),
}


def activation(x: torch.Tensor, *, layer: FX.FxLayer, fx: FX.FxModel, w=None):
    """The ROM's integers forward; backward the float function's derivative (real
    units), the straight-through estimate of the table's rounding."""
    node = layer.node
    f_in = fx.frac(node.inputs[0])
    y = TORCH_ACTIVATIONS[node.op](x * 2.0 ** -f_in, node.attrs) * 2.0 ** layer.frac
    return _float(FX.activation(_int(x), layer=layer, fx=fx)) + (y - y.detach())
def pad(x: torch.Tensor, *, layer: FX.FxLayer, fx: FX.FxModel, w=None):
    return F.pad(x, G._torch_pads(layer.node.attrs["pads"]))


def upsample(x: torch.Tensor, *, layer: FX.FxLayer, fx: FX.FxModel, w=None):
    sh, sw = layer.node.attrs["scale"]
    return x.repeat_interleave(sh, 2).repeat_interleave(sw, 3)


OPS = {"conv2d": conv2d, "conv_transpose": conv_transpose,
       "linear": linear, "add": add, "mul": mul, "maxpool": maxpool,
       "avgpool": avgpool, "gap": gap, "reshape": reshape, "concat": concat, "clamp": clamp,
       "pad": pad, "upsample": upsample, **{op: activation for op in TORCH_ACTIVATIONS}}


def _check_exact(fx: FX.FxModel) -> None:
    """Every exact sum of a conv / linear (bias + all products) below 2^53."""
    for name, layer in fx.layers.items():
        if layer.weight is not None and FX._bound(layer, fx) >= EXACT:
            raise ValueError(f"layer '{name}': sums up to {FX._bound(layer, fx):.3g} "
                             "exceed float64's exact integers")


class FxMirror:
    """Call on float32 (N, C, H, W) in [0, 1]: float32 logits q_out * 2^-f_out /
    temperature, differentiable w.r.t. the input."""

    def __init__(self, fx: FX.FxModel, temperature: float = 1.0):
        _check_exact(fx)
        self.fx, self.temperature = fx, float(temperature)
        self.weights = {n: torch.from_numpy(l.weight.astype(np.float64))
                        for n, l in fx.layers.items() if l.weight is not None}

    def forward_int(self, x: torch.Tensor) -> torch.Tensor:
        """Float64 integers of the output (N, *output shape), differentiable."""
        fx = self.fx
        values = {G.INPUT: quantize_input(x, fx)}
        for node in fx.graph.nodes:
            values[node.name] = OPS[node.op](*[values[i] for i in node.inputs],
                                             layer=fx.layers[node.name], fx=fx,
                                             w=self.weights.get(node.name))
        return values[fx.graph.output]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        q = self.forward_int(x)
        scale = 2.0 ** -self.fx.layers[self.fx.graph.output].frac
        return (q * scale / self.temperature).float()

    def run_int(self, x: np.ndarray) -> np.ndarray:
        """As fixedpoint.run_int(fx, quantize_input(x)): int64 outputs."""
        with torch.no_grad():
            return _int(self.forward_int(torch.from_numpy(np.asarray(x, np.float32))))

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Untempered logits, as the runtime's runner returns them."""
        return FX.dequantize(self.run_int(x), self.fx.layers[self.fx.graph.output].frac)
