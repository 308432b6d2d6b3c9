"""deployq.certification and deployq.ibp: integer interval bounds that are the runtime's own
arithmetic at a point and contain every runtime output over a box (checked on the C
runtime and LiteRT's reference kernels), certificates that attacks and box points run
on the runtime never break, a planted off-by-one rounding that these checks catch,
branch and bound against brute-force enumeration, and the command's bad input."""
import itertools

import numpy as np
import pytest
import torch

from deployq import api, backends, calibrate, certification as C, fixedpoint as FX, graph as G
from deployq import ibp, plan as P, qaibp, targets as T, zoo
from deployq.errors import DeployqError, InputError
from tests.conftest import ALL_OPS_SHAPE, AllOps, randomized
from tests.runtime.test_fpga import AllOpsFx


def _semantics(graph, x, target, tmp_path, **settings):
    plan = P.make(graph, calibrate.collect(graph, x[:100]), target,
                  P.PlanConfig(default=settings))
    backend = backends.get(target.backend)
    path, plan = backend.export(graph, plan, target, tmp_path, x[:100])
    return C.semantics(api.Exported(target, path, plan), graph, backend.load(path, target))


def _target(name, **options):
    t = T.get(name)
    t.options = dict(t.options, **options)
    return t


def _box_check(sem, x, eps, k=6):
    """(point outputs equal the runtime's, every runtime output of k box points inside
    the bounds) for each sample."""
    exact = np.array_equal(sem.point(sem.flat(sem.codes(x))), sem.run(x))
    qlo, qhi = sem.box(x, eps)
    lo, hi = sem.bounds(qlo, qhi)
    y = sem.run(x).argmax(1)
    _, inside = C.check_points(sem, C.corner_points(sem, qlo, qhi, x, eps, k, 0), lo, hi, y)
    return exact, inside


FX_VARIANTS = [(12, "wrap", "wrap", "rnd", 8), (12, "sat", "sat", "rnd_conv", 6),
               (32, "wrap", "sat", "trn", 4)]


@pytest.mark.parametrize("acc_bits, acc_ov, out_ov, quant, bits", FX_VARIANTS)
def test_fx_bounds_are_the_runtime_at_points_and_contain_it_on_boxes(
        tmp_path, acc_bits, acc_ov, out_ov, quant, bits):
    graph = G.capture(randomized(AllOpsFx()), ALL_OPS_SHAPE)
    x = np.random.default_rng(1).random((60, *ALL_OPS_SHAPE), dtype=np.float32)
    target = _target("fpga-fixed", acc_bits=acc_bits, acc_overflow=acc_ov, out_overflow=out_ov)
    sem = _semantics(graph, x, target, tmp_path, rounding=quant, weight_bits=bits,
                     activation_bits=bits, calibration="percentile", percentile=99.0)
    exact, inside = _box_check(sem, x, 0.05)
    assert exact and inside.all()


@pytest.mark.parametrize("name, options", [("mcu-int8", {}),
                                           ("mcu-int8", {"rounding_variant": "single"}),
                                           ("tflite-int8-ref", {})])
def test_s8_bounds_are_the_runtime_at_points_and_contain_it_on_boxes(tmp_path, name, options):
    graph = G.capture(randomized(AllOps()), ALL_OPS_SHAPE)
    x = np.random.default_rng(1).random((60, *ALL_OPS_SHAPE), dtype=np.float32)
    sem = _semantics(graph, x, _target(name, **options), tmp_path)
    exact, inside = _box_check(sem, x, 0.05)
    assert exact and inside.all()


def test_fit_bounds_against_enumeration():
    rng = np.random.default_rng(0)
    for bits, overflow in itertools.product((3, 4, 6), ("wrap", "sat")):
        lo = rng.integers(-90, 90, 300)
        hi = lo + rng.integers(0, 40, 300)
        flo, fhi = ibp.fit_bounds(lo, hi, bits, overflow)
        for a, b, fa, fb in zip(lo, hi, flo, fhi):
            values = FX.fit(np.arange(a, b + 1), bits, overflow)
            assert fa <= values.min() and values.max() <= fb
            if overflow == "sat" or fb - fa < (1 << bits) - 1:
                assert (fa, fb) == (values.min(), values.max())     # tight when it can be


@pytest.fixture(scope="module")
def digits():
    return api.open_session("zoo:lenet-digits")


def _digits_semantics(session, name, tmp_path):
    ex = api.export(name, session, tmp_path)
    return C.semantics(ex, session.graph, api.load_runner(ex))


