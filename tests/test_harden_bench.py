"""tools/bench_harden.py's paired comparison of two runs (docs/harden.md's McNemar
figures): pure functions over per-sample masks, no training or runtime."""
import importlib.util
import sys
from pathlib import Path

import pytest

from deployq import stats

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_harden",
                                                  ROOT / "tools" / "bench_harden.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_harden"] = module
    spec.loader.exec_module(module)
    return module


def _run(name, mask):
    return {"run": name, "samples": len(mask), "robust": sum(mask) / len(mask),
            "robust_mask": stats.pack(mask)}


def test_compare_counts_discordant_samples_and_tests_them(bench):
    first = [True] * 30 + [False] * 70
    second = [False] * 30 + [False] * 70          # first robust on 30 more samples
    (c,) = bench.compare([_run("dq", first), _run("vanilla", second)], ["dq:vanilla"])
    assert (c["first_only"], c["second_only"]) == (30, 0)
    assert c["difference"] == pytest.approx(0.3)
    assert c["p"] < 1e-6 and c["significant"]


def test_compare_of_equal_accuracy_on_other_samples_is_not_significant(bench):
    # negative control: the same accuracy reached on different samples is a tie
    first = [True, False] * 50
    second = [False, True] * 50
    (c,) = bench.compare([_run("a", first), _run("b", second)], ["a:b"])
    assert c["difference"] == 0 and c["p"] == 1.0 and not c["significant"]


def test_compare_of_an_unknown_run_fails(bench):
    with pytest.raises(SystemExit, match="no run named c"):
        bench.compare([_run("a", [True]), _run("b", [False])], ["a:c"])


def test_compare_reaches_a_runs_float_copy(bench):
    plain = _run("plain", [False] * 10) | {"float_robust": 0.5,
                                           "float_robust_mask": stats.pack([True, False] * 5)}
    (c,) = bench.compare([plain, _run("dq", [True] * 10)], ["dq:plain/float"])
    assert (c["first_only"], c["second_only"]) == (5, 0)
    assert c["difference"] == pytest.approx(0.5)
