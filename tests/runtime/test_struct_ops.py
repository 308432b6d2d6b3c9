"""Structural ops (issue 15): elementwise and broadcast MUL, arithmetic with constants.
Per op a tiny model through every installed target: mcu-int8 equal to LiteRT's
reference kernels on every tensor of every sample (deployq.diff's comparison),
fpga-fixed equal to its NumPy twin and to its bit-exact mirror, ONNX integer kernels
with the float islands named, and negative controls that show the checks can fail."""
import random

import numpy as np
import pytest
import torch
from torch import nn

from deployq import backends, calibrate, diff, fixedpoint as FX, graph as G, plan as P
from deployq import targets as T
from deployq.backends import fpga
from deployq.errors import UnsupportedOpError
from deployq.fxmirror import FxMirror
from tests.conftest import randomized

SHAPE = (3, 8, 8)


class SE(nn.Module):
    """Squeeze-and-excitation: a (C, 1, 1) gate times the (C, H, W) map, then an
    elementwise square, arithmetic with numbers and a per-channel constant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.squeeze = nn.Linear(6, 3)
        self.excite = nn.Linear(3, 6)
        self.register_buffer("k", torch.linspace(-1.0, 2.0, 6).reshape(1, 6, 1, 1))
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = torch.relu(self.conv((x - 0.5) / 0.25))
        g = nn.functional.relu6(self.excite(torch.relu(self.squeeze(y.mean((2, 3))))) + 3) / 6
        y = y * g.view(-1, 6, 1, 1)
        y = y * self.k + 1.0
        y = torch.relu(2.0 - y * y)
        return self.fc(y.mean((2, 3)))


class KwsPad(nn.Module):
    """MLPerf Tiny DS-CNN's first layer as Keras writes it: 'same' padding on a
    stride-2 (10, 4) conv over 49x10, i.e. asymmetric zeros (F.pad) then a valid conv;
    then 'same' convs with an even kernel (asymmetric) and a dilated one (symmetric)."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((1, 2, 4, 5))
        self.conv = nn.Conv2d(1, 4, (10, 4), stride=2)
        self.same = nn.Conv2d(4, 4, (2, 3), padding="same")
        self.dil = nn.Conv2d(4, 4, 3, padding="same", dilation=2)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        y = torch.relu(self.conv(self.pad(x)))
        y = torch.relu(self.dil(self.same(y)))
        return self.fc(nn.functional.pad(y, (0, 1, 2, 0)).mean((2, 3)))


class UpConv1d(nn.Module):
    """Nearest upsampling (integer factors, also unequal) and a Conv1d over a flattened
    map (held as (C, 1, L))."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.up = nn.Upsample(scale_factor=2)
        self.c1 = nn.Conv1d(4, 3, 5, stride=2, padding=1)
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        y = self.up(torch.relu(self.conv(x)))
        y = nn.functional.interpolate(y, scale_factor=(1, 3), mode="nearest")
        z = torch.relu(self.c1(y.flatten(2)))
        return self.fc(z.mean(2))


class AvgExcludingPad(nn.Module):
    """AvgPool2d(count_include_pad=False) where TFLite has no padding with its windows
    (kernel 3, stride 2, padding 1 over 8x8; ResNet-D style), then one it has."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.avg2 = nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False)
        self.fc = nn.Linear(4 * 25, 5)

    def forward(self, x):
        return self.fc(self.avg2(self.avg(torch.relu(self.conv(x)))).flatten(1))


MODELS = {"avgpool_exclude_pad": AvgExcludingPad, "mul": SE, "pad": KwsPad, "upsample_conv1d": UpConv1d}
SHAPES = {"pad": (1, 49, 10)}


def _plan(graph, x, target, **settings):
    cfg = P.PlanConfig(default=settings)
    return P.make(graph, calibrate.collect(graph, x), target, cfg)


def _graph(name, seed=0):
    return G.capture(randomized(MODELS[name](), seed), SHAPES.get(name, SHAPE))


