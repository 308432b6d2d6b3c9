"""Checks of what the user gives, run before any slow work starts. Each failure is one
InputError naming the value, what was expected and how to fix it (docs/robustness-of-the-tool.md).

The command line calls these once per command through cli.py's shared preamble, so a
new command inherits them; the Python API calls the ones that fit its verbs."""
from __future__ import annotations

import math
import os
from pathlib import Path

from . import io
from .errors import InputError

SEED_MAX = 2 ** 32 - 1
CALIBRATIONS = ("minmax", "percentile", "mse", "entropy", "converter")


# --- files the user names ---------------------------------------------------------------

def model_file(spec: str | None) -> Path | None:
    """The file a model spec reads (file.py of file.py:factory, or the .pt2), if any."""
    if not spec or spec.startswith("zoo:"):
        return None
    if spec.endswith(".pt2"):
        return Path(spec)
    file, sep, _ = spec.rpartition(":")
    return Path(file) if sep and file.endswith(".py") else None


def data_path(spec: str | None) -> Path | None:
    """The file or folder a data spec reads, if any (the built-in sets: none)."""
    if not spec or spec == "digits":
        return None
    if spec == "fashion-mnist" or spec.startswith("fashion-mnist:"):
        folder = spec.partition(":")[2]
        return Path(folder) if folder else None
    return Path(spec)


def register_inputs(model=None, weights=None, data=None, plans=(), targets_dir=None,
                    config=None) -> None:
    """Tell io which paths are inputs, so no output may land on them."""
    io.register_input(model_file(model), weights, data_path(data), *plans, targets_dir, config)


def _writable_ancestor(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path) -> str | None:
    """Why a file cannot be created in folder (None: it can). Folders made to find out
    are removed again, so the probe leaves nothing behind."""
    folder = Path(os.path.abspath(folder))
    made = []
    try:
        for p in reversed([folder, *folder.parents]):
            if not p.exists():
                p.mkdir()
                made.append(p)
        fd, name = __import__("tempfile").mkstemp(prefix=".deployq-probe.", dir=folder)
        os.close(fd)
        os.unlink(name)
        return None
    except OSError as e:
        return f"{e.filename or folder}: {e.strerror}"
    finally:
        for p in reversed(made):
            try:
                p.rmdir()
            except OSError:
                pass


