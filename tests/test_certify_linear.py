"""deployq.linbounds: the chain read from a target's integer model is the runtime's
arithmetic at points (checked on the C runtime); its linear relaxation bounds contain
every runtime output and margin over boxes (attack points, corners and interior points
run on the C runtime; enumeration of small boxes), with negative controls (a bound one
LSB too tight, a planted unsound rounding, a planted unsound relaxation offset are
caught); branch and bound on activations agrees with enumeration."""
import itertools
import time

import numpy as np
import pytest

from deployq import api, certification as C, fixedpoint as FX, linbounds as LB
from tests.test_certify import _brute_force, _semantics, _target


@pytest.fixture(scope="module")
def digits():
    return api.open_session("zoo:lenet-digits-adv")


@pytest.fixture(scope="module", params=["fpga-fixed", "mcu-int8"])
def sem(request, digits, tmp_path_factory):
    ex = api.export(request.param, digits, tmp_path_factory.mktemp(request.param))
    return C.semantics(ex, digits.graph, api.load_runner(ex))


def _margins_of(out, y):
    return out[np.arange(len(y)), y][:, None] - out


def _points(sem, digits, x, y, eps, qlo, qhi):
    cfg = C.Config([eps], attack_steps=5, corners=4, strength="fast")
    return ([x] + C.attack_points(sem, digits.model.module, x, y, eps, cfg)
            + C.corner_points(sem, qlo, qhi, x, eps, 6, 1))


def _check(sem, net, points, bounds, y):
    """Per sample: every runtime output inside its (lo, hi) and every runtime margin
    out[y] - out[j] at or above its lower bound."""
    ok = np.ones(len(y), bool)
    for p in points:
        out = sem.run(p)
        ok &= (net.point(sem.flat(sem.codes(p))) == out).all(1)
        for i, (lo, hi, low) in enumerate(bounds):
            ok[i] &= bool(((out[i] >= lo) & (out[i] <= hi)).all())
            ok[i] &= bool((_margins_of(out[i:i + 1], y[i:i + 1])[0] >= low).all())
    return ok


def _bounds(net, qlo, qhi, y):
    out = []
    for i in range(len(y)):
        lo, hi = LB.output_bounds(net, qlo[i], qhi[i])
        st = LB.State(qlo[i].astype(float), qhi[i].astype(float))
        assert LB.propagate(net, st)
        out.append((lo, hi, LB.margins(net, st, int(y[i]))[0]))
    return out


def test_linear_bounds_contain_the_runtime(sem, digits, monkeypatch):
    """lenet-digits-adv on the C runtime, eps 4/255: the chain equals the runtime at
    the clean input, attack points and box points; per-class bounds and margin bounds
    hold on all of them. Negative controls on the same runtime outputs: an upper bound
    shrunk one LSB below a runtime output, and relaxation offsets raised by one code."""
    net = LB.build(sem)
    x, y = digits.dataset.test(16)
    eps = 4 / 255
    qlo, qhi = sem.box(x, eps)
    points = _points(sem, digits, x, y, eps, qlo, qhi)
    bounds = _bounds(net, qlo, qhi, y)
    assert _check(sem, net, points, bounds, y).all()
    # never looser than the interval bounds (each is intersected with them)
    ilo, ihi = sem.bounds(qlo, qhi)
    assert all((b[0] >= ilo[i]).all() and (b[1] <= ihi[i]).all() for i, b in enumerate(bounds))
    out = sem.run(x)
    shrunk = [(lo, hi.copy(), low) for lo, hi, low in bounds]
    shrunk[0][1][0] = out[0, 0] - 1
    assert _check(sem, net, points, shrunk, y).tolist() == [False] + [True] * 15
    relax = LB.relax

    def unsound(act, L, U):
        r = relax(act, L, U)
        r.cl, r.cu = r.cl + 1, r.cu - 1
        return r
    monkeypatch.setattr(LB, "relax", unsound)
    try:
        caught = not _check(sem, net, points, _bounds(net, qlo, qhi, y), y).all()
    except LB.NotLinear as e:       # "empty box": refuted by the points run in it
        caught = "empty" in str(e)
    assert caught


