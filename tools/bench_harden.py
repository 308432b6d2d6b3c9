"""Benchmarks of `deployq harden` (docs/harden.md).

    python tools/bench_harden.py eval --run plain=zoo:lenet-fmnist \\
        --run vanilla=zoo:lenet-fmnist@runs/vanilla --run dq=zoo:lenet-fmnist@runs/dq ...
        robust accuracy on fpga-fixed (4-bit activations, 8-bit weights) measured on the
        C runtime, worst case over PGD from the model's float copy (transfer) and
        through the target's bit-exact mirror (bpda), with 95% Wilson intervals
        --strength standard: the robustness preset (APGD-CE, APGD-T from both gradient
        sources, Square on the runtime); --compare A:B: McNemar on the per-sample robust
        accuracy of runs A and B; --merge FILE: add the runs of an earlier --json
        --start S: test samples S .. S+n-1 (a piece of a larger set, run apart); --merge
        joins the pieces of a run (the same NAME, adjacent ranges) into one row
        --merge-eval NAME=FILE: the runtimes' rows of a `deployq eval --json` file
        (NAME@mcu-int8, ...), to --compare models on the int8 targets
    python tools/bench_harden.py time [--train-samples 3000]
        one harden epoch of plain QAT, dq, pgd and dq+pgd side by side on a slice of
        Fashion-MNIST (order alternated over the repeats), and the ratios

    python tools/bench_harden.py subset --train-samples 12000 --json fmnist12k.npz
        a seeded slice of Fashion-MNIST's training split (with the whole test split) as
        an .npz for `-d`: the runs of docs/harden.md trained on it to fit a shared machine
    python tools/bench_harden.py lipschitz --run dq=zoo:lenet-digits@runs/dq ...
        per weighted layer of each run's folded float weights: the spectral norm of W
        reshaped to (out, in*k*k) (what DQ's penalty pushes to 1), the layer's operator
        norm as a linear map on its input (power iteration: a 3x3 conv's can exceed the
        matrix's by up to 3x), ||W W^T - I||_F (smaller Gram), and their products
    python tools/bench_harden.py valsplit --data digits --json digits-val.npz
        harden's validation split (the same --val-fraction and --seed) as the test split
        of an .npz, its training part as the training split: `eval --data digits-val.npz`
        then measures runs on the validation samples, to choose beta at the standard
        strength without reading the test split

A run is NAME=MODEL (the model as it is, with a calibrated plan: post-training
quantization) or NAME=MODEL@DIR (DIR from `deployq harden`: its weights and plan.json).
Single-threaded and seeded.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deployq import api, plan as P, robustness as R, stats, targets as T  # noqa: E402

TARGET = "fpga-fixed"


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion p measured on n samples."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def evaluate_run(name: str, spec: str, args) -> dict:
    model, _, folder = spec.partition("@")
    weights = str(Path(folder) / "weights.safetensors") if folder else None
    session = api.open_session(model, weights, args.data)
    _from_sample(session.dataset, args.start, args.samples)
    tgt = T.get(TARGET, args.targets_dir)
    if folder:
        plan_path = Path(folder) / "plan.json"
    else:                                        # post-training quantization
        config = api.plan_config(tgt, {"activation_bits": args.activation_bits,
                                        "weight_bits": args.weight_bits,
                                        "rounding": args.rounding},
                                 session.graph.output, hidden_only=True)
        plan = P.make(session.graph, session.stats, tgt, config, api.provenance(session))
        plan_path = Path(tempfile.mkdtemp()) / "plan.json"
        plan.save(plan_path)
    cfg = eval_config(args)
    out = Path(tempfile.mkdtemp())
    result = api.evaluate([TARGET], session, out, args.samples, None, args.targets_dir,
                          cfg, {TARGET: plan_path})
    settings = next(iter(P.QuantPlan.load(plan_path).layers.values())).settings
    rows = {r["target"]: r for r in result["results"]}
    attacked = {t["target"]: t["eps"][0] for t in result["robustness"]["targets"]}
    return {"run": name, "model": model, "weights": weights,
            "float_clean": rows["float"]["accuracy"],
            "float_robust": attacked["float"]["robust"],
            "clean": rows[TARGET]["accuracy"], "robust": attacked[TARGET]["robust"],
            "robust_mask": attacked[TARGET]["robust_mask"],
            "float_robust_mask": attacked["float"]["robust_mask"],
            "by": {f"{b['source']}/{b['attack']}": b["accuracy"]
                   for b in attacked[TARGET]["by"]},
            "attack": cfg.describe(), "samples": args.samples,
            "rounding": settings.get("rounding")}


def _from_sample(ds, start: int, samples: int) -> None:
    """Make test samples start .. start+samples-1 the dataset's first ones (evaluate
    always reads the first n). The attacks draw their random starts per call, so a
    piece's per-sample results are deterministic for its (start, samples) and seed."""
    if start < 0 or start + samples > len(ds.x_test):
        raise SystemExit(f"bench_harden: error: --start {start} with -n {samples} goes "
                         f"past the {len(ds.x_test)} test samples")
    ds.x_test, ds.y_test = ds.x_test[start:], ds.y_test[start:]


