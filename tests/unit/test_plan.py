"""The plan: resolution order, target checks, JSON round trip, parameter rules."""
import numpy as np
import pytest
import torch

from deployq import calibrate, graph as G, plan as P, targets as T
from deployq.errors import InputError, TargetError
from tests.conftest import ALL_OPS_SHAPE


@pytest.fixture
def made(all_ops):
    g = G.capture(all_ops, ALL_OPS_SHAPE)
    stats = calibrate.collect(g, np.random.default_rng(0).random((64, *ALL_OPS_SHAPE),
                                                                 dtype=np.float32))
    return g, stats, T.get("onnx-int8")


def test_settings_resolve_name_over_type_over_default(made):
    g, stats, tgt = made
    cfg = P.PlanConfig(default={"calibration": "mse"},
                       by_type={"conv2d": {"calibration": "percentile"}},
                       by_name={"dil": {"calibration": "entropy"}})
    plan = P.make(g, stats, tgt, cfg)
    assert plan.layers["fc"].settings["calibration"] == "mse"
    assert plan.layers["conv"].settings["calibration"] == "percentile"
    assert plan.layers["dil"].settings["calibration"] == "entropy"
    assert plan.layers["fc"].settings["weight_bits"] == 8          # target default


def test_a_setting_the_target_forbids_is_refused_naming_the_layer(made):
    g, stats, tgt = made
    with pytest.raises(TargetError, match="activation_bits=4 .layer .conv."):
        P.make(g, stats, tgt, P.PlanConfig(by_name={"conv": {"activation_bits": 4}}))


def test_unknown_layer_names_are_refused(made):
    g, stats, tgt = made
    with pytest.raises(Exception, match="unknown layers"):
        P.make(g, stats, tgt, P.PlanConfig(by_name={"nope": {"weight_bits": 8}}))


def test_json_round_trip_is_exact(made, tmp_path):
    g, stats, tgt = made
    plan = P.make(g, stats, tgt, provenance={"model": "x"})
    plan.save(tmp_path / "plan.json")
    back = P.QuantPlan.load(tmp_path / "plan.json")
    assert back.to_json() == plan.to_json()
    for name, lp in plan.layers.items():
        np.testing.assert_array_equal(back.layers[name].output.scale, lp.output.scale)


def test_shared_parameter_ops_and_concat_share_one_set(made):
    g, stats, tgt = made
    plan = P.make(g, stats, tgt)
    for name in ("pool", "avg", "ht"):
        src = g.node(name).inputs[0]
        assert plan.tensor(name).to_json() == plan.tensor(src).to_json(), name
    cat = g.node("cat")
    for i in cat.inputs:
        assert plan.tensor(i).to_json() == plan.tensor("cat").to_json()


def test_weights_are_symmetric_narrow_per_channel(made):
    g, stats, tgt = made
    plan = P.make(g, stats, tgt)
    node, w = g.node("dil"), plan.layers["dil"].weight
    assert (w.qmin, w.qmax, w.axis) == (-127, 127, 0)
    q = w.quantize(node.weight)
    assert np.abs(q).reshape(len(q), -1).max(1).tolist() == [127] * len(q)
    np.testing.assert_allclose(w.dequantize(q), node.weight,
                               atol=float(w.scale.max()) / 2 + 1e-7)


def test_pow2_scales_are_powers_of_two(made):
    g, stats, tgt = made
    plan = P.make(g, stats, tgt, P.PlanConfig(default={"scale": "pow2"}))
    for lp in plan.layers.values():
        for qp in filter(None, (lp.output, lp.weight)):
            assert np.all(np.log2(qp.scale) == np.round(np.log2(qp.scale)))


def test_activation_ranges_cover_the_calibrated_range_and_zero(made):
    g, stats, tgt = made
    plan = P.make(g, stats, tgt)
    for name in ["input"] + [n.name for n in g.nodes]:
        qp = plan.tensor(name)
        lo = (qp.qmin - qp.zero_point[0]) * qp.scale[0]
        hi = (qp.qmax - qp.zero_point[0]) * qp.scale[0]
        s = stats[name]
        step = qp.scale[0]
        assert lo <= min(s.min, 0) + step and hi >= max(s.max, 0) - step, name


