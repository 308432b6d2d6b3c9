"""fpga-fixed's unsigned post-ReLU activations ([options] relu_unsigned = true): the plan
stores a tensor that is >= 0 by construction as an unsigned b-bit grid (zero point
-2^(b-1)), fixedpoint.lower holds its integers in b + 1 signed bits clamped to
[0, 2^b - 1], and the C runtime, the NumPy model, the torch mirror and real hls4ml's C
simulation (ap_fixed<b+1> result, ap_ufixed<b> ReLU) agree bit for bit. Negative
controls: the signed b-bit grid and an off-by-one clamp give other integers on the same
input, so the comparisons can fail."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deployq import api, calibrate, fixedpoint as FX, graph as G, plan as P
from deployq import targets as T
from deployq.backends import fpga
from deployq.errors import TargetError
from tests.conftest import randomized
from tests.test_hls4ml import needs_hls4ml
from tests.unit.test_fxmirror import _check_exact

SHAPE = (1, 9, 9)


class UNet(nn.Module):
    """Unsigned tensors of every kind: ReLU6 and ReLU convs sharing one grid through a
    max pool, an average pool, a concat and a pad; a ReLU conv read by an upsample; a
    signed conv whose ReLU comes after a pool (a signed class: the IR's clamp); a ReLU
    linear; signed logits."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.act1 = nn.ReLU6()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.mp = nn.MaxPool2d(2, stride=1)
        self.ap = nn.AvgPool2d(2, stride=1)
        self.conv3 = nn.Conv2d(12, 8, 3, stride=2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv4 = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8 * 5 * 5, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        a = self.act1(self.conv1(x))
        b = torch.relu(self.conv2(a))
        c = torch.cat([self.mp(a), self.ap(b)], 1)
        d = torch.relu(self.conv3(F.pad(c, (1, 1, 1, 1))))
        e = torch.relu(self.mp(self.conv4(self.up(d))))
        return self.fc2(torch.relu(self.fc(e.flatten(1))))


UNSIGNED = {"conv1", "conv2", "mp", "ap", "cat", "pad", "conv3", "up", "fc"}


def _target(unsigned: bool, **options):
    target = T.get("fpga-fixed")
    target.options = dict(target.options, relu_unsigned=unsigned, **options)
    return target


@pytest.fixture(scope="module")
def unet():
    graph = G.capture(randomized(UNet()), SHAPE)
    x = np.random.default_rng(1).random((120, *SHAPE), dtype=np.float32)
    return graph, calibrate.collect(graph, x[:60]), x


def _plan(graph, stats, target, bits=4, **settings):
    """4-bit activations, 8-bit input; percentile 99 clips, so outputs reach 2^b - 1."""
    cfg = P.PlanConfig(default={"activation_bits": bits, "calibration": "percentile",
                                "percentile": 99.0, **settings},
                       by_type={"input": {"activation_bits": 8}})
    return P.make(graph, stats, target, cfg)


def test_plan_and_lowering(unet):
    graph, stats, x = unet
    plan = _plan(graph, stats, _target(True))
    zp = {k: int(v.output.zero_point[0]) for k, v in plan.layers.items()}
    assert {k for k, z in zp.items() if z} == UNSIGNED
    assert set(zp.values()) == {0, -8} and plan.input.zero_point[0] == 0
    assert all(v.output.bits == 4 for v in plan.layers.values())     # b bits, not b + 1
    fx = fpga.lower(graph, plan, _target(True))
    for name, layer in fx.layers.items():
        assert layer.unsigned == (name in UNSIGNED)
        assert layer.bits == (5 if name in UNSIGNED else 4)
        if name in UNSIGNED:
            assert layer.act[0] == 0 and layer.act[1] <= 15
    # ReLU6 clamps inside the unsigned range: 6.0 on the grid, below 2^b - 1
    c1 = fx.layers["conv1"]
    assert c1.act == (0, min(15, 6 * 2 ** c1.frac))
    # the scale is calibrated for 15 levels: the largest value lands in the upper half
    q = FX.quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant)
    values = FX.run_all(fx, q)
    assert values["conv3"].max() > 7 and values["fc"].max() > 7
    assert min(int(values[n].min()) for n in UNSIGNED) == 0


def test_off_by_default_and_plans_unchanged(unet):
    graph, stats, x = unet
    base = T.get("fpga-fixed")
    assert base.options["relu_unsigned"] is False
    default = _plan(graph, stats, base).to_json()
    bare = T.get("fpga-fixed")
    bare.options = {k: v for k, v in bare.options.items() if k != "relu_unsigned"}
    assert _plan(graph, stats, bare).to_json() == default
    assert _plan(graph, stats, _target(False)).to_json() == default
    assert all(not any(l["output"]["zero_point"]) for l in default["layers"].values())


@pytest.mark.parametrize("quant, out_overflow, acc", [
    ("rnd_conv", "sat", (32, "wrap")), ("trn", "wrap", (16, "sat")),
    ("rnd", "wrap", (16, "wrap"))])
def test_c_numpy_mirror_bit_exact(tmp_path, unet, quant, out_overflow, acc):
    graph, stats, x = unet
    target = _target(True, out_overflow=out_overflow, acc_bits=acc[0], acc_overflow=acc[1])
    plan = _plan(graph, stats, target, rounding=quant)
    _check_exact(graph, plan, target, x, tmp_path)
    # negative control: the signed 4-bit grid computes other integers on the same input
    signed = _plan(graph, stats, _target(False, out_overflow=out_overflow,
                                         acc_bits=acc[0], acc_overflow=acc[1]),
                   rounding=quant)
    fu, fs = fpga.lower(graph, plan, target), fpga.lower(graph, signed, target)
    q = FX.quantize_input(x, fu.input_frac, fu.input_bits, fu.input_quant)
    ru, rs = FX.run_all(fu, q), FX.run_all(fs, q)
    for name in ("conv3", "fc"):                        # unsigned tensors, as reals
        real = FX.dequantize(ru[name], fu.layers[name].frac)
        assert not np.array_equal(real, FX.dequantize(rs[name], fs.layers[name].frac))
        assert len(np.unique(ru[name])) > 5              # not saturated or constant


def test_zoo_lenet_bit_exact_and_off_by_one_caught(tmp_path, digits_session):
    s = digits_session
    target = _target(True)
    plan = _plan(s.graph, s.stats, target)
    x = s.dataset.test()[0]
    m = _check_exact(s.graph, plan, target, x, tmp_path)
    fx = fpga.lower(s.graph, plan, target)
    q = FX.quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant)
    ref = FX.run_all(fx, q)
    assert all(int(ref[n].max()) == 15 for n in ("features.0", "features.4", "classifier.1"))
    # an off-by-one clamp (the signed grid's [0, 2^(b-1) - 1] or [0, 2^b - 2]) differs
    for hi in (7, 14):
        layers = {k: dataclasses.replace(v, act=(0, hi)) if v.unsigned else v
                  for k, v in fx.layers.items()}
        bad = FX.run_all(dataclasses.replace(fx, layers=layers), q)
        assert not np.array_equal(bad["classifier.1"], ref["classifier.1"])
    assert m is not None


