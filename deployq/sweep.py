"""deployq sweep: a grid of independent cells (model x target x weight bits x activation
bits x selected plan x eps x attack strength), each cell exactly one `deployq eval`
(api.evaluate with its robustness stage: the same code, nothing re-implemented).

Cells are cached under OUT/cells/ID/cell.json, where ID is a content hash of everything
the cell's numbers depend on (model weights, data, seed, target file, plan settings,
attack settings, deployq version), so a re-run or a killed sweep computes only what is
missing, and a cell is counted once however often it ran. Executors: a local process
pool (`local`, the default) or Ray (`ray`, locally or on a cluster); both run the same
`run_cell` and give the same sweep.json apart from its `run` section and each cell's
`seconds`. The results' views are in deployq/sweepreport.py."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import runenv
from .runenv import THREAD_VARS, one_thread
from .errors import DeployqError, InputError

log = logging.getLogger("deployq")
FORMAT, VERSION = "deployq-sweep", 1
DEFAULT = "default"         # an axis value meaning "the target's default"
RETRIES = 2                 # reruns of a cell whose worker died (killed, out of memory)
SWEEP_DEFAULTS = {
    "models": ["zoo:lenet-digits"], "targets": ["fpga-fixed"], "weight_bits": [DEFAULT],
    "activation_bits": [DEFAULT], "plans": [], "eps": [0.05, 0.1, 0.2],
    "strength": [{"name": "default", "steps": 10, "restarts": 1, "queries": 100}],
    "attacks": ["fgsm", "pgd"], "sources": ["transfer", "bpda", "blackbox"],
    "samples": 200, "seed": 0, "calib_samples": 512, "calibration": None, "data": None,
    "targets_dir": None, "out": "sweep-out", "temperature": 1.0,
}
TIMINGS = ("seconds", "cpu_seconds")     # a cell's fields that depend on how it ran
AXES = ("model", "target", "weight_bits", "activation_bits", "plan", "eps", "strength")


@dataclass(frozen=True)
class Cell:
    """One point of the grid; `id` is its content hash (set by Sweep.cells)."""
    model: str
    target: str
    weight_bits: int | None
    activation_bits: int | None
    plan: dict | None
    eps: float
    strength: dict
    id: str = ""

    def axes(self) -> dict:
        return {"model": self.model, "target": self.target, "weight_bits": self.weight_bits,
                "activation_bits": self.activation_bits,
                "plan": plan_label(self.plan) if self.plan else None, "eps": self.eps,
                "strength": self.strength["name"]}


def plan_label(plan: dict) -> str:
    return f"{plan['method']}@{plan['budget']}"


@dataclass
class Sweep:
    """A checked sweep configuration (SWEEP_DEFAULTS' keys)."""
    cfg: dict
    targets: dict = field(default_factory=dict)        # name -> targets.Target
    fingerprints: dict = field(default_factory=dict)   # model spec -> sha256 of weights
    skipped: list = field(default_factory=list)        # [{"axes", "reason"}]

    @property
    def out(self) -> Path:
        return Path(self.cfg["out"])

    def cells(self) -> list[Cell]:
        """Every valid cell in grid order; invalid ones go to self.skipped."""
        self.skipped = []
        cells = []
        for cell in _grid(self.cfg):
            reason = self._invalid(cell)
            if reason:
                self.skipped.append({"axes": cell.axes(), "reason": reason})
                continue
            cells.append(Cell(**{**cell.__dict__, "id": self.cell_id(cell)}))
        return cells

    def _invalid(self, cell: Cell) -> str | None:
        from . import backends, targets as T
        from .errors import TargetError
        tgt = self.targets[cell.target]
        settings = {"weight_bits": cell.weight_bits, "activation_bits": cell.activation_bits}
        missing = backends.missing_package(tgt.backend)
        if missing:
            return missing
        try:
            T.plan_settings(tgt, settings)
        except TargetError as e:
            return str(e)
        if cell.plan and len(tgt.allowed.get("weight_bits", [])) < 2:
            return f"target {tgt.name} allows one weight width only: nothing to select"
        return None

    def cell_id(self, cell: Cell) -> str:
        """sha256 (first 16 hex digits) of everything the cell's result depends on."""
        from . import __version__
        c = self.cfg
        tgt = self.targets[cell.target]
        key = {"deployq": __version__, "axes": cell.axes(), "plan": cell.plan,
               "strength": cell.strength,
               "model_sha256": self.fingerprints[cell.model], "data": c["data"],
               "data_sha256": _file_sha(c["data"]), "target_sha256": _file_sha(tgt.path),
               **{k: c[k] for k in ("attacks", "sources", "samples", "seed",
                                    "calib_samples", "calibration", "temperature")}}
        text = json.dumps(key, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def job(self, cell: Cell) -> dict:
        """What a worker needs to run the cell (plain data: it crosses processes)."""
        c = self.cfg
        return {"id": cell.id, "axes": cell.axes(), "plan": cell.plan,
                "strength": cell.strength, "dir": str(self.out / "cells" / cell.id),
                **{k: c[k] for k in ("data", "attacks", "sources", "samples", "seed",
                                     "calib_samples", "calibration", "targets_dir",
                                     "temperature")}}


def _grid(cfg: dict):
    weights = [(None if b == DEFAULT else b, None) for b in cfg["weight_bits"]]
    weights += [(None, p) for p in cfg["plans"]]
    for model in cfg["models"]:
        for target in cfg["targets"]:
            for wbits, plan in weights:
                for abits in cfg["activation_bits"]:
                    for strength in cfg["strength"]:
                        for eps in cfg["eps"]:
                            yield Cell(model, target, wbits,
                                       None if abits == DEFAULT else abits, plan,
                                       float(eps), strength)


def _file_sha(path) -> str | None:
    """sha256 of a file (a target TOML, an .npz data set); None for a name or folder."""
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- configuration -----------------------------------------------------------------

def read_config(path) -> dict:
    """A sweep.toml: any of SWEEP_DEFAULTS' keys at top level."""
    from . import validate
    return validate.toml_file(path, SWEEP_DEFAULTS, "sweep config")


def prepare(config: dict) -> Sweep:
    """Check every axis and setting (one InputError/TargetError before any work) and
    fingerprint each model. Without torch for zoo models (the workers import it
    meanwhile: this process should not compete with them for the cores)."""
    from . import targets as T
    cfg = SWEEP_DEFAULTS | config
    for key in ("models", "targets", "weight_bits", "activation_bits", "eps", "strength",
                "attacks", "sources", "plans"):
        _nonempty_list(cfg, key, allow_empty=key in ("plans", "weight_bits"))
    if not cfg["weight_bits"] and not cfg["plans"]:
        raise InputError("weight_bits is empty and no plans are given: nothing to run; "
                         "e.g. weight_bits = [8, 4]")
    sweep = Sweep(cfg, {t.name: t for t in T.targets_or_fail(cfg["targets"],
                                                              cfg["targets_dir"])})
    _check_bits(sweep, "weight_bits")
    _check_bits(sweep, "activation_bits")
    cfg["plans"] = [_check_plan(p) for p in cfg["plans"]]
    cfg["strength"] = [_check_strength(s) for s in cfg["strength"]]
    _twice(cfg["models"], "models")
    _twice([s["name"] for s in cfg["strength"]], "strength names")
    robust_config(cfg, cfg["eps"], cfg["strength"][0])      # attacks, sources, eps, samples
    sweep.fingerprints = {m: _fingerprint(m) for m in cfg["models"]}
    return sweep


def _nonempty_list(cfg: dict, key: str, allow_empty: bool = False) -> None:
    value = cfg[key]
    if not isinstance(value, list) or (not value and not allow_empty):
        raise InputError(f"sweep axis {key!r} must be a non-empty list, got {value!r}")


def _twice(values: list, what: str) -> None:
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    if twice:
        raise InputError(f"{what} listed more than once: {', '.join(twice)}")


def _check_bits(sweep: Sweep, key: str) -> None:
    """Each width is 'default' or an integer some target allows (the other targets'
    cells are skipped and listed)."""
    values = sweep.cfg[key]
    _twice(values, key)
    for v in values:
        if v == DEFAULT:
            continue
        if not isinstance(v, int) or isinstance(v, bool):
            raise InputError(f"{key} values are integers or {DEFAULT!r}, got {v!r}")
        if not any(v in t.allowed.get(key, [t.defaults[key]]) for t in sweep.targets.values()):
            ranges = {n: t.allowed.get(key, [t.defaults[key]]) for n, t in sweep.targets.items()}
            raise InputError(f"{key}={v} is outside every target's range ({ranges}); "
                             "drop it or add a target that allows it")


def _check_plan(plan) -> dict:
    from .budget import METHODS, parse_budget
    if not isinstance(plan, dict) or set(plan) - {"method", "budget", "eps"} or \
            "budget" not in plan:
        raise InputError(f"a plans entry is a table with budget (and method, eps), e.g. "
                         f"{{method = \"adversarial\", budget = \"4bits\"}}; got {plan!r}")
    plan = {"method": "adversarial", "eps": 0.1} | plan
    if plan["method"] not in METHODS:
        raise InputError(f"plans: method {plan['method']!r} is unknown; choose one of "
                         f"{', '.join(METHODS)}")
    parse_budget(str(plan["budget"]))
    return plan


def _check_strength(s) -> dict:
    keys = {"name", "steps", "restarts", "queries"}
    if not isinstance(s, dict) or not set(s) <= keys or "name" not in s:
        raise InputError(f"a strength entry is a table with name (and steps, restarts, "
                         f"queries), got {s!r}")
    return {"steps": 10, "restarts": 1, "queries": 100} | s


def robust_config(cfg: dict, eps: list, strength: dict):
    """The robustness.Config of a cell: exactly what `deployq eval --attacks` builds."""
    from .robustness import Config
    try:
        return Config(list(cfg["attacks"]), list(eps), list(cfg["sources"]),
                      strength["steps"], strength["restarts"], strength["queries"],
                      cfg["samples"], cfg["temperature"], seed=cfg["seed"])
    except TypeError as e:
        raise InputError(f"sweep attack settings of the wrong type: {e}") from None


def _fingerprint(spec: str) -> str:
    """models.Model.fingerprint; a zoo model's from its shipped file."""
    from . import fingerprint
    if spec.startswith("zoo:") and (sha := fingerprint.of_zoo(spec[4:])):
        return sha
    from . import models
    return models.load(spec).fingerprint()


# --- one cell (runs in a worker) -----------------------------------------------------

_SESSIONS: dict = {}        # per worker process: a session per (model, data, seed, ...)
_PLANS: dict = {}           # per worker process: a selected plan per (session, target, plan)


def run_cell(job: dict) -> dict:
    """Run one cell as `deployq eval` does; never raises for the cell's own failure:
    {"id", "result"} or {"id", "error"}, with "seconds" (wall) and "cpu_seconds" (this
    process's CPU time: what the cell costs, whatever else the machine runs)."""
    start, cpu = time.perf_counter(), time.process_time()
    folder = Path(job["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "worker.pid").write_text(str(os.getpid()))
    try:
        out = {"id": job["id"], "result": _relative(_evaluate(job, folder), folder)}
    except DeployqError as e:
        out = {"id": job["id"], "error": str(e)}
    except Exception as e:              # a bug in one cell must not end the sweep
        log.exception("cell %s failed", job["id"])
        out = {"id": job["id"], "error": f"{type(e).__name__}: {e}"}
    (folder / "worker.pid").unlink(missing_ok=True)
    return out | {"seconds": round(time.perf_counter() - start, 3),
                  "cpu_seconds": round(time.process_time() - cpu, 3)}


def _evaluate(job: dict, folder: Path) -> dict:
    from . import api
    axes = job["axes"]
    session = _session(job, axes["model"])
    robust = robust_config(job, [axes["eps"]], job["strength"])
    plans = {axes["target"]: _selected(job, session, folder)} if job["plan"] else None
    settings = {"weight_bits": axes["weight_bits"], "activation_bits": axes["activation_bits"]}
    result = api.evaluate([axes["target"]], session, folder, job["samples"],
                          job["calibration"], job["targets_dir"], robust, plans, settings)
    if result.get("failed"):            # the cell's one target failed: the cell's error
        raise DeployqError(result["failed"][0]["error"])
    return result


def _relative(result: dict, folder: Path) -> dict:
    """Paths in the result relative to the sweep's OUT (cells/ID/...), so sweep.json
    does not depend on where OUT is (or on which node wrote it)."""
    base = folder.parent.parent
    for row in result["results"]:
        for key in ("artifact", "plan"):
            if key in row:
                row[key] = os.path.relpath(row[key], base)
    return result


def _session(job: dict, model: str):
    from . import api
    key = (model, job["data"], job["seed"], job["calib_samples"])
    if key not in _SESSIONS:
        _SESSIONS[key] = api.open_session(model, None, job["data"], job["seed"],
                                          job["calib_samples"])
    return _SESSIONS[key]


def _selected(job: dict, session, folder: Path) -> Path:
    """The cell's selected plan, made by api.select (`deployq select`, the selection
    `run` does too) once per worker for each (session, target, plan entry) and saved
    into every cell's own folder: the eps and strength cells of one plan share it (the
    plan's own eps is the entry's, not the cell's)."""
    from . import api
    axes, p = job["axes"], job["plan"]
    key = (axes["model"], job["data"], job["seed"], job["calib_samples"], axes["target"],
           json.dumps(p, sort_keys=True), job["calibration"], job["targets_dir"])
    if key not in _PLANS:
        path, plan = api.select(axes["target"], str(p["budget"]), p["method"], p["eps"],
                                session, folder / "select", job["calibration"],
                                targets_dir=job["targets_dir"])
        _PLANS[key] = (plan, path.relative_to(folder))
        return path
    plan, relative = _PLANS[key]
    plan.save(folder / relative)
    return folder / relative


# --- running the sweep ---------------------------------------------------------------

class Progress:
    """Cells done / total, ETA from the computed cells' pace, failures by cell."""

    def __init__(self, total: int, cached: int):
        self.total, self.done, self.failed = total, cached, []
        self.computed, self.start = 0, time.perf_counter()

    def update(self, cell_id: str, outcome: dict) -> None:
        self.done += 1
        self.computed += 1
        if "error" in outcome:
            self.failed.append(cell_id)
            log.warning("sweep: cell %s failed: %s", cell_id, outcome["error"])
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.computed * (self.total - self.done)
        log.info("sweep: %d/%d cells done, %d failed, ETA %s", self.done, self.total,
                 len(self.failed), _clock(eta))


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def run(config: dict, executor: str = "local", workers: int | None = None,
        address: str | None = None) -> tuple[dict, list[Path]]:
    """Check the sweep, run the missing cells, write OUT/sweep.json, sweep.csv,
    report.md and report.html. Returns (sweep document, files written)."""
    from . import sweepreport
    if executor not in ("local", "ray"):
        raise InputError(f"--executor {executor!r} is unknown; choose local or ray")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    if not (executor == "ray" and address):     # a cluster's default: all its CPUs
        workers = workers or os.cpu_count() or 1
    # workers start first: their imports (torch, graph capture) overlap this process's
    # checks and fingerprints; they write nothing, and stop if a check fails
    pool = None
    try:
        if executor == "ray":
            pool, planned = _ray_early(config, workers, address)
        else:
            pool = None if _all_stored(config) else LocalPool(min(workers,
                                                                   _grid_size(config)))
            planned = _plan(config, executor, address)
        sweep, cells, done, todo, start = planned
        if todo:
            pool = pool or (RayPool(workers, address) if executor == "ray"
                            else LocalPool(workers))
        workers = pool.workers if pool is not None else workers
        _announce(sweep, cells, done, todo, executor, workers or 0)
        if todo:
            _execute(sweep, cells, done, todo, pool)
    finally:
        if pool is not None:
            pool.close()
    doc = document(sweep, cells, done, {
        "executor": executor, "workers": workers, "computed": len(todo),
        "cached": len(cells) - len(todo), "wall_seconds": round(time.perf_counter() - start, 3)})
    return doc, sweepreport.write(doc, sweep.out)


def _grid_size(config: dict) -> int:
    """The number of grid points (valid or not) before any check; 1 for a bad axis
    (prepare reports it)."""
    cfg = SWEEP_DEFAULTS | config
    try:
        return max(1, len(cfg["models"]) * len(cfg["targets"]) * len(cfg["activation_bits"])
                   * (len(cfg["weight_bits"]) + len(cfg["plans"])) * len(cfg["eps"])
                   * len(cfg["strength"]))
    except TypeError:
        return 1


def _all_stored(config: dict) -> bool:
    """Whether OUT/cells already holds as many results as the grid has points (a
    re-run of a finished sweep): then no worker is started before the cache is read.
    A cheap guess, before any check: the cache itself decides what runs."""
    out = Path((SWEEP_DEFAULTS | config)["out"])
    return len(list(out.glob("cells/*/cell.json"))) >= _grid_size(config)


def _ray_early(config: dict, workers: int | None, address: str | None):
    """Ray starts, and its workers import torch and deployq (`warm` tasks), while a
    thread of this process checks the grid and fingerprints the models. The address is
    checked first (an unreachable one is exit 2 at once); a failing grid check is
    exit 2 once Ray is up, with nothing written. Returns (pool or None, _plan's tuple)."""
    check_address(address)
    if _all_stored(config):
        return None, _plan(config, "ray", address)
    from concurrent.futures import ThreadPoolExecutor
    _import_ray()       # before the thread: Ray's start-up, not the checks, is the longer
                        # way to the first cell, and imports in two threads share one GIL
    with ThreadPoolExecutor(1) as ex:
        planned = ex.submit(_plan, config, "ray", address)
        pool = RayPool(workers, address)
        pool.warm()
        return pool, planned.result()


def _plan(config: dict, executor: str, address: str | None):
    """The checked sweep, its cells, the stored outcomes and the cells still to run."""
    sweep = prepare(config)
    if executor == "ray":
        check_address(address)
    cells = sweep.cells()
    start = time.perf_counter()
    done = {c.id: o for c in cells if (o := _cached(sweep, c)) is not None}
    todo = [c for c in cells if c.id not in done]
    return sweep, cells, done, todo, start


def _announce(sweep: Sweep, cells: list, done: dict, todo: list, executor: str,
              workers: int) -> None:
    """Log the skipped cells and the counts, once the checks and the pool's start have
    passed (an error before is the only line printed)."""
    for s in sweep.skipped:
        log.warning("sweep: skipping %s: %s", _label(s["axes"]), s["reason"])
    log.info("sweep: %d cells (%d cached, %d to run, %d skipped), %s executor, %d workers",
             len(cells), len(done), len(todo), len(sweep.skipped), executor, workers)


def _execute(sweep: Sweep, cells: list[Cell], done: dict, todo: list[Cell], pool) -> None:
    """Run the missing cells on the pool; store each success as it arrives. The
    report's plotting library is imported meanwhile (in this process, which only waits
    for results), not after the last cell."""
    import threading
    threading.Thread(target=_import_plots, daemon=True).start()
    progress = Progress(len(cells), len(done))
    by_id = {c.id: c for c in todo}

    def finished(outcome: dict) -> None:
        if outcome["id"] in done:          # a retried cell reported twice counts once
            return
        done[outcome["id"]] = outcome
        _store(sweep, by_id[outcome["id"]], outcome)
        progress.update(outcome["id"], outcome)

    pool.run([sweep.job(c) for c in todo], finished)


def _import_plots() -> None:
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.backends.backend_svg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError:                 # the report says so when it draws
        pass


def _label(axes: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in axes.items() if v is not None)


def _cached(sweep: Sweep, cell: Cell) -> dict | None:
    """A computed cell's outcome from OUT/cells/ID/cell.json (only successful cells are
    stored, so a failed cell runs again)."""
    path = sweep.out / "cells" / cell.id / "cell.json"
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stored if stored.get("id") == cell.id and "result" in stored else None


def _store(sweep: Sweep, cell: Cell, outcome: dict) -> None:
    from .io import atomic_write
    if "result" in outcome:
        atomic_write(sweep.out / "cells" / cell.id / "cell.json",
                     json.dumps({"axes": cell.axes()} | outcome, indent=1).encode())


def document(sweep: Sweep, cells: list[Cell], done: dict, run_info: dict) -> dict:
    """sweep.json: every cell in grid order with its axes and eval result (or error),
    the skipped cells with reasons; `run` and each cell's `seconds` and `cpu_seconds`
    are the only fields that depend on how and when it ran."""
    rows = []
    for c in cells:
        o = done.get(c.id, {"error": "not run"})
        row = {"id": c.id, "axes": c.axes(), "status": "ok" if "result" in o else "failed",
               "seconds": o.get("seconds"), "cpu_seconds": o.get("cpu_seconds")}
        rows.append(row | ({"result": o["result"]} if "result" in o else {"error": o["error"]}))
    cfg = {k: v for k, v in sweep.cfg.items() if k != "out"}
    return {"format": FORMAT, "version": VERSION, "config": cfg, "cells": rows,
            "skipped": sweep.skipped, "run": run_info}


def without_timings(doc: dict) -> dict:
    """The sweep document with `run` and cell timings removed: what two executors
    (or two runs) must agree on exactly."""
    return {k: v for k, v in doc.items() if k != "run"} | {
        "cells": [{k: v for k, v in c.items() if k not in TIMINGS} for c in doc["cells"]]}


# --- executors -------------------------------------------------------------------------

def _worker_main(conn) -> None:
    """A local pool worker: receives jobs, sends back outcomes, until it gets None (or
    the sweep process is gone). DEPLOYQ_SWEEP_OWN_SESSIONS=1 puts each worker in a
    session of its own: where the kernel shares CPU per session (autogroup), workers
    then compete as separate jobs instead of splitting one job's share (docs/sweep.md)."""
    if os.environ.get("DEPLOYQ_SWEEP_OWN_SESSIONS") == "1":
        os.setsid()
    one_thread()
    warm()
    logging.basicConfig(format="deployq: %(message)s", level=logging.WARNING)
    try:
        while (job := conn.recv()) is not None:
            conn.send(run_cell(job))
    except (EOFError, OSError, KeyboardInterrupt):
        pass
    os._exit(0)     # a worker holds nothing to save: no interpreter teardown (torch's
                    # takes about a second) between the last cell and the sweep's report


def warm() -> None:
    """What every cell needs imported, imported once when a worker starts (while the
    sweep process still checks the grid), not inside its first cell: torch's graph
    capture (torch.export imports its tracer, 1.7 CPU-s, on first use) and deployq's
    evaluation code."""
    import torch.export._trace  # noqa: F401
    from . import api, attacks, robustness  # noqa: F401


class LocalPool:
    """`workers` processes (spawned: no inherited torch state), one job at a time each,
    started on construction so that their start-up overlaps the sweep's planning.
    The pool knows which cell each worker holds, so a worker that dies (killed, out of
    memory) has exactly its cell re-queued, up to RETRIES times, and is replaced."""

    def __init__(self, workers: int):
        import multiprocessing as mp
        self.ctx, self.workers = mp.get_context("spawn"), workers
        self.idle = [self._spawn() for _ in range(workers)]
        self.busy: dict = {}                  # conn -> (proc, job), while run() runs
        self.used: set = set()                # pids of workers that got a cell

    def _spawn(self):
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, args=(child,), daemon=True)
        proc.start()
        child.close()
        return parent, proc

    def run(self, jobs: list[dict], finished) -> None:
        from collections import deque
        from multiprocessing.connection import wait
        queue, attempts = deque(jobs), {j["id"]: 0 for j in jobs}
        idle, self.busy = self.idle, {}       # busy: conn -> (proc, job)
        busy = self.busy
        while queue or busy:
            while queue and idle:
                conn, proc = idle.pop()
                job = queue.popleft()
                conn.send(job)
                busy[conn] = (proc, job)
                self.used.add(proc.pid)
            for conn in wait(list(busy)):
                proc, job = busy.pop(conn)
                try:
                    outcome = conn.recv()
                except (EOFError, OSError):
                    self._died(proc, job, queue, attempts, finished)
                    idle.append(self._spawn())
                    continue
                finished(outcome)
                idle.append((conn, proc))

    def close(self) -> None:
        """Stop every worker (idle or, after an interruption, busy); workers that never
        ran a cell (a check failed, every cell was stored, fewer cells than workers)
        are killed at once."""
        workers = self.idle + [(c, p) for c, (p, _) in self.busy.items()]
        for conn, _ in workers:
            _ask_to_end(conn)
        for _, proc in workers:        # all were asked first: they end side by side
            _stop(proc, 2 if proc.pid in self.used else 0)
        self.idle, self.busy = [], {}

    @staticmethod
    def _died(proc, job: dict, queue, attempts: dict, finished) -> None:
        proc.join(5)
        attempts[job["id"]] += 1
        if attempts[job["id"]] > RETRIES:
            finished({"id": job["id"], "seconds": None, "error":
                      f"its worker died {attempts[job['id']]} times (exit code {proc.exitcode})"})
            return
        log.warning("sweep: worker %d running cell %s died (exit code %s); retrying the cell",
                    proc.pid, job["id"], proc.exitcode)
        queue.appendleft(job)


def _ask_to_end(conn) -> None:
    try:
        conn.send(None)
    except (OSError, ValueError):
        pass


def _stop(proc, grace: float) -> None:
    """Wait for a worker asked to end; one still busy after `grace` seconds (importing,
    running a cell after an interruption) is killed: workers hold nothing to save."""
    proc.join(grace)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


class RayPool:
    """Ray tasks (one CPU each) running run_cell, at most `workers` at a time (on a
    cluster without -j: as many as it has CPUs); Ray re-runs a task whose worker died
    (max_retries). Connects on construction: an unreachable address fails here, before
    any cell runs."""

    def __init__(self, workers: int | None, address: str | None):
        self.owned = not _import_ray().is_initialized()   # close() ends only its own
        self.ray = connect_ray(workers, address)
        self.workers = workers or max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        self.warming: list = []             # refs of the warm tasks (warm)

    def warm(self) -> None:
        """One task per worker that imports what cells need (`warm`), queued before
        the cells: Ray's worker processes start on it while the grid is checked."""
        task = self.ray.remote(num_cpus=1)(_ray_warm)
        self.warming = [task.remote() for _ in range(self.workers)]

    def close(self) -> None:
        """Shut down the Ray this pool started (a local instance's processes, or the
        connection to a cluster) when the cells are done, not at interpreter exit, where
        ray.shutdown first sleeps half a second for log lines. A Ray the caller had
        initialised stays up."""
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()

    def run(self, jobs: list[dict], finished) -> None:
        """A warm task still running holds its worker's place: a cell submitted beside
        it would go to another of the cluster's idle workers (when -j is below its
        CPUs), which would import torch in the cell and leave the warmed one idle.
        Submitted after it, the cell goes to the worker Ray has just used."""
        ray = self.ray
        task = ray.remote(num_cpus=1, max_retries=RETRIES)(_ray_cell)
        queue = list(reversed(jobs))
        pending = dict.fromkeys(self.warming)       # ref -> job (None: a warm task)
        while queue or pending:
            while queue and len(pending) < self.workers:    # in grid order
                job = queue.pop()
                pending[task.remote(job)] = job
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending.pop(ref)
                if job is None:             # a warm task: its failure shows in the cells
                    continue
                try:
                    finished(ray.get(ref))
                except ray.exceptions.RayError as e:
                    finished({"id": job["id"], "seconds": None,
                              "error": f"ray: {type(e).__name__}: {str(e).splitlines()[0]}"})


def _ray_warm() -> None:
    one_thread()
    warm()


def _ray_cell(job: dict) -> dict:
    one_thread()
    return run_cell(job)


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """A Ray address answers on TCP (ray.init itself would wait for a long time), and
    Ray is importable."""
    import importlib.util
    import socket
    if importlib.util.find_spec("ray") is None:
        raise InputError("--executor ray needs Ray: pip install 'deployq[ray]'")
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout).close()
    except (OSError, ValueError) as e:
        raise InputError(f"cannot reach Ray at {address}: {e}; give the host:port of a "
                         "running 'ray start --head' (or leave --address out for a local "
                         "Ray)") from None


# A local Ray instance's settings (RayConfig entries, ray.init's `_system_config`; each
# named in Ray's src/ray/common/ray_config_def.h). Ray's defaults suit a long-lived
# cluster; a sweep's instance lives for one command on a machine whose cores the cells
# need, so it drops the background reporting that only observability tools read.
RAY_LOCAL_CONFIG = {
    "worker_niceness": 0,                   # default 15: workers at the sweep's own
                                            # priority, as the local pool's workers are
    "task_events_report_interval_ms": 0,    # 0 disables task state events (the
                                            # dashboard's task table): a flush every second
    "enable_metrics_collection": False,     # no metrics export from workers and raylet
    "event_stats": False,                   # no event-loop statistics
    "debug_dump_period_milliseconds": 0,    # 0 disables the raylet's debug_state dump
}
# ...and its log monitor's (ray/_private/log_monitor.py reads them from its environment):
# it looks for new log files once a minute instead of ten times a second; it only
# streams workers' output to the driver, which a sweep turns off (log_to_driver).
RAY_LOCAL_ENV = {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0", "LOG_NAME_UPDATE_INTERVAL_S": "60"}


def connect_ray(workers: int | None, address: str | None):
    """ray, initialised: a local instance with `workers` CPUs, or the cluster at address.

    One thread per runtime without a job-level runtime_env: env_vars there would make
    every task need a worker started with that runtime env, so Ray would start
    `workers` more processes (each importing Ray, torch and deployq again) and leave
    the ones it prestarted (one per CPU) idle. A local instance's raylet inherits
    THREAD_VARS from this process's environment (set around ray.init only, with
    RAY_LOCAL_ENV for the log monitor ray.init starts) and passes them to its workers;
    on a cluster the tasks set them themselves (`one_thread` in `_ray_warm` and
    `_ray_cell`, which also resizes thread pools loaded before the task). Without an
    address the instance is always a new one (`address="local"`): ray.init() alone
    would join a `ray start` cluster running on this machine, and refuse num_cpus
    there."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            with runenv.environ({v: "1" for v in THREAD_VARS} | RAY_LOCAL_ENV):
                ray.init(address="local", num_cpus=workers, include_dashboard=False,
                         _system_config=RAY_LOCAL_CONFIG, **quiet)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as e:
        if _auth_refused(e):
            raise InputError(f"Ray at {address} refused the connection: it wants its "
                             "authentication token (`ray start` turns token authentication "
                             "on); set RAY_AUTH_MODE=token, with the cluster's token in "
                             "~/.ray/auth_token or RAY_AUTH_TOKEN") from None
        raise InputError(f"cannot start or reach Ray"
                         f"{' at ' + address if address else ''}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                         "check --address (host:port of a running 'ray start --head')") from None
    return ray


def _auth_refused(e: BaseException) -> bool:
    """Whether a failed ray.init came from the cluster's token authentication (Ray
    wraps the AuthenticationError's text in a RuntimeError under its ConnectionError)."""
    while e is not None:
        if "AuthenticationError" in type(e).__name__ or "InvalidAuthToken" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--executor ray needs Ray: pip install 'deployq[ray]'") from None
    return ray
