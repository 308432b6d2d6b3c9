"""Time the C runtime against LiteRT (XNNPACK and reference kernels) and ONNX Runtime on
the zoo models, single-threaded, in one run; write docs/runtime-bench.md.

    python tools/bench_runtime.py [--repeats 7] [--batch 256] [--out docs/runtime-bench.md]

Each figure is the median of --repeats timings (after a warm-up) of: one call on one
sample (batch 1, microseconds) and one call on --batch samples (microseconds per sample).
Every runner includes its own input quantization, as in deployq's evaluation."""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deployq import api, zoo  # noqa: E402
from deployq.backends import mcu, onnx, tflite  # noqa: E402
from deployq.io import atomic_write  # noqa: E402


def _median_time(fn, repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (max(times) - min(times))


def runners(name: str, out: Path) -> dict:
    session = api.open_session(f"zoo:{name}")
    m = api.export("mcu-int8", session, out / name)
    o = api.export("onnx-int8", session, out / name)
    tfl = m.path.parent / tflite.ARTIFACT
    return session, {"C runtime (mcu-int8)": mcu.load(m.path),
                     "LiteRT XNNPACK": tflite.Runner(tfl, "xnnpack", threads=1),
                     "LiteRT BUILTIN_REF": tflite.Runner(tfl, "reference", threads=1),
                     "ONNX Runtime": onnx.load(o.path, threads=1)}


def bench(models, batch: int, repeats: int) -> list[tuple]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            session, rs = runners(name, Path(tmp))
            x, _ = session.dataset.test(batch)
            for label, r in rs.items():
                one, _ = _median_time(lambda: r.run(x[:1]), repeats * 5)
                many, spread = _median_time(lambda: r.run(x), repeats)
                rows.append((name, label, one * 1e6, many / len(x) * 1e6, spread / len(x) * 1e6))
                print(f"{name:14s} {label:22s} batch 1: {one * 1e6:8.1f} us   "
                      f"batch {len(x)}: {many / len(x) * 1e6:7.1f} us/sample", file=sys.stderr)
    return rows


def table(rows, batch: int, repeats: int) -> str:
    lines = [f"| model | runtime | batch 1 (us) | batch {batch} (us/sample) | spread (us/sample) |",
             "|---|---|---|---|---|"]
    lines += [f"| {m} | {r} | {a:.1f} | {b:.1f} | {c:.1f} |" for m, r, a, b, c in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("docs/runtime-bench.md"))
    ap.add_argument("--models", default=",".join(m for m in zoo.MODELS if zoo.weights_file(m).is_file()))
    args = ap.parse_args()
    rows = bench(args.models.split(","), args.batch, args.repeats)
    doc = (f"# C runtime speed\n\nMeasured by `python tools/bench_runtime.py --repeats "
           f"{args.repeats} --batch {args.batch}` on {platform.processor() or platform.machine()}"
           f" ({os.cpu_count()} cores), one thread each, medians of {args.repeats} runs.\n\n"
           + table(rows, args.batch, args.repeats) + "\n")
    atomic_write(args.out, doc.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