MASKS = ("robust_mask", "float_robust_mask")
RATES = ("float_clean", "float_robust", "clean", "robust")


def join_pieces(rows: list[dict]) -> list[dict]:
    """Rows of the same run measured on adjacent sample ranges (--start) as one row:
    rates weighted by samples, per-sample masks concatenated in sample order. Rows of
    one run must cover one gap-free range with the same attack."""
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        by_run.setdefault(r["run"], []).append(r)
    return [_join(name, pieces) for name, pieces in by_run.items()]


def _join(name: str, pieces: list[dict]) -> dict:
    pieces = sorted(pieces, key=lambda r: r.get("start", 0))
    if len(pieces) == 1:
        return pieces[0]
    end = pieces[0].get("start", 0)
    for r in pieces:
        if r.get("start", 0) != end or r["attack"] != pieces[0]["attack"]:
            raise SystemExit(f"bench_harden: error: run {name}: the pieces must cover "
                             "adjacent sample ranges with the same attack; got "
                             + ", ".join(f"{r.get('start', 0)}+{r['samples']}"
                                         for r in pieces))
        end += r["samples"]
    n = end - pieces[0].get("start", 0)
    joined = dict(pieces[0], samples=n)
    for key in RATES:
        joined[key] = sum(r[key] * r["samples"] for r in pieces) / n
    joined["by"] = {k: sum(r["by"][k] * r["samples"] for r in pieces) / n
                    for k in pieces[0]["by"]}
    for key in MASKS:
        if all(key in r for r in pieces):
            joined[key] = stats.pack([v for r in pieces
                                      for v in stats.unpack(r[key], r["samples"])])
    return joined


def eval_config(args) -> R.Config:
    """pgd: PGD-steps x restarts from transfer and bpda (the first runs of
    docs/harden.md); standard/thorough: the robustness presets (APGD-CE, APGD-T and
    Square on the runtime), any of --steps/--restarts/--queries given overriding it."""
    if args.strength == "pgd":
        return R.Config(["pgd"], [args.eps], ["transfer", "bpda"], args.steps or 20,
                        args.restarts or 1, samples=args.samples)
    return R.Config(None, [args.eps], args.sources.split(","), args.steps, args.restarts,
                    args.queries, samples=args.samples, strength=args.strength)


def compare(rows: list[dict], pairs: list[str], key: str = "robust_mask") -> list[dict]:
    """McNemar on the per-sample robust correctness of each FIRST:SECOND pair of runs
    (the same test samples): the discordant counts and the exact two-sided p-value.
    NAME/float is run NAME's float copy (e.g. plain/float: the float plain model)."""
    by_name = {r["run"]: r for r in rows}
    by_name |= {f"{r['run']}/float": {"run": f"{r['run']}/float", "samples": r["samples"],
                                      "robust": r["float_robust"],
                                      key: r["float_robust_mask"]}
                for r in rows if "float_robust_mask" in r}
    found = []
    for pair in pairs:
        first, _, second = pair.partition(":")
        if first not in by_name or second not in by_name:
            raise SystemExit(f"bench_harden: error: --compare {pair}: no run named "
                             f"{first if first not in by_name else second}")
        a, b = by_name[first], by_name[second]
        n = a["samples"]
        if (n, a.get("start", 0)) != (b["samples"], b.get("start", 0)):
            raise SystemExit(f"bench_harden: error: --compare {pair}: the runs were "
                             "measured on different test samples")
        found.append({"first": first, "second": second,
                      "difference": a["robust"] - b["robust"]}
                     | stats.paired(stats.unpack(a[key], n), stats.unpack(b[key], n)))
    return found