def output_file(path, option: str = "--json") -> None:
    """PATH can be written: not a folder, not an input, in a writable folder."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{option} {p} is a directory; give a file path such as {p / 'results.json'}")
    io.check_not_input(p, option)
    anc = _writable_ancestor(p.parent)
    why = _probe(p.parent) if anc.is_dir() else f"{anc} is a file"
    if why:
        raise InputError(f"cannot write {option} {p} ({why}); choose a path you can write")


def out_dir(out, targets=(), results: bool = False) -> None:
    """OUT can hold OUT/TARGET/ for each target (and results.json, report.md and
    report.html with `results`) without touching an input."""
    o = Path(out)
    if o.exists() and not o.is_dir():
        raise InputError(f"--out {o} is a file, not a directory; choose another --out")
    anc = _writable_ancestor(o)
    why = _probe(o) if anc.is_dir() else f"{anc} is a file"
    if why:
        raise InputError(f"cannot write to --out {o} ({why}); choose a writable --out")
    for name in targets:
        io.check_holds_no_input(o / name)
    if results:
        for name in io.RESULT_FILES:
            if (o / name).is_dir():
                raise InputError(f"{o / name} is a directory, so deployq cannot write its "
                                 f"{name}; remove it or choose another --out")
            io.check_not_input(o / name, "--out")


C_PROJECT_MARK = "deployq_model.h"       # every C project deployq writes holds it


def c_project(folder) -> None:
    """--c-project is replaced as a whole: only a new or empty folder, or one deployq
    wrote before, may be given (never a folder of the user's own files)."""
    f = Path(folder)
    out_dir(f)
    io.check_holds_no_input(f)
    io.check_not_input(f, "--c-project")
    if f.is_dir() and any(f.iterdir()) and not (f / C_PROJECT_MARK).is_file():
        first = sorted(p.name for p in f.iterdir())[0]
        raise InputError(f"--c-project {f} holds files deployq did not write (e.g. {first}) "
                         "and would be replaced as a whole; choose a new or empty folder")


def seed(value) -> int:
    if not _is_int(value) or not 0 <= value <= SEED_MAX:
        raise InputError(f"seed must be a whole number in 0..{SEED_MAX}, got {value!r}")
    return value


def samples(n: int | None, available: int, option: str = "--samples") -> None:
    """n test samples exist (None: all of them)."""
    if n is not None and n > available:
        raise InputError(f"{option} {n} is more than the {available} test samples the data "
                         f"has; give {option} {available} or fewer")


C_BACKENDS = ("mcu", "fpga", "qemu")


def c_runtime(targets) -> None:
    """The C runtime builds (or is cached) when a target needs it: a missing compiler
    or an unwritable cache fails here, before any work."""
    if any(t.backend in C_BACKENDS for t in targets):
        from . import runtime
        runtime.library()


# --- deployq.toml ---------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v))


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _int_at_least(low):
    return lambda v: _is_int(v) and v >= low


# key -> (check, what it must be); None is allowed where the default is None
CONFIG = {
    "model": (lambda v: isinstance(v, str) and v != "", "a model spec string"),
    "weights": (lambda v: isinstance(v, str), "a file path string"),
    "data": (lambda v: isinstance(v, str) and v != "", "a data spec string"),
    "targets": (lambda v: _str_list(v) and len(v) > 0, "a non-empty list of target names"),
    "out": (lambda v: isinstance(v, str) and v != "", "a directory path string"),
    "calibration": (lambda v: v in CALIBRATIONS, f"one of {', '.join(CALIBRATIONS)}"),
    "samples": (_int_at_least(1), "a whole number >= 1"),
    "seed": (lambda v: _is_int(v) and 0 <= v <= SEED_MAX, f"a whole number in 0..{SEED_MAX}"),
    "calib_samples": (_int_at_least(1), "a whole number >= 1"),
    "targets_dir": (lambda v: isinstance(v, str) and v != "", "a directory path string"),
    "plans": (_str_list, "a list of plan.json paths"),
    "attacks": (_str_list, "a list of attack names"),
    "eps": (lambda v: isinstance(v, list) and all(
        isinstance(e, str) or (_is_num(e) and 0 < e <= 1) for e in v),
        "a list of numbers in (0, 1] or fractions like '8/255'"),
    "strength": (lambda v: v in ("fast", "standard", "thorough"),
                 "one of fast, standard, thorough"),
    "target_classes": (_int_at_least(1), "a whole number >= 1"),
    "sources": (_str_list, "a list of source names"),
    "steps": (_int_at_least(1), "a whole number >= 1"),
    "restarts": (_int_at_least(1), "a whole number >= 1"),
    "queries": (_int_at_least(1), "a whole number >= 1"),
    "robust_samples": (_int_at_least(1), "a whole number >= 1 (leave it out for the "
                                         "default)"),
    "temperature": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "profile_repeats": (lambda v: _is_int(v) and (v == 0 or v >= 3),
                        "0 (no profiling) or a whole number >= 3"),
    "certify": (lambda v: isinstance(v, list) and all(
        isinstance(e, str) or (_is_num(e) and 0 < e <= 1) for e in v),
        "a list of eps (numbers in (0, 1] or fractions like '1/255')"),
    "certify_samples": (_int_at_least(1), "a whole number >= 1"),
    "amplify": (lambda v: _is_num(v) and 0 < v <= 1, "an eps in (0, 1]"),
    "amplify_samples": (_int_at_least(1), "a whole number >= 1"),
    "mcu_clock_mhz": (lambda v: _is_num(v) and v > 0, "a clock in MHz > 0"),
    "weight_bits": (_int_at_least(1), "a whole number of bits"),
    "activation_bits": (_int_at_least(1), "a whole number of bits"),
    "select": (lambda v: _select_table(v), "a table {budget = \"4bits\", method = "
               "\"adversarial\"} with optional eps (0..1), refine (whole number >= 0), "
               "activation_budget (\"4bits\"), rounding, max_clean_drop (points >= 0, "
               "with refine)"),
}
SELECT_METHODS = ("adversarial", "noise", "hessian", "uniform")   # = selection.METHODS
SELECT_KEYS = {"budget": lambda v: isinstance(v, str) and v != "",
               "method": lambda v: v in SELECT_METHODS,
               "eps": lambda v: _is_num(v) and 0 <= v <= 1,
               "refine": lambda v: _is_int(v) and v >= 0,
               "activation_budget": lambda v: isinstance(v, str) and v != "",
               "rounding": lambda v: isinstance(v, str) and v != "",
               "max_clean_drop": lambda v: _is_num(v) and 0 <= v < float("inf")}


def _select_table(v) -> bool:
    """The run's select table: a budget, known keys only, each of the right type
    (the budget texts are parsed by selection.parse_budget before any work)."""
    return (isinstance(v, dict) and "budget" in v and set(v) <= set(SELECT_KEYS)
            and all(SELECT_KEYS[k](x) for k, x in v.items()))
PATH_KEYS = ("weights", "out", "targets_dir")


def toml_file(path, known, what: str) -> dict:
    """A TOML file whose top-level keys are all in `known` (one line naming the rest)."""
    import tomllib
    try:
        cfg = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"cannot read {what} {path}: {' '.join(str(e).split())}") from None
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise InputError(f"{path}: unknown keys {unknown}; known: {', '.join(known)}")
    return cfg


