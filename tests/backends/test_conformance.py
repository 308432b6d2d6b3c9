"""Every installed backend through the one Runner protocol (deployq/backends/__init__.py):
the same checks on each built-in target, on its real runtime. A backend whose packages
or tools are missing is skipped with the reason backends.get gives."""
import inspect
import json

import numpy as np
import pytest

from deployq import api, backends, targets as T
from deployq.errors import TargetError

TARGETS = sorted(T.all_targets())
N = 40


@pytest.fixture(scope="module")
def exports(digits_session, tmp_path_factory):
    return {}


def _exported(name, digits_session, exports, tmp_path_factory):
    """The target exported once per module (or skipped when its backend is absent)."""
    if name not in exports:
        try:
            backends.get(T.get(name).backend)
        except TargetError as e:
            pytest.skip(str(e))
        out = tmp_path_factory.mktemp("conformance")
        exports[name] = api.export(name, digits_session, out)
    return exports[name]


@pytest.fixture(params=TARGETS)
def case(request, digits_session, exports, tmp_path_factory):
    ex = _exported(request.param, digits_session, exports, tmp_path_factory)
    x, y = digits_session.dataset.test(N)
    return ex, backends.get(ex.target.backend), api.load_runner(ex), x, y, digits_session


def test_module_declares_exactly_what_it_has(case):
    ex, module, runner, *_ = case
    assert module.CAPABILITIES <= set(backends.RUNNER_CAPABILITIES + backends.HOOKS)
    assert ex.path.name == module.ARTIFACT
    assert list(inspect.signature(module.load).parameters) == ["path", "target", "threads"]
    for hook in backends.HOOKS:
        assert callable(vars(module).get(hook)) == (hook in module.CAPABILITIES), hook
    cls = type(runner)
    assert hasattr(cls, "dump") == hasattr(cls, "layer_of") == ("dump" in module.CAPABILITIES)
    assert (hasattr(cls, "layer_times") == hasattr(cls, "LAYER_TIMER")
            == ("layer_times" in module.CAPABILITIES))


def test_runner_follows_the_protocol(case):
    ex, module, runner, x, y, session = case
    assert isinstance(runner, backends.Runner)
    q = runner.quantize(x)
    assert q.shape == x.shape and np.issubdtype(q.dtype, np.integer)
    assert runner.input_qp.qmin <= q.min() and q.max() <= runner.input_qp.qmax
    codes = runner.run_codes(q)
    n_classes = session.graph.node(session.graph.output).shape[0]
    assert codes.shape == (N, n_classes) and np.issubdtype(codes.dtype, np.integer)
    assert runner.output_qp.qmin <= codes.min() and codes.max() <= runner.output_qp.qmax
    logits = runner.run(x)
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits, runner.output_qp.dequantize(codes))
    assert (logits.argmax(1) == y).mean() > 0.8


def test_run_codes_depends_on_its_input(case):
    """Negative control for the identity above: other codes give other outputs."""
    _, _, runner, x, *_ = case
    q = runner.quantize(x)
    assert not np.array_equal(runner.run_codes(q[::-1]), runner.run_codes(q))


def test_grids_are_the_plans(case):
    """The runner reads its grids from its own artifact; they are the exported plan's."""
    ex, _, runner, _, _, session = case
    assert runner.input_qp.to_json() == ex.plan.input.to_json()
    assert runner.output_qp.to_json() == ex.plan.tensor(session.graph.output).to_json()


def test_threads_are_accepted(case):
    ex, module, _, x, *_ = case
    runner = module.load(ex.path, ex.target, threads=2)
    np.testing.assert_array_equal(runner.run(x[:4]), api.load_runner(ex).run(x[:4]))


def test_dump_names_every_layer(case):
    _, module, runner, x, _, session = case
    if not backends.supports(module, "dump"):
        pytest.skip("no dump capability")
    tensors = runner.dump(x[0])
    assert tensors and all(np.issubdtype(v.dtype, np.integer) for v in tensors.values())
    layers = {runner.layer_of(name) for name in tensors}
    weighted = {n.name for n in session.graph.nodes if n.weight is not None}
    assert weighted <= layers and "input" in layers
    out = runner.run_codes(runner.quantize(x[:1]))[0]
    assert any(np.array_equal(v, out.reshape(-1)) for v in tensors.values())


def test_layer_times(case):
    _, module, runner, x, _, session = case
    if not backends.supports(module, "layer_times"):
        pytest.skip("no layer_times capability")
    rows = runner.layer_times(x, 3)
    assert rows and isinstance(runner.LAYER_TIMER, str)
    assert [r["us_per_run"] for r in rows] == sorted((r["us_per_run"] for r in rows),
                                                    reverse=True)
    assert all(set(r) == {"node", "op", "us_per_run"} for r in rows)


def test_extras_are_json(case):
    ex, module, *_ = case
    extras = backends.extras(module, ex.path.parent)
    assert json.loads(json.dumps(extras)) == extras
    assert bool(extras) == backends.supports(module, "extras")


def test_unknown_capability_is_refused():
    with pytest.raises(ValueError, match="unknown capability"):
        backends.supports(backends, "teleport")