def rows_of_deployq_eval(name: str, doc: dict) -> list[dict]:
    """The robust rows of a `deployq eval --json` document (one eps), one per runtime
    target, as rows named NAME@TARGET (their float copy: NAME@TARGET/float), so that
    --compare pairs them: e.g. a zoo model against another on mcu-int8."""
    rob = doc.get("robustness")
    if not rob or len(rob["eps"]) != 1:
        raise SystemExit(f"bench_harden: error: --merge-eval {name}: the document has no "
                         "robustness results at one eps (run deployq eval with --strength "
                         "or --attacks and a single --eps)")
    by_target = {t["target"]: t for t in rob["targets"]}
    flt = by_target["float"]["eps"][0]
    return [{"run": f"{name}@{t}", "model": doc.get("model"), "weights": None,
             "float_clean": by_target["float"]["clean"], "float_robust": flt["robust"],
             "float_robust_mask": flt["robust_mask"], "clean": entry["clean"],
             "robust": entry["eps"][0]["robust"], "robust_mask": entry["eps"][0]["robust_mask"],
             "by": {f"{b['source']}/{b['attack']}": b["accuracy"]
                    for b in entry["eps"][0]["by"]},
             "attack": rob["description"], "samples": entry["eps"][0]["samples"],
             "rounding": None, "start": 0}
            for t, entry in by_target.items() if t != "float"]


def cmd_eval(args) -> None:
    rows = [row for path in args.merge for row in json.loads(Path(path).read_text())["runs"]]
    for spec in args.merge_eval:
        name, _, path = spec.partition("=")
        rows += rows_of_deployq_eval(name, json.loads(Path(path).read_text()))
    rows = join_pieces(rows + [evaluate_run(*r.split("=", 1), args) | {"start": args.start}
                               for r in args.run])
    n = rows[0]["samples"] if rows else args.samples
    start = rows[0].get("start", 0) if rows else args.start
    setting = (f"{TARGET}, {args.activation_bits}-bit activations, {args.weight_bits}-bit "
               "weights" if args.run or args.merge else "the targets of --merge-eval")
    print(f"{setting}; eps {args.eps}; {rows[0]['attack'] if rows else ''}; robust accuracy on the "
          f"C runtime; test samples {start}-{start + n - 1}; 95% Wilson intervals")
    print(f"{'run':<10} {'float clean':>11} {'float robust':>20} {'clean':>7} {'robust':>20}")
    for r in rows:
        lo, hi = wilson(r["robust"], r["samples"])
        flo, fhi = wilson(r["float_robust"], r["samples"])
        print(f"{r['run']:<10} {100 * r['float_clean']:>10.1f}% "
              f"{100 * r['float_robust']:>6.1f}% [{100 * flo:.1f}, {100 * fhi:.1f}] "
              f"{100 * r['clean']:>6.1f}% {100 * r['robust']:>6.1f}% "
              f"[{100 * lo:.1f}, {100 * hi:.1f}]")
        print(f"{'':<10} rounding {r.get('rounding')}; by source/attack: "
              + ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["by"].items()))
    pairs = compare(rows, args.compare)
    for c in pairs:
        print(f"{c['first']} - {c['second']}: {100 * c['difference']:+.1f} points; "
              f"robust only under {c['first']}: {c['first_only']}, only under "
              f"{c['second']}: {c['second_only']}; McNemar p = {c['p']:.3g}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": rows, "compare": pairs}, indent=1))


METHODS = [("qat", "dq", 0.0), ("dq", "dq", 3e-4), ("pgd", "pgd", 0.0),
           ("dq+pgd", "dq+pgd", 3e-4)]


