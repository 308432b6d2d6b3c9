"""Bit-width selection benchmark: clean and worst-case robust accuracy, measured on the
target's runtime, of the plan each selection method chooses at each budget.

    python tools/bench_select.py         # digits LeNet, plain and -adv: fpga-fixed at
                                         # 3, 4, 5, 6 bits; tflite-int8 at 4 bits
    python tools/bench_select.py --models lenet-digits --targets fpga-fixed --budgets 4
    python tools/bench_select.py time    # how long the issue-22 LeNet select takes

On fpga-fixed every plan uses rounding 'rnd' (AP_RND; 'trn', the target's default,
loses much more at low bits); tflite-int8 holds the chosen bits on its int8 grid
(plan.py) with its own defaults. Robust accuracy is the per-sample worst case over the
--strength preset's attacks (default standard: FGSM, APGD-CE, APGD-T) from the float
model's gradients (transfer) and from the target's mirror (bpda), all scored on the
runtime (deployq.robustness), at each --eps, with Wilson 95% intervals (--sources
transfer,bpda,blackbox adds the preset's Square attack on the runtime); the adversarial
method guards against the first eps (--max-clean-drop P: its refinement's clean-accuracy
constraint). Methods: adversarial (the DP refined on a
validation split, --refine K), adversarial+uniform (the same with the uniform plan at
each clip among the refinement's candidates), adversarial-dp (the DP alone), noise,
hessian, uniform;
with --act-budgets on targets allowing several activation bits, also the joint
weight+activation selection and 'uniform-act' (the weight-only adversarial plan with
every hidden tensor at the budget's bits). Prints markdown tables and the adversarial
plan against every other row of its group (McNemar's exact p on the same samples).
Each row is also printed to stderr as 'ROW {json}' as soon as it is measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deployq import api, mirror, plots, refine as RF, robustness as R  # noqa: E402
from deployq import selection as S  # noqa: E402
from deployq import plan as P, stats, targets as T  # noqa: E402
from deployq.io import atomic_write  # noqa: E402
from deployq.runenv import THREAD_VARS  # noqa: E402

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


def transfer_file(cache_dir, name: str, cfg: R.Config) -> Path | None:
    """Where the float model's adversarial examples of this model and attack
    configuration are kept between runs (None: not kept)."""
    if not cache_dir:
        return None
    # the float model's examples do not depend on the Square attack on the runtime: a
    # run adding 'blackbox' to the sources uses the examples of the run without it
    cfg = dataclasses.replace(cfg, sources=[s for s in cfg.sources if s != "blackbox"])
    what = json.dumps([name, cfg.to_json(), cfg.describe()], sort_keys=True, default=str)
    return Path(cache_dir) / f"transfer-{name}-{hashlib.sha256(what.encode()).hexdigest()[:16]}.npz"


def load_transfer(path: Path | None, cache: dict) -> None:
    """The transfer examples a previous run saved (numpy arrays, no pickle)."""
    if path is None or not path.exists():
        return
    with np.load(path, allow_pickle=False) as z:
        for k in z.files:
            eps, attack = k.split("|")
            cache.setdefault(("transfer", float(eps)), {})[attack] = z[k]
    print(f"transfer examples from {path}", file=sys.stderr, flush=True)


def save_transfer(path: Path | None, cache: dict) -> None:
    if path is None or path.exists():
        return
    arrays = {f"{eps!r}|{a}": v for (key, eps), found in cache.items() if key == "transfer"
              for a, v in found.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())


def bench_model(name: str, runs: dict[str, list[float]], methods: list[str],
                cfg: R.Config, eps: float, out: Path, candidates: dict,
                act_budgets: list[float], cache_dir=None) -> list[dict]:
    """Rows of the float model and of every (target, budget, method) in runs; on
    targets that allow several activation bits, also every activation budget."""
    session = api.open_session(f"zoo:{name}")
    x, y = session.dataset.test(cfg.samples)
    cache: dict = {}
    measured: dict = {}              # plan key -> its row: each distinct plan measured once
    saved = transfer_file(cache_dir, name, cfg)
    load_transfer(saved, cache)
    fl = R.evaluate(R.Subject("float", session.model.logits,
                              {"transfer": session.model.module}), x, y, cfg, cache)
    save_transfer(saved, cache)
    rows = [{"model": name, "target": "-", "method": "float", "budget": None, "bits": None,
             "clean": fl["clean"], "robust": robust(fl), "samples": len(x), "act": None,
             "masks": masks(fl)}]
    print("ROW " + json.dumps(rows[0]), file=sys.stderr, flush=True)
    for target, budgets in runs.items():
        tgt = T.get(target)
        acts = [None] + (act_budgets if len(tgt.allowed.get("activation_bits", [])) > 1
                         else [])
        for budget in budgets:
            for act in acts:
                for method in (methods if act is None else ["adversarial"]):
                    rows.append(bench_one(session, tgt, budget, method, eps, x, y, cfg,
                                          cache, out, candidates, act, measured=measured))
                if act is not None:
                    rows.append(bench_uniform_acts(session, tgt, rows, eps, x, y, cfg,
                                                   cache, out, act, measured))
    return rows


def masks(entry: dict) -> dict:
    return {e["eps"]: e["robust_mask"] for e in entry["eps"]}


SUBJECTS = ("adversarial", "adversarial+uniform")   # rows tested against the others


def method_args(method: str, refine: int) -> tuple[str, int]:
    """'adversarial-dp' is the DP alone; 'adversarial' the DP refined (K = refine);
    'adversarial+uniform' the same with the uniform plan at each clip among the
    refinement's candidates (refine_options uniform_candidates)."""
    if method == "adversarial-dp":
        return "adversarial", 0
    if method == "adversarial+uniform":
        return "adversarial", refine
    return method, refine if method == "adversarial" else 0