def _violations(sem, session, eps, n=40):
    x, y = session.dataset.test(n)
    cfg = C.Config([eps], attack_steps=5, corners=4, strength="fast")
    clean = sem.run(x).argmax(1) == y
    return C._eps_row(sem, session.model.module, x, y, eps, cfg, clean, None)["violations"]


@pytest.mark.parametrize("name", ["fpga-fixed", "mcu-int8"])
def test_planted_off_by_one_rounding_is_caught(tmp_path, digits, monkeypatch, name):
    """Bounds computed with a wrong rounding rule (fpga-fixed: floor where the runtime
    rounds, half up where it truncates; mcu-int8: floor where it rounds half away)
    disagree with the runtime: the soundness check reports it on narrow boxes (wide
    ones can hide one LSB). Without the plant it reports nothing."""
    sem = _digits_semantics(digits, name, tmp_path)
    assert _violations(sem, digits, 0.02) == 0 and _violations(sem, digits, 0.001) == 0
    if name == "fpga-fixed":
        shift = FX.shift
        wrong = {"trn": "rnd", "rnd": "trn", "rnd_conv": "trn"}     # whatever the default
        monkeypatch.setattr(FX, "shift", lambda x, s, q: shift(x, s, wrong[q]))
    else:
        monkeypatch.setattr(ibp, "rounding_divide_by_pot", lambda x, e: x >> e)
    assert _violations(sem, digits, 0.001) > 0


def test_attacked_accuracy_is_the_standard_apgd_attack(tmp_path, digits, monkeypatch):
    """The attacked column uses robustness.py's standard preset (FGSM, APGD-CE,
    APGD-T) from the mirror and the float model, worst case per sample. Negative
    control: with APGD made a no-op the attacked accuracy rises (only FGSM is left),
    so the figure does depend on APGD."""
    from deployq import attacks
    sem = _digits_semantics(digits, "mcu-int8", tmp_path)
    x, y = digits.dataset.test(40)
    calls = []
    apgd = attacks.apgd
    monkeypatch.setattr(attacks, "apgd", lambda m, *a, **k: calls.append(m) or apgd(m, *a, **k))

    def attacked(eps=0.1):
        cfg = C.Config([eps], attack_steps=10, corners=0)
        assert "APGD-CE 10 iterations" in cfg.describe() and "APGD-T" in cfg.describe()
        clean = sem.run(x).argmax(1) == y
        return C._eps_row(sem, digits.model.module, x, y, eps, cfg, clean, None)
    row = attacked()
    assert row["violations"] == 0
    assert {id(sem.mirror), id(digits.model.module)} <= {id(m) for m in calls}
    monkeypatch.setattr(attacks, "apgd", lambda m, x, *a, **k: x.clone())
    assert attacked()["attacked"] > row["attacked"] + 0.05


def test_certificates_hold_on_the_runtime_and_never_exceed_attacks(tmp_path):
    """zoo:lenet-digits-qaibp on every certifiable target with a runtime here: no
    certified sample is flipped by PGD (mirror and float) or by box points run on the
    runtime, no runtime output leaves its bounds, and certificates exist."""
    result = api.certify(["fpga-fixed", "mcu-int8", "tflite-int8-ref"], "1/255,4/255",
                         samples=40, out=tmp_path, attack_steps=10, strength="fast",
                         model="zoo:lenet-digits-qaibp")["certify"]
    rows = [e for t in result["targets"] for e in t["eps"]]
    assert all(e["violations"] == 0 for e in rows)
    assert all(e["certified"] <= e["attacked"] for e in rows)
    assert sum(e["certified"] for e in rows) > 0
    assert all(e["float_not_here"] + e["certified_n"] - e["here_not_float"]
               == e["float_certified"] for e in rows if "float_certified" in e)


