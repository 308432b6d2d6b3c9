"""fpga-fixed against the real hls4ml (1.3.0, Vivado backend, io_parallel): the project
deployq.hls4ml_export writes is compiled by hls4ml (g++ on Xilinx's ap_fixed headers)
and its C simulation traced on the digits test split; every traced layer and every
output must equal deployq's integers (the NumPy twin, equal to the C runtime), bit for
bit. A negative control flips one layer's rounding mode on deployq's side: agreement
must drop, so the comparison can fail.

Each case compiles one hls4ml project (14-68 s on 2 cores), so CI runs three; the full
sweep (2 models x trn/rnd/rnd_conv x wrap/sat x 8/4 bits) is tools/hls4ml_sweep.py,
its figures in docs/fpga-fixed.md."""
import dataclasses
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from deployq import api, calibrate, fixedpoint as FX, graph as G, plan as P
from deployq import hls4ml_export as H
from deployq import targets as T
from deployq.backends import fpga
from deployq.errors import ExportError

needs_hls4ml = pytest.mark.skipif(
    importlib.util.find_spec("hls4ml") is None or shutil.which("g++") is None,
    reason="needs hls4ml (pip install 'deployq[hls4ml]') and g++")


class AvgNet(nn.Module):
    """A LeNet-sized CNN with a 3x3 average pool of signed values (divisor 9: not a
    power of two; negative sums are where division and reciprocal differ), a ReLU
    after it, and a flatten of a 2x2 map (where the summation order can matter)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.pool1 = nn.AvgPool2d(3, stride=1)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2)
        self.fc = nn.Linear(12 * 2 * 2, 10)

    def forward(self, x):
        x = torch.relu(self.pool1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


def avgnet():
    torch.manual_seed(0)
    return AvgNet().eval()


def session_of(model: str):
    """(graph, calibration stats, test inputs) of 'lenet' (zoo:lenet-digits) or 'avgnet'."""
    if model == "lenet":
        s = api.open_session("zoo:lenet-digits")
        return s.graph, s.stats, s.dataset.test()[0]
    s = api.open_session("zoo:lenet-digits")            # for the digits data
    x_train, x_test = s.dataset.calibration(s.calib_samples), s.dataset.test()[0]
    graph = G.capture(avgnet(), x_test.shape[1:])
    return graph, calibrate.collect(graph, x_train), x_test


def lowered(graph, stats, bits, rounding, acc_overflow, acc_bits, granularity):
    target = T.get("fpga-fixed")
    target.options = dict(target.options, acc_overflow=acc_overflow, acc_bits=acc_bits)
    cfg = P.PlanConfig(default={"weight_bits": bits, "activation_bits": bits,
                                "rounding": rounding, "granularity": granularity})
    plan = P.make(graph, stats, target, cfg)
    return fpga.lower(graph, plan, target), plan, target


def run_case(tmp_path, model, bits, rounding, acc_overflow, acc_bits, granularity):
    """(agreement with deployq, agreement with a flipped rounding mode, overflow rate,
    hls4ml outputs, deployq's fx) for one configuration."""
    graph, stats, x = session_of(model)
    fx, plan, target = lowered(graph, stats, bits, rounding, acc_overflow, acc_bits,
                               granularity)
    q = FX.quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant)
    got = H.simulate(H.convert(fx, tmp_path / "prj"), fx, q)
    return H.agreement(got, H.expected(fx, q)), H.agreement(got, H.expected(flip(fx), q)), \
        got, fx, (graph, plan, target, x)


def flip(fx):
    """The negative control: the first conv's rounding mode changed (trn <-> rnd)."""
    first = next(n for n in fx.graph.nodes if n.op == "conv2d").name
    layers = dict(fx.layers)
    old = layers[first]
    layers[first] = dataclasses.replace(old, quant="rnd" if old.quant == "trn" else "trn")
    return dataclasses.replace(fx, layers=layers)