@pytest.mark.parametrize("bits,step", [(2, 127), (3, 42), (4, 18), (5, 8), (6, 4), (7, 2)])
def test_low_weight_bits_on_an_int8_target_are_a_grid_of_int8_codes(made, bits, step):
    g, stats, tgt = made
    plan = P.make(g, stats, tgt, P.PlanConfig(default={"weight_bits": bits}))
    for name, lp in plan.layers.items():
        w = lp.weight
        if w is None:
            continue
        assert (w.bits, w.grid_bits, w.step) == (8, bits, step)
        q = w.quantize(g.node(name).weight)
        assert np.all(q % step == 0) and np.abs(q).max() <= step * (2 ** (bits - 1) - 1)
        per_channel = q.reshape(len(q), -1)
        assert max(len(np.unique(r)) for r in per_channel) <= 2 ** bits - 1
        # the stored scale is that of one int8 code: the real grid is j * step * scale
        np.testing.assert_array_equal(w.dequantize(q), (q * w._bcast(w.scale, q.ndim))
                                      .astype(np.float32))
        # the largest |weight| of each channel lands on the grid's top code
        top = np.abs(g.node(name).weight).reshape(len(q), -1).max(1)
        np.testing.assert_allclose(step * (2 ** (bits - 1) - 1) * w.scale, top, rtol=1e-6)


@pytest.mark.parametrize("target", ["onnx-int8", "fpga-fixed"])
def test_weight_clip_narrows_the_grid_and_saturates(made, target):
    g, stats, _ = made
    tgt = T.get(target)
    full = P.make(g, stats, tgt, P.PlanConfig(default={"weight_bits": 4}))
    half = P.make(g, stats, tgt, P.PlanConfig({"weight_bits": 4}, {}, {"fc": {"weight_clip": 0.5}}))
    a, b, w = full.layers["fc"].weight, half.layers["fc"].weight, g.node("fc").weight
    assert np.all(b.scale <= a.scale) and np.any(b.scale < a.scale)
    q = b.quantize(w)
    assert np.abs(q).max() == 7 * b.step          # saturated at the top code, no wider
    assert half.layers["conv"].weight.to_json() == full.layers["conv"].weight.to_json()
    for bad in (0, 1.5, "x", True):
        with pytest.raises(InputError, match="weight_clip"):
            P.make(g, stats, tgt, P.PlanConfig(default={"weight_clip": bad}))


def test_fpga_fixed_keeps_real_low_bit_weights(made):
    g, stats, _ = made
    plan = P.make(g, stats, T.get("fpga-fixed"), P.PlanConfig(default={"weight_bits": 4}))
    w = plan.layers["conv"].weight
    assert (w.bits, w.grid_bits, w.step) == (4, None, 1)
    assert "grid_bits" not in w.to_json()


def test_grid_plan_json_round_trip_and_old_files_load_unchanged(made, tmp_path):
    g, stats, tgt = made
    plan = P.make(g, stats, tgt, P.PlanConfig(by_name={"conv": {"weight_bits": 4}}))
    plan.save(tmp_path / "plan.json")
    back = P.QuantPlan.load(tmp_path / "plan.json")
    assert back.to_json() == plan.to_json()
    assert back.layers["conv"].weight.grid_bits == 4
    assert back.layers["fc"].weight.grid_bits is None
    old = plan.to_json()
    assert "grid_bits" not in old["layers"]["fc"]["weight"]      # 8-bit: as before
    x = g.node("conv").weight
    np.testing.assert_array_equal(back.layers["conv"].weight.quantize(x),
                                  plan.layers["conv"].weight.quantize(x))


def test_low_bit_grid_refuses_converter_calibration(made):
    g, stats, _ = made
    with pytest.raises(TargetError, match="converter"):
        P.make(g, stats, T.get("tflite-int8"),
               P.PlanConfig(default={"weight_bits": 4, "calibration": "converter"}))


def test_a_plan_keeps_its_input_rounding_when_the_target_default_changes(made):
    """The input's rounding is written into the plan (layers carry theirs in their
    settings): a plan made when fpga-fixed defaulted to `trn` exports its input with
    `trn` after the default became `rnd_conv`. Negative control: a config without the
    pin follows the new default."""
    import dataclasses
    g, stats, _ = made
    fx = T.get("fpga-fixed")
    old = dataclasses.replace(fx, defaults={**fx.defaults, "rounding": "trn"})
    new = dataclasses.replace(fx, defaults={**fx.defaults, "rounding": "rnd_conv"})
    plan = P.make(g, stats, old)
    assert {lp.settings["rounding"] for lp in plan.layers.values()} == {"trn"}
    assert plan.config.resolve(new, G.INPUT, "input")["rounding"] == "trn"
    assert P.PlanConfig().resolve(new, G.INPUT, "input")["rounding"] == "rnd_conv"
    pinned = P.make(g, stats, old, P.PlanConfig(by_type={"input": {"rounding": "rnd"}}))
    assert pinned.config.resolve(new, G.INPUT, "input")["rounding"] == "rnd"
