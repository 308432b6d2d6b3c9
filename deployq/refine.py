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
Only a strictly better measured objective (robust accuracy, then clean accuracy) is
accepted, so the answer is never worse on the validation objective than the DP's best
(which is the first candidate measured).

Objective per sample: correct on the clean input, on the float model's APGD-CE
examples (transfer; computed once) and on APGD-CE through the candidate's mirror
(bpda), every prediction being the mirror's (= the runtime's on fpga-fixed).
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import torch

from . import attacks as A
from . import mirror as M
from . import plan as P
from .errors import InputError

log = logging.getLogger("deployq")
SAMPLES = 200          # validation samples
STEPS = 10             # APGD-CE iterations of the search objective (cheap)
EVALS = 24             # local-search evaluations after the K candidates


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
    """Measured robust accuracy of a plan on (x, y) at eps."""

    def __init__(self, session, target, x, y, eps: float, steps: int = STEPS):
        self.session, self.target, self.eps, self.steps = session, target, eps, steps
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y).long()
        self.transfer = (A.apgd(session.model.module, self.x, self.y, eps, steps)
                         if eps > 0 else None)

    def __call__(self, plan: P.QuantPlan) -> dict:
        m = M.build(self.target, self.session.graph, plan)
        with torch.no_grad():
            ok = m(self.x).argmax(1) == self.y
            clean = float(ok.float().mean())
            if self.transfer is not None:
                ok &= m(self.transfer).argmax(1) == self.y
        if self.eps > 0:
            adv = A.apgd(m, self.x, self.y, self.eps, self.steps)
            with torch.no_grad():
                ok &= m(adv).argmax(1) == self.y
        return {"robust": float(ok.float().mean()), "clean": clean}


def refine(session, target, space, candidates: list, config: P.PlanConfig, eps: float,
           samples: int = SAMPLES, steps: int = STEPS, evals: int = EVALS,
           origins: list[str] | None = None):
    """(best Assignment, provenance record). candidates: the DP's assignments, best
    first; every one is measured, then local search from the best measured. origins:
    each candidate's label in provenance (default dp-0, dp-1, ...)."""
    origins = origins or [f"dp-{i}" for i in range(len(candidates))]
    t0 = time.time()
    x, y = validation(session.dataset, samples, session.seed, session.calib_samples)
    objective = Objective(session, target, x, y, eps, steps)
    seen: dict = {}

    def measure(a, origin):
        if a not in seen:
            plan = P.make(session.graph, session.stats, target,
                          P.PlanConfig(config.default, {}, space.settings(a)))
            seen[a] = objective(plan) | {"origin": origin, "predicted": space.predict(a)}
        return seen[a]

    for a, origin in zip(candidates, origins):
        measure(a, origin)
    best = max(candidates, key=lambda a: _key(seen[a]))
    budget = evals
    improved = True
    while improved and budget > 0:
        improved = False
        for a in neighbours(space, best):
            if a in seen:
                continue
            budget -= 1
            if _key(measure(a, "local")) > _key(seen[best]):
                best, improved = a, True
                break
            if budget <= 0:
                break
    record = {"validation_samples": int(len(y)), "split": "train (disjoint from "
              "calibration)", "attack": f"APGD-CE {steps} iterations, transfer + bpda",
              "eps": eps, "candidates_from_dp": len(candidates), "evaluations": len(seen),
              "seconds": round(time.time() - t0, 1), "chosen": _label(space, best),
              "candidates": [{"assignment": _label(space, a)} | r for a, r in seen.items()]}
    log.info("refinement: %d evaluations in %.0f s, validation robust %.3f -> %.3f",
             len(seen), time.time() - t0, seen[candidates[0]]["robust"], seen[best]["robust"])
    return best, record


def _key(r: dict) -> tuple:
    return r["robust"], r["clean"]


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
