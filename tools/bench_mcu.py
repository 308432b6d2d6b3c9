"""Instructions per inference of the Cortex-M4 build, reference vs optimized kernels,
counted by QEMU (docs/mcu.md, "How instructions are counted"), side by side.

    python tools/bench_mcu.py [--models lenet-digits,dsnet-digits,resnet8] [--out FILE]
                              [--calibrate]

For each model, the mcu-int8 export's C project is written twice (deployq.cproject,
kernels "ref" and "opt"), built with the project's flags (arm-none-eabi-gcc -O2
-mcpu=cortex-m4 -mthumb -mfloat-abi=soft) and run on QEMU's MPS2-AN386 with -icount
shift=0: 20 inferences each, whose outputs the firmware checks against the host
reference kernels' (so both rows are bit-exact or the run fails). Printed as a
markdown tables: mean instructions per inference, the ratio ref / opt, flash and RAM;
then each build's footprint (deployq.cproject.footprint) and the wall time of one
batch run under QEMU without -icount (as the mcu-qemu runner; a shared machine's load
shows in it).

Models: zoo:NAME for the zoo (its test split as inputs), and "resnet8": MLPerf Tiny's
ResNet-8 topology for 3x32x32 images (conv 16, three residual stacks of 16, 32, 64
channels, the last two strided with 1x1 shortcut convs, 8x8 average pool, linear 10),
untrained (seeded random weights, folded batch norm, calibrated on 64 random images;
the instruction count does not depend on the weights' values, and the inputs are 20
seeded random int8 images)."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from deployq import cproject  # noqa: E402
from deployq.io import atomic_write  # noqa: E402

SETS = ("ref", "opt")


def resnet8():
    """MLPerf Tiny's ResNet-8 (image classification, CIFAR-10 shapes), as a torch module."""
    import torch
    from torch import nn

    def conv_bn(cin, cout, k, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a, self.b = conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, 1)
            self.short = conv_bn(cin, cout, 1, stride) if stride != 1 else nn.Identity()

        def forward(self, x):
            return torch.relu(self.b(torch.relu(self.a(x))) + self.short(x))

    class ResNet8(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn(3, 16, 3, 1)
            self.stacks = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
            self.pool, self.fc = nn.AvgPool2d(8), nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.stacks(torch.relu(self.stem(x)))), 1))

    torch.manual_seed(0)
    return ResNet8().eval()


def export(name: str, work: Path) -> tuple[Path, np.ndarray | None]:
    """model.dqm of the mcu-int8 export, and float test inputs (None: random int8 rows)."""
    from deployq import api
    if name != "resnet8":
        session = api.open_session(f"zoo:{name}")
        ex = api.export("mcu-int8", session, work / name)
        return ex.path, session.dataset.test(cproject.TEST_COUNT)[0]
    import torch
    from deployq import calibrate, graph as G, plan as P, targets as T
    from deployq.backends import mcu
    torch.set_num_threads(1)
    graph = G.capture(resnet8(), (3, 32, 32))
    x = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
    target = T.get("mcu-int8")
    plan = P.make(graph, calibrate.collect(graph, x), target, P.PlanConfig(default={}))
    path, _ = mcu.export(graph, plan, target, work / name, x)
    return path, None


def wall_time(elf: Path, project: Path, n: int = 359) -> tuple[float, float]:
    """Seconds of one mcu-qemu style batch run (cproject.run_stream, no -icount) of 1
    and of n seeded random rows: QEMU's start-up, and start-up plus n inferences (n:
    the digits test split's size, 20 for ResNet-8)."""
    import time
    rows = np.random.default_rng(0).integers(
        -128, 128, (n, cproject._define(project, "DEPLOYQ_INPUT_BYTES")), dtype=np.int8)
    out_bytes = cproject._define(project, "DEPLOYQ_OUTPUT_BYTES")
    times = []
    for batch in (rows[:1], rows):
        start = time.perf_counter()
        cproject.run_stream(elf, batch, out_bytes)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def measure(dqm: Path, inputs, kernels: str, work: Path, wall_samples: int) -> dict:
    from deployq.backends import mcu
    project = mcu.c_project(dqm, work / f"proj-{kernels}", inputs, kernels)
    elf = cproject.build(project, extra_cflags="-Werror")["stream"]
    return cproject.footprint(project) | {"wall_s": wall_time(elf, project, wall_samples),
                                          "wall_samples": wall_samples}


