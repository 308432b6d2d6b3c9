"""Selection refinement, activation bits and selection inside run (docs/selection.md)."""
import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest

from deployq import api, refine as RF, selection as S, validate
from deployq.errors import InputError

RND = {"rounding": "rnd"}
CHEAP = {"samples": 40, "steps": 2, "evals": 2}       # a cheap validation objective


def _tiny_space(capacity, act_capacity=0):
    """Three layers of 3, 5 and 7 weights, bits 3..5, clips 1 and 0.5; two activation
    groups of 4 and 6 elements, bits 2..4; random affine maps."""
    rng = np.random.default_rng(0)
    layers, table = [], []
    for i, n in enumerate((3, 5, 7)):
        choices = {(b, c): None for b in (3, 4, 5) for c in (1.0, 0.5)}
        layers.append(S.Layer(SimpleNamespace(name=f"l{i}"), n, choices))
        table.append({k: (float(rng.uniform(0.5, 2)), float(rng.uniform(0, 3)))
                      for k in choices})
    groups = [S.ActGroup("l0", ["l0"], 4, {b: float(rng.uniform(0, 2)) / b for b in (2, 3, 4)}),
              S.ActGroup("l1", ["l1"], 6, {b: float(rng.uniform(0, 2)) / b for b in (2, 3, 4)})]
    return S.Space(layers, table, capacity, groups if act_capacity else None,
                   [2, 3, 4] if act_capacity else None, act_capacity)


def _all(space):
    """Brute force: every assignment that fits both budgets."""
    ws = itertools.product(*(list(l.choices) for l in space.layers))
    acts = (list(itertools.product(*([space.act_bits] * len(space.groups))))
            if space.groups else [()])
    return {S.Assignment(tuple(w), tuple(a)) for w in ws for a in acts
            if space.fits(S.Assignment(tuple(w), tuple(a)))}


@pytest.mark.parametrize("capacity,act_capacity", [(60, 0), (45, 0), (60, 30), (48, 25)])
def test_candidates_and_neighbours_respect_both_budgets(capacity, act_capacity):
    space = _tiny_space(capacity, act_capacity)
    oracle = _all(space)
    found = S._choose(space, "adversarial", 5)
    assert found and set(found) <= oracle
    if not act_capacity:             # weights alone: the DP's top 5 are the oracle's
        best = sorted(space.predict(a) for a in oracle)[:5]
        assert [space.predict(a) for a in found] == pytest.approx(best)
    for a in found:
        moves = list(RF.neighbours(space, a))
        assert moves and set(moves) <= oracle and a not in moves


@pytest.mark.parametrize("capacity", [60, 45, 40])
def test_diverse_candidates_are_the_best_per_choice_of_the_largest_layer(capacity):
    space = _tiny_space(capacity)
    oracle = _all(space)
    found = S.diverse(space, ())
    big = 2                                   # the 7-weight layer
    fits = {a.weights[big] for a in oracle}
    assert {a.weights[big] for a, _ in found} == fits and len(found) == len(fits)
    for a, origin in found:
        b, c = a.weights[big]
        assert origin == f"largest-{b}" + ("" if c == 1 else f"@{c:g}")
        best = min(space.predict(o) for o in oracle if o.weights[big] == (b, c))
        assert a in oracle and space.predict(a) == pytest.approx(best)
    # negative control: some choice of the largest layer is out of reach at 40
    if capacity == 40:
        assert len(fits) < len(space.layers[big].choices)


@pytest.mark.parametrize("capacity,bits", [(60, 4), (75, 5), (45, 3)])
def test_uniform_candidates_are_the_uniform_plan_at_each_clip(capacity, bits):
    """refine_options uniform_candidates: every layer at the uniform plan's bits (the
    largest that fit; 15 weights), one candidate per clip, each within the budget."""
    space = _tiny_space(capacity)
    found = S.uniform_candidates(space, ())
    assert [o for _, o in found] == [f"uniform-{bits}", f"uniform-{bits}@0.5"]
    assert {a for a, _ in found} <= _all(space)
    for a, _ in found:
        assert {b for b, _ in a.weights} == {bits}
    # negative control: one bit more everywhere breaks the budget
    assert not space.fits(S.Assignment(tuple((bits + 1, 1.0) for _ in space.layers)))


