import pytest

from deployq import targets as T
from deployq.errors import TargetError

MINIMAL = """name = "{name}"
backend = "onnx"
description = "test target"
[allowed]
weight_bits = [8]
[defaults]
weight_bits = 8
activation_bits = 8
granularity = "per-tensor"
weight_scheme = "symmetric"
activation_scheme = "symmetric"
scale = "pow2"
calibration = "mse"
rounding = "half_even"
"""


def test_builtin_onnx_target():
    t = T.get("onnx-int8")
    assert t.backend == "onnx" and t.defaults["weight_bits"] == 8
    assert "per-channel" in t.allowed["granularity"]


def test_a_user_target_is_a_toml_file(tmp_path):
    (tmp_path / "mine.toml").write_text(MINIMAL.format(name="my-onnx"))
    found = T.all_targets(tmp_path)
    assert {"my-onnx", "onnx-int8"} <= set(found)
    assert found["my-onnx"].defaults["scale"] == "pow2"


def test_user_directory_overrides_a_builtin_name(tmp_path):
    (tmp_path / "x.toml").write_text(MINIMAL.format(name="onnx-int8"))
    assert T.get("onnx-int8", tmp_path).defaults["calibration"] == "mse"


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.replace('backend = "onnx"', 'backend = "tpu"'), "unknown backend 'tpu'"),
    (lambda s: s.replace("weight_bits = 8", "weight_bits = 4"), "does not allow weight_bits=4"),
    (lambda s: s.replace('rounding = "half_even"\n', ""), "must set rounding"),
    (lambda s: s + "[nonsense]\n", "unknown keys"),
    (lambda s: s.replace("[allowed]", "container_bits = 4\n[allowed]"), "container_bits=4"),
    (lambda s: s.replace("[allowed]", 'container_bits = "8"\n[allowed]'), "container_bits"),
    (lambda s: s.replace("[defaults]", "[defaults\n"), "cannot read target file"),
])
def test_malformed_target_files_are_refused(tmp_path, mutate, message):
    (tmp_path / "bad.toml").write_text(mutate(MINIMAL.format(name="bad")))
    with pytest.raises(TargetError, match=message):
        T.get("bad", tmp_path)
    assert "onnx-int8" in T.all_targets(tmp_path)     # the others still work


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(TargetError, match="unknown target 'nope'; known: .*onnx-int8"):
        T.get("nope")


def test_int8_targets_hold_low_weight_bits_in_an_int8_container():
    for name in ("onnx-int8", "tflite-int8", "tflite-int8-ref", "mcu-int8", "mcu-qemu"):
        t = T.get(name)
        assert t.container_bits == 8 and t.allowed["weight_bits"] == list(range(2, 9))
    assert T.get("fpga-fixed").container_bits is None
