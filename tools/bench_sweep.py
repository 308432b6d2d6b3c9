"""Benchmark of `deployq sweep` (docs/sweep.md): a 16-cell sweep with 1 and 2 workers,
local process pool and Ray, run alternately so that both see the same machine load;
then a sweep killed at 50% (SIGKILL of the whole process group once half the cells are
stored) and resumed, against a full run.

    PYTHONPATH=$PWD python tools/bench_sweep.py [--rounds 1] [--out /tmp/bench-sweep]
        [--samples 200] [--steps 10] [--skip-ray] [--skip-resume] [--own-sessions]

Prints one line per run and a summary (ratios, load average), and writes
OUT/bench.json. The cells: zoo:lenet-digits on fpga-fixed and onnx-int8, weights 8 and
4 bits, eps 0.02/0.05/0.1/0.2, FGSM+PGD from transfer and bpda and Square queries."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
models = ["zoo:lenet-digits"]
targets = ["fpga-fixed", "onnx-int8"]
weight_bits = [8, 4]
eps = [0.02, 0.05, 0.1, 0.2]
strength = [{{name = "bench", steps = {steps}, restarts = 1, queries = {queries}}}]
samples = {samples}
"""


def sweep_cmd(cfg: Path, out: Path, executor: str, workers: int) -> list[str]:
    return [sys.executable, "-m", "deployq", "-q", "sweep", "-c", str(cfg), "-o", str(out),
            "--executor", executor, "-j", str(workers)]


def timed(cmd: list[str], kill_after: int | None = None, out: Path | None = None) -> dict:
    """Run cmd; with kill_after, SIGKILL its process group once that many cells are
    stored under out/cells. Returns wall seconds, exit code, load average."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    if kill_after is not None:
        while proc.poll() is None and len(list(out.glob("cells/*/cell.json"))) < kill_after:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    return {"seconds": round(time.perf_counter() - start, 2), "code": proc.returncode,
            "load": os.getloadavg()[0], "stderr": err[-500:] if proc.returncode else ""}


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def speedup(cfg: Path, base: Path, executors: list[str], rounds: int) -> list[dict]:
    runs = []
    for r in range(rounds):
        for executor in executors:
            for workers in (1, 2):
                out = _fresh(base / f"{executor}-{workers}-{r}")
                t = timed(sweep_cmd(cfg, out, executor, workers))
                doc = json.loads((out / "sweep.json").read_text())
                t |= {"executor": executor, "workers": workers, "round": r,
                      "sweep_seconds": doc["run"]["wall_seconds"]}
                print(json.dumps(t), flush=True)
                runs.append(t)
    return runs


def resume(cfg: Path, base: Path, rounds: int) -> list[dict]:
    runs = []
    for r in range(rounds):
        full = timed(sweep_cmd(cfg, _fresh(base / f"full-{r}"), "local", 1))
        out = _fresh(base / f"killed-{r}")
        killed = timed(sweep_cmd(cfg, out, "local", 1), kill_after=8, out=out)
        stored = len(list(out.glob("cells/*/cell.json")))
        resumed = timed(sweep_cmd(cfg, out, "local", 1))
        doc = json.loads((out / "sweep.json").read_text())
        t = {"round": r, "full": full["seconds"], "killed_after": killed["seconds"],
             "stored_at_kill": stored, "resumed": resumed["seconds"],
             "computed_on_resume": doc["run"]["computed"],
             "ratio": round(resumed["seconds"] / full["seconds"], 3),
             "load": resumed["load"]}
        print(json.dumps(t), flush=True)
        runs.append(t)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/bench-sweep")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--skip-resume", action="store_true")
    ap.add_argument("--own-sessions", action="store_true",
                    help="DEPLOYQ_SWEEP_OWN_SESSIONS=1: each local worker in its own session "
                         "(Linux autogroup shares CPU per session on a loaded machine)")
    args = ap.parse_args()
    if args.own_sessions:
        os.environ["DEPLOYQ_SWEEP_OWN_SESSIONS"] = "1"
    base = Path(args.out)
    base.mkdir(parents=True, exist_ok=True)
    cfg = base / "sweep.toml"
    cfg.write_text(CONFIG.format(samples=args.samples, steps=args.steps, queries=args.queries))
    executors = ["local"] + ([] if args.skip_ray else ["ray"])
    result = {"cpus": os.cpu_count(), "speedup_runs": speedup(cfg, base, executors, args.rounds)}
    for executor in executors:
        t = {w: [r["seconds"] for r in result["speedup_runs"]
                 if r["executor"] == executor and r["workers"] == w] for w in (1, 2)}
        result[f"{executor}_speedup"] = round(sum(t[1]) / sum(t[2]), 3)
        print(f"{executor}: 1 worker {sum(t[1]):.1f} s, 2 workers {sum(t[2]):.1f} s, "
              f"speed-up {result[f'{executor}_speedup']}x")
    if not args.skip_resume:
        result["resume_runs"] = resume(cfg, base, args.rounds)
        full = sum(r["full"] for r in result["resume_runs"])
        again = sum(r["resumed"] for r in result["resume_runs"])
        result["resume_ratio"] = round(again / full, 3)
        print(f"resume after a kill at 50%: {again:.1f} s vs full {full:.1f} s "
              f"({100 * again / full:.0f}%)")
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    (base / "bench.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