def plan_key(target: str, plan) -> str:
    """Identity of a plan for the benchmark: the target and every tensor's settings
    (bits, clip, activation bits) the plan's config names. Two methods choosing the same
    plan get one measurement (the runtime and the attacks are deterministic given the
    plan, so measuring it twice would only cost time)."""
    return target + json.dumps(plan.config.to_json(), sort_keys=True, default=str)


def bench_one(session, tgt, budget, method, eps, x, y, cfg, cache, out, candidates,
              act=None, plan=None, measured=None) -> dict:
    """candidates: select()'s min_bits, clips, refine (K) and refine_options.
    measured: plan_key -> row of plans already measured on these samples; a plan found
    there is reported as identical to that row ('same_plan_as') without a second
    export and attack run."""
    t0 = time.time()
    cand = dict(candidates)
    name, refine = method_args(method, cand.pop("refine"))
    max_clean_drop = cand.pop("max_clean_drop", None)    # the refined rows' constraint
    if method == "adversarial+uniform":
        cand["refine_options"] = dict(cand["refine_options"], uniform_candidates=True)
    if plan is None:
        plan = S.select(session, tgt, f"{budget}bits", name, eps, SETTINGS.get(tgt.name),
                        activation_budget=None if act is None else f"{act}bits",
                        refine=refine, max_clean_drop=max_clean_drop if refine else None,
                        **cand)
    seconds = time.time() - t0
    key = plan_key(tgt.name, plan)
    if measured is not None and key in measured:
        return same_plan(measured[key], method, budget, act, seconds, plan)
    exported = api.export(tgt.name, session, out, plan=plan,
                          targets_dir=tgt.path.parent)   # the target bench uses
    runner = api.load_runner(exported)
    entry = R.evaluate(subject(session, exported, runner, x), x, y, cfg, cache)
    sel = plan.provenance["selection"]
    model = session.model.spec.removeprefix("zoo:")
    print(f"{model} {tgt.name} {budget} act {act} {method}: {sel['bits']} "
          f"{sel.get('activation_bits')} clean {entry['clean']:.3f} robust {robust(entry)} "
          f"select {seconds:.0f}s", file=sys.stderr, flush=True)
    row = {"model": model, "target": tgt.name, "method": method, "budget": budget,
            "act": act, "bits": sel["bits"], "weight_clip": sel["weight_clip"],
            "activation_bits": sel.get("activation_bits"),
            "average_bits": sel["average_bits"], "weight_bytes": sel.get("weight_bytes"),
            "average_activation_bits": sel.get("average_activation_bits"),
            "clean": entry["clean"], "robust": robust(entry), "masks": masks(entry),
            "robust_ci95": {e["eps"]: e["robust_ci95"] for e in entry["eps"]},
            "by": {e["eps"]: e["by"] for e in entry["eps"]},
            "mirror_top1": entry["mirror"]["top1"], "refinement": sel.get("refinement"),
            "samples": len(x), "select_seconds": seconds,
            "seconds": time.time() - t0}
    print("ROW " + json.dumps(row), file=sys.stderr, flush=True)      # partial runs
    if measured is not None:
        measured[key] = row
    return row


