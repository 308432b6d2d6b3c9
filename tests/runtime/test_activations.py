"""Pointwise activations (Sigmoid, Tanh, Hardswish, Hardsigmoid, SiLU, LeakyReLU,
Hardtanh with any bounds) on every installed target: the C runtime's MCU int8 mode
equal to LiteRT's reference kernels on every tensor of every sample, its FPGA mode
equal to the NumPy model, with negative controls that show the comparisons can fail."""
import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from deployq import backends, calibrate, diff, fixedpoint as FX, fxmirror  # noqa: E402
from deployq import graph as G, ibp, plan as P, rtformat as R, targets as T  # noqa: E402
from deployq.backends import fpga, mcu, onnx as O, tflite  # noqa: E402
from deployq.errors import UnsupportedOpError  # noqa: E402

SHAPE = (2, 8, 8)
ACTS = {"sigmoid": lambda: nn.Sigmoid(), "tanh": lambda: nn.Tanh(),
        "hardswish": lambda: nn.Hardswish(), "leaky_relu": lambda: nn.LeakyReLU(0.15),
        "hardtanh_0_3": lambda: nn.Hardtanh(0.0, 3.0), "relu": lambda: nn.ReLU(),
        "hardsigmoid": lambda: nn.Hardsigmoid(), "silu": lambda: nn.SiLU()}


class Tiny(nn.Module):
    """conv -> activation (not fused: a residual add reads the conv too) -> linear."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(SHAPE[0], 4, 3, stride=2)
        self.act = act
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(torch.flatten(self.act(y) + y, 1))


def _graph(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return G.capture(Tiny(ACTS[name]()).eval(), SHAPE)


def _x(n: int = 200, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32) * 4 - 2)


def _plan(graph, x, target, calibration="minmax"):
    cfg = P.PlanConfig(default={} if target.backend == "fpga" else {"calibration": calibration})
    return P.make(graph, calibrate.collect(graph, x), target, cfg)


def _mcu_vs_ref(graph, x, out, calibration="minmax"):
    """Per-tensor rows of deployq diff's comparison between LiteRT's reference kernels
    and the C runtime on the same .tflite."""
    target = T.get("mcu-int8")
    path, _ = mcu.export(graph, _plan(graph, x[:64], target, calibration), target, out, x[:64])
    runners = [tflite.Runner(out / tflite.ARTIFACT, "reference"), mcu.load(path)]
    return diff._compare(runners, x)


MCU_CASES = [(name, "minmax") for name in sorted(ACTS)] + [
    (name, "converter") for name in ("hardswish", "leaky_relu", "relu")]


@pytest.mark.parametrize("name, calibration", MCU_CASES)
def test_mcu_equals_litert_reference_on_every_tensor(tmp_path, name, calibration):
    rows = _mcu_vs_ref(_graph(name), _x(100), tmp_path, calibration)
    assert len(rows) >= 5                                  # input ... logits all compared
    assert [r for r in rows if r["different"]] == []


def test_mcu_comparison_catches_a_table_one_code_off(tmp_path, monkeypatch):
    """Negative control: a LOGISTIC table shifted by one code is found by the diff."""
    real = mcu.lut_table
    monkeypatch.setattr(mcu, "lut_table",
                        lambda *a: np.clip(real(*a).astype(np.int16) + 1, -128, 127).astype(np.int8))
    rows = _mcu_vs_ref(_graph("sigmoid"), _x(50), tmp_path)
    assert any(r["different"] for r in rows)


def _op_types(blob: bytes) -> list[str]:
    header = np.frombuffer(blob[:R.HEADER.itemsize], R.HEADER)[0]
    ops = np.frombuffer(blob, R.OP, count=header["n_ops"],
                        offset=R.HEADER.itemsize + header["n_tensors"] * R.TENSOR.itemsize)
    names = {code: name for name, code in R.OPS.items()}
    return [names[int(t)] for t in ops["type"]]


@pytest.mark.parametrize("calibration, kernel", [("converter", "leaky_relu"),
                                                 ("minmax", "clamp")])
def test_relu_is_clamp_or_requantizing_kernel(tmp_path, calibration, kernel):
    """A standalone RELU whose output scale differs from its input's (converter
    calibration) runs as the LEAKY_RELU kernel with both multipliers the identity's;
    on the plan's shared grid it is CLAMP (the diff of both: the test above)."""
    graph, x = _graph("relu"), _x(64)
    target = T.get("mcu-int8")
    path, _ = mcu.export(graph, _plan(graph, x, target, calibration), target, tmp_path, x)
    assert kernel in _op_types(path.read_bytes())


def test_silu_is_logistic_then_mul_and_hardsigmoid_a_depthwise_conv(tmp_path):
    """SiLU runs LOGISTIC and the MUL kernel (ops-struct); Hardsigmoid is captured as
    x / 6 + 1/2 clamped to [0, 1], a depthwise conv on every target."""
    x, target = _x(64), T.get("mcu-int8")
    graph = _graph("silu")
    path, _ = mcu.export(graph, _plan(graph, x, target), target, tmp_path / "s", x)
    assert {"logistic", "mul"} <= set(_op_types(path.read_bytes()))
    graph = _graph("hardsigmoid")
    node = graph.node("act")
    assert (node.op, node.attrs["groups"], node.attrs["act"]) == ("conv2d", 4, (0.0, 1.0))