def table(rows: list[tuple[str, dict, dict]]) -> str:
    lines = ["| model | ref instructions / inference | opt instructions / inference | ref / opt "
             "| flash ref / opt (B) | RAM ref / opt (B) |", "|---|---|---|---|---|---|"]
    for name, ref, opt in rows:
        r, o = (fp["instructions_per_inference"]["mean"] for fp in (ref, opt))
        lines.append(f"| {name} | {r:,.0f} | {o:,.0f} | {r / o:.2f}x "
                     f"| {ref['firmware_flash_bytes']:,} / {opt['firmware_flash_bytes']:,} "
                     f"| {ref['ram_bytes']:,} / {opt['ram_bytes']:,} |")
    return "\n".join(lines) + "\n"


def details(rows: list[tuple[str, dict, dict]]) -> str:
    """Flash, RAM and instructions of each build (cproject.footprint's fields)."""
    lines = ["| model | kernels | model data | firmware flash | arena | static RAM | stack "
             "| RAM total | instructions / inference (min-max) | est. ms @ 168 MHz "
             "| QEMU wall time, 1 / N samples |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, *fps in rows:
        for kernels, fp in zip(SETS, fps):
            inst = fp["instructions_per_inference"]
            lines.append(f"| {name} | {kernels} | {fp['model_data_bytes']:,} B "
                         f"| {fp['firmware_flash_bytes']:,} B | {fp['arena_bytes']:,} B "
                         f"| {fp['firmware_static_ram_bytes']:,} B | {fp['stack_bytes']:,} B "
                         f"| {fp['ram_bytes']:,} B | {inst['mean']:,.0f} ({inst['min']:,.0f}-"
                         f"{inst['max']:,.0f}) | {fp['estimated_ms']['ms']:.2f} "
                         f"| {fp['wall_s'][0]:.2f} / {fp['wall_s'][1]:.2f} s "
                         f"(N = {fp['wall_samples']}) |")
    return "\n".join(lines) + "\n"


def calibrate(project: Path) -> str:
    """Build tools/mcu_timer_calibration.c with the project's board files and run it
    under QEMU (-icount shift=0): lines "iterations ticks", then "empty 0" and the ticks of
    an empty timed region."""
    import subprocess
    src = Path(__file__).resolve().parent / "mcu_timer_calibration.c"
    elf = project / "build" / "calibration.elf"
    arch = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft"]
    subprocess.run(["arm-none-eabi-gcc", "-std=c99", *arch, "-O2", f"-I{project / 'board'}",
                    "-T", str(project / "board" / "mps2_an386.ld"), "-nostartfiles",
                    "-Wl,--gc-sections", str(src),
                    *map(str, sorted((project / "board").glob("*.c"))), "-o", str(elf)],
                   check=True)
    return cproject._qemu(elf, project, True, 120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="lenet-digits,dsnet-digits,resnet8")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    ap.add_argument("--calibrate", action="store_true",
                    help="also check the instruction count on a loop of known length")
    ap.add_argument("--wall-samples", type=int, default=None,
                    help="rows of the QEMU wall-time batch run (default: 20 for resnet8, "
                         "359 for the others)")
    args = ap.parse_args(argv)
    cproject.require_tools()
    rows = []
    with tempfile.TemporaryDirectory(prefix="deployq-bench-mcu-") as tmp:
        for name in args.models.split(","):
            work = Path(tmp) / name
            dqm, inputs = export(name, work)
            wall = args.wall_samples or (20 if name == "resnet8" else 359)  # ResNet-8: ~0.1 G each
            fps = {k: measure(dqm, inputs, k, work, wall) for k in SETS}
            rows.append((name, fps["ref"], fps["opt"]))
            if args.calibrate and len(rows) == 1:
                print("timer calibration (iterations ticks):\n" +
                      calibrate(work / "proj-opt"), file=sys.stderr)
            print(f"{name}: " + ", ".join(f"{k} {fps[k]['instructions_per_inference']['mean']:,.0f}"
                                          for k in SETS), file=sys.stderr)
    text = table(rows) + "\n" + details(rows)
    print(text, end="")
    if args.out:
        atomic_write(Path(args.out), text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