def same_plan(first: dict, method, budget, act, seconds, plan) -> dict:
    """The row of a plan already measured (first), under this method's name."""
    sel = plan.provenance["selection"]
    row = first | {"method": method, "budget": budget, "act": act,
                   "same_plan_as": first.get("same_plan_as") or first["method"],
                   "refinement": sel.get("refinement"), "select_seconds": seconds,
                   "seconds": seconds}
    print(f"{row['model']} {row['target']} {budget} act {act} {method}: same plan as "
          f"{row['same_plan_as']} ({sel['bits']}), not measured again",
          file=sys.stderr, flush=True)
    print("ROW " + json.dumps(row), file=sys.stderr, flush=True)
    return row


def bench_uniform_acts(session, tgt, rows, eps, x, y, cfg, cache, out, act,
                       measured=None) -> dict:
    """The weight-only adversarial plan of the same budget with every hidden tensor at
    `act` bits: the uniform-activation baseline of the joint selection."""
    act = int(act)
    base = next(r for r in reversed(rows) if r["target"] == tgt.name and r["act"] is None
                and r["method"] == "adversarial")
    by_name = {k: S._setting(b, base["weight_clip"][k]) for k, b in base["bits"].items()}
    config = P.PlanConfig(dict(SETTINGS.get(tgt.name, {})))
    for g in S.act_groups(session.graph, session.stats, tgt, config, [act]):
        for m in g.members:
            by_name[m] = by_name.get(m, {}) | {"activation_bits": act}
    n = sum(l.weight.size for l in session.graph.nodes if l.op in ("conv2d", "linear"))
    used = sum(session.graph.node(k).weight.size * b for k, b in base["bits"].items())
    plan = P.make(session.graph, session.stats, tgt, P.PlanConfig(config.default, {}, by_name),
                  {"selection": {"bits": base["bits"], "weight_clip": base["weight_clip"],
                                 "average_bits": used / n, "average_activation_bits": act,
                                 "activation_bits": {"all": act}}})
    row = bench_one(session, tgt, base["budget"], "uniform-act", eps, x, y, cfg, cache, out,
                    {"refine": 0}, act, plan, measured)
    return row


def saved_rows(path: Path) -> list[dict]:
    """Rows of a --json file, or the 'ROW {json}' lines of a run's stderr (a run that
    was stopped keeps the rows it measured)."""
    text = path.read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line[4:]) for line in text.splitlines() if line.startswith("ROW ")]


def with_bytes(rows: list[dict]) -> list[dict]:
    """Rows saved before rows kept 'weight_bytes': it computed from the average bits and
    the model's weight count (the packed weights, as provenance's weight_bytes)."""
    counts: dict = {}
    for r in rows:
        if r.get("weight_bytes") is None and r.get("average_bits"):
            if r["model"] not in counts:
                g = api.open_session(f"zoo:{r['model']}").graph
                counts[r["model"]] = sum(l.weight.size for l in g.nodes
                                         if l.op in ("conv2d", "linear"))
            r["weight_bytes"] = int(np.ceil(round(r["average_bits"] * counts[r["model"]])
                                            / 8))
    return rows


def fix_keys(row: dict) -> dict:
    """A row read back from JSON: its per-eps dicts keyed by float again."""
    return row | {k: {float(e): v for e, v in row[k].items()}
                  for k in ("robust", "masks", "robust_ci95", "by") if row.get(k)}


