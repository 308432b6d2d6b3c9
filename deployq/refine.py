"""End-to-end refinement of a bit-width selection (docs/selection.md, "Refinement").

The DP (deployq.selection) ranks assignments by a bound; this module scores them by what
the bound stands in for: robust accuracy, measured through the target's mirror
(fpga-fixed: bit-exact with the runtime) on a validation split carved from the
TRAINING data, never the test split. It measures the DP's K best, then improves the
best by local search:
  bits   one layer (or activation group) one allowed step up or down, paid for (or
         spent) by moving another layer the fewest steps the other way that fits the
         budget
  clip   one layer's weight_clip to another candidate fraction
Only a strictly better measured objective (score, then robust, then clean accuracy) is
accepted, so the answer is never worse on the validation objective than the DP's best
(which is the first candidate measured).

Clean-accuracy constraint (max_clean_drop = P points): a plan whose validation clean
accuracy is more than P points below the reference plan's (the uniform plan: every
layer at the largest weight bits that fit the budget, unclipped, every activation group
at the largest activation bits that fit; measured through the same mirror on the same
validation samples) cannot be chosen: its record says 'excluded' and why, and its
attacks are skipped (clean accuracy is measured first). The reference is itself a
candidate, so one plan is always admissible.

Objective per sample (deployq.robustness.evaluate's per-sample worst case): correct on
the clean input, on the float model's APGD-CE examples (transfer; computed once), on
APGD-CE through the candidate's mirror (bpda) and, by default, on a Square attack with a
small query budget on the mirror's outputs (blackbox), every prediction being the
mirror's (= the runtime's on fpga-fixed). The gradient-free check is what keeps the
search from rewarding gradient masking: a cheap gradient attack scores a plan whose
rounding hides its gradients as robust (docs/selection.md, "A masking-resistant
objective"), the Square attack never looks at gradients. Its small query budget finds
only part of what the gradient attacks miss, so the score is the worst case minus
PENALTY x `hidden`, the fraction of samples every gradient attack left correct and the
Square attack broke: an estimate of the failures a blind gradient attack hides, near
0 on a plan whose gradients work (Square is the weaker attack there).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import replace

import numpy as np

from . import attacks as A
from . import mirror as M
from . import plan as P
from . import robustness as R
from . import stats
from .errors import DeployqError, InputError

log = logging.getLogger("deployq")
SAMPLES = 200          # validation samples
STEPS = 10             # APGD-CE iterations of the search objective (cheap)
EVALS = 24             # local-search evaluations after the K candidates
SOURCES = ("transfer", "bpda", "blackbox")     # the objective's attack sources
QUERIES = 100          # Square queries on the mirror (the gradient-free check)
SQUARE_P = 0.8         # Square's p_init (robustness.PRESETS' standard value)
PENALTY = 1.0          # weight of the samples only the Square attack broke (Objective)
MAX_WORKERS = 4        # default worker processes at most: the local search measures up
                       # to `workers` neighbours ahead, and all but one are wasted when
                       # the first is better (refine's record: `unused`)


def validation(ds, n: int, seed: int, calib_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """n training samples disjoint from the calibration samples: the LAST n of the
    seeded permutation whose first calib_samples Dataset.calibration takes."""
    if n + calib_samples > len(ds.x_train):
        raise InputError(f"a validation split of {n} samples and {calib_samples} "
                         f"calibration samples need more than the {len(ds.x_train)} "
                         "training samples; lower the validation samples")
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds.x_train))[-n:])
    return ds.x_train[idx], ds.y_train[idx]


class Objective:
    """Measured robust accuracy of a plan on (x, y) at eps: robustness.evaluate's
    per-sample worst case over `sources` (module docstring), APGD-CE `steps` iterations
    (one restart) for the gradient sources and a `queries`-query Square attack for
    'blackbox'. build(target, graph, plan) -> the plan's mirror (a torch module with
    .logits(numpy)); mirror.build unless a test gives its own."""

    def __init__(self, session, target, x, y, eps: float, steps: int = STEPS,
                 sources=SOURCES, queries: int = QUERIES, build=M.build,
                 penalty: float = PENALTY):
        self.session, self.target, self.eps, self.build = session, target, eps, build
        self.penalty = penalty
        self.x, self.y = np.asarray(x, np.float32), np.asarray(y).astype(np.int64)
        unknown = set(sources) - set(R.SOURCES)
        if unknown or "bpda" not in sources:
            raise InputError(f"refinement sources must include 'bpda' and come from "
                             f"{', '.join(R.SOURCES)}, got {', '.join(sources)}")
        self.cfg = (R.Config(attacks=["apgd-ce"], eps=[eps], sources=list(sources),
                             steps=steps, restarts=1, queries=queries, samples=len(y),
                             square_p=SQUARE_P, strength="fast") if eps > 0 else None)
        self.cache: dict = {}          # the float model's (transfer) examples, once
        self.min_clean: float | None = None   # set_reference: the constraint's floor
        self.rule = ""

    def clean(self, plan: P.QuantPlan) -> float:
        """The plan's clean accuracy on the validation samples (its mirror's argmax)."""
        m = self.build(self.target, self.session.graph, plan)
        return float(np.mean(self._correct(m)))

    def _correct(self, m) -> np.ndarray:
        """Which validation samples mirror m classifies right (clean inputs)."""
        return m.logits(self.x).argmax(1) == self.y

    def set_reference(self, clean: float, max_drop: float) -> None:
        """Exclude plans whose clean accuracy is more than max_drop points below
        `clean` (the reference plan's). Compared in whole samples: a plan is excluded
        when it gets more than max_drop% of the samples fewer right."""
        n = len(self.y)
        ref = round(clean * n)
        self.min_clean = (ref - math.floor(max_drop * n / 100 + 1e-9)) / n
        self.rule = (f"more than {max_drop:g} points below the uniform plan's "
                     f"validation clean accuracy {100 * clean:.1f}% (max_clean_drop)")

    def describe(self) -> str:
        if self.cfg is None:
            return "clean accuracy only (eps 0)"
        return self.cfg.describe() + (
            f"; score = worst case - {self.penalty:g} x samples only the black-box "
            "attack broke" if "blackbox" in self.cfg.sources and self.penalty else "")

    def prepare(self) -> None:
        """Compute the float model's transfer examples now (once; shared by every
        candidate and by the worker processes forked after this)."""
        if (self.cfg is None or "transfer" not in self.cfg.sources
                or ("transfer", self.eps) in self.cache):
            return
        import torch
        module = self.session.model.module

        def run(x):
            with torch.no_grad():
                return module(torch.from_numpy(x)).numpy()
        R.evaluate(R.Subject("float model", run, {"transfer": module}), self.x, self.y,
                   replace(self.cfg, sources=["transfer"]), self.cache)

    def __call__(self, plan: P.QuantPlan, floor: float | None = None) -> dict:
        """The plan's record. floor: a score to beat; when an upper bound of the score
        falls below it the plan cannot win, the remaining attacks are skipped and the
        record says 'pruned' (robust_at_most: the bound). Bounds, cheapest first: clean
        and transfer accuracy (two forward passes, once the transfer examples exist),
        then the worst case of the gradient attacks (before the black-box attack, the
        costly part)."""
        return self.measure(plan, floor)[0]

    def measure(self, plan: P.QuantPlan, floor: float | None = None) -> tuple[dict, dict]:
        """(record, bounds): the record as __call__'s; bounds {'transfer', 'gradient'}
        the two upper bounds of the score (None where not computed), which let a record
        measured at a lower floor be re-judged at a higher one (`at_floor`)."""
        m = self.build(self.target, self.session.graph, plan)
        if self.min_clean is not None:
            clean = float(np.mean(self._correct(m)))
            if clean < self.min_clean - 1e-12:
                return (_excluded(clean, self.rule),
                        {"transfer": None, "gradient": None})
        if self.cfg is None:
            clean = float(np.mean(self._correct(m)))
            return ({"robust": clean, "clean": clean, "hidden": 0.0, "score": clean},
                    {"transfer": None, "gradient": None})
        bounds = {"transfer": None, "gradient": None}
        found = self.cache.get(("transfer", self.eps))
        if floor is not None and found is not None:
            ok = self._correct(m)
            clean = float(np.mean(ok))
            for adv in found.values():
                ok &= m.logits(adv).argmax(1) == self.y
            bounds["transfer"] = float(np.mean(ok))
            if bounds["transfer"] < floor:
                return _pruned(bounds["transfer"], clean), bounds
        subject = R.Subject("candidate", m.logits,
                            {"transfer": self.session.model.module, "bpda": m})
        white = [s for s in self.cfg.sources if s != "blackbox"]
        entry = R.evaluate(subject, self.x, self.y, replace(self.cfg, sources=white),
                           self.cache)
        row = entry["eps"][0]
        if bounds["transfer"] is None and "transfer" in white:
            bounds["transfer"] = _accuracy(row, "transfer")   # the same mask as above
        if "blackbox" in self.cfg.sources:
            bounds["gradient"] = row["robust"]
            if floor is not None and row["robust"] < floor:
                return _pruned(row["robust"], entry["clean"]), bounds
            box = R.evaluate(subject, self.x, self.y,
                             replace(self.cfg, sources=["blackbox"]), self.cache)
            row = _merged(row, box["eps"][0])
        hidden = _hidden(row)
        return ({"robust": row["robust"], "clean": entry["clean"], "hidden": hidden,
                 "score": row["robust"] - self.penalty * hidden,
                 "by": {f"{b['source']}/{b['attack']}": b["accuracy"] for b in row["by"]}},
                bounds)


def _excluded(clean: float, rule: str) -> dict:
    return {"excluded": f"validation clean accuracy {100 * clean:.1f}% is {rule}",
            "clean": clean, "robust": None, "score": None}


def _pruned(bound: float, clean: float) -> dict:
    return {"pruned": True, "robust_at_most": bound, "clean": clean, "robust": None,
            "score": None}


def _accuracy(row: dict, source: str) -> float:
    """Accuracy of one eps row's samples every attack of `source` left correct."""
    n = row["samples"]
    return float(np.mean(np.logical_and.reduce(
        [np.array(stats.unpack(b["accuracy_mask"], n)) for b in row["by"]
         if b["source"] == source])))


