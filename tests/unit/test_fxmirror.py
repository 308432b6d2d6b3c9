"""deployq.fxmirror: the fpga-fixed mirror's forward pass equals the NumPy fixed-point
model and the C runtime bit for bit, in every quantization and overflow mode, and its
straight-through gradients are usable for attacks on the runtime."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deployq import api, calibrate, fixedpoint as FX, graph as G, mirror, plan as P
from deployq import targets as T
from deployq import backends
from deployq.backends import fpga
from deployq.fxmirror import FxMirror
from tests.conftest import ALL_OPS_SHAPE, AllOps, randomized

QUANTS = ["trn", "rnd", "rnd_conv"]
# (acc_bits, acc_overflow, out_overflow); 8/12-bit accumulators overflow on AllOpsFx,
# sat ones are then added tap by tap (fixedpoint.accumulate's sequential path)
MODES = [(32, "wrap", "sat"), (12, "sat", "wrap"), (16, "wrap", "wrap"), (24, "sat", "sat"),
         (8, "sat", "sat"), (8, "wrap", "wrap")]


class AllOpsFx(AllOps):
    """AllOps with the average pool the fixed-point kernel computes (count_include_pad)."""

    def __init__(self):
        super().__init__()
        self.avg = nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=True)


def _target(**options):
    target = T.get("fpga-fixed")
    target.options = dict(target.options, **options)
    return target


def _check_exact(graph, plan, target, x, tmp_path):
    """The mirror's forward (with gradients on) against fixedpoint.run_int and the C
    runtime; returns the mirror."""
    m = fpga.mirror(graph, plan, target, 1.0)
    assert isinstance(m, FxMirror)
    fx = fpga.lower(graph, plan, target)
    ref = FX.run_int(fx, FX.quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant))
    xt = torch.from_numpy(x).requires_grad_(True)
    out = m.forward_int(xt)
    assert out.requires_grad
    got = out.detach().numpy()
    assert np.array_equal(got, np.round(got))
    np.testing.assert_array_equal(got.astype(np.int64), ref)
    frac = fx.layers[graph.output].frac
    np.testing.assert_array_equal(m(torch.from_numpy(x)).detach().numpy(),
                                  FX.dequantize(ref, frac))
    path, _ = fpga.export(graph, plan, target, tmp_path)
    np.testing.assert_array_equal(backends.codes(fpga.load(path), x), ref)
    return m


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("acc_bits, acc_overflow, out_overflow", MODES)
def test_all_ops_bit_exact(tmp_path, quant, acc_bits, acc_overflow, out_overflow):
    graph = G.capture(randomized(AllOpsFx()), ALL_OPS_SHAPE)
    x = np.random.default_rng(1).random((150, *ALL_OPS_SHAPE), dtype=np.float32)
    target = _target(acc_bits=acc_bits, acc_overflow=acc_overflow, out_overflow=out_overflow)
    cfg = P.PlanConfig(default={"rounding": quant, "calibration": "percentile",
                                "percentile": 99.0})
    plan = P.make(graph, calibrate.collect(graph, x[:50]), target, cfg)
    _check_exact(graph, plan, target, x, tmp_path)


@pytest.fixture(scope="module", params=["lenet-digits", "dsnet-digits"])
def zoo(request):
    session = api.open_session(f"zoo:{request.param}")
    return session, *session.dataset.test()


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("acc_bits, acc_overflow, out_overflow",
                         [(32, "wrap", "sat"), (16, "wrap", "wrap"), (16, "sat", "sat")])
def test_zoo_models_bit_exact(tmp_path, zoo, quant, acc_bits, acc_overflow, out_overflow):
    session, x, _ = zoo
    target = _target(acc_bits=acc_bits, acc_overflow=acc_overflow, out_overflow=out_overflow)
    plan = P.make(session.graph, session.stats, target,
                  P.PlanConfig(default={"rounding": quant}))
    _check_exact(session.graph, plan, target, x, tmp_path)


def test_build_picks_it_and_agreement_is_bit_identical(tmp_path, digits_session):
    s = digits_session
    target = T.get("fpga-fixed")
    plan = P.make(s.graph, s.stats, target)
    m = mirror.build(target, s.graph, plan, temperature=4.0)
    assert isinstance(m, FxMirror)
    x, _ = s.dataset.test(100)
    path, _ = fpga.export(s.graph, plan, target, tmp_path)
    runner = fpga.load(path)
    agree = mirror.agreement(m.logits(x), runner.run(x), plan.tensor(s.graph.output))
    assert agree == {"top1": 1.0, "identical": 1.0, "identical_values": 1.0, "max_lsb": 0}
    with torch.no_grad():          # the temperature divides the logits, nothing else
        np.testing.assert_allclose(m(torch.from_numpy(x)).numpy() * 4.0, runner.run(x),
                                   rtol=1e-6)


def _runner_and_mirror(session, tmp_path):
    target = T.get("fpga-fixed")
    plan = P.make(session.graph, session.stats, target)
    path, _ = fpga.export(session.graph, plan, target, tmp_path)
    return fpga.load(path), fpga.mirror(session.graph, plan, target, 1.0)


def test_gradients_finite_and_nonzero(tmp_path, digits_session):
    _, m = _runner_and_mirror(digits_session, tmp_path)
    x, y = digits_session.dataset.test(64)
    xt = torch.from_numpy(x).requires_grad_(True)
    loss = F.cross_entropy(m(xt), torch.from_numpy(y).long(), reduction="sum")
    (grad,) = torch.autograd.grad(loss, xt)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    assert (grad.flatten(1).abs().sum(1) > 0).all()           # every sample moves
    assert (grad != 0).float().mean() > 0.5


def _margin(logits, y):
    true = logits[np.arange(len(y)), y]
    other = logits.copy()
    other[np.arange(len(y)), y] = -np.inf
    return true - other.max(1)


def test_a_pgd_step_through_it_lowers_the_runtime_margin(tmp_path, digits_session):
    runner, m = _runner_and_mirror(digits_session, tmp_path)
    x, y = digits_session.dataset.test(100)
    xt, yt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(y).long()
    (grad,) = torch.autograd.grad(F.cross_entropy(m(xt), yt, reduction="sum"), xt)
    x_adv = (xt + 0.05 * grad.sign()).clamp(0, 1).detach().numpy()
    lower = _margin(runner.run(x_adv), y) < _margin(runner.run(x), y)
    assert lower.mean() > 0.8, lower.mean()                   # a weak sanity check


def test_input_and_output_saturation_stop_the_gradient():
    """A one-layer model: inputs beyond the input range and outputs clamped by ReLU
    pass no gradient; the rest pass the real-unit identity (w)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 1), nn.ReLU())
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[0.5, -0.25]]))
        model[1].bias.zero_()
    graph = G.capture(model.eval(), (1, 1, 2))
    x = np.array([[[[0.5, 0.25]]], [[[0.25, 0.75]]]], np.float32)
    target = _target()
    plan = P.make(graph, calibrate.collect(graph, x), target)
    m = fpga.mirror(graph, plan, target, 1.0)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = m(xt)
    (grad,) = torch.autograd.grad(out.sum(), xt)
    assert out[1].item() == 0 and grad[1].abs().sum() == 0     # ReLU clamps sample 1
    np.testing.assert_array_equal(grad[0].flatten().numpy(), [0.5, -0.25])


@pytest.mark.parametrize("options", [
    {"acc_bits": 10, "acc_overflow": "sat"},
    {"acc_bits": 10, "acc_overflow": "sat", "sum_order": "chw", "pool_guard_bits": 2},
    {"pool_division": "reciprocal"}])
def test_hls_settings_bit_exact(tmp_path, options):
    """AvgNet (3x3 average pool, flatten of a 2x2 map): mirror = NumPy = C runtime."""
    from tests.test_hls4ml import AvgNet
    graph = G.capture(randomized(AvgNet()), (1, 8, 8))
    x = np.random.default_rng(6).random((100, 1, 8, 8), dtype=np.float32)
    target = _target(**options)
    cfg = P.PlanConfig(default={"rounding": "rnd"})
    plan = P.make(graph, calibrate.collect(graph, x[:50]), target, cfg)
    _check_exact(graph, plan, target, x, tmp_path)
