"""FPGA fixed-point mode of the C runtime, through ctypes: every output equal to the
NumPy model deployq.fixedpoint (written from the IR and the plan, not from the C code)
over random models, bit widths, accumulator widths, quantization and overflow modes."""
import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from deployq import api, calibrate, fixedpoint as FX, graph as G, plan as P, rtformat
from deployq import runtime, targets as T
from deployq import backends
from deployq.backends import fpga
from deployq.errors import UnsupportedOpError
from tests.conftest import ALL_OPS_SHAPE, AllOps, randomized


def _target(**options):
    target = T.get("fpga-fixed")
    target.options = dict(target.options, **options)
    return target


def _plan(graph, x, target, by_name=None, **settings):
    cfg = P.PlanConfig(default=settings, by_name=by_name or {})
    return P.make(graph, calibrate.collect(graph, x), target, cfg)


def _compare(graph, plan, target, x, tmp_path):
    """Integer outputs of the C runtime and of the NumPy model on the same plan."""
    path, plan = fpga.export(graph, plan, target, tmp_path)
    c_out = backends.codes(fpga.load(path), x)
    fx = fpga.lower(graph, plan, target)
    ref = FX.run_int(fx, FX.quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant))
    return c_out.reshape(len(x), -1), ref.reshape(len(x), -1)


class AllOpsFx(AllOps):
    """AllOps with the average pool the fixed-point kernel computes (count_include_pad)."""

    def __init__(self):
        super().__init__()
        self.avg = nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=True)


def test_avgpool_excluding_padding_divides_by_each_windows_count():
    graph = G.capture(randomized(AllOps()), ALL_OPS_SHAPE)
    node = graph.node("avg")                     # kernel 2, stride 1, padding 1 on 3x3
    counts = FX.window_counts(graph, node)
    np.testing.assert_array_equal(counts[0], [1, 2, 2, 1])
    np.testing.assert_array_equal(counts[1], [2, 4, 4, 2])


@pytest.mark.parametrize("quant", ["trn", "rnd", "rnd_conv"])
@pytest.mark.parametrize("acc_bits, acc_overflow, out_overflow",
                         [(32, "wrap", "sat"), (12, "sat", "wrap"), (16, "wrap", "wrap"),
                          (24, "sat", "sat")])
def test_every_op_bit_exact(tmp_path, quant, acc_bits, acc_overflow, out_overflow):
    graph = G.capture(randomized(AllOpsFx()), ALL_OPS_SHAPE)
    x = np.random.default_rng(1).random((200, *ALL_OPS_SHAPE), dtype=np.float32)
    target = _target(acc_bits=acc_bits, acc_overflow=acc_overflow, out_overflow=out_overflow)
    plan = _plan(graph, x[:50], target, rounding=quant, calibration="percentile",
                 percentile=99.0)
    c_out, ref = _compare(graph, plan, target, x, tmp_path)
    np.testing.assert_array_equal(c_out, ref)


@pytest.mark.parametrize("name", ["lenet-digits", "dsnet-digits"])
def test_zoo_models_bit_exact_and_accurate(tmp_path, name):
    session = api.open_session(f"zoo:{name}")
    x, y = session.dataset.test()
    target = _target()
    plan = P.make(session.graph, session.stats, target)
    c_out, ref = _compare(session.graph, plan, target, x, tmp_path)
    np.testing.assert_array_equal(c_out, ref)
    float_acc = (session.model.logits(x).argmax(1) == y).mean()
    fx_acc = (c_out.argmax(1) == y).mean()
    assert fx_acc >= float_acc - 0.02, (fx_acc, float_acc)   # measured: -0.000 / -0.008


