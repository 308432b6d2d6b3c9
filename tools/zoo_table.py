"""Per zoo model x target: accuracy on the Fashion-MNIST test set, and how many tensors
mcu-int8 and tflite-int8-ref compute bit-identically (docs/zoo.md).

    python tools/zoo_table.py                            # the four MLPerf Tiny / MobileNet models
    python tools/zoo_table.py resnet8-fmnist --samples 1000 --diff-samples 100

Accuracy on the first --samples test samples (default: all 10k) on float, onnx-int8
and tflite-int8, on the first --slow-samples (default 1000) on the targets that run
the reference kernels or the C runtime one sample at a time; the tensor comparison
(deployq diff) on the first --diff-samples. Prints a
Markdown table and writes --json (default zoo-table.json).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deployq import api, backends, diff, targets as T, zoo  # noqa: E402
from deployq.errors import DeployqError, TargetError  # noqa: E402

TARGETS = ["onnx-int8", "tflite-int8", "tflite-int8-ref", "mcu-int8", "fpga-fixed"]
FAST = ("onnx-int8", "tflite-int8")


def measure(name: str, targets: list[str], samples: int | None, slow_samples: int,
            diff_samples: int, out: Path) -> dict:
    session = api.open_session(f"zoo:{name}")
    x, y = session.dataset.test(samples)
    float_acc = float((session.model.logits(x).argmax(1) == y).mean())
    row = {"model": name, "samples": int(len(x)), "float": float_acc, "targets": {},
           "weights_bytes": Path(str(zoo.weights_file(name))).stat().st_size,
           "parameters": sum(p.numel() for p in session.model.module.parameters())}
    runners = {}
    for target in targets:
        t0 = time.time()
        try:
            backends.get(T.get(target).backend)
            runners[target] = api.load_runner(api.export(target, session, out / name))
            n = len(x) if target in FAST else slow_samples
            acc = float((runners[target].run(x[:n]).argmax(1) == y[:n]).mean())
            float_n = float((session.model.logits(x[:n]).argmax(1) == y[:n]).mean())
            row["targets"][target] = {"accuracy": acc, "samples": int(min(n, len(x))),
                                      "float_same_samples": float_n,
                                      "seconds": round(time.time() - t0)}
        except (DeployqError, TargetError) as e:
            row["targets"][target] = {"error": str(e)}
        print(f"{name} {target}: {row['targets'][target]}", file=sys.stderr)
    if "tflite-int8-ref" in runners and "mcu-int8" in runners:
        rows = diff._compare([runners["tflite-int8-ref"], runners["mcu-int8"]],
                             x[:diff_samples])
        row["diff"] = {"samples": min(diff_samples, len(x)), "tensors": len(rows),
                       "identical_tensors": sum(r["different"] == 0 for r in rows),
                       "elements": sum(r["elements"] for r in rows),
                       "different_elements": sum(r["different"] for r in rows)}
    return row


def table(rows: list[dict], targets: list[str]) -> str:
    head = ["model", "params", "weights", "float"] + targets + ["mcu = ref tensors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['model']}`", f"{r['parameters']:,}", f"{r['weights_bytes'] / 1024:.0f} KiB",
                 f"{100 * r['float']:.2f}%"]
        for t in targets:
            e = r["targets"].get(t, {})
            cells.append(f"{100 * e['accuracy']:.2f}% ({e['samples']}; float "
                         f"{100 * e['float_same_samples']:.2f}%)" if "accuracy" in e else
                         f"refused: {e.get('error', 'not run')[:80]}")
        d = r.get("diff")
        cells.append(f"{d['identical_tensors']}/{d['tensors']} ({d['samples']} samples)"
                     if d else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=[f"{a}-fmnist" for a in zoo.FMNIST_ARCHS])
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--slow-samples", type=int, default=1000)
    ap.add_argument("--diff-samples", type=int, default=100)
    ap.add_argument("--json", default="zoo-table.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    targets = args.targets.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(m, targets, args.samples, args.slow_samples, args.diff_samples,
                        Path(tmp))
                for m in args.models]
    Path(args.json).write_text(json.dumps(rows, indent=1))
    print(table(rows, targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