def _merged(white: dict, box: dict) -> dict:
    """One eps row of robustness.evaluate from two: the gradient sources' and the
    black-box attack's (each mask already ANDed with the clean mask), as one call with
    every source would give it."""
    n = white["samples"]
    masks = [np.array(stats.unpack(b["accuracy_mask"], n)) for b in white["by"] + box["by"]]
    robust = np.logical_and.reduce(masks)
    return {"eps": white["eps"], "samples": n, "robust": float(np.mean(robust)),
            "by": white["by"] + box["by"]}


def at_floor(record: dict, bounds: dict, floor: float | None) -> dict | None:
    """The record the plan would have got had it been measured at `floor` (None when
    it needs measuring again: a record pruned at a higher floor). A bound below the
    floor prunes; a full record is the same at every floor it is not pruned at."""
    if floor is not None:
        for key in ("transfer", "gradient"):
            if bounds.get(key) is not None and bounds[key] < floor:
                clean = record["clean"]
                return _pruned(bounds[key], clean)
    return None if record.get("pruned") else record


def _hidden(row: dict) -> float:
    """Fraction of samples every gradient attack left correct and the black-box attack
    broke (0 without a black-box attack): the gradient attacks' blind spot."""
    n = row["samples"]
    masks = {(b["source"], b["attack"]): np.array(stats.unpack(b["accuracy_mask"], n))
             for b in row["by"]}
    box = [m for (src, _), m in masks.items() if src == "blackbox"]
    white = [m for (src, _), m in masks.items() if src != "blackbox"]
    if not box or not white:
        return 0.0
    return float(np.mean(np.logical_and.reduce(white) & ~np.logical_and.reduce(box)))


