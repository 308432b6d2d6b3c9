"""Pair activation rows measured in separate runs of `tools/bench_select.py acts` on the
same test images (docs/selection.md): prints the rows' table and each acts:/selected row
against the uniform row(s), McNemar exact p on the per-sample robust masks.

    python tools/select_act_pairs.py A.json B.json [...] [--eps 0.03]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path


def bench():
    path = Path(__file__).resolve().parent / "bench_select.py"
    spec = importlib.util.spec_from_file_location("bench_select", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--eps", default="0.03")
    args = ap.parse_args()
    b = bench()
    eps = [float(e) for e in args.eps.split(",")]
    rows = [b.fix_keys(r) for f in args.files for r in json.loads(Path(f).read_text())]
    samples = {r["samples"] for r in rows}
    if len(samples) != 1:
        sys.exit(f"select_act_pairs.py: error: the rows cover different test samples "
                 f"({sorted(samples)}); pair rows of the same images only")
    print(b.act_table(rows, eps) + "\n\n" + b.act_significance(rows, eps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