def test_certified_bounds_hold_on_mcu_qemu(tmp_path, monkeypatch):
    """The certificates hold on the Cortex-M build run in QEMU, not only on the host
    C library: the clean input, attack points (mirror and float model) and random box
    corners of zoo:lenet-digits-qaibp, run on the emulated device, stay inside the
    integer bounds and equal their own point bounds; no certified sample is flipped.
    Negative controls on the same device outputs: bounds shrunk by one LSB, and a
    planted rounding bug (truncating shift), are caught."""
    from dataclasses import replace
    from deployq.backends import qemu
    session = api.open_session("zoo:lenet-digits-qaibp")
    ex = api.export("mcu-qemu", session, tmp_path)
    runner = api.load_runner(ex)
    assert isinstance(runner, qemu.Runner)
    seen = {}                           # each point set runs on QEMU once
    sem = C.semantics(ex, session.graph, runner)
    sem = replace(sem, run=lambda p, run=sem.run: seen.setdefault(p.tobytes(), run(p)))
    x, y = session.dataset.test(12)
    eps = 2 / 255
    qlo, qhi = sem.box(x, eps)
    lo, hi = C.batched_bounds(sem.bounds, qlo, qhi)
    cfg = C.Config([eps], attack_steps=5, corners=2, strength="fast")
    points = ([x] + C.attack_points(sem, session.model.module, x, y, eps, cfg)
              + C.corner_points(sem, qlo, qhi, x, eps, cfg.corners, 0))
    cert = C.certified(lo, hi, y)
    correct, inside = C.check_points(sem, points, lo, hi, y)
    assert inside.all() and not (cert & ~correct).any() and cert.any()
    # one upper bound shrunk to just below the device's clean output of that sample
    shrunk = hi.copy()
    shrunk[0, 0] = sem.run(x)[0, 0] - 1
    assert C.check_points(sem, points, lo, shrunk, y)[1].tolist() == [False] + [True] * 11
    monkeypatch.setattr(ibp, "rounding_divide_by_pot", lambda x, e: x >> e)
    assert not C.check_points(sem, points, lo, hi, y)[1].all()
    assert len(seen) == len(points)
    runner.close()


def _brute_force(sem, q0, dims, values, y):
    """Whether every point of the box (q0 with `dims` free over `values`) keeps y."""
    grid = np.array(list(itertools.product(values, repeat=len(dims))))
    q = np.repeat(q0[None], len(grid), 0)
    q[:, dims] = grid
    out = np.concatenate([sem.point(q[i:i + 4096]) for i in range(0, len(q), 4096)])
    return bool(C.certified(out, out, np.full(len(q), y)).all())


def test_branch_and_bound_agrees_with_enumeration(tmp_path, digits):
    """fpga-fixed at 4 bits (inputs 0..1 are codes 0..4): boxes with the four most
    influential input codes free over that whole range, on the samples with the
    smallest and the largest margins: branch and bound's verdict equals running every
    point; both verdicts occur."""
    x, y = digits.dataset.test(100)
    sem = _semantics(digits.graph, digits.dataset.calibration(512, 0), _target("fpga-fixed"),
                     tmp_path, weight_bits=4, activation_bits=4, rounding="rnd")
    zero, one = (sem.flat(sem.codes(np.full((1, *x.shape[1:]), v, np.float32)))[0]
                 for v in (0.0, 1.0))
    out = sem.run(x).astype(float)
    margin = out[np.arange(len(y)), y] - np.where(np.eye(10)[y] > 0, -1e9, out).max(1)
    score = C.margin_gradient(sem, digits.model.module)
    order, seen = np.argsort(margin), set()
    for i in np.stack([order[:4], order[::-1][:4]], 1).reshape(-1):
        q0 = sem.flat(sem.codes(x[i:i + 1]))[0]
        dims = np.argsort(-np.abs(score(q0[None], int(y[i]))[0]))[:4]
        lo, hi = q0.copy(), q0.copy()
        lo[dims], hi[dims] = zero[dims], one[dims]
        status, cex, _ = C.branch_and_bound(sem, score, lo, hi, int(y[i]), 60.0)
        truth = _brute_force(sem, q0, dims, np.arange(zero[0], one[0] + 1), int(y[i]))
        assert status == ("certified" if truth else "falsified")
        if cex is not None:
            assert sem.point(cex[None]).argmax(1)[0] != y[i]
        seen.add(status)
    assert seen == {"certified", "falsified"}


def test_complete_verification_confirms_counterexamples_on_the_runtime(tmp_path, digits):
    sem = _digits_semantics(digits, "fpga-fixed", tmp_path)
    x, y = digits.dataset.test(30)
    cfg = C.Config([0.03], complete=True, time_limit=2.0, attack_steps=5, corners=2, strength="fast")
    clean = sem.run(x).argmax(1) == y
    row = C._eps_row(sem, digits.model.module, x, y, 0.03, cfg, clean, None)
    c = row["complete"]
    assert c["unconfirmed"] == 0 and row["violations"] == 0
    assert c["certified"] + c["falsified"] + c["undecided"] == len(x)
    assert c["certified"] >= round(row["certified"] * len(x))