def refine(session, target, space, candidates: list, config: P.PlanConfig, eps: float,
           samples: int = SAMPLES, steps: int = STEPS, evals: int = EVALS,
           origins: list[str] | None = None, sources=SOURCES, queries: int = QUERIES,
           penalty: float = PENALTY, prune: bool = True, workers: int | None = None,
           max_clean_drop: float | None = None, reference=None):
    """(best Assignment, provenance record). candidates: the DP's assignments, best
    first; every one is measured, then local search from the best measured. origins:
    each candidate's label in provenance (default dp-0, dp-1, ...). sources, queries:
    the objective's attacks (Objective; without 'blackbox' no gradient-free check);
    penalty: Objective's weight of the samples only the black-box attack broke.
    prune: skip the attacks on a plan whose clean and transfer accuracy (then, before
    the black-box attack, whose gradient attacks' worst case) already fall below the
    best score (it cannot be chosen, so the answer is the same; its record says
    'pruned'). workers: processes measuring plans at once (default: torch's thread
    count, at most MAX_WORKERS, so the cores torch would use go to whole evaluations;
    1 = in this process); the plans, their records and the answer are those of one process
    (`_Runner`). max_clean_drop (points, >= 0), reference (the uniform Assignment):
    the clean-accuracy constraint (module docstring); the reference is measured first
    and added as the last candidate (origin 'uniform') when not among them."""
    if penalty < 0:
        raise InputError(f"the refinement penalty must be >= 0, got {penalty}")
    check_max_clean_drop(max_clean_drop)
    if max_clean_drop is not None and reference is None:
        raise InputError("a clean-accuracy constraint needs the reference (uniform) plan")
    origins = list(origins or [f"dp-{i}" for i in range(len(candidates))])
    candidates = list(candidates)
    t0, cpu0, children0 = time.time(), time.process_time(), _children_cpu()
    x, y = validation(session.dataset, samples, session.seed, session.calib_samples)
    objective = Objective(session, target, x, y, eps, steps, sources, queries,
                          penalty=penalty)
    objective.prepare()

    def plan_of(a):
        return P.make(session.graph, session.stats, target,
                      P.PlanConfig(config.default, {}, space.settings(a)))

    def evaluate(a, floor):
        return objective.measure(plan_of(a), floor)

    constraint = None
    if max_clean_drop is not None:
        ref_clean = objective.clean(plan_of(reference))
        objective.set_reference(ref_clean, max_clean_drop)
        constraint = {"max_clean_drop": max_clean_drop,
                      "reference": _label(space, reference),
                      "reference_clean": ref_clean,
                      "min_clean": objective.min_clean}
        if reference not in candidates:
            candidates.append(reference)
            origins.append("uniform")

    seen: dict = {}
    with _Runner(evaluate, _workers(workers)) as runner:
        def measure(a, origin, floor):
            if a not in seen:
                seen[a] = (runner.get(a, floor if prune else None)
                           | {"origin": origin, "predicted": _predict(space, a)})
            return seen[a]

        def floor():
            return seen[best]["score"] if seen and prune else None

        best = candidates[0]
        for i, (a, origin) in enumerate(zip(candidates, origins)):
            runner.ahead([c for c in candidates[i:] if c not in seen], floor())
            if _key(measure(a, origin, floor())) > _key(seen[best]):
                best = a
        budget = evals
        improved = True
        while improved and budget > 0:
            improved = False
            todo = [a for a in dict.fromkeys(neighbours(space, best)) if a not in seen]
            for j, a in enumerate(todo):
                runner.ahead(todo[j:j + budget], floor())
                budget -= 1
                if _key(measure(a, "local", floor())) > _key(seen[best]):
                    best, improved = a, True
                    break
                if budget <= 0:
                    break
    record = {"validation_samples": int(len(y)), "split": "train (disjoint from "
              "calibration)", "attack": objective.describe(),
              "eps": eps, "candidates_from_dp": len(candidates), "evaluations": len(seen),
              "pruned": sum(bool(r.get("pruned")) for r in seen.values()),
              "workers": runner.workers, "unused": runner.unused(seen),
              "seconds": round(time.time() - t0, 1),
              "cpu_seconds": round(time.process_time() - cpu0
                                   + _children_cpu() - children0, 1),
              "chosen": _label(space, best),
              "candidates": [{"assignment": _label(space, a)} | r for a, r in seen.items()]}
    if constraint:
        record["clean_constraint"] = constraint | {
            "excluded": sum(bool(r.get("excluded")) for r in seen.values())}
    log.info("refinement: %d evaluations in %.0f s, validation robust %s -> %.3f",
             len(seen), time.time() - t0, seen[candidates[0]]["robust"], seen[best]["robust"])
    return best, record