def config(cfg: dict, where) -> dict:
    """Every known key has the right type and range (unknown keys are the caller's)."""
    for key, value in cfg.items():
        if key not in CONFIG or value is None:
            continue
        check, what = CONFIG[key]
        if not check(value):
            raise InputError(f"{where}: {key} must be {what}, got {value!r}")
    return cfg


def config_paths(cfg: dict, base: Path) -> dict:
    """Relative paths in a config file resolved against the file's folder."""
    cfg = dict(cfg)

    def at(p: str) -> str:
        return str(Path(base) / Path(p).expanduser())

    for key in PATH_KEYS:
        if isinstance(cfg.get(key), str):
            cfg[key] = at(cfg[key])
    if isinstance(cfg.get("model"), str) and model_file(cfg["model"]) is not None:
        m = cfg["model"]
        if m.endswith(".pt2"):
            cfg["model"] = at(m)
        else:
            file, _, factory = m.rpartition(":")
            cfg["model"] = f"{at(file)}:{factory}"
    if isinstance(cfg.get("data"), str):
        d = cfg["data"]
        if d.startswith("fashion-mnist:"):
            cfg["data"] = "fashion-mnist:" + at(d.partition(":")[2])
        elif data_path(d) is not None and d != "fashion-mnist":
            cfg["data"] = at(d)
    if _str_list(cfg.get("plans")):
        cfg["plans"] = [at(p) for p in cfg["plans"]]
    return cfg


# --- results files (compare) ------------------------------------------------------------------

def scores_finite(scores: dict, path) -> None:
    """Every accuracy is a number in [0, 1]: a NaN never passes a gate."""
    for (target, attack, eps), v in scores.items():
        if not (isinstance(v, float) and math.isfinite(v) and 0 <= v <= 1):
            where = "clean" if eps is None else f"{attack} eps {eps}"
            raise InputError(f"{path}: {target} {where} accuracy is {v!r}, not a number in "
                             "[0, 1]; re-run deployq to regenerate the file")


COMPARED = ("samples", "seed")
ROBUST_COMPARED = ("attacks", "sources", "steps", "restarts", "queries", "samples",
                   "temperature")


def mismatches(current: dict, reference: dict) -> list[str]:
    """Settings that differ between two results documents (their scores are then not
    comparable): test samples, seed, model, data and the attack settings."""
    out = [f"{k} {reference.get(k)!r} vs {current.get(k)!r}"
           for k in ("model", "data") + COMPARED if current.get(k) != reference.get(k)]
    a, b = current.get("robustness"), reference.get("robustness")
    if isinstance(a, dict) and isinstance(b, dict):
        out += [f"robustness {k} {b.get(k)!r} vs {a.get(k)!r}"
                for k in ROBUST_COMPARED if a.get(k) != b.get(k)]
    return out


def results_shape(doc: dict, path) -> None:
    """The parts compare reads have the types it expects."""
    rob = doc.get("robustness")
    if rob is not None and not (isinstance(rob, dict)
                                and isinstance(rob.get("targets", []), list)):
        raise InputError(f"{path}: 'robustness' must be an object with a 'targets' list, "
                         f"got {type(rob).__name__}; re-run deployq to regenerate it")
    if not all(isinstance(r, dict) for r in doc["results"]):
        raise InputError(f"{path}: every entry of 'results' must be an object; re-run "
                         "deployq to regenerate it")
