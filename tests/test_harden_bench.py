"""tools/bench_harden.py's paired comparison of two runs (docs/harden.md's McNemar
figures: pure functions over per-sample masks), and the shipped zoo:lenet-digits-dq on
the C runtime."""
import importlib.util
import sys
from pathlib import Path

import pytest

from deployq import stats

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_harden",
                                                  ROOT / "tools" / "bench_harden.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_harden"] = module
    spec.loader.exec_module(module)
    return module


def _run(name, mask):
    return {"run": name, "samples": len(mask), "robust": sum(mask) / len(mask),
            "robust_mask": stats.pack(mask)}


def test_compare_counts_discordant_samples_and_tests_them(bench):
    first = [True] * 30 + [False] * 70
    second = [False] * 30 + [False] * 70          # first robust on 30 more samples
    (c,) = bench.compare([_run("dq", first), _run("vanilla", second)], ["dq:vanilla"])
    assert (c["first_only"], c["second_only"]) == (30, 0)
    assert c["difference"] == pytest.approx(0.3)
    assert c["p"] < 1e-6 and c["significant"]


def test_compare_of_equal_accuracy_on_other_samples_is_not_significant(bench):
    # negative control: the same accuracy reached on different samples is a tie
    first = [True, False] * 50
    second = [False, True] * 50
    (c,) = bench.compare([_run("a", first), _run("b", second)], ["a:b"])
    assert c["difference"] == 0 and c["p"] == 1.0 and not c["significant"]


def test_compare_of_an_unknown_run_fails(bench):
    with pytest.raises(SystemExit, match="no run named c"):
        bench.compare([_run("a", [True]), _run("b", [False])], ["a:c"])


def test_compare_reaches_a_runs_float_copy(bench):
    plain = _run("plain", [False] * 10) | {"float_robust": 0.5,
                                           "float_robust_mask": stats.pack([True, False] * 5)}
    (c,) = bench.compare([plain, _run("dq", [True] * 10)], ["dq:plain/float"])
    assert (c["first_only"], c["second_only"]) == (5, 0)
    assert c["difference"] == pytest.approx(0.5)


def _piece(name, mask, start, robust_by=None):
    return _run(name, mask) | {"start": start, "attack": "apgd", "clean": 0.8,
                               "float_clean": 0.9, "float_robust": 0.0,
                               "by": {"bpda/apgd": robust_by or sum(mask) / len(mask)}}


def test_pieces_of_a_run_join_in_sample_order(bench):
    # pieces given out of order: samples 0-3 then 4-9
    late = _piece("dq", [False] * 6, 4)
    early = _piece("dq", [True] * 4, 0) | {"clean": 0.5}
    (row,) = bench.join_pieces([late, early])
    assert row["samples"] == 10 and row["start"] == 0
    assert stats.unpack(row["robust_mask"], 10) == [True] * 4 + [False] * 6
    assert row["robust"] == pytest.approx(0.4)
    assert row["clean"] == pytest.approx((0.5 * 4 + 0.8 * 6) / 10)
    assert row["by"]["bpda/apgd"] == pytest.approx(0.4)


def test_pieces_with_a_gap_or_another_attack_are_refused(bench):
    with pytest.raises(SystemExit, match="adjacent sample ranges"):
        bench.join_pieces([_piece("dq", [True] * 4, 0), _piece("dq", [True] * 4, 5)])
    with pytest.raises(SystemExit, match="adjacent sample ranges"):
        bench.join_pieces([_piece("dq", [True] * 4, 0),
                           _piece("dq", [True] * 4, 4) | {"attack": "pgd"}])


def test_compare_of_runs_on_other_samples_fails(bench):
    # negative control: the same counts but samples 0-9 against 10-19 are not paired
    with pytest.raises(SystemExit, match="different test samples"):
        bench.compare([_piece("a", [True] * 10, 0), _piece("b", [True] * 10, 10)],
                      ["a:b"])


# --merge-eval: a `deployq eval --json` document's runtime rows become runs NAME@TARGET
# that --compare pairs (docs/harden.md, dq8 on the int8 targets)

