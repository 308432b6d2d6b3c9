"""Fuzz the C runtime's model loader (and the kernels of every model it accepts) with
libFuzzer under AddressSanitizer and UndefinedBehaviorSanitizer.

    python tools/fuzz_runtime.py --seconds 600            # a campaign
    python tools/fuzz_runtime.py --seconds 20 --quiet     # what the tests run
    python tools/fuzz_runtime.py --kernels opt            # the optimized kernel set

Needs clang with libFuzzer (Debian: clang, libclang-rt-14-dev). Seeds are real models
exported by deployq (mcu-int8 for the zoo digits models, fpga-fixed for lenet-digits)
and the ADD overflow regression model of tests/runtime/test_kernels.py. Prints one JSON
line: executions, crashes (files written by libFuzzer), seconds, and the exit code."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "runtime"
FLAGS = ["-g", "-O1", "-std=c99", "-fsanitize=fuzzer,address,undefined",
         "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


def build(workdir: Path, kernels: str = "ref") -> Path:
    clang = shutil.which("clang")
    if clang is None:
        raise SystemExit("clang not found: apt-get install clang libclang-rt-14-dev")
    workdir.mkdir(parents=True, exist_ok=True)
    exe = workdir / "fuzz_loader"
    simd = ["-march=native"] if kernels == "opt" else []      # as deployq/runtime.py builds it
    cmd = [clang, *FLAGS, *simd, f"-DDQ_KERNELS={kernels}", "-o", str(exe), str(SOURCES / "fuzz" / "dq_fuzz_loader.c"),
           *map(str, sorted(SOURCES.glob("*.c"))), "-lm"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"building the fuzzer failed:\n{result.stderr[-2000:]}")
    return exe


def seeds(corpus: Path) -> int:
    """Runtime models exported by deployq (both modes) and the regression models."""
    sys.path.insert(0, str(ROOT))
    from deployq import api
    from tests.runtime.test_kernels import add_overflow_model
    corpus.mkdir(parents=True, exist_ok=True)
    exports = [("mcu-int8", "lenet-digits"), ("mcu-int8", "dsnet-digits"),
               ("fpga-fixed", "lenet-digits")]
    with tempfile.TemporaryDirectory() as tmp:
        for target, name in exports:
            ex = api.export(target, api.open_session(f"zoo:{name}"), Path(tmp) / target / name)
            shutil.copy(ex.path, corpus / f"{name}-{target}.dqm")
    (corpus / "add-overflow.dqm").write_bytes(add_overflow_model())
    return len(exports) + 1


def fuzz(exe: Path, corpus: Path, seconds: int, artifacts: Path) -> dict:
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [str(exe), str(corpus), f"-max_total_time={seconds}", "-timeout=10",
           "-rss_limit_mb=2048", f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    log = result.stderr
    execs = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    return {"executions": int(execs.group(1)) if execs else None,
            "crashes": sorted(p.name for p in artifacts.iterdir()),
            "seconds": seconds, "exit_code": result.returncode,
            "log_tail": log.strip().splitlines()[-3:] if result.returncode else []}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--kernels", choices=("ref", "opt"), default="ref")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        exe = build(work, args.kernels)
        seeds(work / "corpus")
        stats = fuzz(exe, work / "corpus", args.seconds, work / "crashes")
    print(json.dumps(stats))
    return 0 if stats["exit_code"] == 0 and not stats["crashes"] else 1


if __name__ == "__main__":
    sys.exit(main())
