"""Train the zoo's Defensive Quantization models: DQ fine-tuning of a zoo model for a
target (8-bit weights, --activation-bits activations), beta chosen on the validation
split carved from the training data (never the test split).

    python tools/train_harden_zoo.py --data fmnist12k.npz --epochs 3 --stage2-epochs 3 \
        --betas 1e-3,3e-4 --max-clean-drop 2 [--work harden-runs]
        lenet-fmnist-dq: zoo:lenet-fmnist, fpga-fixed (its default rounding, rnd_conv),
        4-bit activations, eps 0.03, in two stages of 3 epochs on the 12,000-sample
        slice (tools/bench_harden.py subset --train-samples 12000); no beta is within 2
        points of plain QAT's validation clean accuracy, so the best robust one (1e-3,
        -2.5 points) is chosen with a note (docs/harden.md, "Two stages")
    python tools/train_harden_zoo.py --data fashion-mnist --epochs 3 --stages 2 \
        --betas 4e-3 --targets-dir tgt [--work harden-runs]
        lenet-fmnist-dq (now): the same with unsigned post-ReLU activations (tgt/ holds
        fpga-fixed.toml with relu_unsigned = true), on the whole training split, beta
        4e-3 chosen on the validation split by its amplification (docs/harden.md,
        "One model for (b), (c) and clean accuracy")
    python tools/train_harden_zoo.py --name lenet-digits-dq --base zoo:lenet-digits \
        --data digits --eps 0.1 --epochs 30 --stage2-epochs 10 --betas 1e-2
        lenet-digits-dq: the same for digits at eps 0.1, in two stages (the second on
        activation grids calibrated for the first's weights); beta 1e-2 was chosen at
        the standard attack strength on the validation split (docs/harden.md, Digits)
    python tools/train_harden_zoo.py --name lenet-fmnist-dq8 --activation-bits 8 \
        --data fmnist12k.npz --betas 1e-4,3e-4,1e-3 --max-clean-drop 2
        lenet-fmnist-dq8: 8-bit activations (the plan is fpga-fixed's; the weights also
        run on the int8 targets with their own calibrated plan)

Each beta (and beta 0, plain QAT, the reference) is one `deployq harden` run in
WORK/dqBETA (WORK/vanilla; stage 2 in WORK/dqBETA-s2); a run already complete there is
reused (resumed from its checkpoint, which must match the settings). The chosen beta has
the best validation robust accuracy (with --max-clean-drop N, among those at most N
points of validation clean accuracy below plain QAT's; a note says when the chosen one
is more than 2 points below). Writes deployq/weights/NAME.npz and NAME.plan.json (the plan to
deploy it with: `--plan deployq/weights/NAME.plan.json`).
Seeded and single-threaded: the same command gives the same weights on the same machine.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deployq import api, zoo  # noqa: E402
from deployq.io import atomic_write  # noqa: E402

def run(work: Path, label: str, beta: float, args) -> dict:
    """Stage 1: --epochs from the base model; with --stage2-epochs, stage 2 in
    WORK/LABEL-s2: harden again from stage 1's weights, which calibrates the activation
    grids afresh for them (the penalty shrinks the activations under stage 1's fixed
    grids: on digits at beta 1e-2 the first conv's outputs used 3 of the 4-bit grid's 7
    positive levels); returns the last stage's harden.json."""
    session = api.open_session(args.base, None, args.data)
    report = api.harden(args.target, "dq", work / label, args.epochs, beta=beta,
                        session=session, activation_bits=args.activation_bits,
                        weight_bits=8, eps=args.eps, targets_dir=args.targets_dir,
                        stages=args.stages)
    if not args.stage2_epochs:
        return report
    session = api.open_session(args.base, str(work / label / "weights.safetensors"),
                               args.data)
    return api.harden(args.target, "dq", work / f"{label}-s2", args.stage2_epochs,
                      beta=beta, session=session, activation_bits=args.activation_bits,
                      weight_bits=8, eps=args.eps, targets_dir=args.targets_dir)


def folder(label: str, args) -> str:
    return f"{label}-s2" if args.stage2_epochs else label


def choose(runs: dict[str, tuple[float, dict]], max_drop: float | None = None) -> str:
    """The beta with the best validation robust accuracy; with max_drop (points), only
    among the betas whose validation clean accuracy is at most max_drop points below
    plain QAT's (all of them if none is). Says when the chosen one is more than 2 points
    below plain QAT's (the issue's bar)."""
    ref = runs["vanilla"][1]["final"]["val_clean"]
    drop = {k: ref - r["final"]["val_clean"] for k, (_, r) in runs.items() if k != "vanilla"}
    within = [k for k in drop if max_drop is None or drop[k] <= max_drop / 100]
    best = max(within or drop, key=lambda k: runs[k][1]["final"]["val_robust"])
    if drop[best] > 0.02:
        print(f"note: {best} is {100 * drop[best]:.1f} points below plain QAT's validation "
              "clean accuracy (more than 2)")
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--betas", default="1e-4,1e-3")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--work", default="harden-runs")
    ap.add_argument("--name", default="lenet-fmnist" + zoo.DQ)
    ap.add_argument("--base", default="zoo:lenet-fmnist")
    ap.add_argument("--target", default="fpga-fixed")
    ap.add_argument("--activation-bits", type=int, default=4)
    ap.add_argument("--targets-dir", default=None, help="a folder of target TOML files "
                    "(e.g. a copy of fpga-fixed.toml with relu_unsigned = true)")
    ap.add_argument("--eps", type=float, default=0.03)
    ap.add_argument("--stage2-epochs", type=int, default=0, help="then harden again "
                    "for this many epochs on grids calibrated for the trained weights")
    ap.add_argument("--stages", type=int, default=1, help="stage 1 as `harden --stages "
                    "N`: N stages of --epochs in WORK/LABEL, the activation grids "
                    "recalibrated before each stage after the first")
    ap.add_argument("--max-clean-drop", type=float, default=None,
                    help="choose among the betas at most this many points of validation "
                         "clean accuracy below plain QAT's (default: any)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(format="deployq: %(message)s", level=logging.INFO)
    work = Path(args.work)
    runs = {"vanilla": (0.0, run(work, "vanilla", 0.0, args))}
    for text in args.betas.split(","):
        runs[f"dq{text}"] = (float(text), run(work, f"dq{text}", float(text), args))
    for label, (beta, r) in runs.items():
        f = r["final"]
        print(f"{label}: beta {beta:g}, validation clean {100 * f['val_clean']:.2f}%, "
              f"robust {100 * f['val_robust']:.2f}%")
    best = choose(runs, args.max_clean_drop)
    print(f"chosen: {best}")
    best = folder(best, args)
    from safetensors.numpy import load_file
    state = load_file(str(work / best / "weights.safetensors"))
    buf = io.BytesIO()
    np.savez(buf, **state)
    weights = Path(str(zoo.weights_file(args.name)))
    atomic_write(weights, buf.getvalue())
    plan = weights.with_suffix(".plan.json")
    atomic_write(plan, (work / best / "plan.json").read_bytes())
    meta = json.loads((work / best / "harden.json").read_text())
    print(f"{weights}\n{plan}\n(settings: {json.dumps(meta['config'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
