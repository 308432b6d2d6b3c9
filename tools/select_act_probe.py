"""Validation-split probe of activation-bit assignments on fpga-fixed (docs/selection.md,
"Activation bits on fpga-fixed: measured"): robust and clean accuracy of given
per-group activation bits, with 8-bit weights or a given weight plan, a rounding mode
and an activation calibration, scored by deployq.refine's objective (the last 200
training samples of the seeded permutation, APGD-CE 10 iterations, transfer + bpda
through the bit-exact mirror, and the Square check on the mirror unless --sources
leaves 'blackbox' out). Never the test split.

    python tools/select_act_probe.py --model lenet-fmnist-adv --eps 0.1 \\
        --acts 8/8/8,4/4/4,6/3/4 --calibration minmax,percentile,mse
    python tools/select_act_probe.py --model lenet-fmnist-adv --eps 0.1 --acts 8/8/8,4/4/4 \\
        --weights 8/8/3@0.5/8
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deployq import api, plan as P, refine as RF, selection as S, targets as T  # noqa: E402


def weights_arg(text: str, names: list[str]) -> dict:
    """'8/8/3@0.5/8' -> {layer: (bits, clip)} in graph order."""
    out = {}
    for name, item in zip(names, text.split("/"), strict=True):
        b, _, c = item.partition("@")
        out[name] = (int(b), float(c or 1))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet-fmnist-adv")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--acts", default="8/8/8,4/4/4", help="bits per activation group")
    ap.add_argument("--weights", default=None, help="bits[@clip] per layer (default 8)")
    ap.add_argument("--rounding", default="rnd")
    ap.add_argument("--calibration", default="minmax")
    ap.add_argument("--samples", type=int, default=RF.SAMPLES)
    ap.add_argument("--sources", default=",".join(RF.SOURCES),
                    help="objective sources (refine.Objective); 'transfer,bpda' is the "
                         "objective without the gradient-free check")
    ap.add_argument("--queries", type=int, default=RF.QUERIES, help="Square queries")
    args = ap.parse_args()
    torch.set_num_threads(1)
    s = api.open_session(f"zoo:{args.model}")
    tgt = T.get("fpga-fixed")
    groups = S.act_groups(s.graph, s.stats, tgt, P.PlanConfig({}), [8])
    names = [n.name for n in s.graph.nodes if n.op in ("conv2d", "linear")]
    w = weights_arg(args.weights, names) if args.weights else {}
    x, y = RF.validation(s.dataset, args.samples, s.seed, s.calib_samples)
    objective = RF.Objective(s, tgt, x, y, args.eps, RF.STEPS, args.sources.split(","),
                             args.queries)
    print(objective.describe(), file=sys.stderr)
    print("| model | eps | rounding | calibration | weights | act bits | score % | robust % "
          "| clean % | hidden % | by source/attack % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cal in args.calibration.split(","):
        for acts in args.acts.split(","):
            bits = [int(b) for b in acts.split("/")]
            by = {k: S._setting(b, c) for k, (b, c) in w.items()}
            for g, b in zip(groups, bits, strict=True):
                for m in g.members:
                    by[m] = by.get(m, {}) | {"activation_bits": b}
            default = {"rounding": args.rounding, "calibration": cal}
            t0 = time.time()
            r = objective(P.make(s.graph, s.stats, tgt, P.PlanConfig(default, {}, by)))
            print(f"| {args.model} | {args.eps:g} | {args.rounding} | {cal} | "
                  f"{args.weights or '8'} | {acts} | {100 * r['score']:.1f} | "
                  f"{100 * r['robust']:.1f} | {100 * r['clean']:.1f} | "
                  f"{100 * r['hidden']:.1f} | " + ", ".join(
                      f"{k} {100 * v:.1f}" for k, v in r.get("by", {}).items()) + " |",
                  flush=True)
            print(f"{time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
