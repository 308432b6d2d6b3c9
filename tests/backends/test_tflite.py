"""TFLite int8 backend: plan parameters land bit-exactly in the .tflite, converter
calibration is read back, accuracy on LiteRT (XNNPACK and reference kernels), agreement
with ONNX Runtime, no TensorFlow import outside export, unsupported ops refused."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tensorflow", reason="tensorflow (the TFLite converter) not installed")
pytest.importorskip("ai_edge_litert", reason="ai-edge-litert (LiteRT) not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed")

from deployq import api, calibrate, graph as G, plan as P, targets as T  # noqa: E402
from deployq.backends import onnx as onnx_backend, tfgraph, tflite  # noqa: E402
from deployq.errors import ExportError, UnsupportedOpError  # noqa: E402
from tests.conftest import ALL_OPS_SHAPE, AllOps, randomized  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# measured: AllOps (64 random inputs), TFLite XNNPACK vs ONNX Runtime, same plan: max 1 LSB
# (different requantization rounding per kernel; see docs/tflite.md)
ALL_OPS_MAX_LSB = 1


# --- shared exports ------------------------------------------------------------------

@pytest.fixture(scope="module")
def all_ops_case(tmp_path_factory):
    """AllOps exported to tflite-int8 and onnx-int8 from the same statistics."""
    g = G.capture(randomized(AllOps()), ALL_OPS_SHAPE)
    x = np.random.default_rng(0).random((64, *ALL_OPS_SHAPE), dtype=np.float32)
    stats = calibrate.collect(g, x)
    out = tmp_path_factory.mktemp("allops")
    tgt, otgt = T.get("tflite-int8"), T.get("onnx-int8")
    plan = P.make(g, stats, tgt)
    path, carried = tflite.export(g, plan, tgt, out / "tflite", x)
    oplan = P.make(g, stats, otgt)
    opath, _ = onnx_backend.export(g, oplan, otgt, out / "onnx", x)
    return dict(graph=g, x=x, stats=stats, plan=plan, carried=carried, path=path,
                oplan=oplan, opath=opath)


@pytest.fixture(scope="module")
def zoo_exports(tmp_path_factory):
    """zoo model -> mode -> api.Exported (tflite-int8); the -ref target runs the same file."""
    out = tmp_path_factory.mktemp("zoo")
    result = {}
    for model in ("zoo:lenet-digits", "zoo:dsnet-digits"):
        session = api.open_session(model)
        result[model] = (session, {
            "plan": api.export("tflite-int8", session, out / model[4:] / "plan"),
            "converter": api.export("tflite-int8", session, out / model[4:] / "conv",
                                    calibration="converter")})
    return result


# --- 1. plan mode: the file holds exactly the plan ---------------------------------

def _same(a: P.QParams, b: P.QParams) -> bool:
    return (a.axis == b.axis and np.array_equal(a.scale.astype(np.float32).view(np.uint32),
                                                b.scale.astype(np.float32).view(np.uint32))
            and np.array_equal(a.zero_point, b.zero_point))


def test_plan_mode_parameters_are_bit_exact_in_the_file(all_ops_case):
    g, plan = all_ops_case["graph"], all_ops_case["plan"]
    assert all_ops_case["carried"] is plan
    got = tflite.read(all_ops_case["path"], g)
    for name in [G.INPUT] + [n.name for n in g.nodes]:
        assert _same(got.activations[name], plan.tensor(name)), name
    for n in g.nodes:
        if n.op in G.WEIGHTED:
            w = plan.layers[n.name].weight
            assert _same(got.weights[n.name], w), n.name
            # expected exact: weights are fed on the plan's grid, so no tie can differ
            np.testing.assert_array_equal(got.int_weights[n.name], w.quantize(n.weight))
            bscale = np.broadcast_to(plan.bias_scale(n.name, n.inputs[0]), n.bias.shape)
            np.testing.assert_array_equal(got.int_biases[n.name],
                                          P.quantized_bias(n.bias, bscale))


def test_no_float_op_and_expected_kernels(all_ops_case):
    got = tflite.read(all_ops_case["path"], all_ops_case["graph"])
    got.check_integer()
    names = {op for op, *_ in got.ops}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "ADD",
            "CONCATENATION", "MEAN"} <= names
    assert not names & {"QUANTIZE", "DEQUANTIZE", "FULLY_CONNECTED"}


def test_runner_output_requantizes_to_the_int8_codes(all_ops_case):
    g, plan, x = all_ops_case["graph"], all_ops_case["plan"], all_ops_case["x"]
    runner = tflite.load(all_ops_case["path"], T.get("tflite-int8"))
    codes = runner.run_codes(tflite.quantize_input(x, plan.input))
    logits = runner.run(x)
    assert logits.dtype == np.float32 and logits.shape == (len(x), 5)
    np.testing.assert_array_equal(plan.tensor(g.output).quantize(logits), codes)


# --- input rounding, established against LiteRT's own QUANTIZE op -----------------

def _quantize_model(scale: float, zp: int) -> bytes:
    tf = tfgraph._tensorflow()
    lo, hi = tfgraph.fake_quant_range(np.float32(scale), zp, -128, 127)
    fn = tf.function(lambda x: tf.nn.max_pool2d(
        tf.quantization.fake_quant_with_min_max_vars(x, float(lo), float(hi)), 1, 1, "VALID"),
        input_signature=[tf.TensorSpec([None, 4, 4, 1], tf.float32)], autograph=False)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.inference_output_type = tf.int8
    return conv.convert()


@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs")
@pytest.mark.parametrize("scale,zp", [(2.0 ** -7, -3), (0.0123, 5)])
def test_quantize_input_matches_litert_quantize_op(scale, zp):
    from ai_edge_litert.interpreter import Interpreter
    model = _quantize_model(scale, zp)
    s = np.float32(scale)
    ties = ((np.arange(-140, 140) + 0.5) * s).astype(np.float32)
    vals = np.concatenate([ties, np.random.default_rng(1).uniform(-2, 2, 4000)
                           .astype(np.float32)])
    vals = np.concatenate([vals, np.nextafter(vals, np.float32(9)),
                           np.nextafter(vals, np.float32(-9))])
    vals = vals[: len(vals) // 16 * 16]
    qp = P.QParams(8, np.array([s]), np.array([zp]))
    for kernels, resolver in tflite.KERNELS.items():
        it = Interpreter(model_content=model, experimental_op_resolver_type=resolver)
        inp = it.get_input_details()[0]["index"]
        it.resize_tensor_input(inp, (len(vals) // 16, 4, 4, 1))
        it.allocate_tensors()
        it.set_tensor(inp, vals.reshape(-1, 4, 4, 1))
        it.invoke()
        got = it.get_tensor(it.get_output_details()[0]["index"]).reshape(-1)
        np.testing.assert_array_equal(got, tflite.quantize_input(vals, qp, kernels),
                                      err_msg=kernels)


# --- 2. converter mode ---------------------------------------------------------------

def test_converter_mode_plan_is_read_back(zoo_exports):
    session, exports = zoo_exports["zoo:lenet-digits"]
    exported = exports["converter"]
    g, plan = session.graph, exported.plan
    minmax = P.make(g, session.stats, T.get("tflite-int8"))
    assert plan.provenance["calibrated_by"] == "tflite-converter"
    assert plan.provenance["model"] == "zoo:lenet-digits"
    assert P.QuantPlan.load(exported.path.parent / "plan.json").to_json() == plan.to_json()
    got = tflite.read(exported.path, g)
    differs = 0
    for name in [G.INPUT] + [n.name for n in g.nodes]:
        assert _same(got.activations[name], plan.tensor(name)), name
        differs += not _same(plan.tensor(name), minmax.tensor(name))
    for n in g.nodes:
        if n.op in G.WEIGHTED:
            assert _same(got.weights[n.name], plan.layers[n.name].weight), n.name
    assert differs > 0


# --- 3. zoo accuracy on both targets, both modes -------------------------------------

@pytest.mark.parametrize("model", ["zoo:lenet-digits", "zoo:dsnet-digits"])
@pytest.mark.parametrize("mode", ["plan", "converter"])
def test_zoo_accuracy_within_one_point_of_float(zoo_exports, model, mode):
    session, exports = zoo_exports[model]
    exported = exports[mode]
    x, y = session.dataset.test()
    float_acc = (session.model.logits(x).argmax(1) == y).mean()
    tflite.read(exported.path, session.graph).check_integer()
    for target in ("tflite-int8", "tflite-int8-ref"):
        runner = tflite.load(exported.path, T.get(target))
        acc = (runner.run(x).argmax(1) == y).mean()
        assert abs(acc - float_acc) <= 0.01, (target, acc, float_acc)


def test_reference_target_exports_through_the_api(tmp_path):
    session = api.open_session("zoo:lenet-digits", calib_samples=64)
    exported = api.export("tflite-int8-ref", session, tmp_path)
    assert exported.path == tmp_path / "tflite-int8-ref" / "model.tflite"
    assert exported.plan.layers[session.graph.output].settings["rounding"] == "half_away"
    x, _ = session.dataset.test(200)
    logits = api.load_runner(exported).run(x)
    assert logits.shape == (200, 10)


# --- 4./5. agreement with ONNX Runtime ------------------------------------------------

def test_all_ops_logits_agree_with_onnx_runtime(all_ops_case):
    g, plan, x = all_ops_case["graph"], all_ops_case["plan"], all_ops_case["x"]
    assert all_ops_case["oplan"].to_json() == plan.to_json() | {"target": "onnx-int8"}
    t = tflite.load(all_ops_case["path"], T.get("tflite-int8")).run(x)
    o = onnx_backend.load(all_ops_case["opath"]).run(x)
    qp = plan.tensor(g.output)
    lsb = np.abs(qp.quantize(t) - qp.quantize(o))
    assert lsb.max() <= ALL_OPS_MAX_LSB
    assert (t.argmax(1) == o.argmax(1)).mean() >= 0.95


def test_onnx_and_tflite_hold_identical_weights_and_scales(all_ops_case):
    import onnx
    from onnx import numpy_helper
    g = all_ops_case["graph"]
    inits = {i.name: numpy_helper.to_array(i)
             for i in onnx.load(all_ops_case["opath"]).graph.initializer}
    got = tflite.read(all_ops_case["path"], g)
    for n in g.nodes:
        if n.op in G.WEIGHTED:
            # ONNX may store the int8 grid as uint8 with zero point 128: compare q - zp
            zp = inits[f"{n.name}.weight:zp"].astype(np.int64)
            zp = zp.reshape(-1, *[1] * (n.weight.ndim - 1)) if zp.ndim else zp
            np.testing.assert_array_equal(inits[f"{n.name}.weight:q"].astype(np.int64) - zp,
                                          got.int_weights[n.name])
            oscale = np.atleast_1d(inits[f"{n.name}.weight:scale"]).astype(np.float32)
            assert np.array_equal(oscale.view(np.uint32),
                                  got.weights[n.name].scale.view(np.uint32)), n.name
    for name in [G.INPUT] + [n.name for n in g.nodes]:
        key = "logits" if name == g.output else f"{name}:dq"
        assert np.float32(inits[f"{key}:scale"]) == got.activations[name].scale[0], name
        assert (int(inits[f"{key}:zp"]) - onnx_backend.U8_SHIFT
                == got.activations[name].zero_point[0]), name


# --- 6. TensorFlow stays out of every other path ------------------------------------

def test_tensorflow_is_imported_only_by_tflite_export(tmp_path):
    script = textwrap.dedent(f"""
        import runpy, sys
        for argv in (["--help"], ["targets"],
                     ["-q", "export", "-t", "onnx-int8", "-o", {str(tmp_path)!r}]):
            sys.argv = ["deployq", *argv]
            try:
                runpy.run_module("deployq", run_name="__main__")
            except SystemExit as e:
                assert e.code in (0, None), (argv, e.code)
        print("tensorflow" in sys.modules)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
    assert (tmp_path / "onnx-int8" / "model.onnx").is_file()


