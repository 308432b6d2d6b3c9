"""MCU int8 mode of the C runtime, through ctypes: bit-exact with LiteRT's reference
kernels (BUILTIN_REF) on every output of every test input."""
import random

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from deployq import api, calibrate, graph as G, plan as P, rtformat, runtime, targets as T  # noqa: E402
from deployq import backends  # noqa: E402
from deployq.backends import mcu, tflite  # noqa: E402
from tests.conftest import ALL_OPS_SHAPE, AllOps, needs_fashion, randomized  # noqa: E402


def test_python_and_c_compute_the_same_multipliers():
    rng = random.Random(0)
    values = [rng.uniform(0.5, 1.0) * 2.0 ** rng.randint(-40, 8) for _ in range(20000)]
    values += [2.0 ** -31, 2.0 ** -32, 0.5 - 2 ** -40, 1.0 - 2 ** -33, 0.0]
    bad = [v for v in values if runtime.quantize_multiplier_c(v) != rtformat.quantize_multiplier(v)]
    assert not bad, bad[:5]


def _compare(graph, plan, x, tmp_path, rounding="double"):
    """int8 outputs of the C runtime and of LiteRT BUILTIN_REF on the same .tflite."""
    target = T.get("mcu-int8")
    target.options = dict(target.options, rounding_variant=rounding)
    path, plan = mcu.export(graph, plan, target, tmp_path, x[:64])
    c_out = backends.codes(mcu.load(path), x)
    ref = tflite.Runner(tmp_path / "model.tflite", "reference")
    ref_out = plan.tensor(graph.output).quantize(ref.run(x))
    return c_out.reshape(len(x), -1).astype(np.int32), ref_out.reshape(len(x), -1)


def _plan(graph, x, calibration="minmax", **settings):
    cfg = P.PlanConfig(default={"calibration": calibration, **settings})
    return P.make(graph, calibrate.collect(graph, x), T.get("mcu-int8"), cfg)


@pytest.mark.parametrize("name", ["lenet-digits", "dsnet-digits"])
@pytest.mark.parametrize("calibration", ["minmax", "converter"])
def test_zoo_models_bit_exact(tmp_path, name, calibration):
    session = api.open_session(f"zoo:{name}")
    x, _ = session.dataset.test()
    plan = _plan(session.graph, session.dataset.calibration(256), calibration)
    c_out, ref_out = _compare(session.graph, plan, x, tmp_path)
    np.testing.assert_array_equal(c_out, ref_out)


@needs_fashion
@pytest.mark.parametrize("name", ["lenet-fmnist", "dsnet-fmnist"])
def test_fashion_mnist_zoo_models_bit_exact(tmp_path, name):
    session = api.open_session(f"zoo:{name}")
    x, _ = session.dataset.test(500)
    c_out, ref_out = _compare(session.graph, _plan(session.graph, session.dataset.calibration(256)),
                              x, tmp_path)
    np.testing.assert_array_equal(c_out, ref_out)


@pytest.mark.parametrize("calibration, settings", [
    ("minmax", {}), ("converter", {}), ("entropy", {"granularity": "per-tensor"}),
    ("minmax", {"scale": "pow2", "activation_scheme": "symmetric"}),
])
def test_every_op_bit_exact(tmp_path, calibration, settings):
    graph = G.capture(randomized(AllOps()), ALL_OPS_SHAPE)
    x = np.random.default_rng(1).random((300, *ALL_OPS_SHAPE), dtype=np.float32)
    c_out, ref_out = _compare(graph, _plan(graph, x[:100], calibration, **settings), x, tmp_path)
    np.testing.assert_array_equal(c_out, ref_out)


def activations(rng: random.Random) -> list[nn.Module]:
    """The pointwise activations the MCU runs, with random slopes and bounds."""
    return [nn.Sigmoid(), nn.Tanh(), nn.Hardswish(), nn.LeakyReLU(rng.choice([0.01, 0.3, 2.0])),
            nn.Hardtanh(0.0, rng.choice([0.5, 3.0, 20.0]))]


class Random(nn.Module):
    """Random conv stacks: kernel, stride, padding, dilation, groups, channels, shapes."""

    def __init__(self, rng: random.Random, ch: int):
        super().__init__()
        layers, c = [], ch
        for _ in range(rng.randint(1, 3)):
            k, s, d = rng.choice([1, 2, 3, 5]), rng.choice([1, 2]), rng.choice([1, 1, 2])
            out = rng.choice([1, 3, 4, 7, 8])
            groups = c if (rng.random() < 0.3) else 1
            out = c * rng.choice([1, 2]) if groups > 1 else out
            layers += [nn.Conv2d(c, out, k, s, padding=(k // 2) * d, dilation=d, groups=groups),
                       rng.choice([nn.ReLU(), nn.ReLU6(), nn.Identity()] + activations(rng))]
            c = out
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, rng.randint(2, 9))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))


@pytest.mark.parametrize("seed", range(6))
def test_random_models_with_odd_shapes_and_extreme_scales_bit_exact(tmp_path, seed):
    rng = random.Random(seed)
    shape = (rng.choice([1, 2, 3]), rng.randint(5, 13), rng.randint(5, 13))
    model = randomized(Random(rng, shape[0]), seed)
    scale = 10.0 ** rng.choice([-3, 0, 2])                 # tiny to huge activations
    with torch.no_grad():
        model.fc.weight.mul_(scale)
    graph = G.capture(model, shape)
    x = np.random.default_rng(seed).random((200, *shape), dtype=np.float32)
    c_out, ref_out = _compare(graph, _plan(graph, x[:64]), x, tmp_path)
    np.testing.assert_array_equal(c_out, ref_out)


def test_single_rounding_variant_runs_and_stays_within_one_lsb(tmp_path):
    graph = G.capture(randomized(AllOps()), ALL_OPS_SHAPE)
    x = np.random.default_rng(2).random((300, *ALL_OPS_SHAPE), dtype=np.float32)
    c_out, ref_out = _compare(graph, _plan(graph, x[:100]), x, tmp_path, "single")
    diff = np.abs(c_out - ref_out)
    assert diff.max() <= 2


def test_dump_returns_every_tensor(tmp_path):
    session = api.open_session("zoo:dsnet-digits")
    ex = api.export("mcu-int8", session, tmp_path)
    runner = api.load_runner(ex)
    x, _ = session.dataset.test(3)
    q = runner.rows(x)
    tensors = runner.model.dump(q[0])
    assert len(tensors) == runner.model.n_tensors
    np.testing.assert_array_equal(tensors[runner.model.output_index], runner.model.run(q)[0])
    np.testing.assert_array_equal(tensors[runner.model.input_index], q[0])


def test_runtime_timers_name_every_op_by_its_layer(tmp_path):
    session = api.open_session("zoo:lenet-digits")
    # the reference kernels, where the convolutions dominate (on 8x8 images the
    # optimized ones cost about as much as the clock around a reshape)
    runner = mcu.Runner(api.export("mcu-int8", session, tmp_path).path, "ref")
    x, _ = session.dataset.test(4)
    ops = runner.model.op_times(runner.rows(x[:1])[0], runs=20)
    assert len(ops) == runner.model.n_ops and all(o["seconds"] >= 0 for o in ops)
    layers = runner.layer_times(x, 20)
    assert {r["node"] for r in layers} >= {n.name for n in session.graph.nodes if n.op == "conv2d"}
    assert layers[0]["op"] == "conv2d"            # the convolutions dominate
