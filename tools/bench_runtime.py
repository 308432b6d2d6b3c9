"""Time the C runtime (reference and optimized kernel sets) against LiteRT (XNNPACK and
reference kernels) and ONNX Runtime on the zoo models, single-threaded, in one run;
write docs/runtime-bench.md.

    python tools/bench_runtime.py [--repeats 7] [--batch 256] [--out docs/runtime-bench.md]
                                  [--models A,B] [--section TITLE]

Each figure is the median of --repeats timings (after a warm-up) of: one call on one
sample (batch 1, microseconds) and one call on --batch samples (microseconds per sample).
Every runner includes its own input quantization, as in deployq's evaluation. The
runners of one model are timed in turn, round after round, so that a change of the
machine's load falls on all of them alike."""
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

C_REF, C_OPT = "C reference", "C optimized"
XNN, BREF, ORT = "LiteRT XNNPACK", "LiteRT BUILTIN_REF", "ONNX Runtime"
COLUMNS = (C_REF, C_OPT, XNN, BREF, ORT)
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni")


def cpu() -> str:
    """The processor's model name and its SIMD flags (Linux /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")),
                platform.machine())
    flags = next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), [])
    return f"{name}, {os.cpu_count()} cores, SIMD flags: {' '.join(f for f in SIMD_FLAGS if f in flags)}"


def runners(name: str, out: Path):
    session = api.open_session(f"zoo:{name}")
    m = api.export("mcu-int8", session, out / name)
    o = api.export("onnx-int8", session, out / name)
    tfl = m.path.parent / tflite.ARTIFACT
    return session, {C_REF: mcu.Runner(m.path, "ref"), C_OPT: mcu.Runner(m.path, "opt"),
                     XNN: tflite.Runner(tfl, "xnnpack", threads=1),
                     BREF: tflite.Runner(tfl, "reference", threads=1),
                     ORT: onnx.load(o.path, threads=1)}


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(rs: dict, x, repeats: int) -> dict:
    """{label: (median batch-1 seconds, median seconds per sample of the batch)}."""
    one, many = {k: [] for k in rs}, {k: [] for k in rs}
    for r in rs.values():
        r.run(x[:1]), r.run(x)                      # warm-up
    for _ in range(repeats):
        for label, r in rs.items():
            one[label] += [_seconds(lambda: r.run(x[:1])) for _ in range(5)]
            many[label].append(_seconds(lambda: r.run(x)) / len(x))
    return {k: (statistics.median(one[k]), statistics.median(many[k])) for k in rs}


def bench(models, batch: int, repeats: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            session, rs = runners(name, Path(tmp))
            x, _ = session.dataset.test(batch)
            results[name] = interleaved(rs, x, repeats)
            for label, (one, many) in results[name].items():
                print(f"{name:14s} {label:20s} batch 1: {one * 1e6:8.1f} us   "
                      f"batch {len(x)}: {many * 1e6:7.1f} us/sample", file=sys.stderr)
    return results


def table(results: dict, which: int, unit: str) -> str:
    head = "| model | " + " | ".join(COLUMNS) + " | optimized / XNNPACK | BUILTIN_REF / optimized |"
    lines = [head, "|---" * (len(COLUMNS) + 3) + "|"]
    for name, row in results.items():
        t = {k: v[which] * 1e6 for k, v in row.items()}
        cells = " | ".join(f"{t[c]:.1f}" for c in COLUMNS)
        lines.append(f"| {name} | {cells} | {t[C_OPT] / t[XNN]:.1f}x | {t[BREF] / t[C_OPT]:.1f}x |")
    return f"{unit}\n\n" + "\n".join(lines)


def with_section(old: str, title: str, body: str) -> str:
    """old with its "## title" section (up to the next "## " heading) replaced by body,
    or body appended when old has no such section."""
    head = f"## {title}\n"
    if head not in old:
        return old.rstrip("\n") + "\n\n" + head + "\n" + body
    start = old.index(head)
    nxt = old.find("\n## ", start + len(head))
    return old[:start] + head + "\n" + body + ("" if nxt < 0 else old[nxt:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("docs/runtime-bench.md"))
    ap.add_argument("--models", default=",".join(m for m in zoo.MODELS if zoo.weights_file(m).is_file()))
    ap.add_argument("--section", default=None,
                    help="write the tables as the section '## SECTION' of --out (replaced "
                         "if present, else appended), keeping the rest of the file")
    args = ap.parse_args()
    results = bench(args.models.split(","), args.batch, args.repeats)
    load = os.getloadavg()[0]
    command = f"python tools/bench_runtime.py --repeats {args.repeats} --batch {args.batch}"
    if args.section:
        command += f" --models {args.models} --section '{args.section}'"
    body = (f"Measured by `{command}` on {cpu()}; one thread each, medians of "
            f"{args.repeats} interleaved rounds. Load average at the end of the run: "
            f"{load:.1f} on {os.cpu_count()} cores (the machine was shared): absolute times "
            "depend on that load; the ratios between runners timed in the same rounds are "
            "the comparable figures. \"C reference\" and \"C optimized\" are the two kernel "
            "sets of the C runtime (docs/runtime.md), same integers; \"C optimized\" is what "
            "mcu-int8 runs by default.\n\n"
            + table(results, 1, f"Batch {args.batch}, microseconds per sample:") + "\n\n"
            + table(results, 0, "Batch 1, microseconds per call:") + "\n")
    if args.section:
        old = args.out.read_text() if args.out.is_file() else "# C runtime speed\n"
        doc = with_section(old, args.section, body)
    else:
        doc = "# C runtime speed\n\n" + body
    atomic_write(args.out, doc.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
