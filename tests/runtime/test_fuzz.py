"""The loader against malformed models: a status, never a crash, whatever the bytes."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deployq import runtime

pytest.importorskip("tensorflow")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    from deployq import api
    ex = api.export("mcu-int8", api.open_session("zoo:dsnet-digits"),
                    tmp_path_factory.mktemp("fuzz"))
    return ex.path.read_bytes()


@pytest.mark.parametrize("cut, status", [(10, "DQ_ERR_TRUNCATED"), (40, "DQ_ERR_TRUNCATED")])
def test_truncated_model_is_rejected(model_bytes, cut, status):
    with pytest.raises(runtime.ModelRejected) as exc:
        runtime.Model(model_bytes[:cut])
    assert exc.value.status == status


def test_bad_magic_and_version(model_bytes):
    with pytest.raises(runtime.ModelRejected, match="DQ_ERR_MAGIC"):
        runtime.Model(b"XXXX" + model_bytes[4:])
    with pytest.raises(runtime.ModelRejected, match="DQ_ERR_VERSION"):
        runtime.Model(model_bytes[:4] + b"\x09\0\0\0" + model_bytes[8:])


def test_random_byte_flips_give_a_status_or_a_valid_run(model_bytes):
    """Mutants through ctypes (no sanitizer): loading either fails with a named status
    or succeeds and runs; a crash would take the test process down."""
    rng = np.random.default_rng(0)
    base = np.frombuffer(model_bytes, np.uint8)
    statuses = {}
    for _ in range(3000):
        mutant = base.copy()
        idx = rng.integers(0, len(base), rng.integers(1, 8))
        mutant[idx] = rng.integers(0, 256, len(idx))
        try:
            m = runtime.Model(mutant.tobytes())
            m.run(np.zeros((1, m.tensor_bytes[m.input_index]), np.int8))
            statuses["DQ_OK"] = statuses.get("DQ_OK", 0) + 1
        except runtime.ModelRejected as e:
            statuses[e.status] = statuses.get(e.status, 0) + 1
    assert len(statuses) >= 4, statuses          # the mutants reach many checks


def _has_libfuzzer() -> bool:
    if shutil.which("clang") is None:
        return False
    probe = subprocess.run(["clang", "-fsanitize=fuzzer", "-x", "c", "-", "-o", "/dev/null"],
                           input="int LLVMFuzzerTestOneInput(const char*d,long s){return 0;}",
                           capture_output=True, text=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _has_libfuzzer(), reason="clang with libFuzzer not installed "
                    "(Debian: clang libclang-rt-14-dev)")
def test_short_libfuzzer_run_with_asan_and_ubsan_finds_nothing():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "fuzz_runtime.py"),
                             "--seconds", "15"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert '"crashes": []' in result.stdout
