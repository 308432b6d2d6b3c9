"""Structural ops (issue 15): elementwise and broadcast MUL, arithmetic with constants.
Per op a tiny model through every installed target: mcu-int8 equal to LiteRT's
reference kernels on every tensor of every sample (deployq.diff's comparison),
fpga-fixed equal to its NumPy twin and to its bit-exact mirror, ONNX integer kernels
with the float islands named, and negative controls that show the checks can fail."""
import random

import numpy as np
import pytest
import torch
from torch import nn

from deployq import backends, calibrate, diff, fixedpoint as FX, graph as G, plan as P
from deployq import targets as T
from deployq.backends import fpga
from deployq.fxmirror import FxMirror
from tests.conftest import randomized

SHAPE = (3, 8, 8)


class SE(nn.Module):
    """Squeeze-and-excitation: a (C, 1, 1) gate times the (C, H, W) map, then an
    elementwise square, arithmetic with numbers and a per-channel constant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.squeeze = nn.Linear(6, 3)
        self.excite = nn.Linear(3, 6)
        self.register_buffer("k", torch.linspace(-1.0, 2.0, 6).reshape(1, 6, 1, 1))
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = torch.relu(self.conv((x - 0.5) / 0.25))
        g = nn.functional.relu6(self.excite(torch.relu(self.squeeze(y.mean((2, 3))))) + 3) / 6
        y = y * g.view(-1, 6, 1, 1)
        y = y * self.k + 1.0
        y = torch.relu(2.0 - y * y)
        return self.fc(y.mean((2, 3)))


MODELS = {"mul": SE}


def _plan(graph, x, target, **settings):
    cfg = P.PlanConfig(default=settings)
    return P.make(graph, calibrate.collect(graph, x), target, cfg)


def _graph(name, seed=0):
    return G.capture(randomized(MODELS[name](), seed), SHAPE)


def _mcu_vs_reference(graph, x, tmp_path):
    """deployq.diff's per-tensor rows of mcu-int8 against tflite-int8-ref."""
    pytest.importorskip("ai_edge_litert")
    from deployq.backends import mcu, tflite
    target = T.get("mcu-int8")
    path, _ = mcu.export(graph, _plan(graph, x[:64], target), target, tmp_path, x[:64])
    runners = [tflite.Runner(tmp_path / "model.tflite", "reference"), mcu.load(path)]
    return diff._compare(runners, x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_mcu_equals_litert_reference_on_every_tensor(tmp_path, name):
    graph = _graph(name)
    x = np.random.default_rng(0).random((100, *SHAPE), dtype=np.float32)
    rows = _mcu_vs_reference(graph, x, tmp_path)
    computed = {n.name for n in graph.nodes if n.op != "reshape"}   # reshapes fold away
    assert computed <= {r["layer"] for r in rows}
    assert all(r["different"] == 0 for r in rows), [r for r in rows if r["different"]]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fpga_equals_numpy_twin_and_mirror(tmp_path, name):
    graph = _graph(name)
    x = np.random.default_rng(1).random((100, *SHAPE), dtype=np.float32)
    target = T.get("fpga-fixed")
    plan = _plan(graph, x[:50], target)
    path, plan = fpga.export(graph, plan, target, tmp_path)
    c_out = backends.codes(fpga.load(path), x).reshape(len(x), -1)
    fx = fpga.lower(graph, plan, target)
    twin = FX.run_int(fx, FX.quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant))
    np.testing.assert_array_equal(c_out, twin.reshape(len(x), -1))
    np.testing.assert_array_equal(FxMirror(fx).run_int(x).reshape(len(x), -1), c_out)


def test_negative_control_a_mul_one_lsb_off_is_caught(tmp_path, monkeypatch):
    """The comparison fails when the C MUL's multiplier is off by a little."""
    from deployq.backends import mcu
    original = mcu.OPS["MUL"]

    def skewed(r, op):
        original(r, op)
        r.ops[-1].params["multiplier"] = int(r.ops[-1].params["multiplier"] * 1.01)
    monkeypatch.setitem(mcu.OPS, "MUL", skewed)
    x = np.random.default_rng(0).random((20, *SHAPE), dtype=np.float32)
    rows = _mcu_vs_reference(_graph("mul"), x, tmp_path)
    assert any(r["different"] for r in rows if r["layer"].startswith("mul"))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_runs_convs_in_integers_and_names_float_islands(tmp_path, name):
    from deployq.backends import onnx as O
    graph = _graph(name)
    x = np.random.default_rng(2).random((50, *SHAPE), dtype=np.float32)
    target = T.get("onnx-int8")
    path, plan = O.export(graph, _plan(graph, x, target), target, tmp_path)
    ops = O.kernels(path)
    assert not set(ops) & O.FLOAT_COMPUTE and ops["QLinearConv"] >= 1
    islands = plan.provenance.get("onnx_float_islands", [])
    assert all(i["layer"] in {n.name for n in graph.nodes} for i in islands)
    assert O.float_islands(path) == islands
