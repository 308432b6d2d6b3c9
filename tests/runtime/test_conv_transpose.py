"""ConvTranspose2d (issue 15): a tiny decoder-style model through every installed
target: mcu-int8 equal to LiteRT's reference TRANSPOSE_CONV on every tensor of every
sample, fpga-fixed equal to its NumPy twin and its bit-exact mirror, ONNX Runtime with
its float islands named, paddings TFLite cannot express refused at capture, and a
negative control that shows the comparison can fail."""
import numpy as np
import pytest
import torch
from torch import nn

from deployq import backends, graph as G, targets as T
from deployq import fixedpoint as FX
from deployq.backends import fpga
from deployq.errors import UnsupportedOpError
from deployq.fxmirror import FxMirror
from tests.conftest import randomized
from tests.runtime.test_struct_ops import _plan

SHAPE = (3, 8, 8)


class Decoder(nn.Module):
    """Every padding rule: kernel 4 stride 2 padding 1 (TFLite SAME) with ReLU fused,
    kernel 2 stride 2 (VALID), kernel 3 stride 2 with output_padding 1 (VALID, a last
    row only the bias reaches), and an asymmetric stride-1 kernel (SAME)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up1 = nn.ConvTranspose2d(4, 5, 4, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.up2 = nn.ConvTranspose2d(5, 3, 2, stride=2)
        self.up3 = nn.ConvTranspose2d(3, 4, 3, stride=2, output_padding=1, bias=False)
        self.flat = nn.ConvTranspose2d(4, 3, (3, 1), padding=(1, 0))
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.up1(torch.relu(self.conv(x)))))
        y = self.up3(self.up2(y))
        return self.fc(torch.relu(self.flat(y)).mean((2, 3)))


def _graph(seed=0):
    return G.capture(randomized(Decoder(), seed), SHAPE)


def _x(n, seed):
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


def test_capture_matches_pytorch_and_refuses_other_paddings():
    model = randomized(Decoder(), 0).eval()
    graph = G.capture(model, SHAPE)
    assert [n.op for n in graph.nodes].count("conv_transpose") == 4
    x = torch.from_numpy(_x(4, 0))
    torch.testing.assert_close(G.run(graph, x)["output"], model(x), rtol=1e-4, atol=1e-5)
    bad = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ConvTranspose2d(4, 4, 3, 2, 1, 1))
    with pytest.raises(UnsupportedOpError, match="ConvTranspose2d with padding.*layer '1'"):
        G.capture(bad, SHAPE)
    with pytest.raises(UnsupportedOpError, match="groups"):
        G.capture(nn.ConvTranspose2d(3, 3, 2, 2, groups=3), SHAPE)


@pytest.fixture(scope="module")
def mcu_export(tmp_path_factory):
    """One mcu-int8 export (the converter's .tflite and the C runtime's model) shared
    by the tests that read it: (graph, plan, directory, artifact path)."""
    pytest.importorskip("ai_edge_litert")
    from deployq.backends import mcu
    graph, out = _graph(), tmp_path_factory.mktemp("mcu")
    target = T.get("mcu-int8")
    x = _x(64, 0)
    path, plan = mcu.export(graph, _plan(graph, x, target), target, out, x)
    return graph, plan, out, path


def _mcu_vs_reference(out, path, x):
    from deployq import diff
    from deployq.backends import mcu, tflite
    runners = [tflite.Runner(out / "model.tflite", "reference"), mcu.load(path)]
    return diff._compare(runners, x)


def test_mcu_equals_litert_reference_on_every_tensor(mcu_export):
    graph, _, out, path = mcu_export
    rows = _mcu_vs_reference(out, path, _x(50, 0))
    computed = {n.name for n in graph.nodes if n.op != "reshape"}
    assert computed <= {r["layer"] for r in rows}
    assert all(r["different"] == 0 for r in rows), [r for r in rows if r["different"]]


def test_negative_control_a_crop_one_off_is_caught(mcu_export, tmp_path, monkeypatch):
    """The comparison fails when the C op's leading crop is off by one."""
    import shutil
    from deployq.backends import mcu
    _, _, out, path = mcu_export
    original = mcu.OPS["TRANSPOSE_CONV"]

    def shifted(r, op):
        original(r, op)
        r.ops[-1].params["pad_top"] += 1
    monkeypatch.setitem(mcu.OPS, "TRANSPOSE_CONV", shifted)
    shutil.copytree(out, tmp_path / "skewed")
    blob, _ = mcu.from_tflite((out / "model.tflite").read_bytes())
    (tmp_path / "skewed" / path.name).write_bytes(blob)
    rows = _mcu_vs_reference(tmp_path / "skewed", tmp_path / "skewed" / path.name, _x(10, 0))
    assert any(r["different"] for r in rows if r["layer"].startswith("up"))


