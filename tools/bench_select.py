"""Bit-width selection benchmark: clean and worst-case robust accuracy, measured on the
target's runtime, of the plan each selection method chooses at each budget.

    python tools/bench_select.py         # digits LeNet, plain and -adv: fpga-fixed at
                                         # 3, 4, 5, 6 bits; tflite-int8 at 4 bits
    python tools/bench_select.py --models lenet-digits --targets fpga-fixed --budgets 4

On fpga-fixed every plan uses rounding 'rnd' (AP_RND; 'trn', the target's default,
loses much more at low bits); tflite-int8 holds the chosen bits on its int8 grid
(plan.py) with its own defaults. Robust accuracy is the per-sample worst case over
FGSM and PGD from the float model's gradients (transfer) and from the target's mirror
(bpda), all scored on the runtime (deployq.robustness), at each --eps; the adversarial
method guards against the first. Prints markdown tables.
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
from deployq import api, mirror, plots, robustness as R, select as S  # noqa: E402
from deployq import targets as T  # noqa: E402
from deployq.io import atomic_write  # noqa: E402

BUDGETS = {"fpga-fixed": "3,4,5,6", "tflite-int8": "4"}     # default budgets per target
SETTINGS = {"fpga-fixed": {"rounding": "rnd"}}


def subject(session, exported, runner, x):
    m = mirror.build(exported.target, session.graph, exported.plan)
    agree = mirror.agreement(m.logits(x), runner.run(x),
                             exported.plan.tensor(session.graph.output),
                             runner.output_qp)
    return R.Subject(exported.target.name, runner.run,
                     {"transfer": session.model.module, "bpda": m}, agree)


def robust(entry: dict) -> dict[float, float]:
    return {e["eps"]: e["robust"] for e in entry["eps"]}


def bench_model(name: str, runs: dict[str, list[float]], methods: list[str],
                cfg: R.Config, eps: float, out: Path, candidates: dict) -> list[dict]:
    """Rows of the float model and of every (target, budget, method) in runs."""
    session = api.open_session(f"zoo:{name}")
    x, y = session.dataset.test(cfg.samples)
    cache: dict = {}
    fl = R.evaluate(R.Subject("float", session.model.logits,
                              {"transfer": session.model.module}), x, y, cfg, cache)
    rows = [{"model": name, "target": "-", "method": "float", "budget": None, "bits": None,
             "clean": fl["clean"], "robust": robust(fl), "samples": len(x)}]
    for target, budgets in runs.items():
        tgt = T.get(target)
        for budget in budgets:
            for method in methods:
                rows.append(bench_one(session, tgt, budget, method, eps, x, y, cfg, cache,
                                      out, candidates))
    return rows


def bench_one(session, tgt, budget, method, eps, x, y, cfg, cache, out, candidates) -> dict:
    """candidates: select()'s min_bits and clips."""
    t0 = time.time()
    plan = S.select(session, tgt, f"{budget}bits", method, eps, SETTINGS.get(tgt.name),
                    **candidates)
    exported = api.export(tgt.name, session, out, plan=plan)
    runner = api.load_runner(exported)
    entry = R.evaluate(subject(session, exported, runner, x), x, y, cfg, cache)
    sel = plan.provenance["selection"]
    name = session.model.spec.removeprefix("zoo:")
    print(f"{name} {tgt.name} {budget} {method}: {sel['bits']} clean {entry['clean']:.3f} "
          f"robust {robust(entry)}", file=sys.stderr)
    return {"model": name, "target": tgt.name, "method": method, "budget": budget,
            "bits": sel["bits"], "weight_clip": sel["weight_clip"],
            "average_bits": sel["average_bits"],
            "clean": entry["clean"], "robust": robust(entry),
            "by": {e["eps"]: e["by"] for e in entry["eps"]},
            "mirror_top1": entry["mirror"]["top1"],
            "samples": len(x), "seconds": time.time() - t0}


