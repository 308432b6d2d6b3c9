"""Activation-bit selection on fpga-fixed (docs/selection.md, "Activation bits"): the
measured per-group sensitivity, the 3-bit floor, the search order."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from deployq import fixedpoint, refine as RF, selection as S
from deployq import plan as P, targets as T


@pytest.mark.parametrize("rounding", ["trn", "rnd", "rnd_conv"])
def test_fake_quant_rounds_as_the_fixed_point_runtime(rounding):
    step, bits = 0.25, 4
    v = np.array([-3.0, -0.375, -0.125, 0.0, 0.125, 0.3, 0.375, 0.625, 1.9, 5.0])
    got = S.fake_quant(torch.from_numpy(v), step, bits, rounding).numpy()
    r = {"trn": np.floor, "rnd": lambda a: np.floor(a + 0.5), "rnd_conv": np.round}
    want = np.clip(r[rounding](v / step), -8, 7) * step
    np.testing.assert_array_equal(got, want)
    assert got[-1] == 7 * step and got[0] == -8 * step             # saturates
    assert fixedpoint.QUANT.keys() == S.ROUNDING.keys()           # every runtime mode


@pytest.fixture(scope="module")
def groups(digits_session):
    s = digits_session
    tgt = T.get("fpga-fixed")
    return S.act_groups(s.graph, s.stats, tgt, P.PlanConfig({"rounding": "rnd"}),
                        [2, 3, 4, 5, 6, 7, 8])


def _x(session, n=64):
    return torch.from_numpy(np.asarray(session.dataset.calibration(n, 0), np.float32))


def test_logit_change_falls_with_bits_and_sees_truncation(digits_session, groups):
    x = _x(digits_session)
    for g in groups:
        rnd = [S.act_logit_change(digits_session.graph, g, x, b, "rnd") for b in (2, 4, 8)]
        assert rnd[0] > rnd[1] > rnd[2] > 0
        # negative control: with a step far below the tensor's values' spacing the
        # graph is unchanged (the measurement is of the rounding, not of the replay)
        fine = S.ActGroup(g.head, g.members, g.numel, {}, {32: 1e-6})
        assert S.act_logit_change(digits_session.graph, fine, x, 32, "rnd") < 1e-3
    # truncation's bias (floor: every value moves down by half a step on average)
    # costs more than rounding at 4 bits on every group
    for g in groups:
        assert (S.act_logit_change(digits_session.graph, g, x, 4, "trn")
                > S.act_logit_change(digits_session.graph, g, x, 4, "rnd"))


def test_measured_noise_is_carried_to_the_measured_logit_change(digits_session, groups):
    gs = [S.ActGroup(g.head, g.members, g.numel, dict(g.noise), dict(g.step)) for g in groups]
    after = {g.head: 2.0 + i for i, g in enumerate(gs)}
    info = S.measure_act_noise(digits_session.graph, gs, _x(digits_session), after, "rnd")
    for g in gs:
        change = info[g.head]["logit_change"]
        for b, v in g.noise.items():
            assert v * after[g.head] == pytest.approx(change[str(b)])
        assert info[g.head]["modelled_noise"]["4"] == pytest.approx(
            math.sqrt(int(np.prod(digits_session.graph.node(g.head).shape)) / 12)
            * g.step[4])


def test_activation_floor_holds_where_the_budget_allows(digits_session):
    tgt = T.get("fpga-fixed")
    cfg = P.PlanConfig({"rounding": "rnd"})
    _, bits, _ = S._act_space(digits_session, tgt, cfg, S.parse_budget("4bits"))
    assert bits[0] == S.MIN_ACT_BITS
    _, bits, _ = S._act_space(digits_session, tgt, cfg, S.parse_budget("2.5bits"))
    assert bits[0] == 2                     # below the floor: every allowed width


def test_local_search_moves_activation_bits_first():
    layers = [S.Layer(SimpleNamespace(name=f"l{i}"), n, {(b, 1.0): None for b in (3, 4)})
              for i, n in enumerate((4, 4))]
    table = [{k: (1.0, 1.0) for k in l.quantized} for l in layers]
    groups = [S.ActGroup("l0", ["l0"], 4, {3: 1, 4: 1, 5: 1}),
              S.ActGroup("l1", ["l1"], 4, {3: 1, 4: 1, 5: 1})]
    space = S.Space(layers, table, 28, groups, [3, 4, 5], 32)
    a = S.Assignment(((4, 1.0), (3, 1.0)), (4, 4))
    moves = list(RF.neighbours(space, a))
    assert moves[0].weights == a.weights and moves[0].acts != a.acts
    assert {m.acts for m in moves if m.weights == a.weights} >= {(5, 3), (3, 5)}
    assert all(space.fits(m) for m in moves)


def test_selection_records_the_measured_sensitivity(digits_session):
    plan = S.select(digits_session, "fpga-fixed", "8bits", "adversarial", 0.1,
                    {"rounding": "rnd"}, min_bits=8, clips=(1.0,),
                    activation_budget="4bits")
    sel = plan.provenance["selection"]
    acts = sel["measurements"]["activations"]
    assert set(acts) == set(sel["activation_bits"])
    assert sel["average_activation_bits"] <= 4
    assert all(b >= S.MIN_ACT_BITS for b in sel["activation_bits"].values())
    for head, b in sel["activation_bits"].items():
        assert plan.layers[head].settings["activation_bits"] == b
