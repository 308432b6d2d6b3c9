"""Where fpga-fixed loses accuracy: per layer, the fixed-point tensor (deployq.fixedpoint,
the C runtime's bit-exact twin) against the float model's, for one or more plan
settings (docs/fpga-fixed.md, "Default rounding").

    python tools/fx_layer_error.py resnet8-fmnist -n 200 --rounding trn,rnd_conv [--layers]

Per setting: accuracy of the twin and of float on the first N test samples; with
--layers, per layer: output bits and fractional bits f, the float tensor's max |x|,
the relative L2 error ||fx - float|| / ||float||, the mean error in units of the float
tensor's standard deviation (a sign that is the same layer after layer is a bias
accumulating through depth), and the share of saturated codes (at the tensor's min or
max integer). Calibration: the session's (512 training samples, minmax)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from deployq import api, fixedpoint as FX, graph as G, plan as P, targets as T  # noqa: E402
from deployq.backends import fpga  # noqa: E402


def layer_rows(graph, fx, values, floats):
    for node in graph.nodes:
        layer, q = fx.layers[node.name], values[node.name]
        f = floats[node.name]
        v = q * 2.0 ** -layer.frac
        lo, hi = -(1 << (layer.bits - 1)), (1 << (layer.bits - 1)) - 1
        yield {"layer": node.name, "op": node.op, "bits": layer.bits, "frac": layer.frac,
               "absmax": float(np.abs(f).max()),
               "relerr": float(np.linalg.norm(v - f) / (np.linalg.norm(f) + 1e-12)),
               "bias_per_std": float(np.mean(v - f) / (np.std(f) + 1e-12)),
               "saturated": float(np.mean((q == lo) | (q == hi)))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="zoo name, e.g. resnet8-fmnist")
    ap.add_argument("-n", type=int, default=200, help="test samples (default 200)")
    ap.add_argument("--rounding", default="trn,rnd_conv",
                    help="comma-separated rounding modes to compare")
    ap.add_argument("--layers", action="store_true", help="print the per-layer table")
    a = ap.parse_args()
    torch.set_num_threads(1)
    s = api.open_session(f"zoo:{a.model}")
    x, y = s.dataset.test(a.n)
    floats = {k: v.numpy() for k, v in G.run(s.graph, torch.from_numpy(x), keep=True).items()}
    print(f"{a.model}: float {100 * np.mean(floats[s.graph.output].argmax(1) == y):.2f}% "
          f"on {len(x)} samples")
    for rounding in a.rounding.split(","):
        target = T.get("fpga-fixed")
        plan = P.make(s.graph, s.stats, target, P.PlanConfig(default={"rounding": rounding}))
        fx = fpga.lower(s.graph, plan, target)
        values = FX.run_all(fx, FX.quantize_input(x, fx.input_frac, fx.input_bits,
                                                   fx.input_quant))
        acc = np.mean(values[s.graph.output].reshape(len(x), -1).argmax(1) == y)
        print(f"  rounding {rounding}: fpga-fixed {100 * acc:.2f}%", flush=True)
        if a.layers:
            print("    | layer | op | bits | f | max abs float | rel. error | mean error / std "
                  "| saturated |\n    |---|---|---|---|---|---|---|---|")
            for r in layer_rows(s.graph, fx, values, floats):
                print(f"    | {r['layer']} | {r['op']} | {r['bits']} | {r['frac']} | "
                      f"{r['absmax']:.2f} | {r['relerr']:.3f} | {r['bias_per_std']:+.3f} | "
                      f"{100 * r['saturated']:.2f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