# --- 7. ops TFLite int8 cannot run ---------------------------------------------------

DILATED_POOL = '''
from torch import nn

def make():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2, stride=1, dilation=2), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 10))
'''


def test_dilated_maxpool_is_refused_naming_the_layer(tmp_path):
    ns = {}
    exec(DILATED_POOL, ns)
    g = G.capture(ns["make"]().eval(), (1, 8, 8))
    plan = P.make(g, calibrate.collect(g, np.zeros((4, 1, 8, 8), np.float32)),
                  T.get("tflite-int8"))
    with pytest.raises(UnsupportedOpError, match="layer '2'") as e:
        tflite.export(g, plan, T.get("tflite-int8"), tmp_path, None)
    assert "dilation" in str(e.value)
    assert not list(tmp_path.iterdir())


def test_cli_refuses_unsupported_op_with_exit_2(tmp_path, run_cli):
    src = tmp_path / "dilated.py"
    src.write_text(DILATED_POOL)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("-q", "export", "-t", "tflite-int8", "-m",
                                   f"{src}:make", "-d", "digits", "-o", out)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "unsupported op" in lines[0] and "'2'" in lines[0]
    assert not (out / "tflite-int8").exists()


def test_avgpool_padding_tflite_cannot_express_is_recounted():
    """No TFLite padding gives these windows: AVERAGE_POOL over zeros times k*k/count
    (tests/runtime/test_struct_ops.py checks it on every target)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(4, stride=1, padding=1,
                                                            count_include_pad=False))
    g = G.capture(model.eval(), (1, 8, 8))
    assert tfgraph.check_supported(g) is None
    np.testing.assert_array_equal(tfgraph._counts(6, 4, 1, 1, 5), [3, 4, 4, 4, 3])


@pytest.mark.parametrize("pool", [
    nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),   # mirror pad
    nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True),    # zero pad
    nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),   # SAME
    nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
    nn.MaxPool2d(2, stride=2, padding=1)])                           # pad with lowest
@pytest.mark.parametrize("calibration", ["minmax", "converter"])
def test_pool_padding_variants_match_the_float_model(tmp_path, pool, calibration):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), pool, nn.Flatten()).eval()
    g = G.capture(model, (1, 9, 9))
    x = np.random.default_rng(2).random((32, 1, 9, 9), dtype=np.float32)
    config = P.PlanConfig(default={"calibration": calibration})
    plan = P.make(g, calibrate.collect(g, x), T.get("tflite-int8"), config)
    path, plan = tflite.export(g, plan, T.get("tflite-int8"), tmp_path, x)
    tflite.read(path, g).check_integer()
    got = tflite.load(path, T.get("tflite-int8-ref")).run(x)
    want = model(torch.from_numpy(x)).detach().numpy()
    step = float(plan.tensor(g.output).scale[0])
    assert np.abs(got - want).max() <= 2.5 * step


def test_float_fallback_is_an_export_error_naming_the_layer(all_ops_case):
    got = tflite.read(all_ops_case["path"], all_ops_case["graph"])
    got.ops.insert(3, ("DEQUANTIZE", "dil", ["int8"], ["float32"]))
    with pytest.raises(ExportError, match="DEQUANTIZE op at layer 'dil'"):
        got.check_integer()
    got.ops[3] = ("CONV_2D", "dil", ["float32", "float32", "float32"], ["float32"])
    with pytest.raises(ExportError, match="CONV_2D at layer 'dil' on float32"):
        got.check_integer()


# --- low weight bits on the int8 grid ------------------------------------------------

@pytest.mark.parametrize("target", ["tflite-int8", "onnx-int8"])
def test_4_bit_weights_are_held_exactly_on_the_int8_grid(digits_session, tmp_path, target):
    s = digits_session
    tgt = T.get(target)
    clipped = {"classifier.1": {"weight_clip": 0.6}}      # a clipped grid as well
    plan = P.make(s.graph, s.stats, tgt, P.PlanConfig({"weight_bits": 4}, {}, clipped))
    exported = api.export(target, s, tmp_path, plan=plan)
    if target == "tflite-int8":
        got = tflite.read(exported.path, s.graph)
        stored = got.int_weights
        for name in stored:
            assert _same(got.weights[name], plan.layers[name].weight), name
    else:
        import onnx
        inits = {i.name: onnx.numpy_helper.to_array(i)
                 for i in onnx.load(exported.path).graph.initializer}
        zp = onnx_backend.U8_SHIFT                   # weight_dtype uint8 (the default)
        stored = {n.name: inits[f"{n.name}.weight:q"].astype(np.int64) - zp
                  for n in s.graph.nodes if n.weight is not None}
    assert len(stored) == 4
    for name, q in stored.items():
        w = plan.layers[name].weight
        assert (w.grid_bits, w.step) == (4, 18)
        np.testing.assert_array_equal(q, w.quantize(s.graph.node(name).weight))
        assert np.all(q % 18 == 0) and np.abs(q).max() == 7 * 18
        assert max(len(np.unique(r)) for r in q.reshape(len(q), -1)) <= 2 ** 4 - 1
    saturated = (np.abs(stored["classifier.1"]) == 7 * 18).sum(1)
    assert saturated.min() >= 1 and saturated.mean() > 2        # clipping saturates
    x, y = s.dataset.test(200)
    assert (api.load_runner(exported).run(x).argmax(1) == y).mean() > 0.95


def test_select_4_bits_on_tflite_int8_and_export_the_plan(digits_session, tmp_path, run_cli):
    code, out, err = run_cli("-q", "select", "-t", "tflite-int8", "--budget", "4.0bits",
                             "-o", tmp_path / "sel")
    assert code == 0, err
    plan_path = tmp_path / "sel" / "tflite-int8" / "plan.json"
    chosen = json.loads(plan_path.read_text())["provenance"]["selection"]["bits"]
    assert min(chosen.values()) < 8
    code, out, err = run_cli("-q", "export", "-t", "tflite-int8", "--plan", plan_path,
                             "-o", tmp_path / "ex")
    assert code == 0, err
    folder = tmp_path / "ex" / "tflite-int8"
    plan = P.QuantPlan.load(folder / "plan.json")
    got = tflite.read(folder / "model.tflite", digits_session.graph)
    for name, b in chosen.items():
        w = plan.layers[name].weight
        assert w.grid_bits == (b if b < 8 else None)
        q = got.int_weights[name]
        assert np.all(q % w.step == 0)
        assert max(len(np.unique(r)) for r in q.reshape(len(q), -1)) <= 2 ** b - 1
    x, y = digits_session.dataset.test(200)
    runner = tflite.load(folder / "model.tflite", T.get("tflite-int8"))
    assert (runner.run(x).argmax(1) == y).mean() > 0.9