@pytest.mark.parametrize("options", [{}, {"acc_bits": 12, "acc_overflow": "sat"}])
def test_fpga_equals_numpy_twin_and_mirror(tmp_path, options):
    graph = _graph()
    x = _x(60, 1)
    target = T.get("fpga-fixed")
    target.options = dict(target.options, **options)
    path, plan = fpga.export(graph, _plan(graph, x[:50], target), target, tmp_path)
    c_out = backends.codes(fpga.load(path), x).reshape(len(x), -1)
    fx = fpga.lower(graph, plan, target)
    twin = FX.run_int(fx, FX.quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant))
    np.testing.assert_array_equal(c_out, twin.reshape(len(x), -1))
    np.testing.assert_array_equal(FxMirror(fx).run_int(x).reshape(len(x), -1), c_out)


def test_onnx_runs_and_names_float_islands(tmp_path):
    from deployq.backends import onnx as O
    graph = _graph()
    x = _x(50, 2)
    target = T.get("onnx-int8")
    path, plan = O.export(graph, _plan(graph, x, target), target, tmp_path)
    islands = plan.provenance.get("onnx_float_islands", [])
    assert O.float_islands(path) == islands
    ops = O.kernels(path)      # ORT has no integer ConvTranspose: each one is named
    assert ops["ConvTranspose"] == sum(i["op"] == "ConvTranspose" for i in islands)
    assert O.kernels(path)["QLinearConv"] >= 1
    logits = O.load(path).run(x)
    ref = G.run(graph, torch.from_numpy(x))["output"].numpy()
    assert np.corrcoef(logits.ravel(), ref.ravel())[0, 1] > 0.95


def test_int8_bounds_are_the_runtime_at_points_and_contain_it_on_boxes(mcu_export):
    from deployq import api, certification as C
    from deployq.backends import mcu
    from tests.test_certify import _box_check
    graph, plan, _, path = mcu_export
    target = T.get("mcu-int8")
    sem = C.semantics(api.Exported(target, path, plan), graph, mcu.load(path, target))
    x = _x(40, 3)
    exact, inside = _box_check(sem, x, 0.05)
    assert exact and inside.all()


@pytest.mark.parametrize("options", [
    {}, {"acc_bits": 12, "acc_overflow": "sat", "out_overflow": "sat"}])
def test_fx_bounds_are_the_runtime_at_points_and_contain_it_on_boxes(tmp_path, options):
    from tests.test_certify import _box_check, _semantics, _target
    graph = _graph()
    x = _x(40, 3)
    sem = _semantics(graph, x, _target("fpga-fixed", **options), tmp_path)
    exact, inside = _box_check(sem, x, 0.05)
    assert exact and inside.all()


def test_float_bounds_contain_the_float_model():
    from deployq import ibp
    graph = _graph()
    x = _x(8, 4)
    lo, hi = ibp.float_bounds(graph, np.clip(x - 0.05, 0, 1), np.clip(x + 0.05, 0, 1))
    for k in range(5):
        pt = np.clip(x + np.random.default_rng(k).uniform(-0.05, 0.05, x.shape), 0, 1)
        y = G.run(graph, torch.from_numpy(pt.astype(np.float32)))["output"].numpy()
        assert (lo - 1e-5 <= y).all() and (y <= hi + 1e-5).all()


def test_tflite_xnnpack_and_reference_and_the_mirror_follow_the_float_model(mcu_export):
    """The export's .tflite on LiteRT's XNNPACK and reference kernels (what tflite-int8
    and tflite-int8-ref run), and the plan-grid mirror (BPDA) of it."""
    from deployq import mirror
    from deployq.backends import tflite
    graph, plan, out, _ = mcu_export
    x = _x(100, 5)
    ref = G.run(graph, torch.from_numpy(x))["output"].numpy().argmax(1)
    reference = tflite.Runner(out / "model.tflite", "reference").run(x)
    for runner in (tflite.Runner(out / "model.tflite", "xnnpack"),
                   tflite.Runner(out / "model.tflite", "reference")):
        assert (runner.run(x).argmax(1) == ref).mean() >= 0.9
    logits = mirror.build(T.get("tflite-int8"), graph, plan).logits(x)
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.9


def test_emulated_cortex_m_equals_the_host_runtime(mcu_export, tmp_path):
    """mcu-qemu: the same model file on the emulated Cortex-M gives the host's codes."""
    from deployq import cproject
    from deployq.backends import mcu
    if cproject.missing_tools():
        pytest.skip("the Arm toolchain or qemu is not installed")
    _, _, _, path = mcu_export
    x = _x(8, 6)
    host = backends.codes(mcu.Runner(path, "ref"), x)
    project = mcu.c_project(path, tmp_path / "ref", x, "ref")
    cproject.build(project, extra_cflags="-Werror")
    np.testing.assert_array_equal(cproject.run_test(project)["outputs"], host)