def check_max_clean_drop(value) -> None:
    """max_clean_drop: None (no constraint) or a finite number of points >= 0."""
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise InputError(f"--max-clean-drop must be a number of points >= 0 (e.g. 1), "
                         f"got {value!r}")


def _predict(space, a):
    """The chain's D_L, or None for a plan outside the table (the uniform reference
    when the clips leave out 1)."""
    try:
        return space.predict(a)
    except KeyError:
        return None


def _children_cpu() -> float:
    """CPU seconds of this process's finished (joined) child processes."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _workers(n: int | None) -> int:
    """Worker processes: n, or torch's thread count (at most MAX_WORKERS); 1 where this
    process cannot fork workers (no 'fork' start method; a daemonic process such as a
    sweep's local-pool worker, which already has its one core)."""
    import multiprocessing as mp
    if n is None:
        import torch
        n = min(torch.get_num_threads(), MAX_WORKERS)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"refinement workers must be a whole number >= 1, got {n!r}")
    if "fork" not in mp.get_all_start_methods() or mp.current_process().daemon:
        return 1
    return n


_EVALUATE = None        # the refinement's evaluate(a, floor), inherited by forked workers


def _evaluate(a, floor):
    return _EVALUATE(a, floor)


def _worker_start() -> None:
    """A worker: one thread (runenv.one_thread); Ctrl-C is the main process's to handle
    (it stops the search; a worker ends after the plan it is measuring)."""
    import signal
    from .runenv import one_thread
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    one_thread()


