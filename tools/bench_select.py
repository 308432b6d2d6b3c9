"""Bit-width selection benchmark: clean and worst-case robust accuracy, measured on the
target's runtime, of the plan each selection method chooses at each budget.

    python tools/bench_select.py         # digits LeNet, plain and -adv: fpga-fixed at
                                         # 3, 4, 5, 6 bits; tflite-int8 at 4 bits
    python tools/bench_select.py --models lenet-digits --targets fpga-fixed --budgets 4

On fpga-fixed every plan uses rounding 'rnd' (AP_RND; 'trn', the target's default,
loses much more at low bits); tflite-int8 holds the chosen bits on its int8 grid
(plan.py) with its own defaults. Robust accuracy is the per-sample worst case over
FGSM and PGD from the float model's gradients (transfer) and from the target's mirror
(bpda), all scored on the runtime (deployq.robustness). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deployq import api, mirror, robustness as R, select as S, targets as T  # noqa: E402

BUDGETS = {"fpga-fixed": "3,4,5,6", "tflite-int8": "4"}     # default budgets per target
SETTINGS = {"fpga-fixed": {"rounding": "rnd"}}


def subject(session, exported, runner, x):
    m = mirror.build(exported.target, session.graph, exported.plan)
    agree = mirror.agreement(m.logits(x), runner.run(x),
                             exported.plan.tensor(session.graph.output),
                             getattr(runner, "output_qp", None))
    return R.Subject(exported.target.name, runner.run,
                     {"transfer": session.model.module, "bpda": m}, agree)


def bench_model(name: str, runs: dict[str, list[float]], methods: list[str],
                cfg: R.Config, eps: float, out: Path) -> list[dict]:
    """Rows of the float model and of every (target, budget, method) in runs."""
    session = api.open_session(f"zoo:{name}")
    x, y = session.dataset.test(cfg.samples)
    cache: dict = {}
    fl = R.evaluate(R.Subject("float", session.model.logits,
                              {"transfer": session.model.module}), x, y, cfg, cache)
    rows = [{"model": name, "target": "-", "method": "float", "budget": None, "bits": None,
             "clean": fl["clean"], "robust": fl["eps"][0]["robust"], "samples": len(x)}]
    for target, budgets in runs.items():
        tgt = T.get(target)
        for budget in budgets:
            for method in methods:
                rows.append(bench_one(session, tgt, budget, method, eps, x, y, cfg, cache,
                                      out))
    return rows


def bench_one(session, tgt, budget, method, eps, x, y, cfg, cache, out) -> dict:
    t0 = time.time()
    plan = S.select(session, tgt, f"{budget}bits", method, eps, SETTINGS.get(tgt.name))
    exported = api.export(tgt.name, session, out, plan=plan)
    runner = api.load_runner(exported)
    entry = R.evaluate(subject(session, exported, runner, x), x, y, cfg, cache)
    sel = plan.provenance["selection"]
    name = session.model.spec.removeprefix("zoo:")
    print(f"{name} {tgt.name} {budget} {method}: {sel['bits']} clean {entry['clean']:.3f} "
          f"robust {entry['eps'][0]['robust']:.3f}", file=sys.stderr)
    return {"model": name, "target": tgt.name, "method": method, "budget": budget,
            "bits": sel["bits"], "average_bits": sel["average_bits"],
            "clean": entry["clean"], "robust": entry["eps"][0]["robust"],
            "by": entry["eps"][0]["by"], "mirror_top1": entry["mirror"]["top1"],
            "samples": len(x), "seconds": time.time() - t0}


def table(rows: list[dict], eps: float) -> str:
    lines = [f"| model | target | budget (avg bits) | method | bits per layer | avg bits "
             f"| clean % | robust % (eps {eps:g}) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bits = "/".join(str(b) for b in r["bits"].values()) if r["bits"] else "float"
        avg = f"{r['average_bits']:.2f}" if r.get("average_bits") else "32"
        lines.append(f"| {r['model']} | {r['target']} | {r['budget'] or '-'} | {r['method']} "
                     f"| {bits} | {avg} | {100 * r['clean']:.1f} | {100 * r['robust']:.1f} |")
    return "\n".join(lines)


def loss_table(rows: list[dict]) -> str:
    """Robust accuracy lost to quantization (float minus quantized, points), per model,
    target, budget and method."""
    floats = {r["model"]: r["robust"] for r in rows if r["method"] == "float"}
    models = list(floats)
    keys = sorted({(r["target"], r["budget"], r["method"]) for r in rows if r["budget"]})
    by = {(r["model"], r["target"], r["budget"], r["method"]): r["robust"]
          for r in rows if r["budget"]}
    lines = ["| target | budget | method | "
             + " | ".join(f"{m} robust lost (pts)" for m in models) + " |",
             "|---|---|---|" + "---|" * len(models)]
    for key in keys:
        cells = [f"{100 * (floats[m] - by[(m, *key)]):+.1f}" if (m, *key) in by else "-"
                 for m in models]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet-digits,lenet-digits-adv")
    ap.add_argument("--targets", default=",".join(BUDGETS))
    ap.add_argument("--budgets", default=None,
                    help="average weight bits for every target (default: per target, "
                         + "; ".join(f"{t} {b}" for t, b in BUDGETS.items()) + ")")
    ap.add_argument("--methods", default=",".join(S.METHODS))
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--samples", type=int, default=None, help="test samples (default all)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = R.Config(["fgsm", "pgd"], [args.eps], ["transfer", "bpda"], args.steps,
                   samples=args.samples)
    runs = {t: [float(b) for b in (args.budgets or BUDGETS.get(t, "4")).split(",")]
            for t in args.targets.split(",")}
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for name in args.models.split(","):
            rows += bench_model(name, runs, args.methods.split(","), cfg, args.eps,
                                Path(out))
    print(table(rows, args.eps) + "\n\n" + loss_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
