"""deployq diff: per-layer differences between integer targets."""
import pytest

pytest.importorskip("tensorflow")

from deployq import api, diff  # noqa: E402
from deployq.errors import InputError  # noqa: E402


@pytest.fixture(scope="module")
def session():
    return api.open_session("zoo:dsnet-digits")


def test_c_runtime_matches_reference_kernels_at_every_tensor(session, tmp_path):
    result = diff.diff(["tflite-int8-ref", "mcu-int8"], session, tmp_path, samples=5)
    layers = {r["layer"] for r in result["tensors"]}
    assert {n.name for n in session.graph.nodes} <= layers | {"pool", "flatten"}
    assert all(r["different"] == 0 for r in result["tensors"])


def test_xnnpack_and_reference_kernels_part_ways_somewhere(session, tmp_path):
    result = diff.diff(["tflite-int8", "tflite-int8-ref"], session, tmp_path, samples=20)
    rows = {r["layer"]: r for r in result["tensors"]}
    assert rows["input"]["different"] == 0           # the same input codes reach both
    assert any(r["different"] > 0 for r in result["tensors"])


def test_targets_without_dumps_are_refused(session, tmp_path):
    with pytest.raises(InputError, match="cannot dump its tensors"):
        diff.diff(["onnx-int8", "mcu-int8"], session, tmp_path, samples=1)
    with pytest.raises(InputError, match="compares two targets"):
        diff.diff(["mcu-int8"], session, tmp_path)


def test_targets_whose_tensors_share_no_names_are_refused(session, tmp_path):
    """fpga-fixed dumps by IR names, mcu-int8 by .tflite names: nothing to compare."""
    with pytest.raises(InputError, match="name no tensor alike"):
        diff.diff(["fpga-fixed", "mcu-int8"], session, tmp_path, samples=1)
