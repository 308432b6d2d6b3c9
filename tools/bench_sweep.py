"""Benchmark of `deployq sweep` (docs/sweep.md): 16-cell sweeps with 1 and 2 workers,
local process pool and Ray, run alternately (1 then 2 workers in even rounds, 2 then 1
in odd ones) so that both see the same machine load; then a sweep killed at 50%
(SIGKILL of the whole process group once half the cells are stored) and resumed,
against a full run.

    PYTHONPATH=$PWD python tools/bench_sweep.py [--rounds 1] [--out /tmp/bench-sweep]
        [--samples 200] [--steps 10] [--queries 100] [--realistic | --only-realistic]
        [--skip-local] [--skip-ray] [--ray-cluster] [--skip-resume] [--own-sessions]
        [--tree DIR]

(--skip-local --skip-ray: the resume measurement only.)

Rows: `bench`, zoo:lenet-digits on fpga-fixed and onnx-int8, weights 8 and 4 bits, eps
0.02/0.05/0.1/0.2, FGSM+PGD from transfer and bpda and Square queries (about 1 CPU-s a
cell: start-up dominates); with --realistic also `realistic`, the same grid on
zoo:lenet-fmnist (28x28 Fashion-MNIST, the docs' Song et al. sweep) at the sweep's
default strength and 200 samples: cells of the cost a user's sweep cell has (about 10
CPU-s on fpga-fixed's C reference loops, 3 on ONNX Runtime; 104 CPU-s for the 16).

Besides wall time, every run's CPU time is sampled from /proc (the sweep process and
all its descendants: workers, Ray's processes), split into the sweep process, the
cells (sum of the cells' own cpu_seconds) and the rest (worker start-up: imports,
capture, calibration; Ray's own processes): on a shared machine the wall times carry
the load, the CPU split does not. Prints one line per run and a summary, writes
OUT/bench.json."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = """
models = ["{model}"]
targets = ["fpga-fixed", "onnx-int8"]
weight_bits = [8, 4]
eps = [0.02, 0.05, 0.1, 0.2]
strength = [{{name = "bench", steps = {steps}, restarts = 1, queries = {queries}}}]
samples = {samples}
"""
ROWS = {"bench": "zoo:lenet-digits", "realistic": "zoo:lenet-fmnist"}
TICK = os.sysconf("SC_CLK_TCK")
TREE = ROOT                 # the deployq that runs (--tree: another checkout, to compare)


def sweep_cmd(cfg: Path, out: Path, executor: str, workers: int) -> list[str]:
    """executor `ray-cluster`: `--executor ray --address` of the head start_ray_head started."""
    where = (["--executor", "ray", "--address", CLUSTER["address"]]
             if executor == "ray-cluster" else ["--executor", executor])
    return [sys.executable, "-m", "deployq", "-q", "sweep", "-c", str(cfg), "-o", str(out),
            *where, "-j", str(workers)]


CLUSTER: dict = {}          # the Ray head of --ray-cluster: address, process


def start_ray_head(cpus: int = 2, port: int = 6399, settle: float = 10.0) -> None:
    """A one-node Ray cluster as `ray start --head` sets it up (Ray's defaults, no
    dashboard), kept in the foreground (--block) in a session of its own so that
    stop_ray_head ends exactly its processes (never `ray stop`, which ends every Ray
    on the machine). Started before any timed run, like a cluster that is already
    up when sweeps are submitted to it; `settle` s for its start-up to finish."""
    ray_cli = Path(sys.executable).with_name("ray")
    temp = tempfile.mkdtemp(prefix="dqray-", dir="/tmp")  # not /tmp/ray: ray.init() finds that
    proc = subprocess.Popen([str(ray_cli), "start", "--head", "--block", f"--port={port}",
                             f"--num-cpus={cpus}", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={temp}"],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"ray start --head exited with {proc.returncode}")
            time.sleep(0.5)
    else:
        sys.exit("ray start --head did not answer within 120 s")
    time.sleep(settle)
    CLUSTER.update(address=f"127.0.0.1:{port}", proc=proc, temp=temp)


def stop_ray_head() -> None:
    proc = CLUSTER.pop("proc", None)
    if proc is not None:                # on SIGTERM `ray start --block` drains for 30 s
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        shutil.rmtree(CLUSTER.pop("temp"), ignore_errors=True)


class CpuSampler(threading.Thread):
    """CPU seconds (user + system) of a process and all its descendants, read from
    /proc every `period` s; a process's last reading counts (what it used in its last
    period before exiting is missed: at most `period` s each)."""

    def __init__(self, root: int, period: float = 0.2, cluster: int | None = None):
        """cluster: also count the processes of a Ray head (`ray start --block`, pid
        `cluster`) and its workers, from their CPU time at this moment on."""
        super().__init__(daemon=True)
        self.root, self.period, self.cpu, self.kinds = root, period, {}, {}
        self.roots = {root} | ({cluster} if cluster else set())
        self.stopped = threading.Event()
        self.sample()
        self.base = {pid: cpu for pid, cpu in self.cpu.items() if pid != root}

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            self.sample()

    def sample(self) -> None:
        parents, stats = {}, {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            name = text[text.index("(") + 1:text.rindex(")")]
            fields = text[text.rindex(")") + 2:].split()
            pid = int(entry.name)
            parents[pid] = int(fields[1])
            stats[pid] = (name, (int(fields[11]) + int(fields[12])) / TICK)
        for pid in stats:
            p = pid
            while p not in self.roots and p not in (0, 1) and p in parents:
                p = parents[p]
            if p in self.roots:
                self.cpu[pid] = stats[pid][1]
                # a process that has exited has no command line: keep what it was
                self.kinds[pid] = process_kind(pid) or self.kinds.get(pid) or stats[pid][0]

    def stop(self) -> dict:
        self.stopped.set()
        self.join()
        self.cpu = {pid: cpu - self.base.get(pid, 0.0) for pid, cpu in self.cpu.items()}
        total = sum(self.cpu.values())
        main = self.cpu.get(self.root, 0.0)
        by_kind: dict = {}
        for pid, cpu in self.cpu.items():
            kind = "sweep process" if pid == self.root else self.kinds[pid]
            row = by_kind.setdefault(kind, {"cpu": 0.0, "processes": 0})
            row["cpu"] += cpu
            row["processes"] += 1
        return {"cpu_total": round(total, 1), "cpu_sweep_process": round(main, 1),
                "processes": len(self.cpu),
                "cpu_by_kind": {k: {"cpu": round(v["cpu"], 2), "processes": v["processes"]}
                                for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]["cpu"])}}


def process_kind(pid: int) -> str | None:
    """What a descendant of the sweep is, from its command line: `ray worker` (Ray's
    worker processes, whatever task they run), `pool worker` (the local pool's spawned
    workers), Ray's agents by their title, other Python processes by their script
    (dashboard.py, monitor.py, log_monitor.py), binaries by name (raylet, gcs_server)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if not argv[0]:                     # a zombie, or a kernel thread
        return None
    if argv[0].startswith("ray::"):
        title = argv[0].split()[0]
        return title if title.endswith("Agent") else "ray worker"
    if any("multiprocessing.spawn" in a for a in argv):
        return "pool worker"
    for arg in argv[1:3]:
        if arg.endswith(".py"):
            script = os.path.basename(arg)
            return "ray worker" if script == "default_worker.py" else script
    return os.path.basename(argv[0])