class _Runner:
    """Measures assignments for refine, in this process (workers 1) or in `workers`
    forked processes of one thread each (runenv.one_thread: workers, not threads, share
    the cores). Forked, not spawned: the workers inherit the session, the calibration
    and the transfer examples instead of rebuilding them. Every evaluation is seeded
    and independent of the others (robustness.Config.seed; the transfer examples are
    computed before the fork), so where it runs does not change its record. The
    search asks for plans one at a time in its serial order (get) and announces the
    ones it will ask for next (ahead), which start on idle workers; a plan measured
    ahead at a lower floor than the one it is asked at is re-judged there (at_floor:
    the record one process would have made). Plans measured ahead and never asked
    for (the rest of a scan that found a better neighbour) are the price: `unused`."""

    def __init__(self, evaluate, workers: int):
        self.evaluate, self.workers = evaluate, workers
        self.done: dict = {}            # assignment -> (record, bounds)
        self.running: dict = {}         # assignment -> Future
        self.pool = None

    def __enter__(self):
        global _EVALUATE
        if self.workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor
            _EVALUATE = self.evaluate
            self.pool = ProcessPoolExecutor(self.workers, mp.get_context("fork"),
                                            initializer=_worker_start)
        return self

    def __exit__(self, *exc) -> None:
        global _EVALUATE
        if self.pool is not None:           # after an error, do not wait for the workers
            self.pool.shutdown(wait=exc[0] is None, cancel_futures=True)
            for a, f in self.running.items():
                if f.done() and not f.cancelled() and f.exception() is None:
                    self.done[a] = f.result()
            self.pool, self.running, _EVALUATE = None, {}, None

    def ahead(self, assignments: list, floor: float | None) -> None:
        """Start the first `workers` of assignments not started yet (no-op in one
        process)."""
        if self.pool is None:
            return
        for a in assignments[:self.workers]:
            if a not in self.running and a not in self.done:
                self.running[a] = self.pool.submit(_evaluate, a, floor)

    def get(self, a, floor: float | None) -> dict:
        """a's record at `floor`, as one process measuring a now would make it."""
        from concurrent.futures.process import BrokenProcessPool
        if a in self.running:
            try:
                self.done[a] = self.running.pop(a).result()
            except BrokenProcessPool as e:
                raise DeployqError(f"a refinement worker process died ({e}); refine in "
                                   "one process (refine_options workers=1, or "
                                   "OMP_NUM_THREADS=1)") from None
        if a in self.done:
            record = at_floor(*self.done[a], floor)
            if record is not None:
                return dict(record)
        self.done[a] = self.evaluate(a, floor)
        return dict(self.done[a][0])

    def unused(self, seen: dict) -> int:
        """Plans measured (ahead) that the search never asked for."""
        return sum(a not in seen for a in self.done)


