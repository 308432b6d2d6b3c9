"""fpga-fixed against hls4ml's C simulation, the full sweep (tests/test_hls4ml.py runs
three of these cases in CI): zoo:lenet-digits and the average-pooling AvgNet of the
test, weight/activation bits 8 and 4, rounding trn/rnd/rnd_conv, accumulator overflow
wrap/sat with a narrow accumulator (12 bits at 8 bits, 8 bits at 4 bits; per-tensor
weights, so the mapping is exact), and per-channel weights with a 32-bit accumulator.
Each case compiles one hls4ml project (about a minute on a shared 2-core machine).

    PYTHONPATH=$PWD python tools/hls4ml_sweep.py [--quick] [--models avgnet] [--bits 4] > sweep.md

Per case: the share of samples whose every element agrees, per traced layer (the
minimum over layers) and at the output; the negative control (one conv's rounding
flipped on deployq's side); and how many outputs the narrow accumulator changes
against a 32-bit one (so overflow really happened)."""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deployq import fixedpoint as FX                                # noqa: E402
from tests.test_hls4ml import lowered, run_case, session_of         # noqa: E402


def cases(quick: bool, models: list[str], bit_widths: list[int]):
    for ovf, bits, rnd, model in itertools.product(["sat", "wrap"], bit_widths,
                                                    ["trn", "rnd", "rnd_conv"], models):
        yield model, bits, rnd, ovf, 12 if bits == 8 else 8, "per-tensor"
        if quick:
            return
    for model, bits in itertools.product(models, bit_widths):
        yield model, bits, "trn", "wrap", 32, "per-channel"


def overflow_effect(model, bits, rnd, ovf, acc_bits, gran) -> float:
    """Share of output elements that differ from the same plan with a 32-bit accumulator."""
    graph, stats, x = session_of(model)
    outs = []
    for a in (acc_bits, 32):
        fx, _, _ = lowered(graph, stats, bits, rnd, ovf, a, gran)
        q = FX.quantize_input(x, fx.input_frac, fx.input_bits, fx.input_quant)
        outs.append(FX.run_int(fx, q))
    return float(np.mean(outs[0] != outs[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one case")
    ap.add_argument("--models", default="lenet,avgnet", help="comma-separated")
    ap.add_argument("--bits", default="8,4", help="comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| model | bits | rounding | acc overflow | acc bits | weights | layers identical "
          "(min) | outputs identical | all elements | flipped rounding: outputs / elements "
          "| outputs changed by the narrow acc | seconds |")
    print("|" + "---|" * 12)
    for case in cases(args.quick, args.models.split(","),
                      [int(b) for b in args.bits.split(",")]):
        t = time.time()
        with tempfile.TemporaryDirectory() as d:
            ok, flipped, *_ = run_case(Path(d), *case)
        layers = min(v for k, v in ok.items() if k not in ("output", "all_elements"))
        eff = overflow_effect(*case) if case[4] < 32 else 0.0
        print(f"| {' | '.join(map(str, case))} | {layers:.1%} | {ok['output']:.1%} | "
              f"{ok['all_elements']:.2%} | {flipped['output']:.1%} / "
              f"{flipped['all_elements']:.2%} | {eff:.1%} | {time.time() - t:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
