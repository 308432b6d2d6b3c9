"""Time deployq's PGD-20 robustness evaluation per target against a peer library's
PGD-20 (torchattacks) on the float model: same model, data, eps, steps and step size.

    .venv/bin/python tools/bench_robustness.py [--samples 200] [--eps 0.1] [--out FILE]

deployq's rows time the whole per-target stage: PGD-20 through the target's mirror
(BPDA) and scoring on the runtime. Writes a markdown table (default
docs/robustness-bench.md)."""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deployq import api, attacks as A, backends, mirror

STEPS = 20


def _timed(fn, repeats: int = 3):
    """fn's value and its best wall time over `repeats` calls (the first warms up)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return value, best


def _acc(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def bench(samples: int, eps: float) -> list[tuple]:
    session = api.open_session("zoo:lenet-digits")
    x, y = session.dataset.test(samples)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    model, alpha = session.model.module, eps / 4
    rows = []
    adv, dt = _timed(lambda: A.pgd(model, xt, yt, eps, STEPS, alpha, seed=0))
    rows.append(("float", "deployq pgd", _acc(session.model.logits(adv.numpy()), y), dt))
    try:
        import torchattacks
        peer = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=STEPS, random_start=True)
        adv, dt = _timed(lambda: (torch.manual_seed(0), peer(xt, yt))[1])
        rows.append(("float", f"torchattacks {torchattacks.__version__} PGD",
                     _acc(session.model.logits(adv.numpy()), y), dt))
    except ImportError:
        rows.append(("float", "torchattacks (not installed)", None, None))
    with tempfile.TemporaryDirectory() as out:
        for t in api.list_targets():
            try:
                backends.get(t.backend)
            except Exception:
                continue
            ex = api.export(t.name, session, out)
            runner = api.load_runner(ex)
            m = mirror.build(ex.target, session.graph, ex.plan)
            (logits, dt) = _timed(lambda: runner.run(
                A.pgd(m, xt, yt, eps, STEPS, alpha, seed=0).numpy()))
            rows.append((t.name, "deployq pgd (bpda) on the runtime", _acc(logits, y), dt))
    return rows


def table(rows, samples: int, eps: float) -> str:
    lines = [f"PGD-{STEPS}, L-inf eps {eps:g}, step size eps/4, 1 random start, best of 3 runs, "
             f"zoo:lenet-digits, {samples} digits test samples; "
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads.", "",
             "| model | attack | accuracy | seconds |", "|---|---|---|---|"]
    for name, attack, acc, dt in rows:
        lines.append(f"| {name} | {attack} | "
                     f"{'-' if acc is None else f'{100 * acc:.1f}%'} | "
                     f"{'-' if dt is None else f'{dt:.3f}'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--out", default="docs/robustness-bench.md")
    a = p.parse_args()
    torch.set_num_threads(2)
    text = table(bench(a.samples, a.eps), a.samples, a.eps)
    command = "python tools/bench_robustness.py " + " ".join(sys.argv[1:])
    Path(a.out).write_text(f"# Robustness benchmark\n\nMade by `{command.strip()}`:\n\n"
                           f"{text}\n")
    print(text)


if __name__ == "__main__":
    main()