class Random(nn.Module):
    """Random stacks: conv (kernel, stride, padding, dilation, groups), residual add,
    concat, max/avg pooling, and a flatten of a feature map or a global mean."""

    def __init__(self, rng: random.Random, ch: int, size: int):
        super().__init__()
        layers, c = [], ch
        for _ in range(rng.randint(1, 3)):
            while True:                             # keep feature maps at least 3 wide
                k, s, d = rng.choice([1, 2, 3, 5]), rng.choice([1, 1, 2]), rng.choice([1, 1, 2])
                pad = rng.choice([0, (k // 2) * d])
                if (size + 2 * pad - d * (k - 1) - 1) // s + 1 >= 3:
                    size = (size + 2 * pad - d * (k - 1) - 1) // s + 1
                    break
            groups = c if rng.random() < 0.3 else 1
            out = c * rng.choice([1, 2]) if groups > 1 else rng.choice([1, 3, 4, 7, 8])
            layers += [nn.Conv2d(c, out, k, s, padding=pad, dilation=d, groups=groups),
                       rng.choice([nn.ReLU(), nn.ReLU6(), nn.Identity(), nn.Hardtanh(-1, 2),
                                   nn.Sigmoid(), nn.Tanh(), nn.Hardswish(), nn.Hardsigmoid(),
                                   nn.SiLU(), nn.LeakyReLU(rng.choice([0.05, 0.5]))])]
            c = out
        self.body = nn.Sequential(*layers)
        self.res = nn.Conv2d(c, c, 3, padding=1)
        k = rng.choice([2, 3])
        self.pool = rng.choice([nn.MaxPool2d(k, rng.choice([1, 2]), rng.choice([0, 1]),
                                             ceil_mode=rng.random() < 0.5),
                                nn.AvgPool2d(k, 1, rng.choice([0, 1])), nn.Identity()])
        self.flat = rng.random() < 0.5
        self.c = 2 * c

    def forward(self, x):
        a = self.body(x)
        b = torch.relu(self.res(a) + a)
        z = self.pool(torch.cat([b, a], 1))
        z = torch.flatten(z, 1) if self.flat else z.mean((2, 3))
        return self.fc(z)


def _random_model(seed):
    rng = random.Random(seed)
    shape = (rng.choice([1, 2, 3]), rng.randint(6, 11), rng.randint(6, 11))
    model = Random(rng, shape[0], min(shape[1:]))
    with torch.no_grad():
        n = torch.flatten(model.pool(torch.cat([model.body(torch.zeros(1, *shape))] * 2, 1)),
                          1).shape[1] if model.flat else model.c
    model.fc = nn.Linear(n, rng.randint(2, 9))
    return randomized(model, seed), shape, rng


@pytest.mark.parametrize("seed", range(16))
def test_random_models_bit_widths_and_modes_bit_exact(tmp_path, seed):
    model, shape, rng = _random_model(seed)
    graph = G.capture(model, shape)
    target = _target(acc_bits=rng.choice([12, 16, 24, 32]),
                     acc_overflow=rng.choice(["wrap", "sat"]),
                     out_overflow=rng.choice(["wrap", "sat"]),
                     reciprocal_bits=rng.choice([8, 12, 16]))
    by_name = {n.name: {"weight_bits": rng.randint(2, 8), "activation_bits": rng.randint(2, 8),
                        "rounding": rng.choice(["trn", "rnd", "rnd_conv"]),
                        "granularity": rng.choice(["per-channel", "per-tensor"])}
               for n in graph.nodes}
    x = np.random.default_rng(seed).random((150, *shape), dtype=np.float32)
    plan = _plan(graph, x[:40], target, by_name, rounding=rng.choice(["trn", "rnd", "rnd_conv"]))
    c_out, ref = _compare(graph, plan, target, x, tmp_path)
    np.testing.assert_array_equal(c_out, ref)


def test_per_layer_bits_reach_the_file(tmp_path, digits_session):
    s = digits_session
    target = _target()
    x = s.dataset.calibration(64)
    layer = next(n.name for n in s.graph.nodes if n.op == "conv2d")
    plan = _plan(s.graph, x, target, {layer: {"activation_bits": 4, "weight_bits": 3}})
    path, _ = fpga.export(s.graph, plan, target, tmp_path)
    blob = path.read_bytes()
    n = int(np.frombuffer(blob[:32], "<u4")[3])
    tensors = np.frombuffer(blob, rtformat.TENSOR, n, rtformat.HEADER.itemsize)
    names = json.loads((tmp_path / fpga.TENSORS).read_text())["tensors"]
    bits = dict(zip(names, tensors["bits"].tolist()))
    assert bits[layer] == 4 and bits[G.INPUT] == 8
    assert plan.layers[layer].weight.bits == 3
    filt = fpga.lower(s.graph, plan, target).layers[layer].weight
    assert np.abs(filt).max() <= 3 and len(np.unique(filt)) > 2


def _outputs(graph, x, tmp_path, settings, **options):
    target = _target(**options)
    plan = _plan(graph, x[:20], target, calibration="percentile", percentile=90.0, **settings)
    path, _ = fpga.export(graph, plan, target, tmp_path / str(hash((str(settings),
                                                                    str(options)))))
    return backends.codes(fpga.load(path), x)


@pytest.mark.parametrize("settings, options_a, options_b", [
    ({"rounding": "trn"}, {}, None), ({"rounding": "rnd"}, {}, None),
    ({"rounding": "rnd_conv"}, {}, None),
    ({}, {"acc_bits": 12, "acc_overflow": "wrap"}, {"acc_bits": 12, "acc_overflow": "sat"}),
    ({}, {"out_overflow": "wrap"}, {"out_overflow": "sat"}),
])
def test_each_mode_changes_results(tmp_path, settings, options_a, options_b):
    graph = G.capture(randomized(AllOpsFx()), ALL_OPS_SHAPE)
    x = np.random.default_rng(3).random((300, *ALL_OPS_SHAPE), dtype=np.float32)
    a = _outputs(graph, x, tmp_path, settings, **options_a)
    if options_b is None:          # a rounding mode against each other one
        others = [m for m in FX.QUANT if m != settings["rounding"]]
        for m in others:
            assert (a != _outputs(graph, x, tmp_path, {"rounding": m})).any(), m
    else:
        assert (a != _outputs(graph, x, tmp_path, settings, **options_b)).any()


def test_loader_rejects_a_corrupted_file(tmp_path, digits_session):
    s = digits_session
    target = _target()
    path, _ = fpga.export(s.graph, P.make(s.graph, s.stats, target), target, tmp_path)
    blob = bytearray(path.read_bytes())
    frac_at = rtformat.HEADER.itemsize + 5 * 4            # tensor 0: dims, zp, bits, frac
    blob[frac_at:frac_at + 4] = np.int32(40).tobytes()
    with pytest.raises(runtime.ModelRejected, match="DQ_ERR_TENSOR"):
        runtime.Model(bytes(blob))


def test_loader_checks_the_clamp_range_of_a_mean(tmp_path):
    session = api.open_session("zoo:dsnet-digits")
    target = _target()
    path, _ = fpga.export(session.graph, P.make(session.graph, session.stats, target),
                          target, tmp_path)
    blob = bytearray(path.read_bytes())
    header = np.frombuffer(bytes(blob[:32]), "<u4")
    start = rtformat.HEADER.itemsize + int(header[3]) * rtformat.TENSOR.itemsize
    ops = np.frombuffer(bytes(blob[start:]), rtformat.OP, int(header[4]))
    k = int(np.flatnonzero(ops["type"] == rtformat.OPS["mean"])[0])
    at = start + k * rtformat.OP.itemsize + rtformat.OP.fields["params"][1] + 9 * 4
    blob[at:at + 4] = np.int32(1000).tobytes()               # act_max beyond 8 bits
    with pytest.raises(runtime.ModelRejected, match="DQ_ERR_PARAM"):
        runtime.Model(bytes(blob))


def test_unsupported_pooling_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, dilation=2), nn.Flatten(),
                          nn.Linear(18, 3))
    graph = G.capture(randomized(model), (1, 9, 9))
    with pytest.raises(UnsupportedOpError, match="dilation"):
        fpga.lower(graph, None, _target())


def test_non_pow2_plan_is_refused():
    from deployq.errors import TargetError
    graph = G.capture(randomized(nn.Sequential(nn.Flatten(), nn.Linear(4, 2))), (1, 2, 2))
    x = np.random.default_rng(0).random((8, 1, 2, 2), dtype=np.float32)
    plan = _plan(graph, x, _target())
    plan.layers[graph.output].output.scale[:] = 0.3
    with pytest.raises(TargetError, match="power of two"):
        fpga.lower(graph, plan, _target())


# --- the hls4ml-facing settings: pool_division, pool_guard_bits, sum_order ---------

def _avgnet():
    from tests.test_hls4ml import AvgNet          # 3x3 average pool, flatten of a 2x2 map
    return G.capture(randomized(AvgNet()), (1, 8, 8))


@pytest.mark.parametrize("options", [
    {"pool_division": "reciprocal", "sum_order": "chw"}, {"pool_guard_bits": 3},
    {"acc_bits": 10, "acc_overflow": "sat"},
    {"acc_bits": 10, "acc_overflow": "sat", "sum_order": "chw"},
    {"acc_bits": 8, "acc_overflow": "sat", "pool_guard_bits": 2}])
@pytest.mark.parametrize("quant", ["trn", "rnd"])
def test_pool_division_and_sum_order_bit_exact(tmp_path, options, quant):
    graph = _avgnet()
    x = np.random.default_rng(4).random((200, 1, 8, 8), dtype=np.float32)
    target = _target(**options)
    c_out, ref = _compare(graph, _plan(graph, x[:50], target, rounding=quant), target, x,
                          tmp_path)
    np.testing.assert_array_equal(c_out, ref)


@pytest.mark.parametrize("a, b", [
    ({"pool_division": "divide"}, {"pool_division": "reciprocal"}),
    ({"pool_guard_bits": 0}, {"pool_guard_bits": 2}),
    ({"acc_bits": 10, "acc_overflow": "sat", "sum_order": "hwc"},
     {"acc_bits": 10, "acc_overflow": "sat", "sum_order": "chw"})])
def test_each_hls_setting_changes_results(tmp_path, a, b):
    """On a signed 3x3 average pool read by a linear layer (AvgNet's ReLU after its
    pool would hide the negative means, where division and reciprocal differ)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.AvgPool2d(3, stride=2),
                        nn.Flatten(), nn.Linear(6 * 3 * 3, 10))
    graph = G.capture(randomized(net), (1, 8, 8))
    x = np.random.default_rng(5).random((300, 1, 8, 8), dtype=np.float32)
    assert (_outputs(graph, x, tmp_path, {}, **a) != _outputs(graph, x, tmp_path, {}, **b)).any()


def test_divide_truncates_toward_zero_where_the_reciprocal_is_one_low():
    """hls4ml's avg(): -18 / 9 = -2 exactly; round(2^16 / 9) = 7282 > 2^16 / 9 makes the
    reciprocal's floor of -18 * 7282 / 2^16 come out -3 (docs/fpga-fixed.md)."""
    total = np.array([-19, -18, -17, -1, 0, 1, 17, 18, 19])
    np.testing.assert_array_equal(FX.divide(total, 9), [-2, -2, -1, 0, 0, 0, 1, 2, 2])
    r = FX.reciprocal(9, 16)
    assert FX.shift(np.array([-18 * r]), 16, "trn")[0] == -3
