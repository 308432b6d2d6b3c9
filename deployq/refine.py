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
import time
from dataclasses import replace

import numpy as np

from . import attacks as A
from . import mirror as M
from . import plan as P
from . import robustness as R
from . import stats
from .errors import InputError

log = logging.getLogger("deployq")
SAMPLES = 200          # validation samples
STEPS = 10             # APGD-CE iterations of the search objective (cheap)
EVALS = 24             # local-search evaluations after the K candidates
SOURCES = ("transfer", "bpda", "blackbox")     # the objective's attack sources
QUERIES = 100          # Square queries on the mirror (the gradient-free check)
SQUARE_P = 0.8         # Square's p_init (robustness.PRESETS' standard value)
PENALTY = 1.0          # weight of the samples only the Square attack broke (Objective)


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

    def describe(self) -> str:
        if self.cfg is None:
            return "clean accuracy only (eps 0)"
        return self.cfg.describe() + (
            f"; score = worst case - {self.penalty:g} x samples only the black-box "
            "attack broke" if "blackbox" in self.cfg.sources and self.penalty else "")

    def __call__(self, plan: P.QuantPlan, floor: float | None = None) -> dict:
        """The plan's record. floor: a score to beat; when clean and transfer accuracy
        alone (an upper bound of the score, computed in two forward passes) fall below
        it, the attacks are skipped and the record says 'pruned' (it cannot win)."""
        m = self.build(self.target, self.session.graph, plan)
        if self.cfg is None:
            clean = float(np.mean(m.logits(self.x).argmax(1) == self.y))
            return {"robust": clean, "clean": clean, "hidden": 0.0, "score": clean}
        found = self.cache.get(("transfer", self.eps))
        if floor is not None and found is not None:
            ok = m.logits(self.x).argmax(1) == self.y
            clean = float(np.mean(ok))
            for adv in found.values():
                ok &= m.logits(adv).argmax(1) == self.y
            if float(np.mean(ok)) < floor:
                return {"pruned": True, "robust_at_most": float(np.mean(ok)),
                        "clean": clean, "robust": None, "score": None}
        subject = R.Subject("candidate", m.logits,
                            {"transfer": self.session.model.module, "bpda": m})
        entry = R.evaluate(subject, self.x, self.y, self.cfg, self.cache)
        row = entry["eps"][0]
        hidden = _hidden(row)
        return {"robust": row["robust"], "clean": entry["clean"], "hidden": hidden,
                "score": row["robust"] - self.penalty * hidden,
                "by": {f"{b['source']}/{b['attack']}": b["accuracy"] for b in row["by"]}}


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
           penalty: float = PENALTY, prune: bool = True):
    """(best Assignment, provenance record). candidates: the DP's assignments, best
    first; every one is measured, then local search from the best measured. origins:
    each candidate's label in provenance (default dp-0, dp-1, ...). sources, queries:
    the objective's attacks (Objective; without 'blackbox' no gradient-free check);
    penalty: Objective's weight of the samples only the black-box attack broke.
    prune: skip the attacks on a plan whose clean and transfer accuracy already fall
    below the best score (it cannot be chosen, so the answer is the same; its record
    says 'pruned')."""
    origins = origins or [f"dp-{i}" for i in range(len(candidates))]
    t0, cpu0 = time.time(), time.process_time()
    x, y = validation(session.dataset, samples, session.seed, session.calib_samples)
    objective = Objective(session, target, x, y, eps, steps, sources, queries,
                          penalty=penalty)
    seen: dict = {}

    def measure(a, origin, floor=None):
        if a not in seen:
            plan = P.make(session.graph, session.stats, target,
                          P.PlanConfig(config.default, {}, space.settings(a)))
            seen[a] = (objective(plan, floor if prune else None)
                       | {"origin": origin, "predicted": space.predict(a)})
        return seen[a]

    best = candidates[0]
    for a, origin in zip(candidates, origins):
        if _key(measure(a, origin, seen[best]["score"] if seen else None)) > _key(seen[best]):
            best = a
    budget = evals
    improved = True
    while improved and budget > 0:
        improved = False
        for a in neighbours(space, best):
            if a in seen:
                continue
            budget -= 1
            if _key(measure(a, "local", seen[best]["score"])) > _key(seen[best]):
                best, improved = a, True
                break
            if budget <= 0:
                break
    record = {"validation_samples": int(len(y)), "split": "train (disjoint from "
              "calibration)", "attack": objective.describe(),
              "eps": eps, "candidates_from_dp": len(candidates), "evaluations": len(seen),
              "pruned": sum(bool(r.get("pruned")) for r in seen.values()),
              "seconds": round(time.time() - t0, 1),
              "cpu_seconds": round(time.process_time() - cpu0, 1), "chosen": _label(space, best),
              "candidates": [{"assignment": _label(space, a)} | r for a, r in seen.items()]}
    log.info("refinement: %d evaluations in %.0f s, validation robust %.3f -> %.3f",
             len(seen), time.time() - t0, seen[candidates[0]]["robust"], seen[best]["robust"])
    return best, record


def _key(r: dict) -> tuple:
    """Order of records: score, then robust, then clean accuracy; pruned ones last."""
    return (float("-inf"),) if r.get("pruned") else (r["score"], r["robust"], r["clean"])


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