def table(rows: list[dict], eps: list[float]) -> str:
    lines = ["| model | target | budget (avg bits) | method | bits per layer | avg bits "
             "| clean % | " + " | ".join(f"robust % (eps {e:g})" for e in eps) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(eps)]
    for r in rows:
        bits = "/".join(f"{b}" + (f"@{r['weight_clip'][k]:g}" if r["weight_clip"][k] != 1 else "")
                        for k, b in r["bits"].items()) if r["bits"] else "float"
        avg = f"{r['average_bits']:.2f}" if r.get("average_bits") else "32"
        lines.append(f"| {r['model']} | {r['target']} | {r['budget'] or '-'} | {r['method']} "
                     f"| {bits} | {avg} | {100 * r['clean']:.1f} | "
                     + " | ".join(f"{100 * r['robust'][e]:.1f}" for e in eps) + " |")
    return "\n".join(lines)


def loss_table(rows: list[dict], eps: list[float]) -> str:
    """Robust accuracy lost to quantization (float minus quantized, points), per model
    and eps, target, budget and method."""
    floats = {r["model"]: r["robust"] for r in rows if r["method"] == "float"}
    cols = [(m, e) for m in floats for e in eps]
    keys = sorted({(r["target"], r["budget"], r["method"]) for r in rows if r["budget"]})
    by = {(r["model"], r["target"], r["budget"], r["method"]): r["robust"]
          for r in rows if r["budget"]}
    lines = ["| target | budget | method | "
             + " | ".join(f"{m} lost at eps {e:g} (pts)" for m, e in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for key in keys:
        cells = [f"{100 * (floats[m][e] - by[(m, *key)][e]):+.1f}" if (m, *key) in by
                 else "-" for m, e in cols]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], model: str, target: str, eps: float) -> str:
    """SVG: robust accuracy at eps against the plan's average weight bits, one line per
    method, the float model's as a flat line."""
    mine = [r for r in rows if r["model"] == model and r["target"] == target]
    if len({r["budget"] for r in mine}) < 2:
        return ""                                # a line needs two budgets
    xs = [r["average_bits"] for r in mine]
    lo, hi = min(xs) - 0.25, max(xs) + 0.25
    series = []
    for m in dict.fromkeys(r["method"] for r in mine):
        pts = sorted((r["average_bits"], r["robust"][eps]) for r in mine if r["method"] == m)
        series.append({"name": m, "x": [p[0] for p in pts], "y": [p[1] for p in pts]})
    fl = next(r["robust"][eps] for r in rows if r["model"] == model and r["method"] == "float")
    series.append({"name": "float", "x": [lo, hi], "y": [fl, fl], "dashed": True})
    return plots.accuracy_chart(series, "average weight bits",
                                f"{model} on {target}: robust accuracy, eps {eps:g}",
                                dodge=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet-digits,lenet-digits-adv")
    ap.add_argument("--targets", default=",".join(BUDGETS))
    ap.add_argument("--budgets", default=None,
                    help="average weight bits for every target (default: per target, "
                         + "; ".join(f"{t} {b}" for t, b in BUDGETS.items()) + ")")
    ap.add_argument("--methods", default=",".join(S.METHODS))
    ap.add_argument("--eps", default="0.1",
                    help="comma-separated L-inf eps; the adversarial method uses the first")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--samples", type=int, default=None, help="test samples (default all)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--min-bits", type=int, default=S.MIN_BITS)
    ap.add_argument("--clips", default=",".join(f"{c:g}" for c in S.CLIPS))
    ap.add_argument("--plot", default=None,
                    help="write DIR/select-MODEL-TARGET.svg (robust accuracy at the first "
                         "eps against average bits)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    eps = [float(e) for e in args.eps.split(",")]
    cfg = R.Config(["fgsm", "pgd"], eps, ["transfer", "bpda"], args.steps,
                   samples=args.samples)
    runs = {t: [float(b) for b in (args.budgets or BUDGETS.get(t, "4")).split(",")]
            for t in args.targets.split(",")}
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for name in args.models.split(","):
            rows += bench_model(name, runs, args.methods.split(","), cfg, eps[0],
                                Path(out), {"min_bits": args.min_bits, "clips": tuple(
                                    float(c) for c in args.clips.split(","))})
    print(table(rows, eps) + "\n\n" + loss_table(rows, eps))
    if args.json:
        atomic_write(Path(args.json), json.dumps(rows, indent=1).encode())
    for name in args.models.split(",") if args.plot else []:
        for target in runs:
            svg = plot(rows, name, target, eps[0])
            if svg:
                atomic_write(Path(args.plot) / f"select-{name}-{target}.svg", svg.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
