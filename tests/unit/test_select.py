"""Bit-width selection: the spectral norms, the exact solver, the budget, the plan."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deployq import api, plan as P, selection as S, targets as T
from deployq.errors import InputError

RND = {"rounding": "rnd"}


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 2), (2, 0, 1, 2)])
def test_power_iteration_matches_the_materialized_conv_operator(stride, padding, dilation,
                                                                groups):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 4 // groups, 3, 3, generator=g, dtype=torch.float64)
    shape = (4, 6, 5)

    def fn(x):
        return F.conv2d(x, w, None, stride, padding, dilation, groups)
    basis = torch.eye(int(np.prod(shape)), dtype=torch.float64).reshape(-1, *shape)
    matrix = fn(basis).flatten(1).T                   # columns: images of the basis
    true = torch.linalg.svdvals(matrix)[0].item()
    assert S.operator_norm(fn, shape, iters=2000, tol=1e-12) == pytest.approx(true, rel=1e-4)


def test_power_iteration_on_a_linear_layer():
    w = np.random.default_rng(0).normal(size=(7, 5))
    node = type("N", (), {"op": "linear"})()
    got = S.operator_norm(S.layer_operator(node, w), (5,), iters=2000, tol=1e-12)
    assert got == pytest.approx(np.linalg.norm(w, 2), rel=1e-6)


def _instance(rng, layers=4, options=4):
    return [[S.Option(int(rng.integers(1, 6)), float(rng.uniform(0.2, 3)),
                      float(rng.uniform(0, 2))) for _ in range(options)]
            for _ in range(layers)]


@pytest.mark.parametrize("seed", range(30))
def test_dp_solver_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    layers = _instance(rng, int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    lo = sum(min(o.cost for o in opts) for opts in layers)
    capacity = lo + int(rng.integers(0, 8))
    d0 = float(rng.uniform(0, 1))
    choice, value = S.solve(layers, capacity, d0)
    _, best = S.brute_force(layers, capacity, d0)
    assert value == pytest.approx(best)
    assert sum(layers[l][j].cost for l, j in enumerate(choice)) <= capacity
    d = d0
    for l, j in enumerate(choice):
        d = layers[l][j].gain * d + layers[l][j].add
    assert d == pytest.approx(value)


def test_solver_refuses_an_impossible_budget():
    with pytest.raises(InputError):
        S.solve([[S.Option(3, 1, 1)], [S.Option(2, 1, 1)]], 4)


@pytest.mark.parametrize("text,unit,value", [
    ("4bits", "bits", 4.0), ("4.5 bits", "bits", 4.5), ("12KB", "bytes", 12288),
    ("3000B", "bytes", 3000), ("2kib", "bytes", 2048)])
def test_budget_parsing(text, unit, value):
    b = S.parse_budget(text)
    assert (b.unit, b.value) == (unit, value)


@pytest.mark.parametrize("text", ["4", "bits", "four bits", "-3bits", "4MB"])
def test_unparsable_budget(text):
    with pytest.raises(InputError, match="not a budget"):
        S.parse_budget(text)


@pytest.mark.parametrize("method", S.METHODS)
@pytest.mark.parametrize("budget,min_bits", [("2.5bits", 2), ("3.3bits", 3), ("4bits", 3),
                                             ("6.2bits", 3), ("2.5KB", 3)])
def test_every_method_respects_the_budget(digits_session, method, budget, min_bits):
    plan = S.select(digits_session, "fpga-fixed", budget, method, 0.1, RND,
                    min_bits=min_bits)
    sel = plan.provenance["selection"]
    graph = digits_session.graph
    used = sum(graph.node(n).weight.size * b for n, b in sel["bits"].items())
    n = sum(node.weight.size for node in graph.nodes if node.weight is not None)
    limit = float(budget[:-4]) * n if budget.endswith("bits") else 2.5 * 1024 * 8
    assert used <= limit and used == sel["weight_bits_total"]
    assert min(sel["bits"].values()) >= min_bits == sel["min_bits"]
    for name, b in sel["bits"].items():           # recorded in the plan's settings
        assert plan.layers[name].settings["weight_bits"] == b
        assert plan.layers[name].weight.bits == b
        assert plan.layers[name].settings.get("weight_clip", 1) == sel["weight_clip"][name]
    if method == "uniform":
        assert set(sel["weight_clip"].values()) == {1}
    assert set(sel) >= {"method", "budget", "eps", "bits", "predicted_objective"}


def test_budget_below_the_smallest_possible(digits_session):
    with pytest.raises(InputError, match="smallest"):
        S.select(digits_session, "fpga-fixed", "2.9bits", "noise")       # min_bits 3
    with pytest.raises(InputError, match="smallest"):
        S.select(digits_session, "fpga-fixed", "1.9bits", "noise", min_bits=2)
    with pytest.raises(InputError, match="min-bits 9"):
        S.select(digits_session, "fpga-fixed", "8bits", "noise", min_bits=9)
    with pytest.raises(InputError, match="clips"):
        S.select(digits_session, "fpga-fixed", "4bits", "noise", clips=(1.0, 1.5))


def test_clipping_is_chosen_and_exported(digits_session):
    """At 3 bits the searched methods clip some layer (a clipped 3-bit grid has a
    smaller error than the full-range one on these weights), and the plan's scales
    are those of the clipped grid."""
    plan = S.select(digits_session, "fpga-fixed", "3bits", "noise", 0.1, RND)
    clips = plan.provenance["selection"]["weight_clip"]
    assert min(clips.values()) < 1
    for name, c in clips.items():
        w = digits_session.graph.node(name).weight
        want = P.weight_params(w, plan.layers[name].settings)
        np.testing.assert_array_equal(plan.layers[name].weight.scale, want.scale)
    none = S.select(digits_session, "fpga-fixed", "3bits", "noise", 0.1, RND, clips=(1.0,))
    assert set(none.provenance["selection"]["weight_clip"].values()) == {1}


def test_uniform_at_8_bits_equals_the_default_plan(digits_session):
    tgt = T.get("fpga-fixed")
    chosen = S.select(digits_session, tgt, "8bits", "uniform")
    default = P.make(digits_session.graph, digits_session.stats, tgt)
    assert set(chosen.provenance["selection"]["bits"].values()) == {8}
    assert json.dumps(chosen.to_json()["layers"]) == json.dumps(default.to_json()["layers"])
    assert chosen.input.to_json() == default.input.to_json()


def test_more_budget_never_predicts_worse(digits_session):
    values = [S.select(digits_session, "fpga-fixed", f"{b}bits", "adversarial", 0.1, RND)
              .provenance["selection"]["predicted_objective"] for b in (3, 4, 6)]
    assert values[0] >= values[1] >= values[2]


def test_export_of_a_selected_plan_runs_on_fpga_fixed(digits_session, tmp_path, run_cli):
    code, out, err = run_cli("-q", "select", "-t", "fpga-fixed", "-b", "4bits",
                             "--rounding", "rnd", "-o", tmp_path / "sel")
    assert code == 0, err
    assert "average weight bits" in out
    plan_path = tmp_path / "sel" / "fpga-fixed" / "plan.json"
    chosen = json.loads(plan_path.read_text())["provenance"]["selection"]["bits"]
    assert len(set(chosen.values())) > 1
    code, out, err = run_cli("-q", "export", "-t", "fpga-fixed", "--plan", plan_path,
                             "-o", tmp_path / "ex")
    assert code == 0, err
    folder = tmp_path / "ex" / "fpga-fixed"
    saved = json.loads((folder / "plan.json").read_text())
    assert {k: saved["layers"][k]["weight"]["bits"] for k in chosen} == chosen
    from deployq.backends import fpga
    fx = fpga.lower(digits_session.graph, P.QuantPlan.load(folder / "plan.json"),
                    T.get("fpga-fixed"))
    assert fpga.build(fx)[0] == (folder / "model.dqm").read_bytes()
    for name, b in chosen.items():      # the file's integer weights use b bits
        assert 2 ** (b - 2) <= np.abs(fx.layers[name].weight).max() <= 2 ** (b - 1) - 1
    x, y = digits_session.dataset.test(200)
    assert (fpga.load(folder / "model.dqm").run(x).argmax(1) == y).mean() > 0.8


def test_cli_bad_select_input(run_cli, tmp_path):
    for args, needle in ((["-b", "4xyz"], "not a budget"), (["-b", "1bits"], "smallest"),
                         (["-b", "4bits", "--method", "greedy"], "'greedy' is not one of")):
        code, _, err = run_cli("-q", "select", *args, "-o", tmp_path)
        assert code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "fpga-fixed").exists()


def test_export_refuses_a_plan_of_another_model(run_cli, tmp_path, digits_session):
    plan = S.select(digits_session, "fpga-fixed", "4bits", "noise", 0.1, RND)
    plan.save(tmp_path / "plan.json")
    code, _, err = run_cli("-q", "export", "-t", "fpga-fixed", "-m", "zoo:dsnet-digits",
                           "--plan", tmp_path / "plan.json", "-o", tmp_path / "out")
    assert code == 2 and "does not match the model's layers" in err
    assert not (tmp_path / "out").exists()


def test_adversarially_trained_zoo_model_loads():
    from deployq import models, zoo
    m = models.load("zoo:lenet-digits-adv")
    assert m.default_data == "digits"
    assert zoo.weights_file("lenet-digits-adv").is_file()
    with pytest.raises(InputError, match="unknown zoo model"):
        zoo.build("lenet-foo-adv")


def test_run_and_eval_take_a_selected_plan(digits_session, tmp_path, run_cli):
    plan = S.select(digits_session, "fpga-fixed", "4bits", "noise", 0.1, RND)
    plan.save(tmp_path / "plan.json")
    chosen = plan.provenance["selection"]["bits"]
    config = tmp_path / "c.toml"
    config.write_text(f'targets = ["onnx-int8"]\nattacks = []\nprofile_repeats = 0\n'
                      f'samples = 50\nout = "{tmp_path / "out"}"\n')
    code, out, err = run_cli("-q", "run", "-c", config, "--plan", tmp_path / "plan.json")
    assert code == 0, err
    assert "fpga-fixed" in out and "onnx-int8" in out
    saved = json.loads((tmp_path / "out" / "fpga-fixed" / "plan.json").read_text())
    assert {k: saved["layers"][k]["weight"]["bits"] for k in chosen} == chosen
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert [r.get("plan") for r in rows] == [None, None, str(tmp_path / "plan.json")]
    code, _, err = run_cli("-q", "eval", "-t", "fpga-fixed", "-n", "20", "-o", tmp_path / "ev",
                           "--plan", tmp_path / "plan.json", "--plan", tmp_path / "plan.json")
    assert code == 2 and "two plans for fpga-fixed" in err and "Traceback" not in err
    assert not (tmp_path / "ev").exists()


def test_targets_with_different_weight_grids_are_not_compared_bit_for_bit(digits_session,
                                                                           tmp_path):
    plan = S.select(digits_session, "onnx-int8", "4bits", "noise")
    plan.save(tmp_path / "plan.json")
    result = api.evaluate(["onnx-int8", "tflite-int8-ref"], digits_session, tmp_path / "o",
                          samples=30, plans={"onnx-int8": tmp_path / "plan.json"})
    (pair,) = result["pairs"]
    assert pair["note"] == "different weight grids" and pair["max_lsb"] is None
    same = api.evaluate(["onnx-int8", "tflite-int8-ref"], digits_session, tmp_path / "p",
                        samples=30)
    assert same["pairs"][0]["max_lsb"] is not None


@pytest.mark.parametrize("seed", range(20))
def test_top_k_solver_equals_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    layers = _instance(rng, int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    capacity = sum(min(o.cost for o in opts) for opts in layers) + int(rng.integers(0, 8))
    k = int(rng.integers(1, 7))
    got = S.solve_top(layers, capacity, k, 0.3)
    want = S.brute_force_top(layers, capacity, k, 0.3)
    assert [v for _, v in got] == pytest.approx([v for _, v in want])
    for choice, value in got:
        assert sum(layers[l][j].cost for l, j in enumerate(choice)) <= capacity
        d = 0.3
        for l, j in enumerate(choice):
            d = layers[l][j].gain * d + layers[l][j].add
        assert d == pytest.approx(value)
    assert len({tuple(c) for c, _ in got}) == len(got)        # distinct assignments
