"""Robustness on the real runtimes: every adversarial example is scored by the target's
Runner, which quantizes its input itself, so the number is the device's number.

Sources of adversarial examples, per target and eps:
  transfer   white-box attacks (fgsm, pgd) on the float model's gradients
  bpda       the same attacks on the target's mirror (straight-through rounding)
  blackbox   the Square attack, querying the runner itself
Robust accuracy is, per sample, correct on the clean input AND under every attack from
every source (the worst case, as AutoAttack reports it); each source/attack's own
accuracy is kept too. `checks` flags the usual signs of gradient masking (Athalye et al.
2018; AutoAttack's checks.py)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

log = logging.getLogger("deployq")
ATTACKS = ("fgsm", "pgd")
SOURCES = ("transfer", "bpda", "blackbox")
TOLERANCE = 0.01            # accuracy differences within this are noise, not a flag
LARGE_EPS, NEAR_ZERO = 0.3, 0.1


@dataclass
class Config:
    """What to run. Checked on construction, before any slow work."""
    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd"])
    eps: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    steps: int = 10
    restarts: int = 1
    queries: int = 100
    samples: int | None = 200
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self):
        _known("attack", self.attacks, ATTACKS, "--attacks")
        _known("source", self.sources, SOURCES, "--sources")
        bad = [e for e in self.eps if not 0 <= e <= 1]
        if bad or not self.eps:
            raise InputError(f"--eps values must lie in [0, 1] (input units), got "
                             f"{bad or 'none'}; e.g. --eps 0.05,0.1,0.2")
        self.eps = sorted(set(float(e) for e in self.eps))
        for name, value in (("steps", self.steps), ("restarts", self.restarts),
                            ("queries", self.queries), ("samples", self.samples or 1)):
            if int(value) != value or value < 1:
                raise InputError(f"--{name} must be a whole number >= 1, got {value}")
        if not self.temperature > 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")

    def to_json(self) -> dict:
        return {"attacks": self.attacks, "eps": self.eps, "sources": self.sources,
                "steps": self.steps, "restarts": self.restarts, "queries": self.queries,
                "samples": self.samples, "temperature": self.temperature, "seed": self.seed}


def _known(kind: str, values: list[str], known: tuple, option: str) -> None:
    unknown = [v for v in values if v not in known]
    twice = sorted({v for v in values if values.count(v) > 1})
    if unknown or twice or not values:
        what = (f"unknown {kind} {', '.join(map(repr, unknown))}" if unknown
                else f"{kind} listed twice: {', '.join(twice)}" if twice else f"no {kind}")
        raise InputError(f"{option}: {what}; choose from {', '.join(known)}")


@dataclass
class Subject:
    """One model under attack: `run` scores numpy inputs (a runtime's runner, or the
    float model), `gradients` maps a source name to the differentiable torch model
    whose gradients that source attacks through."""
    name: str
    run: object
    gradients: dict
    mirror: dict | None = None      # measured agreement of the mirror with the runtime


def evaluate(subject: Subject, x: np.ndarray, y: np.ndarray, cfg: Config,
             cache: dict | None = None) -> dict:
    """Clean, per-source/attack and worst-case robust accuracy of one subject at every
    eps, with its honesty flags. `cache` shares the transfer source's adversarial
    examples between subjects: pass one dict only to subjects whose 'transfer' model
    is the same float model."""
    cache = {} if cache is None else cache
    clean = subject.run(x).argmax(1) == y
    rows = []
    for eps in cfg.eps:
        robust, by = clean.copy(), []
        for source, attack, x_adv in _adversarials(subject, x, y, eps, cfg, cache):
            correct = subject.run(x_adv).argmax(1) == y
            robust &= correct
            by.append({"source": source, "attack": attack, "accuracy": _mean(correct)})
        log.info("%s eps=%g: robust accuracy %.1f%%", subject.name, eps, 100 * _mean(robust))
        rows.append({"eps": eps, "robust": _mean(robust), "by": by,
                     "robust_mask": packed(robust)})
    entry = {"target": subject.name, "clean": _mean(clean), "mirror": subject.mirror,
             "eps": rows, "clean_mask": packed(clean)}
    return entry | {"flags": checks(entry)}


def _adversarials(subject: Subject, x, y, eps: float, cfg: Config, cache: dict):
    """(source, attack, x_adv) for every configured source and attack at eps."""
    import torch
    from . import attacks as A
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    for source in cfg.sources:
        if source == "blackbox":
            yield source, "square", A.square_attack(subject.run, x, y, eps, cfg.queries,
                                                    cfg.seed)
            continue
        model = subject.gradients.get(source)
        if model is None:
            continue
        for attack in cfg.attacks:
            key = (attack, eps)
            if source != "transfer" or key not in cache:
                x_adv = _white_box(A, attack, model, xt, yt, eps, cfg).numpy()
                if source != "transfer":
                    yield source, attack, x_adv
                    continue
                cache[key] = x_adv
            yield source, attack, cache[key]


def _white_box(A, attack: str, model, x, y, eps: float, cfg: Config):
    if attack == "fgsm":
        return A.fgsm(model, x, y, eps)
    return A.pgd(model, x, y, eps, cfg.steps, restarts=cfg.restarts, seed=cfg.seed)


def packed(mask: np.ndarray) -> str:
    """A per-sample boolean mask as hex (numpy.packbits, first sample in the high bit):
    paired statistics (McNemar) between targets scored on the same samples need it."""
    return np.packbits(np.asarray(mask, bool)).tobytes().hex()


def unpacked(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:n].astype(bool)


def _mean(mask: np.ndarray) -> float:
    return float(np.mean(mask)) if len(mask) else 0.0


# --- honesty checks ---------------------------------------------------------------

def checks(entry: dict) -> list[dict]:
    """Signs of gradient masking or a broken evaluation, each a dict with 'check', the
    eps and attack concerned, and a message:
      accuracy_rises_with_eps   an attack's (or the worst-case) accuracy grows with eps
      pgd_weaker_than_fgsm      iterative PGD leaves more correct than one FGSM step
      blackbox_beats_whitebox   the gradient-free attack beats every gradient attack
      large_eps_not_zero        at eps >= 0.3 an attack leaves more than 10% correct"""
    return _rising(entry) + _pgd_vs_fgsm(entry) + _blackbox(entry) + _large_eps(entry)


def _large_eps(entry: dict) -> list[dict]:
    """Any attack (or the worst case) still above NEAR_ZERO at the largest eps, when
    that eps is at least LARGE_EPS."""
    flags = []
    for name, points in _series(entry).items():
        eps, acc = points[-1]
        if eps >= LARGE_EPS and acc > NEAR_ZERO:
            flags.append(_flag("large_eps_not_zero", eps, name,
                               f"{name}: {100 * acc:.1f}% at eps {eps:g}; expected near 0"))
    return flags


def _flag(check: str, eps: float, attack: str, message: str) -> dict:
    return {"check": check, "eps": eps, "attack": attack, "message": message}


def _series(entry: dict) -> dict[str, list[tuple[float, float]]]:
    """'source/attack' (and 'worst-case') -> [(eps, accuracy)] in eps order."""
    series = {"worst-case": [(r["eps"], r["robust"]) for r in entry["eps"]]}
    for r in entry["eps"]:
        for b in r["by"]:
            series.setdefault(f"{b['source']}/{b['attack']}", []).append(
                (r["eps"], b["accuracy"]))
    return series


def _rising(entry: dict) -> list[dict]:
    flags = []
    for name, points in _series(entry).items():
        for (e0, a0), (e1, a1) in zip(points, points[1:]):
            if a1 > a0 + TOLERANCE:
                flags.append(_flag("accuracy_rises_with_eps", e1, name,
                                   f"{name}: {100 * a0:.1f}% at eps {e0:g} but "
                                   f"{100 * a1:.1f}% at eps {e1:g}"))
    return flags


def _pgd_vs_fgsm(entry: dict) -> list[dict]:
    flags = []
    for r in entry["eps"]:
        acc = {(b["source"], b["attack"]): b["accuracy"] for b in r["by"]}
        for (source, attack), a in acc.items():
            f = acc.get((source, "fgsm"))
            if attack == "pgd" and f is not None and a > f + TOLERANCE:
                flags.append(_flag("pgd_weaker_than_fgsm", r["eps"], f"{source}/pgd",
                                   f"{source}: PGD {100 * a:.1f}% > FGSM {100 * f:.1f}% "
                                   f"at eps {r['eps']:g}"))
    return flags


def _blackbox(entry: dict) -> list[dict]:
    flags = []
    for r in entry["eps"]:
        box = [b["accuracy"] for b in r["by"] if b["source"] == "blackbox"]
        white = [b["accuracy"] for b in r["by"] if b["source"] != "blackbox"]
        if box and white and min(box) < min(white) - TOLERANCE:
            flags.append(_flag("blackbox_beats_whitebox", r["eps"], "blackbox/square",
                               f"black-box {100 * min(box):.1f}% < best white-box "
                               f"{100 * min(white):.1f}% at eps {r['eps']:g}: "
                               "possible gradient masking"))
    return flags