def significance(rows: list[dict], eps: list[float]) -> str:
    """Per (model, target, budget, act): each adversarial plan (SUBJECTS) against each
    other row, robust accuracy difference and McNemar's p on the same test samples."""
    lines = ["| model | target | budget | act | method | vs | eps | method % [95% CI] "
             "| other % | diff (pts) | McNemar p | clean diff (pts) | discordant (only "
             "method / only other) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] not in SUBJECTS:
            continue
        for o in rows:
            same = all(o[k] == r[k] for k in ("model", "target", "budget", "act"))
            if o is r or not same:
                continue
            for e in eps:
                lines.append(f"| {r['model']} | {r['target']} | {r['budget']} | "
                             f"{r['act'] or '-'} | {r['method']} | {o['method']} | "
                             f"{e:g} | " + versus(r, o, e))
    return "\n".join(lines)


def versus(r: dict, o: dict, e: float) -> str:
    """The table cells of row r against row o at eps e, paired on the same samples:
    r's robust % [95% CI], o's, the difference, McNemar's p, the clean difference, and
    the discordant counts McNemar's p comes from (robust in r only / in o only)."""
    n = r["samples"]
    test = stats.paired(stats.unpack(r["masks"][e], n), stats.unpack(o["masks"][e], n))
    lo, hi = r["robust_ci95"][e]
    return (f"{100 * r['robust'][e]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | "
            f"{100 * o['robust'][e]:.1f} | {100 * (r['robust'][e] - o['robust'][e]):+.1f} | "
            f"{test['p']:.2g} | {100 * (r['clean'] - o['clean']):+.1f} | "
            f"{test['first_only']} / {test['second_only']} |")


def table(rows: list[dict], eps: list[float]) -> str:
    lines = ["| model | target | budget (avg bits) | act budget | method | bits per layer "
             "| act bits | avg bits | clean % | " + " | ".join(f"robust % (eps {e:g})"
                                                         for e in eps) + " | select s | "
             "weight bytes |",
             "|---|---|---|---|---|---|---|---|---|" + "---|" * len(eps) + "---|---|"]
    for r in rows:
        bits = "/".join(f"{b}" + (f"@{r['weight_clip'][k]:g}" if r["weight_clip"][k] != 1 else "")
                        for k, b in r["bits"].items()) if r["bits"] else "float"
        avg = f"{r['average_bits']:.2f}" if r.get("average_bits") else "32"
        acts = "/".join(str(b) for b in (r.get("activation_bits") or {}).values()) or "8"
        secs = f"{r['select_seconds']:.0f}" if r.get("select_seconds") is not None else "-"
        lines.append(f"| {r['model']} | {r['target']} | {r['budget'] or '-'} | "
                     f"{r.get('act') or '-'} | {r['method']} | {bits} | {acts} | {avg} | "
                     f"{100 * r['clean']:.1f} | "
                     + " | ".join(f"{100 * r['robust'][e]:.1f}" + ci(r, e) for e in eps)
                     + f" | {secs} | {r.get('weight_bytes') or '-'} |")
    return "\n".join(lines)


def ci(row: dict, e: float) -> str:
    """' [lo, hi]': the row's Wilson 95% interval at eps e, in % ('' if not saved)."""
    lo_hi = (row.get("robust_ci95") or {}).get(e)
    return f" [{100 * lo_hi[0]:.1f}, {100 * lo_hi[1]:.1f}]" if lo_hi else ""


def loss_table(rows: list[dict], eps: list[float]) -> str:
    """Robust accuracy lost to quantization (float minus quantized, points), per model
    and eps, target, budget and method."""
    floats = {r["model"]: r["robust"] for r in rows if r["method"] == "float"}
    rows = [r for r in rows if r.get("act") is None]
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
    mine = [r for r in rows if r["model"] == model and r["target"] == target
            and r.get("act") is None]
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
    if sys.argv[1:2] == ["acts"]:              # activation bits on fpga-fixed (below)
        return acts_main(sys.argv[2:])
    if sys.argv[1:2] == ["time"]:              # selection time of one command (below)
        return time_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet-digits,lenet-digits-adv")
    ap.add_argument("--targets", default=",".join(BUDGETS))
    ap.add_argument("--budgets", default=None,
                    help="average weight bits for every target (default: per target, "
                         + "; ".join(f"{t} {b}" for t, b in BUDGETS.items()) + ")")
    ap.add_argument("--methods", default="adversarial,adversarial-dp,noise,hessian,uniform")
    ap.add_argument("--eps", default="0.1",
                    help="comma-separated L-inf eps; the adversarial method uses the first")
    ap.add_argument("--strength", default="standard", choices=list(R.PRESETS),
                    help="attack preset of the benchmark (robustness.PRESETS)")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's")
    ap.add_argument("--target-classes", type=int, default=None,
                    help="override the preset's APGD-T target classes")
    ap.add_argument("--samples", type=int, default=None, help="test samples (default all)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--min-bits", type=int, default=S.MIN_BITS)
    ap.add_argument("--clips", default=",".join(f"{c:g}" for c in S.CLIPS))
    ap.add_argument("--refine", type=int, default=6,
                    help="K: the adversarial method measures the DP's K best on the "
                         "validation split and refines (adversarial-dp: the DP alone)")
    ap.add_argument("--evals", type=int, default=RF.EVALS, help="local-search evaluations")
    ap.add_argument("--val-samples", type=int, default=RF.SAMPLES)
    ap.add_argument("--val-sources", default=",".join(RF.SOURCES),
                    help="the refinement objective's sources ('transfer,bpda': without "
                         "the Square check, docs/selection.md)")
    ap.add_argument("--act-budgets", default="",
                    help="average activation bits, e.g. '4' (targets allowing several "
                         "activation bits only)")
    ap.add_argument("--max-clean-drop", type=float, default=None,
                    help="the refined rows' clean-accuracy constraint (points below the "
                         "uniform plan's validation clean accuracy; docs/selection.md)")
    ap.add_argument("--sources", default="transfer,bpda",
                    help="attack sources of the test rows; add 'blackbox' for the Square "
                         "attack on the runtime (the preset's queries)")
    ap.add_argument("--transfer-cache", default=None,
                    help="directory keeping the float model's adversarial examples "
                         "between runs (same model, samples and attack settings)")
    ap.add_argument("--tables", nargs="+", default=None, metavar="JSON",
                    help="print the tables of rows saved by earlier runs (--json files or "
                         "their stderr's ROW lines; same test samples) instead of running")
    ap.add_argument("--plot", default=None,
                    help="write DIR/select-MODEL-TARGET.svg (robust accuracy at the first "
                         "eps against average bits)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    eps = [float(e) for e in args.eps.split(",")]
    cfg = R.Config(strength=args.strength, eps=eps, sources=args.sources.split(","),
                   steps=args.steps, target_classes=args.target_classes,
                   samples=args.samples)
    print(cfg.describe(), file=sys.stderr)
    runs = {t: [float(b) for b in (args.budgets or BUDGETS.get(t, "4")).split(",")]
            for t in args.targets.split(",")}
    acts = [float(a) for a in args.act_budgets.split(",") if a]
    candidates = {"min_bits": args.min_bits,
                  "clips": tuple(float(c) for c in args.clips.split(",")),
                  "refine": args.refine, "max_clean_drop": args.max_clean_drop,
                  "refine_options": {"evals": args.evals, "samples": args.val_samples,
                                     "sources": tuple(args.val_sources.split(","))}}
    rows = []
    if args.tables:
        rows = with_bytes([fix_keys(r) for f in args.tables for r in saved_rows(Path(f))])
        print(table(rows, eps) + "\n\n" + significance(rows, eps))
        return 0
    with tempfile.TemporaryDirectory() as out:
        for name in args.models.split(","):
            rows += bench_model(name, runs, args.methods.split(","), cfg, eps[0],
                                Path(out), candidates, acts, args.transfer_cache)
    if args.json:
        atomic_write(Path(args.json), json.dumps(rows, indent=1).encode())
    print(table(rows, eps) + "\n\n" + loss_table(rows, eps) + "\n\n"
          + significance(rows, eps))
    for name in args.models.split(",") if args.plot else []:
        for target in runs:
            svg = plot(rows, name, target, eps[0])
            if svg:
                atomic_write(Path(args.plot) / f"select-{name}-{target}.svg", svg.encode())
    return 0


# --- activation bits on fpga-fixed: `python tools/bench_select.py acts ...` ----------

ACT_METHODS = "a8,uniform,noise,adversarial-dp,adversarial"


def act_plans(session, tgt, weights: int, act: int, method: str, eps: float,
              candidates: dict, rounding: str = "rnd"):
    """The plan of one activation row at `weights` average weight bits (8: every layer
    at 8 bits, unclipped) and `act` average activation bits:
      a8        the weight plan with the target's default (8-bit) activations
      uniform   the weight plan with every hidden activation group at `act` bits
      noise, adversarial-dp   select() with the activation budget, the DP alone
      adversarial             the same refined on the validation split (K = refine)
    The weight plan of a8 / uniform: all 8 bits, or the weight-only adversarial DP.
    Every plan rounds as `rounding` (the benchmark's 'rnd', or the target's 'trn')."""
    settings = {"rounding": rounding}
    fixed = {"min_bits": 8, "clips": (1.0,)} if weights >= 8 else {
        "min_bits": candidates["min_bits"], "clips": candidates["clips"]}
    if method in ("a8", "uniform") or method.startswith("acts:"):
        # the weight plan; with relu_unsigned its (unused) default activations at `act`
        # bits, since 8-bit unsigned tensors are refused
        unsigned = {"activation_bits": act} if T.relu_unsigned(tgt) else {}
        base = S.select(session, tgt, f"{weights}bits", "adversarial", eps,
                        settings | unsigned, **fixed)
        if method == "a8":
            return base
        by_name = dict(base.config.by_name)
        config = P.PlanConfig(dict(settings))
        groups = S.act_groups(session.graph, session.stats, tgt, config, [act])
        bits = (fixed_acts(method, len(groups)) if method.startswith("acts:")
                else [act] * len(groups))
        for g, b in zip(groups, bits):
            for m in g.members:
                by_name[m] = by_name.get(m, {}) | {"activation_bits": b}
        numel = [g.numel for g in groups]
        sel = dict(base.provenance["selection"]) | {
            "activation_bits": {g.head: b for g, b in zip(groups, bits)},
            "average_activation_bits": float(np.dot(numel, bits) / sum(numel))}
        return P.make(session.graph, session.stats, tgt,
                      P.PlanConfig(config.default, {}, by_name), {"selection": sel})
    name, refine = method_args(method, candidates["refine"])
    return S.select(session, tgt, f"{weights}bits", name, eps, settings,
                    activation_budget=f"{act}bits", refine=refine,
                    refine_options=candidates["refine_options"],
                    max_clean_drop=candidates.get("max_clean_drop") if refine else None,
                    **fixed)


def fixed_acts(method: str, groups: int) -> list[int]:
    """'acts:3/5/8' -> [3, 5, 8]: a given activation plan (one bits per group), e.g. a
    plan an earlier selection chose, re-measured without selecting again."""
    try:
        bits = [int(b) for b in method.removeprefix("acts:").split("/")]
    except ValueError:
        bits = []
    if len(bits) != groups or not all(2 <= b <= 8 for b in bits):
        raise SystemExit(f"bench_select.py: error: {method!r} needs {groups} activation "
                         "bits in 2..8, e.g. acts:3/5/8")
    return bits


def act_rows(name: str, weights: list[int], act: int, methods: list[str], cfg, eps: float,
             out: Path, candidates: dict, done: list[dict], save,
             rounding: str = "rnd", targets_dir=None) -> list[dict]:
    """Rows of every (weight bits, method) of one model at `act` activation bits; a plan
    already measured (same settings) is not measured again (its row says 'same as').
    targets_dir: where fpga-fixed.toml is read (e.g. a copy with relu_unsigned = true)."""
    session = api.open_session(f"zoo:{name}")
    tgt = T.get("fpga-fixed", targets_dir)
    x, y = session.dataset.test(cfg.samples)
    cache: dict = {}
    measured: dict = {}
    rows = []
    for w in weights:
        for method in methods:
            t0 = time.time()
            plan = act_plans(session, tgt, w, act, method, eps, candidates, rounding)
            seconds = time.time() - t0
            key = json.dumps(plan.config.by_name, sort_keys=True)
            if key in measured:
                row = dict(measured[key]) | {"method": method, "same_as": measured[key]["method"]}
            else:
                row = bench_one(session, tgt, w, method, eps, x, y, cfg, cache, out,
                                {"refine": 0}, act, plan)
                measured[key] = row
            sel = plan.provenance["selection"]
            row = row | {"select_seconds": seconds, "refinement": sel.get("refinement"),
                         "activation_bits": sel.get("activation_bits"),
                         "predicted": sel.get("predicted_objective"), "weights": w,
                         "rounding": rounding,
                         "relu_unsigned": T.relu_unsigned(tgt)}
            rows.append(row)
            save(done + rows)
    return rows


def act_significance(rows: list[dict], eps: list[float]) -> str:
    """Each selected row against uniform, noise and a8 of its model and weight bits."""
    lines = ["| model | weights | method | vs | eps | method % [95% CI] | other % | diff (pts) "
             "| McNemar p | clean diff (pts) | discordant (only method / only other) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] not in ("adversarial", "adversarial-dp", "noise") \
                and not r["method"].startswith("acts:"):
            continue
        for o in rows:
            if (o["model"], o["weights"]) != (r["model"], r["weights"]) or o is r \
                    or o["method"] not in ("uniform", "a8", "noise") \
                    or (r["method"] == "noise" and o["method"] == "noise"):
                continue
            for e in eps:
                lines.append(f"| {r['model']} | {r['weights']} | {r['method']} | "
                             f"{o['method']} | {e:g} | " + versus(r, o, e))
    return "\n".join(lines)


def act_table(rows: list[dict], eps: list[float]) -> str:
    lines = ["| model | weights (avg bits) | method | weight bits per layer | act bits per "
             "group | avg act bits | clean % | " + " | ".join(
                 f"robust % (eps {e:g}) [95% CI]" for e in eps) + " | select s |",
             "|---|---|---|---|---|---|---|" + "---|" * len(eps) + "---|"]
    for r in rows:
        bits = "/".join(f"{b}" + (f"@{r['weight_clip'][k]:g}" if r["weight_clip"][k] != 1
                                  else "") for k, b in r["bits"].items())
        acts = r.get("activation_bits") or {}
        avg = r.get("average_activation_bits")
        cells = [f"{100 * r['robust'][e]:.1f} [{100 * r['robust_ci95'][e][0]:.1f}, "
                 f"{100 * r['robust_ci95'][e][1]:.1f}]" for e in eps]
        lines.append(f"| {r['model']} | {r['weights']} | {r['method']} | {bits} | "
                     f"{'/'.join(str(b) for b in acts.values()) or '8'} | "
                     f"{avg if avg is not None else 8:.2f} | {100 * r['clean']:.1f} | "
                     + " | ".join(cells) + f" | {r['select_seconds']:.0f} |")
    return "\n".join(lines)


def acts_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="bench_select.py acts",
        description="Activation bits on fpga-fixed: uniform activations against the "
                    "selected ones at one average activation budget (docs/selection.md).")
    ap.add_argument("--models", default="lenet-fmnist-adv,lenet-fmnist")
    ap.add_argument("--weights", default="8", help="average weight bits, e.g. '8,4'")
    ap.add_argument("--act-budget", type=int, default=4, help="average activation bits")
    ap.add_argument("--methods", default=ACT_METHODS)
    ap.add_argument("--eps", default="0.1,0.03",
                    help="comma-separated L-inf eps; selection uses the first")
    ap.add_argument("--strength", default="standard", choices=list(R.PRESETS))
    ap.add_argument("--target-classes", type=int, default=None)
    ap.add_argument("--samples", type=int, default=500, help="test samples")
    ap.add_argument("--refine", type=int, default=4)
    ap.add_argument("--evals", type=int, default=16)
    ap.add_argument("--val-samples", type=int, default=RF.SAMPLES)
    ap.add_argument("--val-sources", default=",".join(RF.SOURCES),
                    help="the refinement objective's sources ('transfer,bpda': without "
                         "the Square check, docs/selection.md)")
    ap.add_argument("--rounding", default="rnd", choices=["rnd", "trn", "rnd_conv"],
                    help="every plan's rounding (fpga-fixed's default is trn)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sources", default="transfer,bpda",
                    help="attack sources of the test rows; add 'blackbox' for the Square "
                         "attack on the runtime (the preset's queries)")
    ap.add_argument("--json", default=None, help="rows, rewritten after each one")
    ap.add_argument("--targets-dir", default=None, help="a folder with an fpga-fixed.toml "
                    "(e.g. a copy with relu_unsigned = true: unsigned activations)")
    ap.add_argument("--max-clean-drop", type=float, default=None,
                    help="the refined rows' clean-accuracy constraint (points below the "
                         "uniform plan's validation clean accuracy; docs/selection.md)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    eps = [float(e) for e in args.eps.split(",")]
    cfg = R.Config(strength=args.strength, eps=eps, sources=args.sources.split(","),
                   target_classes=args.target_classes, samples=args.samples)
    print(cfg.describe(), file=sys.stderr)
    candidates = {"min_bits": S.MIN_BITS, "clips": S.CLIPS, "refine": args.refine,
                  "max_clean_drop": args.max_clean_drop,
                  "refine_options": {"evals": args.evals, "samples": args.val_samples,
                                     "sources": tuple(args.val_sources.split(","))}}

    def save(rows):
        if args.json:
            atomic_write(Path(args.json), json.dumps(rows, indent=1).encode())

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as out:
        for name in args.models.split(","):
            rows += act_rows(name, [int(w) for w in args.weights.split(",")],
                             args.act_budget, args.methods.split(","), cfg, eps[0],
                             Path(out), candidates, rows, save, args.rounding,
                             args.targets_dir)
    print(act_table(rows, eps) + "\n\n" + act_significance(rows, eps))
    return 0


TIMED = ["select", "-m", "zoo:lenet-fmnist-adv", "-t", "fpga-fixed", "-b", "4bits",
         "--activation-budget", "4bits", "--refine", "6", "--rounding", "rnd",
         "--eps", "0.1"]
API_TIMED = """
import logging, pathlib, torch
torch.set_num_threads(1)
logging.basicConfig(format="deployq: %(message)s", level=logging.INFO)
from deployq import api, selection as S
s = api.open_session(model="zoo:lenet-fmnist-adv")
s.stats
plan = S.select(s, "fpga-fixed", "4bits", "adversarial", 0.1, {{"rounding": "rnd"}},
                activation_budget="4bits", refine=6, refine_options={{"workers": {workers}}})
plan.save(pathlib.Path({out!r}) / "fpga-fixed" / "plan.json")
"""


def time_main(argv: list[str]) -> int:
    """Selection time (docs/selection.md, "Selection time"): runs `deployq select` with
    refinement (default: the issue-22 LeNet command) as a child process and prints its
    wall time and the CPU seconds of it and its worker processes (getrusage of the
    reaped children), the machine's load average before and after, and the
    refinement's own record (evaluations, pruned, workers, unused).

        python tools/bench_select.py time                 # as a user runs it
        python tools/bench_select.py time --threads 1     # one thread, one process:
                                                          # load-independent CPU s
    """
    import os
    import resource
    import subprocess
    ap = argparse.ArgumentParser(prog="bench_select.py time",
                                 description="Time one deployq select with refinement.")
    ap.add_argument("--threads", type=int, default=None,
                    help="set OMP/MKL/OPENBLAS_NUM_THREADS (1: the refinement runs in "
                         "one process, one thread); default: unset, as a user runs it")
    ap.add_argument("--workers", type=int, default=None,
                    help="instead of the CLI, run the default command's selection through "
                         "deployq.selection.select with refine_options workers=N and one "
                         "torch thread per process (the parallel version's CPU seconds, "
                         "load-independent)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("args", nargs="*", help="replace the select arguments (after --)")
    args = ap.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    if args.threads:
        env |= {v: str(args.threads) for v in THREAD_VARS}
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "deployq", *(args.args or TIMED), "-o", out, "-v"]
        if args.workers:
            env |= {v: "1" for v in THREAD_VARS}
            cmd = [sys.executable, "-c", API_TIMED.format(workers=args.workers, out=out)]
        shown = " ".join(f"{k}={env[k]}" for k in THREAD_VARS if k in env and (
            args.threads or args.workers))
        print("command:", shown, "PYTHONPATH=" + str(root), "python",
              " ".join(repr(c) if "\n" in c else c for c in cmd[1:]), flush=True)
        load0, before = os.getloadavg(), resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        after, load1 = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()
        plans = list(Path(out).glob("*/plan.json"))
        ref = (json.loads(plans[0].read_text())["provenance"]["selection"]
               .get("refinement", {}) if plans else {})
    result = {"command": cmd[1:-3] if not args.workers else "API, workers "
              f"{args.workers}", "threads": args.threads, "exit": done.returncode,
              "wall_s": round(wall, 1),
              "cpu_s": round(after.ru_utime - before.ru_utime
                             + after.ru_stime - before.ru_stime, 1),
              "load_before": [round(v, 2) for v in load0],
              "load_after": [round(v, 2) for v in load1],
              "refinement": {k: ref.get(k) for k in ("evaluations", "pruned", "workers",
                                                     "unused", "seconds", "cpu_seconds",
                                                     "chosen")}}
    print(json.dumps(result, indent=1))
    if args.json:
        atomic_write(Path(args.json), json.dumps(result, indent=1).encode())
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