def _x(name, n, seed):
    return np.random.default_rng(seed).random((n, *SHAPES.get(name, SHAPE)), dtype=np.float32)


def _mcu_vs_reference(graph, x, tmp_path):
    """deployq.diff's per-tensor rows of mcu-int8 against tflite-int8-ref."""
    pytest.importorskip("ai_edge_litert")
    from deployq.backends import mcu, tflite
    target = T.get("mcu-int8")
    path, _ = mcu.export(graph, _plan(graph, x[:64], target), target, tmp_path, x[:64])
    runners = [tflite.Runner(tmp_path / "model.tflite", "reference"), mcu.load(path)]
    return diff._compare(runners, x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_mcu_equals_litert_reference_on_every_tensor(tmp_path, name):
    graph = _graph(name)
    x = _x(name, 50, 0)
    rows = _mcu_vs_reference(graph, x, tmp_path)
    # reshapes fold away; the converter folds a pad into the conv after it when the
    # pair is a conv with TF's SAME padding
    computed = {n.name for n in graph.nodes if n.op not in ("reshape", "pad")}
    assert computed <= {r["layer"] for r in rows}
    assert all(r["different"] == 0 for r in rows), [r for r in rows if r["different"]]


@pytest.mark.parametrize("name, options", [(n, {}) for n in sorted(MODELS)] + [
    ("avgpool_exclude_pad", {"pool_division": "reciprocal"}),
    ("mul", {"acc_bits": 12, "acc_overflow": "sat", "out_overflow": "wrap"})])
def test_fpga_equals_numpy_twin_and_mirror(tmp_path, name, options):
    graph = _graph(name)
    x = _x(name, 100, 1)
    target = T.get("fpga-fixed")
    target.options = dict(target.options, **options)
    plan = _plan(graph, x[:50], target)
    path, plan = fpga.export(graph, plan, target, tmp_path)
    c_out = backends.codes(fpga.load(path), x).reshape(len(x), -1)
    fx = fpga.lower(graph, plan, target)
    twin = FX.run_int(fx, FX.quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant))
    np.testing.assert_array_equal(c_out, twin.reshape(len(x), -1))
    np.testing.assert_array_equal(FxMirror(fx).run_int(x).reshape(len(x), -1), c_out)


def test_negative_control_a_mul_one_lsb_off_is_caught(tmp_path, monkeypatch):
    """The comparison fails when the C MUL's multiplier is off by a little."""
    from deployq.backends import mcu
    original = mcu.OPS["MUL"]

    def skewed(r, op):
        original(r, op)
        r.ops[-1].params["multiplier"] = int(r.ops[-1].params["multiplier"] * 1.01)
    monkeypatch.setitem(mcu.OPS, "MUL", skewed)
    x = np.random.default_rng(0).random((20, *SHAPE), dtype=np.float32)
    rows = _mcu_vs_reference(_graph("mul"), x, tmp_path)
    assert any(r["different"] for r in rows if r["layer"].startswith("mul"))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_runs_convs_in_integers_and_names_float_islands(tmp_path, name):
    from deployq.backends import onnx as O
    graph = _graph(name)
    x = _x(name, 50, 2)
    target = T.get("onnx-int8")
    path, plan = O.export(graph, _plan(graph, x, target), target, tmp_path)
    ops = O.kernels(path)
    assert not set(ops) & O.FLOAT_COMPUTE and ops["QLinearConv"] >= 1
    islands = plan.provenance.get("onnx_float_islands", [])
    assert all(i["layer"] in {n.name for n in graph.nodes} for i in islands)
    assert O.float_islands(path) == islands
    logits = O.load(path).run(x)            # the integer model computes the float one
    ref = G.run(graph, torch.from_numpy(x))["output"].numpy()
    assert np.corrcoef(logits.ravel(), ref.ravel())[0, 1] > 0.95


