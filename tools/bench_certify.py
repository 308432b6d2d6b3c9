"""Certified accuracy benchmark (docs/certify.md): float IBP and integer IBP on each
target, beside clean accuracy and accuracy under attack on the runtime; the float vs
integer certificate table; complete verification at one eps.

    python tools/bench_certify.py                       # the docs' figures
    python tools/bench_certify.py --models lenet-digits-qaibp -n 100 --no-complete

Writes the results as JSON (--json) and prints markdown tables."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deployq import api, report, views as V  # noqa: E402


def run(model: str, targets: list[str], eps: str, n: int, complete_eps: str | None,
        time_limit: float, steps: int | None, out: Path, strength: str = "standard",
        clock: str = "wall", only_complete: bool = False) -> dict:
    session = api.open_session(f"zoo:{model}")
    t0 = time.time()
    doc = {"model": model, "samples": n}
    if not only_complete:
        doc = api.certify(targets, eps, n, session=session, out=out, attack_steps=steps,
                          strength=strength)
    doc["seconds"] = round(time.time() - t0)
    if complete_eps:
        t0 = time.time()
        doc["complete"] = api.certify(targets, complete_eps, n, complete=True,
                                      time_limit=time_limit, session=session, out=out,
                                      attack_steps=steps, strength=strength,
                                      clock=clock)["certify"]
        doc["complete"]["seconds"] = round(time.time() - t0)
    return doc


def tables(doc: dict) -> str:
    parts = [f"### {doc['model']} ({doc['samples']} test samples, {doc['seconds']} s)"]
    if "certify" in doc:
        parts += ["", report.md_table(V.certify_rows(doc)), "",
                  report.md_table(V.certify_detail_rows(doc))]
    if "complete" in doc:
        c = {"certify": doc["complete"]}
        parts += ["", f"Complete verification ({doc['complete']['time_limit']:g} s per "
                  f"sample, {doc['complete']['seconds']} s in all):", "",
                  report.md_table(V.certify_detail_rows(c)), "", complete_table(c)]
    return "\n".join(parts)


def complete_without_attacks(model: str, target: str, n: int, eps: str, time_limit: float,
                             clock: str, out: Path) -> dict:
    """The complete row without the attack stage (stricter, and cheap on a loaded
    machine): IBP over n samples; every sample it leaves open that the runtime
    classifies right at the clean input goes to certify.verify (its counterexamples
    confirmed on the runtime); the runtime's clean errors count as falsified."""
    from deployq import certification as C
    session = api.open_session(f"zoo:{model}")
    ex = api.export(target, session, out)
    sem = C.semantics(ex, session.graph, api.load_runner(ex))
    x, y = session.dataset.test(n)
    e = C.parse_eps(eps)[0]
    qlo, qhi = sem.box(x, e)
    cert = C.certified(*C.batched_bounds(sem.bounds, qlo, qhi), y)
    clean = sem.run(x).argmax(1) == y
    counts = {"certified": int(cert.sum()), "falsified": int((~clean).sum()), "undecided": 0,
              "unconfirmed": 0}
    rows = []
    for i in np.flatnonzero(~cert & clean):
        v = C.verify(sem, session.model.module, x[i:i + 1], int(y[i]), e, time_limit, clock)
        counts[v.status] += 1
        rows.append({"sample": int(i), "status": v.status, "branches": v.boxes,
                     "wall_s": round(v.seconds, 2), "cpu_s": round(v.cpu_seconds, 2)})
        print(model, target, rows[-1], flush=True)
    decided = counts["certified"] + counts["falsified"]
    return {"model": model, "target": target, "eps": e, "samples": n, "clock": clock,
            "time_limit": time_limit, "ibp_certified": int(cert.sum()),
            "clean_wrong": int((~clean).sum()), "searched": len(rows), **counts,
            "decided": decided / n, "rows": rows}


def complete_table(c: dict) -> str:
    """Per target: the counts, the share decided, and the time (wall and CPU) of the
    samples left to branch and bound."""
    rows = [["target", "certified", "falsified", "undecided", "decided",
             "left to branch and bound", "clock", "max wall s", "max CPU s", "mean CPU s"]]
    for t in c["certify"]["targets"]:
        for e in t["eps"]:
            k = e.get("complete")
            if k:
                rows.append([t["target"], k["certified"], k["falsified"],
                             k["undecided"] + k["unconfirmed"], f"{100 * k['decided']:.1f}%",
                             k["searched"], k.get("clock", "wall"), k["max_seconds"],
                             k.get("max_cpu_seconds", "-"), k.get("mean_cpu_seconds", "-")])
    return "\n".join("| " + " | ".join(map(str, r)) + " |" for r in
                     [rows[0], ["---"] * len(rows[0])] + rows[1:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet-fmnist-qaibp,lenet-fmnist-adv,lenet-fmnist")
    ap.add_argument("--targets", default="fpga-fixed,mcu-int8")
    ap.add_argument("--eps", default="1/255,2/255,4/255")
    ap.add_argument("-n", "--samples", type=int, default=200)
    ap.add_argument("--complete-eps", default="1/255")
    ap.add_argument("--no-complete", action="store_true")
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--strength", default="standard", help="attack preset (robustness.py)")
    ap.add_argument("--steps", type=int, default=None, help="override its iterations")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="the complete time limit's clock (cpu: process time, for a loaded "
                    "machine)")
    ap.add_argument("--only-complete", action="store_true",
                    help="skip the IBP tables at --eps; run the complete row only")
    ap.add_argument("--no-attacks", action="store_true",
                    help="complete row only, without the attack stage (one target per "
                    "--targets entry)")
    ap.add_argument("--out", default="/tmp/deployq-bench-certify")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    docs = []
    if args.no_attacks:
        for model in args.models.split(","):
            for target in args.targets.split(","):
                doc = complete_without_attacks(model, target, args.samples, args.complete_eps,
                                               args.time_limit, args.clock,
                                               Path(args.out) / model / target)
                docs.append(doc)
                cpu = [r["cpu_s"] for r in doc["rows"]]
                print(f"| {model} | {target} | {doc['certified']} | {doc['falsified']} | "
                      f"{doc['undecided'] + doc['unconfirmed']} | {100 * doc['decided']:.1f}% | "
                      f"{doc['searched']} | {max(cpu, default=0):.2f} | "
                      f"{max([r['wall_s'] for r in doc['rows']], default=0):.2f} |", flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(docs, indent=1))
        return 0
    for model in args.models.split(","):
        doc = run(model, args.targets.split(","), args.eps, args.samples,
                  None if args.no_complete else args.complete_eps, args.time_limit,
                  args.steps, Path(args.out), args.strength, args.clock,
                  args.only_complete)
        docs.append(doc)
        print(tables(doc) + "\n", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(docs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