def test_chain_is_the_runtime_and_a_planted_rounding_bug_is_caught(sem, digits, monkeypatch):
    """The chain's point semantics equal the C runtime's outputs; with fpga-fixed's
    rounding mode planted as another (round half to even as truncation, truncation as
    half up; mcu-int8: the rounding divide as a floor) they no longer do."""
    net = LB.build(sem)
    x, _ = digits.dataset.test(40)
    codes = sem.flat(sem.codes(x))
    assert np.array_equal(net.point(codes), sem.run(x))
    if isinstance(sem.model, FX.FxModel):
        shift = FX.shift
        monkeypatch.setattr(FX, "shift", lambda v, s, q: shift(v, s, "rnd" if q == "trn" else "trn"))
    else:
        from deployq import ibp
        monkeypatch.setattr(ibp, "rounding_divide_by_pot", lambda v, e: v >> e)
    assert not np.array_equal(net.point(codes), sem.run(x))


def _free_box(sem, digits, x1, y1, k, width):
    """x1's codes with the k most influential dims free over [q - width, q + width]
    (clipped to the input's range)."""
    score = C.margin_gradient(sem, digits.model.module)
    q0 = sem.flat(sem.codes(x1))[0]
    zero, one = (sem.flat(sem.codes(np.full_like(x1, v)))[0] for v in (0.0, 1.0))
    dims = np.argsort(-np.abs(score(q0[None], y1)[0]))[:k]
    lo, hi = q0.copy(), q0.copy()
    lo[dims] = np.maximum(q0[dims] - width, zero[dims])
    hi[dims] = np.minimum(q0[dims] + width, one[dims])
    return q0, dims, lo, hi


def test_margin_bounds_against_enumeration(sem, digits):
    """Boxes with 4 free input dims: every margin lower bound is at most the true
    minimum over all points of the box, and some are attained (so a bound one higher
    would be caught by this oracle)."""
    net = LB.build(sem)
    x, y = digits.dataset.test(12)
    attained = 0
    for i in range(len(y)):
        q0, dims, lo, hi = _free_box(sem, digits, x[i:i + 1], int(y[i]), 4, 3)
        grid = np.array(list(itertools.product(*[range(lo[d], hi[d] + 1) for d in dims])))
        q = np.repeat(q0[None], len(grid), 0)
        q[:, dims] = grid
        true = _margins_of(net.point(q), np.full(len(q), y[i])).min(0)
        st = LB.State(lo.astype(float), hi.astype(float))
        assert LB.propagate(net, st)
        low = LB.margins(net, st, int(y[i]))[0]
        assert (low <= true).all()
        attained += int((low == true).sum())
    assert attained > 0


def test_linear_branch_and_bound_agrees_with_enumeration(tmp_path, digits):
    """fpga-fixed at 4 bits (inputs 0..1 are codes 0..4), as the interval test of
    test_certify: boxes with the four most influential codes free over the whole
    range, on the samples with the smallest and the largest margins. Branch and bound
    on activations (and the complete decide(), which falls back to input splitting)
    agree with running every point; both verdicts occur; counterexamples are real."""
    x, y = digits.dataset.test(100)
    sem = _semantics(digits.graph, digits.dataset.calibration(512, 0), _target("fpga-fixed"),
                     tmp_path, weight_bits=4, activation_bits=4, rounding="rnd")
    net = LB.build(sem)
    zero, one = (sem.flat(sem.codes(np.full((1, *x.shape[1:]), v, np.float32)))[0]
                 for v in (0.0, 1.0))
    out = sem.run(x).astype(float)
    margin = out[np.arange(len(y)), y] - np.where(np.eye(10)[y] > 0, -1e9, out).max(1)
    score = C.margin_gradient(sem, digits.model.module)
    order, seen, by_linear = np.argsort(margin), set(), set()
    for i in np.stack([order[:4], order[::-1][:4]], 1).reshape(-1):
        q0 = sem.flat(sem.codes(x[i:i + 1]))[0]
        dims = np.argsort(-np.abs(score(q0[None], int(y[i]))[0]))[:4]
        lo, hi = q0.copy(), q0.copy()
        lo[dims], hi[dims] = zero[dims], one[dims]
        truth = _brute_force(sem, q0, dims, np.arange(zero[0], one[0] + 1), int(y[i]))
        expect = "certified" if truth else "falsified"
        status, cex, _ = LB.verify(net, sem.point, lo, hi, int(y[i]), 5.0,
                                   clock=time.process_time)
        assert status in (expect, "stuck", "undecided")
        by_linear.add(status)
        status, cex, _ = C.decide(sem, digits.model.module, lo, hi, int(y[i]), 60.0, "cpu",
                                  linear_share=0.1)
        assert status == expect
        if cex is not None:
            assert sem.point(cex[None]).argmax(1)[0] != y[i]
            assert ((cex >= lo) & (cex <= hi)).all()
        seen.add(status)
    assert seen == {"certified", "falsified"}
    assert by_linear & {"certified", "falsified"}     # the activation stage decides some itself