def test_activation_coordinate_descent_beats_uniform_activations():
    space = _tiny_space(60, 30)
    best = S._choose(space, "adversarial", 1)[0]
    uniform = S.Assignment(best.weights, S._uniform_acts(space))
    assert space.predict(best) <= space.predict(uniform) + 1e-12


@pytest.fixture(scope="module")
def refined(digits_session):
    return S.select(digits_session, "fpga-fixed", "4bits", "adversarial", 0.1, RND,
                    refine=2, refine_options=CHEAP, activation_budget="4bits")


def test_refinement_is_never_worse_than_the_dps_best(refined, digits_session):
    sel = refined.provenance["selection"]
    ref = sel["refinement"]
    by = {c["assignment"]: c for c in ref["candidates"]}
    first = next(c for c in ref["candidates"] if c["origin"] == "dp-0")
    chosen = by[ref["chosen"]]
    assert RF._key(chosen) >= RF._key(first)       # score, then robust, then clean
    assert all(k in chosen for k in ("score", "hidden", "by"))
    assert ref["evaluations"] == len(ref["candidates"]) >= 2
    assert all("predicted" in c and "robust" in c for c in ref["candidates"])
    # both budgets hold, and the plan carries the chosen bits
    n = sum(digits_session.graph.node(k).weight.size for k in sel["bits"])
    assert sel["weight_bits_total"] <= 4 * n
    assert sel["average_activation_bits"] <= 4
    for name, b in sel["activation_bits"].items():
        assert refined.layers[name].output.bits == b
    for name, b in sel["bits"].items():
        assert refined.layers[name].weight.bits == b


def test_select_measures_the_uniform_candidates_when_asked(digits_session, refined):
    plan = S.select(digits_session, "fpga-fixed", "4bits", "adversarial", 0.1, RND,
                    refine=1, refine_options=CHEAP | {"evals": 1, "uniform_candidates": True})
    found = {c["origin"]: c for c in plan.provenance["selection"]["refinement"]["candidates"]}
    assert {"uniform-4", "uniform-4@0.5"} <= set(found)
    assert found["uniform-4"]["assignment"] == "4/4/4/4"
    # negative control: without the option no uniform candidate is measured
    assert not any(c["origin"].startswith("uniform")
                   for c in refined.provenance["selection"]["refinement"]["candidates"])


def test_the_validation_split_is_training_data_disjoint_from_calibration(digits_session):
    ds = digits_session.dataset
    x, _ = RF.validation(ds, 40, 0, digits_session.calib_samples)
    calib = ds.calibration(digits_session.calib_samples, 0)
    rows = {r.tobytes() for r in ds.x_train}
    assert all(r.tobytes() in rows for r in x)
    assert not {r.tobytes() for r in x} & {r.tobytes() for r in calib}
    with pytest.raises(InputError, match="validation split"):
        RF.validation(ds, len(ds.x_train), 0, digits_session.calib_samples)


def test_the_measured_objective_sees_a_bad_plan(digits_session, refined):
    """Negative control: 2-bit everything scores far below the refined plan."""
    from deployq import plan as P, targets as T
    tgt = T.get("fpga-fixed")
    x, y = RF.validation(digits_session.dataset, 40, 0, digits_session.calib_samples)
    obj = RF.Objective(digits_session, tgt, x, y, 0.1, 2)
    bad = P.make(digits_session.graph, digits_session.stats, tgt,
                 P.PlanConfig({"weight_bits": 2, "activation_bits": 2, **RND}))
    good, worse = obj(refined), obj(bad)
    assert good["clean"] > worse["clean"] + 0.3


class _Masked:
    """A mirror with total gradient masking: the same outputs as `mirror`, but its
    input passes through detach, so every gradient attack through it sees zeros."""

    def __init__(self, mirror):
        self.mirror = mirror

    def __call__(self, x):
        return self.mirror(x.detach()) + 0 * x.sum()

    def logits(self, x):
        return self.mirror.logits(x)