def test_verify_returns_a_counterexample_inside_the_ball(tmp_path, digits):
    sem = _digits_semantics(digits, "mcu-int8", tmp_path)
    x, y = digits.dataset.test(60)
    eps = 0.1
    for i in range(len(x)):
        v = C.verify(sem, digits.model.module, x[i:i + 1], int(y[i]), eps, 5.0)
        if v.status == "falsified":
            assert np.abs(v.counterexample - x[i:i + 1]).max() <= eps + 1e-7
            assert sem.run(v.counterexample).argmax(1)[0] != y[i]
            return
    pytest.fail("no sample falsified at eps 0.1")


def test_parse_eps():
    assert C.parse_eps("1/255, 0.5") == [1 / 255, 0.5]
    for bad in ("0", "1.5", "-1/255", "abc", "1/0", ""):
        with pytest.raises(InputError):
            C.parse_eps(bad)


@pytest.mark.parametrize("args, message", [
    (["-t", "onnx-int8"], "cannot certify onnx-int8: it runs ONNX QDQ int8"),
    (["-t", "tflite-int8"], "cannot certify tflite-int8: it runs LiteRT's XNNPACK"),
    (["--eps", "2"], "outside (0, 1]"),
    (["--eps", "x"], "fractions like 1/255"),
    (["-t", "nope"], "nope"),
])
def test_cli_refuses_with_one_line(run_cli, tmp_path, args, message):
    code, out, err = run_cli("certify", "-o", tmp_path / "o", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_cli_prints_the_tables(run_cli, tmp_path):
    code, out, err = run_cli("-q", "certify", "-t", "fpga-fixed", "-n", "8", "--eps",
                             "1/255", "--steps", "2", "-o", tmp_path,
                             "--json", tmp_path / "c.json")
    assert code == 0, err
    assert "float only" in out and "fpga-fixed" in out
    assert "certify" in (tmp_path / "c.json").read_text()


def test_qaibp_training_runs_logs_and_refuses_other_models():
    ds = zoo_data = api.open_session("zoo:lenet-digits").dataset
    model = zoo.load("lenet-digits")
    seen = []
    model, log = qaibp.train(model, ds.x_train[:300], ds.y_train[:300], epochs=2, batch=64,
                             eps=4 / 255, progress=lambda e, n, entry: seen.append(e))
    assert seen == [1, 2] and len(log.epochs) == 2
    assert {"val_clean", "val_certified", "eps", "kappa"} <= set(log.epochs[-1])
    assert not model.training
    with pytest.raises(DeployqError):
        qaibp.train(zoo.build("dsnet-digits"), ds.x_train[:64], ds.y_train[:64], epochs=1)
    with pytest.raises(InputError):
        qaibp.train(model, zoo_data.x_train[:64], zoo_data.y_train[:64], eps=0.0)


def test_qaibp_bounds_contain_the_simulated_forward_pass():
    """The training bounds are sound for the simulated quantized model (random points
    of the ball stay inside them)."""
    ds = api.open_session("zoo:lenet-digits").dataset
    x = torch.from_numpy(ds.x_test[:50])
    sim = qaibp.Simulated(zoo.load("lenet-digits"), 8, x)
    sim.eval()
    eps = 0.05
    with torch.no_grad():
        _, lo, hi = sim(x, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1))
        for k in range(5):
            xp = (x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(k)) * 2 - 1)
                  * eps).clamp(0, 1)
            out = sim(xp)
            assert bool(((out >= lo - 1e-4) & (out <= hi + 1e-4)).all())


def test_run_stage_writes_certify_into_results_and_report(tmp_path):
    from deployq import report
    cfg = {"targets": ["fpga-fixed", "onnx-int8"], "attacks": [], "profile_repeats": 0,
           "certify": ["1/255"], "certify_samples": 6, "samples": 20, "out": str(tmp_path)}
    result, files = api.run(cfg)
    rows = result["certify"]["targets"]
    assert [r["target"] for r in rows] == ["float", "fpga-fixed"]      # onnx-int8 skipped
    assert "Certified accuracy" in (tmp_path / "report.md").read_text()
    doc = report.load(tmp_path / "results.json")
    assert ("fpga-fixed", "certified", 1 / 255) in report.scores(doc)
    worse = {**doc, "certify": {**doc["certify"], "targets": [
        {**t, "eps": [{**e, "certified": e["certified"] - 0.5} for e in t["eps"]]}
        for t in doc["certify"]["targets"]]}}
    assert any("certified" in line for line in report.compare(worse, doc, 1.0))