def timed(cmd: list[str], kill_after: int | None = None, out: Path | None = None) -> dict:
    """Run cmd; with kill_after, SIGKILL its process group once that many cells are
    stored under out/cells. Returns wall seconds, CPU seconds, exit code, load."""
    env = os.environ | {"PYTHONPATH": str(TREE)}
    if "--address" in cmd:      # `ray start` turns token authentication on
        env["RAY_AUTH_MODE"] = "token"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, cwd=TREE)   # -m: cwd first
    head = CLUSTER.get("proc")
    sampler = CpuSampler(proc.pid, cluster=head.pid if head and "--address" in cmd else None)
    sampler.start()
    if kill_after is not None:
        while proc.poll() is None and len(list(out.glob("cells/*/cell.json"))) < kill_after:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    while proc.poll() is None:          # the last samples while the process still exists
        time.sleep(0.05)
    cpu = sampler.stop()
    _, err = proc.communicate()
    return {"seconds": round(time.perf_counter() - start, 2), "code": proc.returncode,
            "load": round(os.getloadavg()[0], 1), **cpu,
            "stderr": err[-500:] if proc.returncode else ""}


def cell_cpu(out: Path) -> dict:
    """From sweep.json: the sweep's own wall time and the cells' summed wall and CPU."""
    doc = json.loads((out / "sweep.json").read_text())
    cells = [c for c in doc["cells"] if c.get("seconds") is not None]
    return {"sweep_seconds": doc["run"]["wall_seconds"],
            "cells_seconds": round(sum(c["seconds"] for c in cells), 1),
            "cells_cpu": round(sum(c.get("cpu_seconds") or 0 for c in cells), 1)}


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def speedup(configs: dict, base: Path, executors: list[str], rounds: int) -> list[dict]:
    runs = []
    for r in range(rounds):
        for row, cfg in configs.items():
            for executor in executors:
                for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
                    out = _fresh(base / f"{row}-{executor}-{workers}-{r}")
                    t = timed(sweep_cmd(cfg, out, executor, workers))
                    t |= {"row": row, "executor": executor, "workers": workers, "round": r,
                          **cell_cpu(out)}
                    t["cpu_rest"] = round(t["cpu_total"] - t["cpu_sweep_process"]
                                          - t["cells_cpu"], 1)
                    print(json.dumps(t), flush=True)
                    runs.append(t)
    return runs