def test_the_objective_does_not_reward_gradient_masking(digits_session):
    """The masked mirror computes the honest one's function, so it is exactly as robust.
    The cheap gradient attack alone scores it far higher (negative control: the check
    off); with the Square check it scores no higher than the honest mirror."""
    from deployq import mirror as M, plan as P, targets as T
    tgt, g = T.get("fpga-fixed"), digits_session.graph
    honest = M.build(tgt, g, P.make(g, digits_session.stats, tgt, P.PlanConfig(dict(RND))))
    masked = _Masked(honest)
    x, y = RF.validation(digits_session.dataset, 60, 0, digits_session.calib_samples)

    def scores(sources, penalty=RF.PENALTY):
        obj = RF.Objective(digits_session, tgt, x, y, 0.1, 2, sources, 300,
                           build=lambda target, graph, plan: plan, penalty=penalty)
        return obj(honest), obj(masked)

    h, m = scores(("bpda",))                       # the check off
    assert m["score"] == m["robust"] == m["clean"] and m["score"] > h["score"] + 0.3
    h, m = scores(("bpda", "blackbox"))            # the check on
    assert m["score"] <= h["score"] and m["hidden"] > 0.2 > h["hidden"]
    assert m["by"]["bpda/apgd-ce"] == m["clean"]   # still masked for the gradient attack
    with pytest.raises(InputError, match="must include 'bpda'"):
        RF.Objective(digits_session, tgt, x, y, 0.1, 2, ("transfer",))


def test_pruning_hopeless_candidates_keeps_the_answer(digits_session):
    """prune skips the attacks on plans whose clean and transfer accuracy fall below the
    best score: the same chosen plan and the same records for every plan measured in
    full; a pruned plan's bound is below the chosen score and above its full score."""
    def run(prune):
        plan = S.select(digits_session, "fpga-fixed", "4bits", "adversarial", 0.1, RND,
                        refine=3, refine_options=CHEAP | {"prune": prune})
        return plan.provenance["selection"]["refinement"]
    on, off = run(True), run(False)
    assert on["chosen"] == off["chosen"] and off["pruned"] == 0
    full = {c["assignment"]: c for c in off["candidates"]}
    chosen = full[on["chosen"]]
    for c in on["candidates"]:
        if c.get("pruned"):
            assert full[c["assignment"]]["robust"] <= c["robust_at_most"] < chosen["score"]
        else:
            assert c == full[c["assignment"]]
    # the bound itself: a floor above 1 always prunes, a floor of 0 never does
    from deployq import plan as P, targets as T
    tgt = T.get("fpga-fixed")
    x, y = RF.validation(digits_session.dataset, 40, 0, digits_session.calib_samples)
    obj = RF.Objective(digits_session, tgt, x, y, 0.1, 2)
    plan = P.make(digits_session.graph, digits_session.stats, tgt, P.PlanConfig(dict(RND)))
    first = obj(plan)                               # computes the transfer examples
    assert obj(plan, 1.01)["pruned"] and obj(plan, 0.0) == first


def test_parallel_refinement_equals_one_process(digits_session, monkeypatch):
    """Two worker processes measure the same plans, with the same records, in the same
    order, and choose the same plan as one process. Negative control: each record also
    carries per-process state (how many plans its process had measured), which differs
    between the two runs, so the comparison sees where the evaluations ran."""
    measure, count = RF.Objective.measure, []

    def counted(self, plan, floor=None):
        record, bounds = measure(self, plan, floor)
        count.append(1)
        return record | {"nth": len(count)}, bounds
    monkeypatch.setattr(RF.Objective, "measure", counted)

    def run(workers):
        count.clear()                              # the workers fork with an empty count
        plan = S.select(digits_session, "fpga-fixed", "4bits", "adversarial", 0.1, RND,
                        refine=3, refine_options=CHEAP | {"evals": 3, "queries": 20,
                                                          "workers": workers},
                        activation_budget="4bits")
        ref = plan.provenance["selection"]["refinement"]
        nth = [c.pop("nth", None) for c in ref["candidates"]]   # None: re-judged
        return ref, {k: v for k, v in plan.to_json().items() if k != "provenance"}, nth
    (one, plan1, nth1), (two, plan2, nth2) = run(1), run(2)
    assert two["workers"] == 2 and one["workers"] == 1 and one["unused"] == 0
    assert two["chosen"] == one["chosen"] and plan2 == plan1
    assert two["candidates"] == one["candidates"] and len(one["candidates"]) >= 4
    assert any("by" in c for c in one["candidates"])          # attacked in full
    assert any(c.get("pruned") for c in one["candidates"])    # and pruned (at_floor)
    assert nth1 == list(range(1, len(nth1) + 1)) and nth2 != nth1