def test_dumps_are_on_the_plans_grid(tmp_path, digits_session):
    """A dump minus the plan's zero point -2^(b-1) is value / scale, as on every other
    runtime (amplify subtracts it): the runtime's u, shifted back."""
    s = digits_session
    target = _target(True)
    plan = _plan(s.graph, s.stats, target)
    path, _ = fpga.export(s.graph, plan, target, tmp_path)
    runner = fpga.load(path)
    x = s.dataset.test(3)[0]
    fx = fpga.lower(s.graph, plan, target)
    ref = FX.run_all(fx, FX.quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant))
    dump = runner.dump(x[0])
    zp = int(plan.tensor("features.0").zero_point[0])
    assert zp == -8 and dump["features.0"].min() < 0      # 4-bit codes, not u in [0, 15]
    np.testing.assert_array_equal(np.sort(dump["features.0"].ravel() - zp),
                                  np.sort(ref["features.0"][0].ravel()))


@pytest.mark.parametrize("options, settings, message", [
    ({"relu_unsigned": "yes"}, {}, "relu_unsigned='yes'; choose true or false"),
    ({"relu_unsigned": True}, {"activation_bits": 8}, "use activation_bits <= 7")])
def test_bad_values_refused(unet, options, settings, message):
    graph, stats, _ = unet
    target = T.get("fpga-fixed")
    target.options = dict(target.options, **options)
    with pytest.raises(TargetError, match=message):
        fpga.lower(graph, P.make(graph, stats, target, P.PlanConfig(default=settings)),
                   target)


