"""tools/bench_harden.py eval --merge-eval: a `deployq eval --json` document's runtime
rows become runs NAME@TARGET that --compare pairs (docs/harden.md, dq8 on the int8
targets)."""
import importlib.util
import sys
from pathlib import Path

import pytest

from deployq import stats

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_harden_eval_json",
                                                  ROOT / "tools" / "bench_harden.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_harden_eval_json"] = module
    spec.loader.exec_module(module)
    return module


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