def summary(runs: list[dict], row: str, executor: str) -> dict:
    """Mean wall times and CPU split of 1 and 2 workers over the rounds, and the
    ratio of the means."""
    out = {}
    for w in (1, 2):
        mine = [r for r in runs if (r["row"], r["executor"], r["workers"]) == (row, executor, w)]
        out[w] = {k: round(sum(r[k] for r in mine) / len(mine), 1)
                  for k in ("seconds", "sweep_seconds", "cpu_total", "cpu_sweep_process",
                            "cells_cpu", "cpu_rest")}
    out["speedup"] = round(out[1]["seconds"] / out[2]["seconds"], 3)
    out["speedup_sweep_seconds"] = round(out[1]["sweep_seconds"] / out[2]["sweep_seconds"], 3)
    return out


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
             "full_cpu": full["cpu_total"], "killed_cpu": killed["cpu_total"],
             "resumed_cpu": resumed["cpu_total"],
             "ratio_cpu": round(resumed["cpu_total"] / full["cpu_total"], 3),
             "load": [full["load"], killed["load"], resumed["load"]]}
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
    ap.add_argument("--realistic", action="store_true",
                    help="also the realistic row (zoo:lenet-fmnist cells, about 6x the cost)")
    ap.add_argument("--only-realistic", action="store_true", help="the realistic row only")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--ray-cluster", action="store_true",
                    help="also Ray on a running one-node cluster (`ray start --head "
                         "--num-cpus 2`, started before the timed runs; --address)")
    ap.add_argument("--skip-local", action="store_true")
    ap.add_argument("--skip-resume", action="store_true")
    ap.add_argument("--own-sessions", action="store_true",
                    help="DEPLOYQ_SWEEP_OWN_SESSIONS=1: each local worker in its own session "
                         "(Linux autogroup shares CPU per session on a loaded machine)")
    ap.add_argument("--tree", type=Path, default=ROOT,
                    help="run the deployq of this checkout (e.g. `git worktree add` of an "
                         "older commit) to compare before and after")
    args = ap.parse_args()
    global TREE
    TREE = args.tree.resolve()
    if args.own_sessions:
        os.environ["DEPLOYQ_SWEEP_OWN_SESSIONS"] = "1"
    base = Path(args.out).resolve()
    base.mkdir(parents=True, exist_ok=True)
    rows = (["realistic"] if args.only_realistic
            else ["bench"] + (["realistic"] if args.realistic else []))
    configs = {}
    for row in rows:
        configs[row] = base / f"{row}.toml"
        configs[row].write_text(GRID.format(model=ROWS[row], samples=args.samples,
                                            steps=args.steps, queries=args.queries))
    executors = (([] if args.skip_local else ["local"]) + ([] if args.skip_ray else ["ray"])
                 + (["ray-cluster"] if args.ray_cluster else []))
    result = {"cpus": os.cpu_count(), "tree": str(TREE), "load_at_start": os.getloadavg()}
    if args.ray_cluster:
        start_ray_head()
    try:
        result["speedup_runs"] = speedup(configs, base, executors, args.rounds)
    finally:
        stop_ray_head()
    for row in rows:
        for executor in executors:
            s = result[f"{row}_{executor}"] = summary(result["speedup_runs"], row, executor)
            print(f"{row} {executor}: 1 worker {s[1]['seconds']:.1f} s, 2 workers "
                  f"{s[2]['seconds']:.1f} s, speed-up {s['speedup']}x (sweep_seconds "
                  f"{s['speedup_sweep_seconds']}x); CPU-s 1 worker {s[1]['cpu_total']} "
                  f"(sweep process {s[1]['cpu_sweep_process']}, cells {s[1]['cells_cpu']}, "
                  f"rest {s[1]['cpu_rest']}), 2 workers {s[2]['cpu_total']} "
                  f"(sweep process {s[2]['cpu_sweep_process']}, cells {s[2]['cells_cpu']}, "
                  f"rest {s[2]['cpu_rest']})")
    if not args.skip_resume:
        cfg = configs[rows[0]]
        result["resume_runs"] = resume(cfg, base, args.rounds)
        full = sum(r["full"] for r in result["resume_runs"])
        again = sum(r["resumed"] for r in result["resume_runs"])
        result["resume_ratio"] = round(again / full, 3)
        cpu_full = sum(r["full_cpu"] for r in result["resume_runs"])
        cpu_again = sum(r["resumed_cpu"] for r in result["resume_runs"])
        result["resume_ratio_cpu"] = round(cpu_again / cpu_full, 3)
        print(f"resume after a kill at 50%: {again:.1f} s vs full {full:.1f} s "
              f"({100 * again / full:.0f}%); CPU-s {cpu_again:.1f} vs {cpu_full:.1f} "
              f"({100 * cpu_again / cpu_full:.0f}%)")
    result["load_at_end"] = os.getloadavg()
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    (base / "bench.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
