"""What the attacks of `deployq run` cost, part by part, on targets already exported to
OUT (e.g. by `deployq run`):

    python tools/bench_attack_cost.py [--out deployq-out] [--queries 30] [--samples 200]

mirrors  CPU milliseconds of one forward + backward pass (cross-entropy gradient, the
         unit of every APGD/PGD step) on `samples` digits test inputs: the float model
         and each target's BPDA mirror
square   the Square attack (eps 0.1, `queries` queries, seed 0) on mcu-qemu, once with
         a fresh QEMU per runner call (cproject.run_stream, as before the persistent
         session) and once through the runner's QEMU session: wall and CPU seconds
         (this process and its QEMU children), and whether both found the same
         adversarial examples (they must: the outputs are the device's either way)
Times are CPU time where it says so: on a shared machine wall time measures the other
jobs too. One torch thread."""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from deployq import api, attacks as A, cproject, mirror
from deployq.backends import crunner

MIRRORED = ("onnx-int8", "tflite-int8", "mcu-int8", "fpga-fixed")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def step_ms(model, x: np.ndarray, y: np.ndarray, repeats: int = 20) -> float:
    """CPU ms of one cross-entropy forward + input-gradient backward pass."""
    yt = torch.from_numpy(y).long()
    start = time.process_time()
    for _ in range(repeats):
        xi = torch.from_numpy(x).requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xi), yt, reduction="sum"), xi)
    return (time.process_time() - start) / repeats * 1e3


def mirrors(session, out: str, x, y) -> None:
    print(f"float model: {step_ms(session.model.module, x, y):.1f} CPU ms per step")
    for name in MIRRORED:
        ex = api.load_exported(name, out)
        m = mirror.build(ex.target, session.graph, ex.plan)
        print(f"{name} mirror ({type(m).__name__}): {step_ms(m, x, y):.1f} CPU ms per step")


def square(out: str, x, y, queries: int) -> None:
    runner = api.load_runner(api.load_exported("mcu-qemu", out))

    def one_shot(xx):
        codes = cproject.run_stream(runner.elf, crunner.rows(runner.quantize(xx)),
                                    runner.output_bytes)
        return runner.output_qp.dequantize(codes.astype(np.int32))

    found = []
    for how, fn in (("a fresh QEMU per call", one_shot), ("the QEMU session", runner.run)):
        wall, cpu = time.perf_counter(), _cpu()
        found.append(A.square_attack(fn, x, y, 0.1, queries, 0))
        runner.close()                  # its QEMU exits, so its CPU time is counted
        print(f"Square, {queries} queries on mcu-qemu through {how}: "
              f"{time.perf_counter() - wall:.1f} s wall, {_cpu() - cpu:.1f} CPU s")
    print("same adversarial examples:", np.array_equal(*found))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="deployq-out")
    p.add_argument("--queries", type=int, default=30)
    p.add_argument("--samples", type=int, default=200)
    a = p.parse_args()
    torch.set_num_threads(1)
    session = api.open_session("zoo:lenet-digits")
    x, y = session.dataset.test(a.samples)
    mirrors(session, a.out, x, y)
    square(a.out, x, y, a.queries)


if __name__ == "__main__":
    main()