CASES = [  # model, bits, rounding, acc_overflow, acc_bits, granularity
    ("lenet", 8, "rnd", "sat", 12, "per-tensor"),    # products and sums saturate
    ("avgnet", 4, "trn", "wrap", 10, "per-tensor"),  # pool: ap_fixed division
    ("avgnet", 8, "rnd_conv", "sat", 32, "per-channel"),
]


@needs_hls4ml
@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_bit_identical_with_hls4ml_csim(tmp_path, case):
    ok, flipped, got, fx, (graph, plan, target, x) = run_case(tmp_path, *case)
    traced = {k for k in got if k != "output"}
    assert len(traced) >= len([n for n in fx.graph.nodes if n.op != "reshape"]), traced
    assert all(v == 1.0 for v in ok.values()), ok
    assert flipped["all_elements"] < 1.0 and flipped["output"] < 1.0, flipped
    # ... and the C runtime's outputs are hls4ml's too
    path, _ = fpga.export(graph, plan, target, tmp_path / "c")
    runner = fpga.load(path)
    np.testing.assert_array_equal(runner.run_codes(runner.quantize(x)), got["output"])


def test_unmappable_layers_named_in_one_error():
    s = api.open_session("zoo:dsnet-digits")
    target = T.get("fpga-fixed")
    fx = fpga.lower(s.graph, P.make(s.graph, s.stats, target), target)
    with pytest.raises(ExportError) as e:
        H.check(fx)
    msg = str(e.value)
    for why in ("grouped/depthwise", "ReLU6", "AdaptiveAvgPool2d", "add"):
        assert why in msg, msg
    for layer in ("stem.0", "block.dw", "block.add", "down.0", "down.3", "pool"):
        assert f"'{layer}'" in msg, msg


def test_per_channel_narrow_accumulator_refused():
    graph, stats, _ = session_of("lenet")
    fx, _, _ = lowered(graph, stats, 8, "trn", "wrap", 12, "per-channel")
    with pytest.raises(ExportError, match="per-channel weight scales"):
        H.check(fx)


def test_types_follow_the_plan():
    graph, stats, _ = session_of("lenet")
    fx, _, _ = lowered(graph, stats, 4, "rnd_conv", "sat", 16, "per-tensor")
    types = H.layer_types(fx)
    conv = fx.layers["features.0"]
    assert types["features_0"]["result"] == \
        f"ap_fixed<4,{4 - conv.frac},AP_RND_CONV,AP_SAT>"
    f_acc = fx.input_frac + int(conv.extra["f_w"][0])
    assert types["features_0"]["accum"] == f"ap_fixed<16,{16 - f_acc},AP_TRN,AP_SAT>"
    assert types["features_0_relu"] == {"result": types["features_0"]["result"]}
    assert types["x"]["result"].endswith("AP_SAT>")


@needs_hls4ml
def test_cli_writes_the_hls4ml_project(run_cli, tmp_path):
    code, out, err = run_cli("export", "-t", "fpga-fixed", "-o", tmp_path / "out",
                             "--hls4ml", tmp_path / "h")
    assert code == 0, err
    meta = json.loads((tmp_path / "h" / H.CONFIG).read_text())
    assert meta["types"]["features_0"]["accum"].startswith("ap_fixed<32,")
    firmware = tmp_path / "h" / H.PROJECT / "firmware"
    assert (firmware / "deployq.cpp").is_file() and (firmware / "parameters.h").is_file()
    assert "AP_RND_CONV,AP_SAT" in (firmware / "defines.h").read_text()   # default rounding
    assert out.splitlines()[-1] == str(tmp_path / "h" / H.PROJECT)


@pytest.mark.parametrize("args, message", [
    (["-t", "onnx-int8"], "needs an fpga target"),
    (["-t", "fpga-fixed", "--model", "zoo:dsnet-digits"], "hls4ml cannot take")])
def test_cli_refuses_with_one_line_and_writes_nothing(run_cli, tmp_path, args, message):
    if "fpga-fixed" in args and importlib.util.find_spec("hls4ml") is None:
        message = "pip install"
    code, out, err = run_cli("export", *args, "-o", tmp_path / "out", "--hls4ml",
                             tmp_path / "h")
    assert code == 2 and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "h").exists()