def cmd_time(args) -> None:
    session = api.open_session("zoo:lenet-fmnist", None, args.data)
    ds = session.dataset
    ds.x_train, ds.y_train = ds.x_train[:args.train_samples], ds.y_train[:args.train_samples]
    seconds: dict[str, list[float]] = {m[0]: [] for m in METHODS}
    state = {k: v.clone() for k, v in session.model.module.state_dict().items()}
    for rep in range(args.repeats):
        for label, method, beta in (METHODS if rep % 2 == 0 else METHODS[::-1]):
            session.model.module.load_state_dict(state)
            with tempfile.TemporaryDirectory() as out:
                r = api.harden(TARGET, method, out, 1, args.eps, beta, session=session,
                               activation_bits=args.activation_bits,
                               weight_bits=args.weight_bits, steps=args.pgd_steps,
                               val_samples=50, val_steps=1)
            seconds[label].append(r["epoch_seconds"])
            print(f"repeat {rep + 1}: {label:<7} {r['epoch_seconds']:.1f} s", flush=True)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    print(f"median epoch seconds on {args.train_samples} samples: "
          + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
    print(f"dq / plain QAT: {med['dq'] / med['qat']:.2f}x (goal <= 2)")
    print(f"dq+pgd / pgd:   {med['dq+pgd'] / med['pgd']:.2f}x (goal <= 1.2)")


def cmd_subset(args) -> None:
    import numpy as np
    from deployq import data
    ds = data.load(args.data or "fashion-mnist")
    idx = np.sort(np.random.default_rng(0).permutation(len(ds.x_train))[:args.train_samples])
    np.savez(args.json, x=ds.x_train[idx], y=ds.y_train[idx], x_test=ds.x_test,
             y_test=ds.y_test)
    print(f"{args.json}: {len(idx)} training samples, {len(ds.x_test)} test samples")


def operator_norm(node, shape: tuple[int, ...], w: torch.Tensor, iters: int = 200) -> float:
    """The L2 operator norm of node's linear map (bias left out) on inputs of `shape`,
    by power iteration on J^T J (seeded)."""
    from deployq import graph as G
    v = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    for _ in range(iters):
        v = (v / v.norm()).requires_grad_(True)
        u = G.weighted(node, v, w, None)
        (v,) = torch.autograd.grad(0.5 * (u * u).sum(), v)
    return float(v.norm().sqrt())


def cmd_lipschitz(args) -> None:
    from deployq import hardening as H
    for name, spec in (r.split("=", 1) for r in args.run):
        model, _, folder = spec.partition("@")
        weights = str(Path(folder) / "weights.safetensors") if folder else None
        graph = api.open_session(model, weights, args.data).graph
        rows, prod_mat, prod_op = [], 1.0, 1.0
        for n in (n for n in graph.nodes if n.op in ("conv2d", "linear")):
            w = torch.from_numpy(n.weight)
            mat = float(torch.linalg.matrix_norm(w.reshape(len(w), -1), ord=2))
            op = operator_norm(n, graph.shape_of(n.inputs[0]), w)
            orth = float(H.orthogonality(w).sqrt())
            prod_mat, prod_op = prod_mat * mat, prod_op * op
            rows.append(f"{n.name} {mat:.2f}/{op:.2f} (orth {orth:.2f})")
        print(f"{name}: " + ", ".join(rows)
              + f"; products {prod_mat:.2f}/{prod_op:.2f}")


def cmd_valsplit(args) -> None:
    import numpy as np
    from deployq import data, hardening
    ds = data.load(args.data or "digits", args.seed)
    part = hardening.split(ds.x_train, ds.y_train, args.val_fraction, args.seed)
    np.savez(args.json, x=part.x_train, y=part.y_train, x_test=part.x_val,
             y_test=part.y_val)
    print(f"{args.json}: {len(part.x_train)} training samples, {len(part.x_val)} "
          "validation samples as its test split")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["eval", "time", "subset", "valsplit", "lipschitz"])
    ap.add_argument("--run", action="append", default=[], help="NAME=MODEL[@DIR]")
    ap.add_argument("--data", default=None)
    ap.add_argument("--eps", type=float, default=0.03)
    ap.add_argument("--samples", "-n", type=int, default=500)
    ap.add_argument("--start", type=int, default=0, help="first test sample attacked "
                    "(a piece of a larger set; --merge joins the pieces)")
    ap.add_argument("--strength", choices=["pgd", *R.STRENGTHS], default="pgd",
                    help="pgd: PGD-20 transfer + bpda (the first runs); else a preset")
    ap.add_argument("--sources", default="transfer,bpda,blackbox",
                    help="gradient sources for the presets (blackbox: Square)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--restarts", type=int, default=None)
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--merge", action="append", default=[], help="an earlier eval's "
                    "--json: its runs join the table (runs measured apart, in parallel)")
    ap.add_argument("--merge-eval", action="append", default=[], help="NAME=FILE: the "
                    "robust rows of a `deployq eval --json` file, one per target, named "
                    "NAME@TARGET")
    ap.add_argument("--compare", action="append", default=[], help="FIRST:SECOND runs, "
                    "McNemar on their per-sample robust accuracy")
    ap.add_argument("--rounding", default=None, help="fpga-fixed rounding of the "
                    "post-training plans (default: the target's); a harden run's plan "
                    "keeps the rounding it was trained with")
    ap.add_argument("--targets-dir", default=None, help="a folder whose fpga-fixed.toml "
                    "replaces the built-in one (e.g. rounding = \"trn\" for a plan written "
                    "before plans recorded their input's rounding)")
    ap.add_argument("--activation-bits", type=int, default=4)
    ap.add_argument("--weight-bits", type=int, default=8)
    ap.add_argument("--train-samples", type=int, default=3000)
    ap.add_argument("--pgd-steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    {"eval": cmd_eval, "time": cmd_time, "subset": cmd_subset,
     "valsplit": cmd_valsplit, "lipschitz": cmd_lipschitz}[args.command](args)
    print(f"({time.time() - t0:.0f} s; machine shared with other jobs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
