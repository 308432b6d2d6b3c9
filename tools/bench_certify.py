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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deployq import api, report, views as V  # noqa: E402


def run(model: str, targets: list[str], eps: str, n: int, complete_eps: str | None,
        time_limit: float, steps: int | None, out: Path, strength: str = "standard") -> dict:
    session = api.open_session(f"zoo:{model}")
    t0 = time.time()
    doc = api.certify(targets, eps, n, session=session, out=out, attack_steps=steps,
                      strength=strength)
    doc["seconds"] = round(time.time() - t0)
    if complete_eps:
        t0 = time.time()
        doc["complete"] = api.certify(targets, complete_eps, n, complete=True,
                                      time_limit=time_limit, session=session, out=out,
                                      attack_steps=steps, strength=strength)["certify"]
        doc["complete"]["seconds"] = round(time.time() - t0)
    return doc


def tables(doc: dict) -> str:
    parts = [f"### {doc['model']} ({doc['samples']} test samples, {doc['seconds']} s)", "",
             report.md_table(V.certify_rows(doc)), "",
             report.md_table(V.certify_detail_rows(doc))]
    if "complete" in doc:
        c = {"certify": doc["complete"]}
        parts += ["", f"Complete verification ({doc['complete']['time_limit']:g} s per "
                  f"sample, {doc['complete']['seconds']} s in all):", "",
                  report.md_table(V.certify_detail_rows(c))]
    return "\n".join(parts)


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
    ap.add_argument("--out", default="/tmp/deployq-bench-certify")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    docs = []
    for model in args.models.split(","):
        doc = run(model, args.targets.split(","), args.eps, args.samples,
                  None if args.no_complete else args.complete_eps, args.time_limit,
                  args.steps, Path(args.out), args.strength)
        docs.append(doc)
        print(tables(doc) + "\n", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(docs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
