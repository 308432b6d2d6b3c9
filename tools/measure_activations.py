"""Per activation: elements of every tensor compared between mcu-int8 and LiteRT's
reference kernels (tflite-int8-ref) on the tiny models of
tests/runtime/test_activations.py, and how many are identical; and fpga-fixed against
its NumPy twin. Prints a Markdown table (docs/tflite-int8-arithmetic.md, "Activations").

    PYTHONPATH=$PWD python tools/measure_activations.py [--samples 200]
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.runtime import test_activations as A  # noqa: E402
from deployq import backends, fixedpoint as FX, targets as T  # noqa: E402
from deployq.backends import fpga  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200)
    n = ap.parse_args().samples
    torch.set_num_threads(1)
    print("| activation | calibration | mcu-int8 = tflite-int8-ref (elements) | "
          "fpga-fixed = NumPy twin (outputs) |")
    print("|---|---|---|---|")
    for name, cal in A.MCU_CASES:
        with tempfile.TemporaryDirectory() as tmp:
            graph, x = A._graph(name), A._x(n)
            rows = A._mcu_vs_ref(graph, x, Path(tmp) / "m", cal)
            total = sum(r["elements"] for r in rows)
            same = total - sum(r["different"] for r in rows)
            mcu = f"{same}/{total} ({100 * same / total:.2f}%)"
            target = T.get("fpga-fixed")
            path, plan = fpga.export(graph, A._plan(graph, x[:64], target), target, Path(tmp) / "f")
            fx = fpga.lower(graph, plan, target)
            ref = FX.run_int(fx, FX.quantize_input(x, fx.input_frac, fx.input_bits,
                                                   fx.input_quant)).reshape(len(x), -1)
            c = backends.codes(fpga.load(path), x).reshape(len(x), -1)
            fp = f"{int((c == ref).sum())}/{ref.size}" if cal == "minmax" else "-"
        print(f"| {name} | {cal} | {mcu} | {fp} |")


if __name__ == "__main__":
    main()