@pytest.mark.parametrize("name", sorted(ACTS))
def test_fpga_equals_numpy_twin_and_mirror(tmp_path, name):
    graph, x = _graph(name), _x(150)
    target = T.get("fpga-fixed")
    path, plan = fpga.export(graph, _plan(graph, x[:64], target), target, tmp_path)
    fx = fpga.lower(graph, plan, target)
    q = FX.quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant)
    ref = FX.run_int(fx, q)
    np.testing.assert_array_equal(backends.codes(fpga.load(path), x).reshape(ref.shape), ref)
    np.testing.assert_array_equal(fxmirror.FxMirror(fx).run_int(x), ref)
    lo, hi = ibp.fx_bounds(fx, q, q)                       # a point box: exact bounds
    np.testing.assert_array_equal(lo, ref.reshape(len(ref), -1))
    np.testing.assert_array_equal(hi, ref.reshape(len(ref), -1))


def test_fpga_comparison_catches_a_changed_table(tmp_path):
    """Negative control: the NumPy twin with one ROM entry changed disagrees."""
    graph, x = _graph("tanh"), _x(150)
    target = T.get("fpga-fixed")
    path, plan = fpga.export(graph, _plan(graph, x[:64], target), target, tmp_path)
    fx = fpga.lower(graph, plan, target)
    q = FX.quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant)
    codes, counts = np.unique(FX.run_all(fx, q)["conv"], return_counts=True)
    table, i = fx.layers["act"].extra["table"], int(codes[counts.argmax()]) & 0xFF
    table[i] += 8 if table[i] < 100 else -8     # not 1 LSB: the next layer's rounding
    #                                              (round half to even) can absorb that
    c_out = backends.codes(fpga.load(path), x)
    assert not np.array_equal(c_out.reshape(len(x), -1),
                              FX.run_int(fx, q).reshape(len(x), -1))


@pytest.mark.parametrize("name", sorted(ACTS))
@pytest.mark.parametrize("target_name", ["onnx-int8", "tflite-int8"])
def test_every_op_runs_on_the_other_targets_close_to_float(tmp_path, name, target_name):
    """onnx-int8, and one .tflite on LiteRT's XNNPACK and reference kernels (the
    tflite-int8 and tflite-int8-ref targets)."""
    torch.manual_seed(0)
    model = Tiny(ACTS[name]()).eval()
    graph, x = G.capture(model, SHAPE), _x(200)
    target = T.get(target_name)
    module = backends.get(target.backend)
    path, plan = module.export(graph, _plan(graph, x[:64], target), target, tmp_path, x[:64])
    runners = ([module.load(path, target)] if target_name == "onnx-int8" else
               [tflite.Runner(path, "xnnpack"), tflite.Runner(path, "reference")])
    ref = model(torch.from_numpy(x)).detach().numpy()
    for runner in runners:
        assert (runner.run(x).argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_onnx_lists_float_islands_by_layer(tmp_path):
    """ORT has QLinearSigmoid / QLinearLeakyRelu but no integer Tanh or HardSwish: those
    layers are named in plan.json's provenance, and the integer ones are not."""
    target = T.get("onnx-int8")
    found = {}
    for name in ("tanh", "hardswish", "sigmoid", "leaky_relu"):
        graph, x = _graph(name), _x(64)
        _, plan = O.export(graph, _plan(graph, x, target), target, tmp_path / name, x)
        found[name] = {r["layer"] for r in plan.provenance.get("onnx_float_islands", [])}
    assert found == {"tanh": {"act"}, "hardswish": {"act"}, "sigmoid": set(),
                     "leaky_relu": set()}


def test_fixed_sigmoid_and_tanh_grids():
    graph, x = _graph("sigmoid"), _x(64)
    plan = _plan(graph, x, T.get("tflite-int8"))
    assert (float(plan.tensor("act").scale[0]), int(plan.tensor("act").zero_point[0])) == \
        (1 / 256, -128)
    graph = _graph("tanh")
    plan = _plan(graph, x, T.get("tflite-int8"))
    assert (float(plan.tensor("act").scale[0]), int(plan.tensor("act").zero_point[0])) == \
        (1 / 128, 0)


@pytest.mark.parametrize("seed", range(3))
def test_random_activation_at_extreme_scales_equals_reference(tmp_path, seed):
    """Random slope, bound, input magnitude (1e-2 .. 1e2 before the activation) and
    calibration: hard-swish exponents and leaky multipliers far from 1 stay bit-exact."""
    rng = np.random.default_rng(seed)
    act = [nn.Hardswish(), nn.LeakyReLU(float(rng.choice([0.01, 3.0]))),
           nn.Hardtanh(0.0, float(rng.choice([0.2, 50.0])))][seed]
    torch.manual_seed(seed)
    model = Tiny(act).eval()
    with torch.no_grad():
        model.conv.weight.mul_(10.0 ** float(rng.choice([-2, 0, 2])))
    rows = _mcu_vs_ref(G.capture(model, SHAPE), _x(40, seed), tmp_path,
                       str(rng.choice(["minmax", "converter"])))
    assert [r for r in rows if r["different"]] == []


def test_int8_bounds_through_tables_and_one_line_refusal(tmp_path):
    """Certification's int8 interval semantics: exact through a LOGISTIC table (a point
    box gives the runtime's output); HARD_SWISH is refused with the op named."""
    graph, x = _graph("sigmoid"), _x(20)
    target = T.get("mcu-int8")
    path, _ = mcu.export(graph, _plan(graph, x, target), target, tmp_path / "s", x)
    runner = mcu.load(path)
    rows = runner.rows(x)
    lo, hi = ibp.S8Program(path.read_bytes()).bounds(rows, rows)
    out = runner.model.run(rows)
    np.testing.assert_array_equal(lo.reshape(len(x), -1), out)
    np.testing.assert_array_equal(hi.reshape(len(x), -1), out)
    graph = _graph("hardswish")
    path, _ = mcu.export(graph, _plan(graph, x, target), target, tmp_path / "h", x)
    with pytest.raises(UnsupportedOpError, match="'hard_swish'"):
        ibp.S8Program(path.read_bytes()).bounds(rows, rows)