def test_unsigned_plan_on_a_signed_tensor_refused(unet):
    graph, stats, _ = unet
    target = _target(True)
    plan = _plan(graph, stats, target)
    plan.layers["conv4"].output.zero_point = np.array([-8])
    with pytest.raises(TargetError, match="can be negative"):
        fpga.lower(graph, plan, target)
    plan.layers["conv4"].output.zero_point = np.array([3])
    with pytest.raises(TargetError, match="takes 0 \\(signed\\)"):
        fpga.lower(graph, plan, target)


@pytest.mark.parametrize("name, old, new, message", [
    ("fpga-fixed", "relu_unsigned = false", 'relu_unsigned = "yes"',
     "relu_unsigned='yes'; choose true or false"),
    ("onnx-int8", "[options]", "[options]\nrelu_unsigned = true",
     "relu_unsigned is an option of the fpga backend")])
def test_cli_bad_option_one_line(run_cli, tmp_path, name, old, new, message):
    text = T.get(name).path.read_text()
    assert old in text
    d = tmp_path / "targets"
    d.mkdir()
    (d / f"{name}.toml").write_text(text.replace(old, new, 1))
    code, out, err = run_cli("export", "-t", name, "--targets-dir", d,
                             "-o", tmp_path / "out")
    assert code == 2, err
    errors = [l for l in err.splitlines() if l.startswith("deployq: error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


# --- real hls4ml: ap_fixed<b+1> conv/dense results, ap_ufixed<b> ReLUs --------------

def test_hls4ml_types():
    from deployq import hls4ml_export as H
    s = api.open_session("zoo:lenet-digits")
    target = _target(True, out_overflow="wrap")
    fx = fpga.lower(s.graph, _plan(s.graph, s.stats, target, rounding="rnd_conv"), target)
    t, f = H.layer_types(fx), fx.layers["features.0"].frac
    assert t["features_0"]["result"] == f"ap_fixed<5,{5 - f},AP_RND_CONV,AP_WRAP>"
    assert t["features_0_relu"]["result"] == f"ap_ufixed<4,{4 - f},AP_RND_CONV,AP_WRAP>"
    assert t["features_3"]["result"].startswith("ap_ufixed<4,")
    assert t["classifier_4"]["result"].startswith("ap_fixed<4,")   # signed logits


@needs_hls4ml
@pytest.mark.parametrize("out_overflow, quant", [("sat", "rnd_conv"), ("wrap", "trn")])
def test_bit_identical_with_hls4ml_csim(tmp_path, out_overflow, quant):
    from deployq import hls4ml_export as H
    s = api.open_session("zoo:lenet-digits")
    x = s.dataset.test()[0]
    target = _target(True, out_overflow=out_overflow)
    plan = _plan(s.graph, s.stats, target, rounding=quant, granularity="per-tensor")
    fx = fpga.lower(s.graph, plan, target)
    q = FX.quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant)
    got = H.simulate(H.convert(fx, tmp_path / "prj"), fx, q)
    ok = H.agreement(got, H.expected(fx, q))
    assert all(v == 1.0 for v in ok.values()), ok
    assert max(int(got[n].max()) for n in ("features_0_relu", "classifier_1_relu")) == 15
    # negative controls: the signed 4-bit grid, and an off-by-one ReLU clamp
    signed = fpga.lower(s.graph, _plan(s.graph, s.stats, _target(False, out_overflow=
                        out_overflow), rounding=quant, granularity="per-tensor"), target)
    assert H.agreement(got, H.expected(signed, q))["all_elements"] < 1.0
    layers = {k: dataclasses.replace(v, act=(0, 14)) if v.unsigned else v
              for k, v in fx.layers.items()}
    off = H.agreement(got, H.expected(dataclasses.replace(fx, layers=layers), q))
    assert off["output"] < 1.0 and off["features_0_relu"] < 1.0, off
    # ... and the C runtime's outputs are hls4ml's too
    path, _ = fpga.export(s.graph, plan, target, tmp_path / "c")
    runner = fpga.load(path)
    np.testing.assert_array_equal(runner.run_codes(runner.quantize(x)), got["output"])