def _key(r: dict) -> tuple:
    """Order of records: score, then robust, then clean accuracy; pruned and excluded
    ones last (never chosen over a measured one)."""
    if r.get("pruned") or r.get("excluded"):
        return (float("-inf"),)
    return (r["score"], r["robust"], r["clean"])


def _label(space, a) -> str:
    w = "/".join(f"{b}" + (f"@{c:g}" if c != 1 else "") for b, c in a.weights)
    return w + ("" if not a.acts else " a" + "/".join(str(b) for b in a.acts))


def neighbours(space, a):
    """Assignments one move from a that fit both budgets (module docstring), in a fixed
    order: activation bit moves (first: with an activation budget they are what the
    search is for, and the evaluations are few), weight bit moves, clip moves."""
    weights, acts = list(a.weights), list(a.acts)
    for i in range(len(acts)):
        for nb in _steps(space.act_bits, acts[i]):
            for v in _paid_acts(space, acts, i, nb):
                yield replace(a, acts=tuple(v))
    for i, l in enumerate(space.layers):
        bits = sorted({b for b, _ in l.choices})
        b, c = weights[i]
        for nb in _steps(bits, b):
            for w in _paid(space, weights, i, (nb, c)):
                yield replace(a, weights=tuple(w))
    for i, l in enumerate(space.layers):
        b, c = weights[i]
        for nc in sorted({c2 for b2, c2 in l.choices if b2 == b} - {c}):
            w = weights.copy()
            w[i] = (b, nc)
            yield replace(a, weights=tuple(w))


def _steps(bits: list, b) -> list:
    i = bits.index(b)
    return [bits[j] for j in (i + 1, i - 1) if 0 <= j < len(bits)]


def _paid(space, weights, i, new):
    """weights with layer i at `new`; when that breaks the budget, also every variant
    with one other layer lowered (raised, when i went down and budget allows) the
    fewest steps that fit."""
    w = weights.copy()
    w[i] = new
    if _wbits(space, w) <= space.capacity:
        yield w
        if new[0] > weights[i][0]:
            return
    for j, l in enumerate(space.layers):
        if j == i:
            continue
        bits = sorted({b for b, _ in l.choices})
        b, c = w[j]
        options = ([x for x in reversed(bits) if x < b] if new[0] > weights[i][0]
                   else [x for x in bits if x > b])
        for nb in (options if new[0] > weights[i][0] else reversed(options)):
            v = w.copy()
            v[j] = (nb, c) if (nb, c) in l.quantized else (nb, 1.0)
            if _wbits(space, v) <= space.capacity:
                yield v
                break


def _wbits(space, w) -> int:
    return sum(l.n * b for l, (b, _) in zip(space.layers, w))


def _abits(space, acts) -> int:
    return sum(g.numel * b for g, b in zip(space.groups, acts))


def _paid_acts(space, acts, i, nb):
    v = acts.copy()
    v[i] = nb
    if _abits(space, v) <= space.act_capacity:
        yield v
        if nb > acts[i]:
            return
    for j in range(len(acts)):
        if j == i:
            continue
        options = ([x for x in reversed(space.act_bits) if x < v[j]] if nb > acts[i]
                   else [x for x in reversed(space.act_bits) if x > v[j]])
        for x in options:
            u = v.copy()
            u[j] = x
            if _abits(space, u) <= space.act_capacity:
                yield u
                break