def test_litert_nearest_rule_is_integer_division_for_integer_factors():
    """reference_ops' floor(y * float32(in) / float32(out)) equals y // s for out = s * in,
    every size up to 1024 and factor up to 16: the C kernel's integer rule."""
    f32 = np.float32
    for size in range(1, 1025):
        for s in range(1, 17):
            y = np.arange(size * s)
            ref = np.floor(y.astype(f32) * (f32(size) / f32(size * s))).astype(np.int64)
            assert np.array_equal(np.minimum(ref, size - 1), y // s), (size, s)


class RandomMul(nn.Module):
    """Random conv stacks with a squeeze-and-excitation gate, an elementwise product
    and a constant factor at a random point: odd shapes, channels, strides."""

    def __init__(self, rng: random.Random, ch: int):
        super().__init__()
        c1 = rng.choice([1, 3, 4, 7])
        self.conv = nn.Conv2d(ch, c1, rng.choice([1, 3]), rng.choice([1, 2]), padding=1)
        self.gate = nn.Linear(c1, c1)
        self.other = nn.Conv2d(c1, c1, 1)
        self.k = rng.choice([-3.0, 0.01, 7.5])
        self.fc = nn.Linear(c1, rng.randint(2, 9))

    def forward(self, x):
        y = torch.relu(self.conv(x))
        g = torch.relu(self.gate(y.mean((2, 3)))).unsqueeze(-1).unsqueeze(-1)
        y = (y * g) * self.other(y) * self.k
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("seed", range(3))
def test_random_mul_models_with_odd_shapes_and_extreme_scales_bit_exact(tmp_path, seed):
    rng = random.Random(seed)
    shape = (rng.choice([1, 2, 3]), rng.randint(5, 13), rng.randint(5, 13))
    model = randomized(RandomMul(rng, shape[0]), seed)
    with torch.no_grad():
        model.other.weight.mul_(10.0 ** rng.choice([-3, 0, 2]))   # tiny to huge products
    graph = G.capture(model, shape)
    x = np.random.default_rng(seed).random((40, *shape), dtype=np.float32)
    rows = _mcu_vs_reference(graph, x, tmp_path)
    assert rows and all(r["different"] == 0 for r in rows)


class _Op(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.conv, self.one, self.fn = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 1, 3), fn
        self.up = nn.ConvTranspose2d(4, 4, 3, 2, padding=1, output_padding=1)
        self.register_buffer("k", torch.arange(6.0).reshape(1, 1, 1, 6))

    def forward(self, x):
        return self.fn(self, x).flatten(1)


@pytest.mark.parametrize("fn, message", [
    (lambda m, x: m.conv(x) * m.one(x), "mul of shapes"),              # (1, H, W) gate
    (lambda m, x: nn.functional.pad(m.conv(x), (1, 1), value=1.0), "only zeros"),
    (lambda m, x: nn.functional.pad(m.conv(x), (0, 0, 0, 0, 1, 0)), "only zeros"),
    (lambda m, x: m.conv(x) * m.k, "varies inside a channel"),
    (lambda m, x: nn.functional.interpolate(m.conv(x), size=(7, 9)), "integer factors"),
    (lambda m, x: m.up(m.conv(x)), "ConvTranspose2d with padding")])
def test_capture_refuses_what_no_target_runs_in_one_line(fn, message):
    with pytest.raises(UnsupportedOpError, match=message):
        G.capture(_Op(fn).eval(), SHAPE)


def test_constant_arithmetic_is_a_depthwise_conv_with_the_float_semantics():
    model = _Op(lambda m, x: 2.0 - (m.conv(x) * 3.0 + 1.0) / 4.0).eval()
    graph = G.capture(model, SHAPE)
    assert [n.op for n in graph.nodes] == ["conv2d"] * 5 + ["reshape"]
    x = torch.rand(4, *SHAPE)
    torch.testing.assert_close(G.run(graph, x)["output"], model(x))