def _doc(float_mask, target_mask):
    def eps(mask):
        return [{"eps": 0.03, "samples": len(mask), "robust": sum(mask) / len(mask),
                 "robust_mask": stats.pack(mask),
                 "by": [{"source": "bpda", "attack": "fgsm", "accuracy": 0.5}]}]
    return {"model": "zoo:m", "robustness": {
        "eps": [0.03], "description": "standard",
        "targets": [{"target": "float", "clean": 0.9, "eps": eps(float_mask)},
                    {"target": "mcu-int8", "clean": 0.8, "eps": eps(target_mask)}]}}


def test_rows_of_a_deployq_eval_document_are_compared_per_target(bench):
    a = bench.rows_of_deployq_eval("dq", _doc([True] * 20, [True] * 12 + [False] * 8))
    b = bench.rows_of_deployq_eval("plain", _doc([True] * 20, [False] * 20))
    assert [r["run"] for r in a] == ["dq@mcu-int8"]          # float is each row's copy
    (c,) = bench.compare(a + b, ["dq@mcu-int8:plain@mcu-int8"])
    assert (c["first_only"], c["second_only"]) == (12, 0) and c["significant"]
    # the float copy is the document's float row, not the target's
    (f,) = bench.compare(a + b, ["plain@mcu-int8:dq@mcu-int8/float"])
    assert (f["first_only"], f["second_only"]) == (0, 20)


def test_a_deployq_eval_document_without_robustness_is_refused(bench):
    with pytest.raises(SystemExit, match="no robustness results"):
        bench.rows_of_deployq_eval("dq", {"model": "zoo:m", "results": []})


def test_zoo_digits_dq_runs_accurately_on_fpga_fixed_with_its_plan(tmp_path):
    """zoo:lenet-digits-dq with its shipped 4-bit plan (unsigned post-ReLU activations)
    on the C runtime: accurate (97.8% on the whole test split when it was trained); the
    plain zoo model on a 4-bit plan calibrated after training with the same rounding
    (`trn`; post-training quantization, the negative control) is far less so (64.5% on
    the first 200)."""
    from deployq import api, plan as P, targets as T
    plan = ROOT / "deployq" / "weights" / "lenet-digits-dq.plan.json"
    dq = api.open_session("zoo:lenet-digits-dq")
    ex = api.export("fpga-fixed", dq, tmp_path / "dq", plan_path=plan)
    assert ex.plan.layers["features.0"].output.bits == 4
    assert ex.plan.layers["features.0"].output.zero_point[0] == -8     # unsigned 4-bit
    x, y = dq.dataset.test(200)
    dq_acc = (api.load_runner(ex).run(x).argmax(1) == y).mean()
    plain = api.open_session("zoo:lenet-digits")
    tgt = T.get("fpga-fixed")
    config = api.plan_config(tgt, {"activation_bits": 4, "weight_bits": 8,
                                   "rounding": "trn"}, plain.graph.output, hidden_only=True)
    ptq = P.make(plain.graph, plain.stats, tgt, config, api.provenance(plain))
    ex2 = api.export("fpga-fixed", plain, tmp_path / "plain", plan=ptq)
    ptq_acc = (api.load_runner(ex2).run(x).argmax(1) == y).mean()
    assert dq_acc >= 0.9 and ptq_acc < dq_acc - 0.1


def test_operator_norm_is_the_dense_maps_spectral_norm(bench):
    """bench_harden lipschitz's operator norm of a 3x3 conv (padding 1) on an 8x8 input
    equals the spectral norm of the dense matrix of that map (built column by column);
    the reshaped (out, in*k*k) matrix's norm, what DQ's penalty constrains, is a
    different number (the negative control: the two are not interchangeable)."""
    import torch
    from deployq import graph as G
    w = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    node = G.Node("c", "conv2d", ["input"], (4, 8, 8), {"stride": (1, 1), "padding": (1, 1),
                                                         "dilation": (1, 1), "groups": 1})
    basis = torch.eye(2 * 8 * 8).reshape(-1, 2, 8, 8)
    dense = G.weighted(node, basis, w, None).reshape(len(basis), -1).T
    exact = float(torch.linalg.matrix_norm(dense, ord=2))
    assert bench.operator_norm(node, (2, 8, 8), w) == pytest.approx(exact, rel=1e-3)
    reshaped = float(torch.linalg.matrix_norm(w.reshape(4, -1), ord=2))
    assert abs(reshaped - exact) > 0.1 * exact
    lin = G.Node("l", "linear", ["input"], (3,), {})
    m = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    assert bench.operator_norm(lin, (5,), m) == pytest.approx(
        float(torch.linalg.matrix_norm(m, ord=2)), rel=1e-3)


