"""How loose the adversarial method's carried bound is: for each layer and bits, the
layer's own output error e_l, the carried term e_l * prod_{k>l} ||W_k||_op, and the
measured RMS change of the logits when only that layer is quantized (docs/selection.md).

    python tools/select_looseness.py                       # zoo:lenet-digits, fpga-fixed rnd
    python tools/select_looseness.py --model zoo:lenet-fmnist --bits 3,4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deployq import api, plan as P, selection as S, targets as T  # noqa: E402


def logits(session, layers, weights, x) -> torch.Tensor:
    params = {l.node.name: torch.from_numpy(np.asarray(w, np.float32))
              for l, w in zip(layers, weights)}
    with torch.no_grad():
        return S._forward(session.graph, torch.from_numpy(x), params)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="zoo:lenet-digits")
    ap.add_argument("--target", default="fpga-fixed")
    ap.add_argument("--rounding", default="rnd")
    ap.add_argument("--bits", default="2,3,4,6,8")
    args = ap.parse_args()
    session = api.open_session(args.model)
    config = P.PlanConfig(default={"rounding": args.rounding} if args.rounding else {})
    bits = [int(b) for b in args.bits.split(",")]
    layers = S._layers(session.graph, T.get(args.target), config, bits, (1.0,))
    x = session.dataset.calibration(S.SAMPLES, session.seed)
    hs = S._inputs(session.graph, x)
    floats = [l.node.weight for l in layers]
    f0 = logits(session, layers, floats, x)
    norms = [S.layer_norm(session.graph, l.node, l.node.weight) for l in layers]
    print("| layer, bits | e_l | carried term | measured logit change |\n|---|---|---|---|")
    for i, layer in enumerate(layers):
        errs = S.output_errors(session.graph, layer, hs[layer.node.inputs[0]])
        after = float(np.prod(norms[i + 1:]))
        for b in bits:
            w = floats[:i] + [layer.quantized[b, 1.0]] + floats[i + 1:]
            change = (logits(session, layers, w, x) - f0).norm(dim=1).pow(2).mean().sqrt()
            print(f"| {layer.node.name}, {b} | {errs[b, 1.0]:.1f} | "
                  f"{errs[b, 1.0] * after:.0f} (x {after:.3g}) | {float(change):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