def test_a_record_measured_at_a_lower_floor_is_rejudged():
    """at_floor gives the record one process would have made at the higher floor: the
    cheapest bound below it prunes; a full record stands where no bound prunes it."""
    full = {"robust": 0.4, "clean": 0.9, "hidden": 0.1, "score": 0.3, "by": {}}
    bounds = {"transfer": 0.6, "gradient": 0.5}
    assert RF.at_floor(full, bounds, None) == full == RF.at_floor(full, bounds, 0.5)
    assert RF.at_floor(full, bounds, 0.55) == RF._pruned(0.5, 0.9)
    assert RF.at_floor(full, bounds, 0.7) == RF._pruned(0.6, 0.9)
    pruned = RF._pruned(0.5, 0.9)
    assert RF.at_floor(pruned, {"transfer": 0.6, "gradient": 0.5}, 0.4) is None
    with pytest.raises(InputError, match="workers"):
        RF._workers(0)


def test_activation_bits_only_where_the_target_allows_them(digits_session, run_cli, tmp_path):
    with pytest.raises(InputError, match="8-bit activations only"):
        S.select(digits_session, "tflite-int8", "4bits", activation_budget="4bits")
    code, _, err = run_cli("-q", "select", "-t", "onnx-int8", "-b", "4bits",
                           "--activation-budget", "4bits", "-o", tmp_path)
    assert code == 2 and "activations only" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "onnx-int8").exists()


def test_select_table_is_validated():
    assert validate.SELECT_METHODS == S.METHODS
    for bad in ({"method": "adversarial"}, {"budget": "4bits", "method": "greedy"},
                {"budget": "4bits", "refine": -1}, {"budget": "4bits", "typo": 1}, "4bits"):
        with pytest.raises(InputError, match="select must be"):
            validate.config({"select": bad}, "deployq.toml")
    validate.config({"select": {"budget": "4bits", "method": "noise", "refine": 2,
                                "eps": 0.05, "activation_budget": "4bits"}}, "x")


def test_run_selects_inside_the_pipeline(tmp_path):
    out = tmp_path / "o"
    result, _ = api.run({"targets": ["fpga-fixed"], "out": str(out), "samples": 60,
                         "attacks": [], "profile_repeats": 0,
                         "select": {"budget": "4bits", "method": "uniform",
                                    "rounding": "rnd"}})
    row = next(r for r in result["results"] if r["target"] == "fpga-fixed")
    plan = json.loads((out / "selected" / "fpga-fixed" / "plan.json").read_text())
    assert row["plan"] == str(out / "selected" / "fpga-fixed" / "plan.json")
    assert plan["provenance"]["selection"]["average_bits"] == 4
    assert plan["config"]["default"] == {"rounding": "rnd"}
    assert row["accuracy"] > 0.8
    with pytest.raises(InputError, match="not a budget"):
        api.run({"targets": ["fpga-fixed"], "out": str(tmp_path / "p"),
                 "select": {"budget": "four"}})
    assert not (tmp_path / "p").exists()