def test_valsplit_is_hardens_validation_split(bench, tmp_path):
    """valsplit's test split is exactly the samples harden holds out (same fraction and
    seed), and its training split the rest: beta is chosen without the test split."""
    import argparse
    import numpy as np
    from deployq import data, hardening
    out = tmp_path / "val.npz"
    bench.cmd_valsplit(argparse.Namespace(data="digits", seed=0, val_fraction=0.1,
                                          json=str(out)))
    ds = data.load("digits", 0)
    part = hardening.split(ds.x_train, ds.y_train, 0.1, 0)
    with np.load(out) as f:
        assert np.array_equal(f["x_test"], part.x_val) and np.array_equal(f["y"], part.y_train)
        assert len(f["x_test"]) == 144 and len(f["x"]) + 144 == len(ds.x_train)


def _untrained_fmnist_accuracy(plan, x, y, tmp_path) -> float:
    """The negative control of the shipped Fashion-MNIST plans: the same architecture
    untrained (seeded), through the same fpga-fixed plan."""
    import torch
    from deployq import api, zoo
    torch.manual_seed(0)
    untrained = api.open_session(zoo.build("lenet-fmnist").eval(), data="fashion-mnist")
    ex = api.export("fpga-fixed", untrained, tmp_path / "raw", plan_path=plan)
    return float((api.load_runner(ex).run(x).argmax(1) == y).mean())


def test_zoo_fmnist_dq8_runs_on_fpga_fixed_and_int8(tmp_path):
    """zoo:lenet-fmnist-dq8 (8-bit activations) with its shipped plan on fpga-fixed and
    with a calibrated plan on mcu-int8: accurate on both runtimes. Negative control: the
    same architecture untrained, through the same plan, is near chance."""
    from deployq import api
    plan = ROOT / "deployq" / "weights" / "lenet-fmnist-dq8.plan.json"
    dq = api.open_session("zoo:lenet-fmnist-dq8")
    x, y = dq.dataset.test(200)
    fx = api.export("fpga-fixed", dq, tmp_path / "fx", plan_path=plan)
    assert fx.plan.layers["features.0"].output.bits == 8
    int8 = api.export("mcu-int8", dq, tmp_path / "int8")
    for ex in (fx, int8):
        assert (api.load_runner(ex).run(x).argmax(1) == y).mean() >= 0.85
    assert _untrained_fmnist_accuracy(plan, x, y, tmp_path) < 0.3


def test_zoo_fmnist_dq_runs_accurately_on_fpga_fixed_with_its_plan(tmp_path):
    """zoo:lenet-fmnist-dq (two stages, rnd_conv, unsigned post-ReLU activations) with
    its shipped 4-bit plan on the C runtime: accurate (91.7% on the first 300 test
    samples when it was trained), the input's rounding pinned in the plan. Negative
    control: the same architecture untrained, through the same plan, is near chance."""
    from deployq import api
    plan = ROOT / "deployq" / "weights" / "lenet-fmnist-dq.plan.json"
    dq = api.open_session("zoo:lenet-fmnist-dq")
    ex = api.export("fpga-fixed", dq, tmp_path / "dq", plan_path=plan)
    assert ex.plan.layers["features.0"].output.bits == 4
    assert ex.plan.layers["features.0"].output.zero_point[0] == -8     # unsigned 4-bit
    assert ex.plan.config.by_type["input"]["rounding"] == "rnd_conv"
    x, y = dq.dataset.test(200)
    assert (api.load_runner(ex).run(x).argmax(1) == y).mean() >= 0.87
    assert _untrained_fmnist_accuracy(plan, x, y, tmp_path) < 0.3


def test_a_piece_starts_at_its_sample_and_stays_inside_the_test_split(bench):
    import numpy as np
    from types import SimpleNamespace
    ds = SimpleNamespace(x_test=np.arange(10), y_test=np.arange(10) % 3)
    bench._from_sample(ds, 4, 6)
    assert list(ds.x_test) == [4, 5, 6, 7, 8, 9] and list(ds.y_test) == [1, 2, 0, 1, 2, 0]
    with pytest.raises(SystemExit, match="goes past the 6 test samples"):
        bench._from_sample(ds, 1, 6)                  # negative control: one too many
