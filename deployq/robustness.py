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
import time
from dataclasses import dataclass, field

import numpy as np

from . import stats
from .defaults import RUN_DEFAULTS
from .errors import InputError

log = logging.getLogger("deployq")
ATTACKS = ("fgsm", "pgd", "apgd-ce", "apgd-t")
ITERATIVE = ("pgd", "apgd-ce", "apgd-t")
SOURCES = ("transfer", "bpda", "blackbox")
TOLERANCE = 0.01            # accuracy differences within this are noise, not a flag
LARGE_EPS, NEAR_ZERO = 0.3, 0.1
DISAGREE = 0.05             # bpda and transfer further apart than this: a flag
MIRROR_TRUST = 0.99         # mirror top-1 agreement below this: its bpda is suspect

# Strength presets: the white-box attacks run from each gradient source, their
# iterations (steps), APGD-CE/PGD restarts, APGD-T target classes, and Square queries
# on the runtime. fast is the pre-APGD default (CI smoke runs); standard follows
# AutoAttack's standard version (APGD-CE, APGD-T with 9 targets, 100 iterations) with
# a second APGD-CE restart and a 1000-query Square attack; thorough adds PGD, 5
# restarts and AutoAttack's 5000 Square queries. square_p is Square's initial window
# fraction p_init: AutoAttack's 0.8 at standard and thorough (on the PGD-trained
# Fashion-MNIST LeNet the black-box attack is what breaks the last samples, and 0.3
# left 2 of 100 that AutoAttack's Square broke: docs/robustness-bench.md); fast keeps
# the 0.3 it always had.
PRESETS = {
    "fast": {"attacks": ["fgsm", "pgd"], "steps": 10, "restarts": 1, "queries": 100,
             "target_classes": 9, "square_p": 0.3},
    "standard": {"attacks": ["fgsm", "apgd-ce", "apgd-t"], "steps": 100, "restarts": 2,
                 "queries": 1000, "target_classes": 9, "square_p": 0.8},
    "thorough": {"attacks": ["fgsm", "pgd", "apgd-ce", "apgd-t"], "steps": 100,
                 "restarts": 5, "queries": 5000, "target_classes": 9, "square_p": 0.8},
}
STRENGTHS = tuple(PRESETS)


@dataclass
class Config:
    """What to run: a strength preset, any of whose settings given here override it.
    Checked on construction, before any slow work."""
    attacks: list[str] | None = None
    eps: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    steps: int | None = None
    restarts: int | None = None
    queries: int | None = None
    samples: int | None = 200
    temperature: float = 1.0
    seed: int = 0
    strength: str = RUN_DEFAULTS["strength"]
    target_classes: int | None = None
    square_p: float | None = None         # Square's p_init (the preset's)
    eps_text: list[str] | None = None     # eps as the user wrote them ('8/255'), if so

    def __post_init__(self):
        if self.strength not in PRESETS:
            raise InputError(f"unknown strength {self.strength!r}; choose from "
                             f"{', '.join(STRENGTHS)}")
        for key, value in PRESETS[self.strength].items():
            if getattr(self, key) is None:
                setattr(self, key, list(value) if isinstance(value, list) else value)
        _known("attack", self.attacks, ATTACKS, "--attacks")
        _known("source", self.sources, SOURCES, "--sources")
        self._check_eps()
        for name in ("steps", "restarts", "queries", "target_classes", "samples"):
            value = getattr(self, name) if name != "samples" else (self.samples or 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a whole number "
                                 f">= 1, got {value}")
        if (isinstance(self.square_p, bool) or not isinstance(self.square_p, (int, float))
                or not 0 < self.square_p <= 1):
            raise InputError(f"square_p must lie in (0, 1], got {self.square_p}")
        if not self.temperature > 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")

    def _check_eps(self) -> None:
        bad = [e for e in self.eps
               if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 < e <= 1]
        if bad or not self.eps:
            raise InputError(f"--eps values must lie in (0, 1] (input units), got "
                             f"{bad or 'none'}; e.g. --eps 0.05,0.1 or --eps 8/255")
        text = dict(zip(self.eps, self.eps_text or []))
        self.eps = sorted(set(float(e) for e in self.eps))
        self.eps_text = [text.get(e, f"{e:g}") for e in self.eps]

    def describe(self) -> str:
        """Exactly which attacks, iterations, restarts and queries produce the number."""
        white = []
        for a in self.attacks:
            white.append({"fgsm": "FGSM",
                          "pgd": f"PGD-{self.steps} x {self.restarts} restart(s)",
                          "apgd-ce": f"APGD-CE {self.steps} iterations x {self.restarts} "
                                     "restart(s)",
                          "apgd-t": f"APGD-T {self.steps} iterations x "
                                    f"{self.target_classes} target classes (on the "
                                    "samples APGD-CE left correct)"}[a])
        parts = [f"{src}: " + ", ".join(white) for src in self.sources if src != "blackbox"]
        if "blackbox" in self.sources:
            parts.append(f"blackbox: Square {self.queries} queries (p_init "
                         f"{self.square_p:g}) on the runtime")
        return (f"strength {self.strength}; L-inf; worst case per sample over "
                + "; ".join(parts))

    def to_json(self) -> dict:
        return {"strength": self.strength, "attacks": self.attacks, "eps": self.eps,
                "eps_text": self.eps_text, "sources": self.sources, "steps": self.steps,
                "restarts": self.restarts, "target_classes": self.target_classes,
                "queries": self.queries, "square_p": self.square_p, "samples": self.samples,
                "temperature": self.temperature, "seed": self.seed,
                "description": self.describe()}