def _bench():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "tools" / "bench_select.py"
    spec = importlib.util.spec_from_file_location("bench_select", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_measures_each_distinct_plan_once(digits_session):
    """bench_select keys a plan by target and settings: the same settings give the same
    key (measured once, reported as the same plan), another clip a different one."""
    from deployq import plan as P, targets as T
    bench, tgt, g = _bench(), T.get("fpga-fixed"), digits_session.graph
    names = [n.name for n in g.nodes if n.op in ("conv2d", "linear")]

    def make(clip):
        by = {k: S._setting(4, clip if k == names[-1] else 1.0) for k in names}
        return P.make(g, digits_session.stats, tgt, P.PlanConfig(dict(RND), {}, by),
                      {"selection": {"bits": {k: 4 for k in names}}})
    a, b, c = make(1.0), make(1.0), make(0.5)
    assert bench.plan_key("fpga-fixed", a) == bench.plan_key("fpga-fixed", b)
    assert bench.plan_key("fpga-fixed", a) != bench.plan_key("fpga-fixed", c)
    assert bench.plan_key("fpga-fixed", a) != bench.plan_key("tflite-int8", a)
    first = {"model": "m", "target": "fpga-fixed", "method": "noise", "robust": {0.1: 0.5}}
    row = bench.same_plan(first, "hessian", 4.0, None, 1.0, a)
    assert row["method"] == "hessian" and row["same_plan_as"] == "noise"
    assert row["robust"] == first["robust"]


def test_benchmark_transfer_cache_ignores_the_square_attack():
    """A run adding 'blackbox' (Square on the runtime) reuses the float model's examples
    of the same run without it; a setting the examples depend on changes the file."""
    from deployq import robustness as R
    bench = _bench()

    def path(**kw):
        cfg = R.Config(**({"strength": "standard", "eps": [0.03], "samples": 300,
                           "sources": ["transfer", "bpda"]} | kw))
        return bench.transfer_file("tc", "lenet-fmnist", cfg)
    white = path()
    assert path(sources=["transfer", "bpda", "blackbox"]) == white
    assert path(samples=200) != white and path(eps=[0.1]) != white
    assert bench.transfer_file(None, "lenet-fmnist", R.Config()) is None


# --- the clean-accuracy constraint (max_clean_drop) ---------------------------------

def _distance(plan) -> int:
    """How far a digits plan is from the uniform 4-bit one: bit steps of every layer's
    weights and activations away from 4, plus one per clipped layer."""
    d = 0
    for s in plan.config.by_name.values():
        d += abs(s.get("weight_bits", 4) - 4) + abs(s.get("activation_bits", 4) - 4)
        d += "weight_clip" in s
    return d


def _trade(self, plan, floor=None):
    """A made-up objective with the trade-off the constraint is for: every step away
    from the uniform plan buys 5 points of robust accuracy and costs 2 of clean."""
    d = _distance(plan)
    clean = 0.9 - 0.02 * d
    if self.min_clean is not None and clean < self.min_clean - 1e-12:
        return RF._excluded(clean, self.rule), {"transfer": None, "gradient": None}
    robust = min(0.3 + 0.05 * d, clean)
    return ({"robust": robust, "clean": clean, "hidden": 0.0, "score": robust},
            {"transfer": None, "gradient": None})


def test_the_clean_constraint_excludes_the_more_robust_less_accurate_plans(
        digits_session, monkeypatch):
    """The rule, on a made-up objective (_trade) so the trade-off is certain: without
    the option a plan with lower clean accuracy wins (negative control); with 1 point
    only the uniform plan itself is admissible and is chosen; with 3 points (one sample
    of 40 may be lost) the chosen plan is one step from uniform."""
    from deployq import plan as P, targets as T
    monkeypatch.setattr(RF.Objective, "measure", _trade)
    monkeypatch.setattr(RF.Objective, "prepare", lambda self: None)
    monkeypatch.setattr(RF.Objective, "clean", lambda self, plan: _trade(self, plan)[0]["clean"])
    tgt, config = T.get("fpga-fixed"), P.PlanConfig(dict(RND))
    layers = S._layers(digits_session.graph, tgt, config, [3, 4, 5], (1.0, 0.5))
    acts = S._act_space(digits_session, tgt, config, S.parse_budget("4bits"))
    space, _ = S._space(digits_session, layers, 4 * sum(l.n for l in layers), acts,
                        "uniform", 0.1, 40)             # the table only: no measurement
    uniform = S.Assignment(S._uniform(layers, space.capacity), S._uniform_acts(space))
    one = S.Assignment(((4, 0.5),) + uniform.weights[1:], uniform.acts)   # one clip
    far = next(a for a in RF.neighbours(space, uniform) if a.acts != uniform.acts)

    def run(drop):
        _, ref = RF.refine(digits_session, tgt, space, [far, one], config, 0.1,
                           samples=40, evals=4, workers=1, max_clean_drop=drop,
                           reference=uniform)
        return ref, {c["assignment"]: c for c in ref["candidates"]}
    ref, by = run(None)
    assert by[ref["chosen"]]["clean"] < 0.9 and ref["chosen"] != RF._label(space, uniform)
    assert "clean_constraint" not in ref and not any("excluded" in c for c in by.values())

    ref, by = run(1)
    con = ref["clean_constraint"]
    assert ref["chosen"] == con["reference"] == RF._label(space, uniform) == "4/4/4/4 a4/4/4"
    assert by[ref["chosen"]]["origin"] == "uniform"
    assert con["reference_clean"] == pytest.approx(0.9) and con["max_clean_drop"] == 1
    excluded = [c for c in by.values() if c.get("excluded")]
    assert excluded and con["excluded"] == len(excluded) == len(by) - 1
    assert all(c["score"] is None and "below the uniform plan's validation clean "
               "accuracy 90.0%" in c["excluded"] for c in excluded)

    ref, by = run(3)
    assert by[ref["chosen"]]["clean"] == pytest.approx(0.88)       # one step away
    assert all(c.get("excluded") for c in by.values() if c["clean"] < 0.875)
    assert not by[RF._label(space, one)].get("excluded")


def test_the_clean_constraint_on_the_real_objective(digits_session):
    """The reference is the uniform plan's clean accuracy through the same mirror on the
    same validation samples; with a drop of 0 the chosen plan is at least as accurate;
    excluded plans skip the attacks."""
    from deployq import targets as T
    fixed = {"min_bits": 8, "clips": (1.0,), "activation_budget": "4bits"}  # acts only
    plan = S.select(digits_session, "fpga-fixed", "8bits", "noise", 0.1, RND, refine=1,
                    refine_options=CHEAP | {"queries": 20}, max_clean_drop=0, **fixed)
    ref = plan.provenance["selection"]["refinement"]
    con, by = ref["clean_constraint"], {c["assignment"]: c for c in ref["candidates"]}
    uniform = S.select(digits_session, "fpga-fixed", "8bits", "uniform", 0.1, RND, **fixed)
    x, y = RF.validation(digits_session.dataset, CHEAP["samples"], digits_session.seed,
                         digits_session.calib_samples)
    clean = RF.Objective(digits_session, T.get("fpga-fixed"), x, y, 0.1).clean(uniform)
    assert con["reference_clean"] == clean and con["reference"] in by
    assert con["excluded"] >= 1                   # a3/5/4 here (seeded)
    assert by[ref["chosen"]]["clean"] >= clean
    for c in by.values():
        assert bool(c.get("excluded")) == (c["clean"] < clean)
        assert not c.get("excluded") or "by" not in c


@pytest.mark.parametrize("value,match", [(-1, "number of points >= 0"),
                                         ("1", "number of points >= 0"),
                                         (True, "number of points >= 0"),
                                         (float("nan"), "number of points >= 0"),
                                         (1, "give --refine K > 0")])
def test_max_clean_drop_is_checked(digits_session, value, match):
    with pytest.raises(InputError, match=match):
        S.select(digits_session, "fpga-fixed", "4bits", max_clean_drop=value)


def test_max_clean_drop_cli_and_config_errors(run_cli, tmp_path):
    for args in (("--refine", "1", "--max-clean-drop", "-1"),
                 ("--refine", "1", "--max-clean-drop", "one"),
                 ("--max-clean-drop", "1")):
        code, _, err = run_cli("-q", "select", "-b", "4bits", *args, "-o", tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "--max-clean-drop" in err and err.startswith("deployq: error:")
    assert not any(tmp_path.iterdir())
    for bad in (-1, "1", float("inf")):
        with pytest.raises(InputError, match="select must be"):
            validate.config({"select": {"budget": "4bits", "refine": 2,
                                        "max_clean_drop": bad}}, "deployq.toml")
    validate.config({"select": {"budget": "4bits", "refine": 2, "max_clean_drop": 1}}, "x")
