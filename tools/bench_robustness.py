"""deployq's robust accuracy at a strength preset against AutoAttack on the float model:
same model, test samples and eps; robust accuracy of each, and wall-time ratio.

    python tools/bench_robustness.py [--models lenet-digits,...] [--samples 200]
                                     [--strength standard] [--out docs/robustness-bench.md]

deployq runs its whole per-subject evaluation on the float model (robustness.evaluate:
FGSM, APGD-CE, APGD-T from the float model's gradients and the Square attack on its
outputs, the worst case per sample); the peer is torchattacks.AutoAttack(version=
'standard') (APGD-CE, APGD-T, FAB-T, Square 5000, each on the samples still robust).
Both seeded; eps per dataset as in EPS. Writes a markdown table."""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deployq import api, robustness as R

MODELS = ("lenet-digits", "lenet-digits-adv", "dsnet-digits", "lenet-fmnist",
          "lenet-fmnist-adv", "dsnet-fmnist")
EPS = {"digits": (0.05, 0.1), "fmnist": (0.03, 0.1)}


def _timed(fn):
    """fn's value and the CPU seconds it took (this process, all threads): on a shared
    machine wall time measures the other jobs too."""
    t0 = time.process_time()
    value = fn()
    return value, time.process_time() - t0


def deployq_float(session, x, y, eps: float, strength: str) -> float:
    """Worst-case robust accuracy of the float model at one eps."""
    cfg = R.Config(eps=[eps], sources=["transfer", "blackbox"], samples=None,
                   strength=strength)
    model = session.model.module
    entry = R.evaluate(R.Subject("float", session.model.logits, {"transfer": model}),
                       x, y, cfg)
    return entry["eps"][0]["robust"]


def autoattack(session, x, y, eps: float) -> float:
    import torchattacks
    model = session.model.module
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    n_classes = int(session.model.logits(x[:1]).shape[1])
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard",
                                     n_classes=n_classes, seed=0)
    adv = attack(xt, yt).detach()
    clean = session.model.logits(x).argmax(1) == y
    return float(((session.model.logits(adv.numpy()).argmax(1) == y) & clean).mean())


def bench(models, samples: int, strength: str, peer: bool = True) -> list[dict]:
    rows = []
    for name in models:
        session = api.open_session(f"zoo:{name}")
        x, y = session.dataset.test(samples)
        for eps in EPS["fmnist" if "fmnist" in name else "digits"]:
            ours, t_ours = _timed(lambda: deployq_float(session, x, y, eps, strength))
            if not peer:    # AutoAttack's side is seeded: its figures from a full run hold
                print(f"| zoo:{name} | {eps:g} | {100 * ours:.1f}% | {t_ours:.1f} |",
                      flush=True)
                continue
            theirs, t_peer = _timed(lambda: autoattack(session, x, y, eps))
            rows.append({"model": name, "eps": eps, "deployq": ours, "autoattack": theirs,
                         "t_deployq": t_ours, "t_autoattack": t_peer})
            print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    gap = 100 * (r["deployq"] - r["autoattack"])
    return (f"| zoo:{r['model']} | {r['eps']:g} | {100 * r['deployq']:.1f}% | "
            f"{100 * r['autoattack']:.1f}% | {gap:+.1f} | {r['t_deployq']:.1f} | "
            f"{r['t_autoattack']:.1f} | {r['t_deployq'] / r['t_autoattack']:.2f}x |")


def table(rows, samples: int, strength: str) -> str:
    import torchattacks
    lines = [f"deployq `{strength}` ({R.Config(strength=strength).describe()}) vs "
             f"torchattacks {torchattacks.__version__} AutoAttack(version='standard', "
             f"seed=0), L-inf, float model, first {samples} test samples; "
             f"{platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s).", "",
             "| model | eps | deployq robust | AutoAttack robust | gap (points) | "
             "deployq CPU s | AutoAttack CPU s | time ratio |", "|---|---|---|---|---|---|---|---|"]
    lines += [_row(r) for r in rows]
    gaps = [100 * (r["deployq"] - r["autoattack"]) for r in rows]
    ratio = sum(r["t_deployq"] for r in rows) / sum(r["t_autoattack"] for r in rows)
    lines += ["", f"Largest gap deployq - AutoAttack: {max(gaps):+.1f} points (goal <= +1.0); "
              f"total time ratio {ratio:.2f}x (goal <= 1.0x)."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--strength", default="standard", choices=R.STRENGTHS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the table to this file")
    p.add_argument("--deployq-only", action="store_true",
                   help="run only deployq's side (model | eps | robust | CPU s), e.g. "
                        "after a change to deployq's attacks; AutoAttack's is unchanged")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    np.seterr(all="ignore")
    rows = bench(a.models.split(","), a.samples, a.strength, peer=not a.deployq_only)
    if a.deployq_only:
        return
    text = table(rows, a.samples, a.strength)
    print(text)
    if a.out:
        command = "python tools/bench_robustness.py " + " ".join(sys.argv[1:])
        Path(a.out).write_text(f"Made by `{command.strip()}`:\n\n{text}\n")


if __name__ == "__main__":
    main()