def _known(kind: str, values: list[str], known: tuple, option: str) -> None:
    unknown = [v for v in values if v not in known]
    twice = sorted({v for v in values if values.count(v) > 1})
    if unknown or twice or not values:
        what = (f"unknown {kind} {', '.join(map(repr, unknown))}" if unknown
                else f"{kind} listed twice: {', '.join(twice)}" if twice else f"no {kind}")
        raise InputError(f"{option}: {what}; choose from {', '.join(known)}")


def parse_eps(text) -> tuple[float, str]:
    """An eps as a number or a fraction 'a/b' (as torchattacks and RobustBench users
    write 8/255): its value and the text to show."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text), f"{text:g}"
    raw = str(text).strip()
    try:
        num, _, den = raw.partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise InputError(f"--eps takes comma-separated numbers or fractions such as "
                         f"8/255, got {raw!r}") from None
    return value, raw


@dataclass
class Subject:
    """One model under attack: `run` scores numpy inputs (a runtime's runner, or the
    float model), `gradients` maps a source name to the differentiable torch model
    whose gradients that source attacks through. `keys` names each source's model so
    that subjects attacked through the same model (the float model; identical mirrors
    of two targets with one plan) share its adversarial examples."""
    name: str
    run: object
    gradients: dict
    mirror: dict | None = None      # measured agreement of the mirror with the runtime
    keys: dict | None = None


def evaluate(subject: Subject, x: np.ndarray, y: np.ndarray, cfg: Config,
             cache: dict | None = None, on_step=None) -> dict:
    """Clean, per-source/attack and worst-case robust accuracy of one subject at every
    eps, each with its 95% interval and per-sample mask, and its own honesty flags.
    `cache` shares white-box adversarial examples between subjects whose source model
    has the same key (by default only 'transfer' is shared: pass one dict only to
    subjects whose 'transfer' model is the same float model). on_step(): called after
    each source/attack is scored (progress)."""
    cache = {} if cache is None else cache
    started, cpu = time.perf_counter(), time.process_time()
    clean = subject.run(x).argmax(1) == y
    rows = []
    for eps in cfg.eps:
        robust, by = clean.copy(), []
        for source, attack, x_adv in _adversarials(subject, x, y, eps, cfg, cache):
            correct = (subject.run(x_adv).argmax(1) == y) & clean
            robust &= correct
            by.append({"source": source, "attack": attack} | _score(correct))
            if on_step is not None:
                on_step()
        log.info("%s eps=%g: robust accuracy %.1f%%", subject.name, eps, 100 * _mean(robust))
        rows.append({"eps": eps, "samples": int(len(y))} | _score(robust, "robust")
                    | {"by": by})
    log.info("%s: attacks took %.1f s (%.1f CPU s in this process)", subject.name,
             time.perf_counter() - started, time.process_time() - cpu)
    entry = {"target": subject.name} | _score(clean, "clean") | {
        "mirror": subject.mirror, "eps": rows}
    return entry | {"flags": checks(entry)}


def _score(mask: np.ndarray, key: str = "accuracy") -> dict:
    """accuracy, its Wilson 95% interval and the per-sample mask (hex, stats.pack)."""
    return {key: _mean(mask), f"{key}_ci95": stats.interval(mask),
            f"{key}_mask": stats.pack(mask)}


def _adversarials(subject: Subject, x, y, eps: float, cfg: Config, cache: dict):
    """(source, attack, x_adv) for every configured source and attack at eps."""
    import torch
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    for source in cfg.sources:
        if source == "blackbox":
            yield source, "square", _square(subject.run, x, y, eps, cfg)
            continue
        model = subject.gradients.get(source)
        if model is None:
            continue
        key = (subject.keys or {}).get(source, "transfer" if source == "transfer" else None)
        if key is None or (key, eps) not in cache:
            found = _white_box(model, xt, yt, eps, cfg)
            if key is None:
                yield from ((source, a, v) for a, v in found.items())
                continue
            cache[(key, eps)] = found
        yield from ((source, a, v) for a, v in cache[(key, eps)].items())


def _square(run, x, y, eps: float, cfg: Config) -> np.ndarray:
    from . import attacks as A
    return A.square_attack(run, x, y, eps, cfg.queries, cfg.seed, p_init=cfg.square_p)


def _white_box(model, x, y, eps: float, cfg: Config) -> dict:
    """{attack: x_adv (numpy)} for cfg.attacks in order. APGD-T runs only on the samples
    APGD-CE left correct on `model` (AutoAttack's order); the others keep APGD-CE's
    point, so its accuracy is that of APGD-CE followed by APGD-T."""
    from . import attacks as A
    out = {}
    for attack in cfg.attacks:
        if attack == "fgsm":
            out[attack] = A.fgsm(model, x, y, eps)
        elif attack == "pgd":
            out[attack] = A.pgd(model, x, y, eps, cfg.steps, restarts=cfg.restarts,
                                seed=cfg.seed)
        elif attack == "apgd-ce":
            out[attack] = A.apgd(model, x, y, eps, cfg.steps, loss="ce",
                                 restarts=cfg.restarts, seed=cfg.seed)
        else:
            out[attack] = _apgd_t(A, model, x, y, eps, cfg, out.get("apgd-ce"))
    return {a: v.numpy() for a, v in out.items()}


def _apgd_t(A, model, x, y, eps: float, cfg: Config, after):
    import torch
    if after is None:
        return A.apgd(model, x, y, eps, cfg.steps, target_classes=cfg.target_classes,
                      seed=cfg.seed)
    with torch.no_grad():
        left = torch.nonzero(model(after).argmax(1) == y)[:, 0]
    result = after.clone()
    if len(left):
        result[left] = A.apgd(model, x[left], y[left], eps, cfg.steps,
                              target_classes=cfg.target_classes, seed=cfg.seed)
    return result


def _mean(mask: np.ndarray) -> float:
    return float(np.mean(mask)) if len(mask) else 0.0


# --- honesty checks ---------------------------------------------------------------

def checks(entry: dict) -> list[dict]:
    """Signs of gradient masking or a broken evaluation in one subject, each a dict
    with 'check', the eps and attack concerned, and a message:
      accuracy_rises_with_eps   an attack's (or the worst-case) accuracy grows with eps
      pgd_weaker_than_fgsm      an iterative attack (PGD, APGD) from a source leaves
                                more correct than one FGSM step from it
      blackbox_beats_whitebox   the gradient-free attack beats every gradient attack
      large_eps_not_zero        at eps >= 0.3 an attack leaves more than 10% correct
      bpda_transfer_disagree    the worst case through the mirror (bpda) and from the
                                float model (transfer) differ by more than DISAGREE
      mirror_disagrees          the mirror's top-1 agreement with the runtime is below
                                MIRROR_TRUST: its bpda attacks are not trustworthy
    compare_to_float (across subjects) adds more_robust_than_float."""
    return (_rising(entry) + _pgd_vs_fgsm(entry) + _blackbox(entry) + _large_eps(entry)
            + _disagree(entry) + _mirror(entry))


def _mirror(entry: dict) -> list[dict]:
    m = entry.get("mirror")
    if not m or m["top1"] >= MIRROR_TRUST:
        return []
    return [_flag("mirror_disagrees", None, "bpda",
                  f"mirror top-1 agreement {100 * m['top1']:.1f}% < "
                  f"{100 * MIRROR_TRUST:.0f}%: attacks through it (bpda) may miss what "
                  "the runtime does")]


def _source_worst(row: dict, source: str) -> list[bool] | None:
    """Per sample: correct under every attack from `source` at this eps row."""
    masks = [stats.unpack(b["accuracy_mask"], row["samples"]) for b in row["by"]
             if b["source"] == source]
    return [all(v) for v in zip(*masks)] if masks else None


def _disagree(entry: dict) -> list[dict]:
    flags = []
    for r in entry["eps"]:
        bpda, transfer = _source_worst(r, "bpda"), _source_worst(r, "transfer")
        if bpda is None or transfer is None:
            continue
        a, b = _mean(np.array(bpda)), _mean(np.array(transfer))
        if abs(a - b) > DISAGREE:
            flags.append(_flag("bpda_transfer_disagree", r["eps"], "bpda/transfer",
                               f"bpda {100 * a:.1f}% vs transfer {100 * b:.1f}% at eps "
                               f"{r['eps']:g} (more than {100 * DISAGREE:.0f} points "
                               "apart): the mirror or the float gradients mislead"))
    return flags


def compare_to_float(entries: list[dict]) -> None:
    """Mark each target's worst case at each eps against float's on the same samples
    (McNemar, stats.paired) and flag more_robust_than_float: a target significantly
    more robust than float, unless the black-box attack on its runtime confirms it
    (its Square accuracy also significantly above float's). Edits entries in place."""
    base = next((e for e in entries if e["target"] == "float"), None)
    if base is None:
        return
    for entry in entries:
        if entry is base:
            continue
        for r, f in zip(entry["eps"], base["eps"]):
            test = _paired(r, f, "robust_mask")
            r["vs_float"] = test
            if test["significant"] and r["robust"] > f["robust"] and not _confirmed(r, f):
                flag = _flag("more_robust_than_float", r["eps"], "worst-case",
                             f"{100 * r['robust']:.1f}% robust vs float "
                             f"{100 * f['robust']:.1f}% at eps {r['eps']:g} (McNemar p = "
                             f"{test['p']:.2g}), not confirmed by the black-box attack on "
                             "the runtime: suspect gradient masking")
                entry["flags"].append(flag)


def _paired(r: dict, f: dict, key: str) -> dict:
    n = r["samples"]
    return stats.paired(stats.unpack(r[key], n), stats.unpack(f[key], n))


def _confirmed(r: dict, f: dict) -> bool:
    """The Square attack on the runtime leaves significantly more correct on the target
    than on float."""
    box = [next((b for b in row["by"] if b["source"] == "blackbox"), None) for row in (r, f)]
    if None in box:
        return False
    test = stats.paired(*(stats.unpack(b["accuracy_mask"], r["samples"]) for b in box))
    return test["significant"] and box[0]["accuracy"] > box[1]["accuracy"]


def _large_eps(entry: dict) -> list[dict]:
    """Any attack (or the worst case) still above NEAR_ZERO at the largest eps, when
    that eps is at least LARGE_EPS."""
    flags = []
    for name, points in _series(entry).items():
        if name.startswith("blackbox/"):     # a short query budget is weak, not masked
            continue
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
