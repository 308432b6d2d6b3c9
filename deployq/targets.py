"""Targets are data: one TOML file each (the built-in ones in targets/, a user's own
in --targets-dir). A target names its backend module, what it allows per quantization
setting ([allowed]), what it uses when nobody says otherwise ([defaults]), and options
for its backend ([options])."""
from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, TargetError

SETTINGS = ("weight_bits", "activation_bits", "granularity", "weight_scheme",
            "activation_scheme", "scale", "calibration", "rounding")
EXTRA_DEFAULTS = ("percentile", "weight_clip")
TEXT_SETTINGS = ("granularity", "weight_scheme", "activation_scheme", "scale",
                 "calibration", "rounding")
log = logging.getLogger("deployq")
_HERE = Path(__file__).resolve().parent
# a source checkout (or editable install) has targets/ at the top; a wheel carries it
# as deployq/builtin_targets/ (pyproject.toml)
BUILTIN_DIR = next((d for d in (_HERE / "builtin_targets", _HERE.parent / "targets")
                    if d.is_dir()), _HERE.parent / "targets")


@dataclass
class Target:
    name: str
    backend: str
    description: str
    allowed: dict
    defaults: dict
    options: dict = field(default_factory=dict)
    path: Path | None = None
    # the only integer width the target executes (int8 targets: 8); weight_bits below it
    # are held on that grid (plan.py). None: every allowed width is executed as such.
    container_bits: int | None = None

    def check(self, key: str, value, where: str) -> None:
        if key in self.allowed and value not in self.allowed[key]:
            raise TargetError(f"target {self.name} does not allow {key}={value!r} "
                              f"({where}); allowed: {self.allowed[key]}")


def backend_names() -> list[str]:
    """Modules in deployq/backends/ (listed, not imported)."""
    folder = Path(__file__).resolve().parent / "backends"
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def search_path(targets_dir: str | os.PathLike | None = None) -> list[Path]:
    extra = [Path(targets_dir)] if targets_dir else []
    env = [Path(p) for p in os.environ.get("DEPLOYQ_TARGETS", "").split(os.pathsep) if p]
    return extra + env + [BUILTIN_DIR]


def scan(targets_dir=None) -> tuple[dict[str, Target], dict[Path, TargetError]]:
    """Every readable target by name (earlier directories in the search path win), and
    the error of each unreadable file."""
    found: dict[str, Target] = {}
    errors: dict[Path, TargetError] = {}
    for folder in search_path(targets_dir):
        if targets_dir and folder == Path(targets_dir) and not folder.is_dir():
            raise TargetError(f"targets directory {folder} does not exist")
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            try:
                target = read(path)
            except TargetError as e:
                errors[path] = e
                continue
            found.setdefault(target.name, target)
    return found, errors


def all_targets(targets_dir=None) -> dict[str, Target]:
    """Every readable target; unreadable files are logged and left out."""
    found, errors = scan(targets_dir)
    for error in errors.values():
        log.warning("skipping a target file: %s", error)
    return found


def get(name: str, targets_dir=None) -> Target:
    """The target called name. A broken file for it in a directory searched before the
    one that defines it (a user's override) is an error, never silently skipped."""
    targets, errors = scan(targets_dir)
    if name in targets:
        order = search_path(targets_dir)
        found_at = _rank(order, targets[name].path)
        shadowing = [e for p, e in errors.items()
                     if p.stem == name and _rank(order, p) < found_at]
        if shadowing:
            raise shadowing[0]
        return targets[name]
    broken = [e for p, e in errors.items() if p.stem == name]
    if broken:
        raise broken[0]
    raise TargetError(f"unknown target '{name}'; known: {', '.join(sorted(targets))} "
                      "(see 'deployq targets'; add one with a TOML file in --targets-dir)")


def targets_or_fail(names: list[str], targets_dir=None) -> list[Target]:
    """Check target names before any slow work starts (and build the C runtime when a
    target needs it: a missing compiler fails here)."""
    from . import validate
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"targets listed more than once: {', '.join(twice)}")
    found = [get(n, targets_dir) for n in names]
    validate.c_runtime(found)
    return found


def plan_settings(tgt: Target, settings: dict | None) -> dict:
    """Model-wide plan settings ({"weight_bits": 4, ...}; None values dropped), each
    checked against the target (api.plan_config's default)."""
    default = {k: v for k, v in (settings or {}).items() if v is not None
               and not (k == "rounding" and v not in tgt.allowed.get("rounding", ()))}
    # (a rounding mode applies to the targets that offer it, as in run's select stage:
    # eval --rounding trn sets fpga-fixed's; the int8 targets round as their runtimes do)
    for key, value in default.items():
        if key not in SETTINGS:
            raise InputError(f"unknown plan setting {key!r}; known: {', '.join(SETTINGS)}")
        tgt.check(key, value, f"{key} for {tgt.name}")
    return default


def relu_unsigned(target: Target) -> bool:
    """The target's [options] relu_unsigned (default false: plan.make stores ReLU outputs
    unsigned when true); TargetError if not a bool or on a backend whose runtime has no
    unsigned activations (backends.UNSIGNED_RELU)."""
    from .backends import UNSIGNED_RELU
    v = target.options.get("relu_unsigned", False)
    if not isinstance(v, bool):
        raise TargetError(f"target {target.name}: relu_unsigned={v!r}; choose true or false")
    if v and target.backend not in UNSIGNED_RELU:
        raise TargetError(f"target {target.name}: relu_unsigned is an option of the "
                          f"{', '.join(sorted(UNSIGNED_RELU))} backend, not of "
                          f"'{target.backend}'; remove it")
    return v


def _rank(order: list[Path], path: Path | None) -> int:
    for i, folder in enumerate(order):
        if path is not None and path.parent.resolve() == folder.resolve():
            return i
    return len(order)


def read(path: Path) -> Target:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise TargetError(f"cannot read target file {path}: {e}") from None
    unknown = set(doc) - {"name", "backend", "description", "allowed", "defaults", "options",
                          "container_bits"}
    if unknown:
        raise TargetError(f"{path}: unknown keys {sorted(unknown)}")
    for key in ("name", "backend", "defaults"):
        if key not in doc:
            raise TargetError(f"{path}: missing '{key}'")
    _types(doc, path)
    if doc["backend"] not in backend_names():
        raise TargetError(f"{path}: unknown backend '{doc['backend']}'; "
                          f"known: {', '.join(backend_names())}")
    target = Target(doc["name"], doc["backend"], doc.get("description", ""),
                    doc.get("allowed", {}), doc["defaults"], doc.get("options", {}), path,
                    doc.get("container_bits"))
    _validate(target, path)
    return target


def _types(doc: dict, path: Path) -> None:
    """Each key of a target file has the type the code reads it as."""
    for key in ("name", "backend", "description"):
        if key in doc and not (isinstance(doc[key], str) and doc[key]):
            raise TargetError(f"{path}: '{key}' must be a non-empty string, got {doc[key]!r}")
    for key in ("allowed", "defaults", "options"):
        if key in doc and not isinstance(doc[key], dict):
            raise TargetError(f"{path}: [{key}] must be a table, got {doc[key]!r:.60}")
    for key, values in doc.get("allowed", {}).items():
        if not isinstance(values, list) or not values:
            raise TargetError(f"{path}: [allowed] {key} must be a non-empty list, got "
                              f"{values!r:.60}")
        for v in values:
            _setting_type(key, v, path, "allowed")
    for key, v in doc.get("defaults", {}).items():
        _setting_type(key, v, path, "defaults")


def _setting_type(key: str, v, path: Path, section: str) -> None:
    if key in ("weight_bits", "activation_bits"):
        if not isinstance(v, int) or isinstance(v, bool) or not 2 <= v <= 16:
            raise TargetError(f"{path}: [{section}] {key} values must be whole numbers in "
                              f"2..16, got {v!r}")
    elif key in TEXT_SETTINGS and not isinstance(v, str):
        raise TargetError(f"{path}: [{section}] {key} values must be strings, got {v!r}")
    elif key == "percentile" and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                      and 50 <= v <= 100):
        raise TargetError(f"{path}: [{section}] percentile must be a number in [50, 100], "
                          f"got {v!r}")


def _backend_fits(target: Target, path: Path) -> None:
    """The target allows only widths its backend executes (else a 16-bit target would
    be exported as 8 bits and score wrong numbers)."""
    from .backends import EXECUTED_BITS
    limits = EXECUTED_BITS.get(target.backend)
    if limits is None:
        return
    for key, ok in zip(("weight_bits", "activation_bits"), limits[:2]):
        values = target.allowed.get(key, [target.defaults.get(key)])
        bad = [v for v in values if v not in ok]
        if bad:
            raise TargetError(f"{path}: backend '{target.backend}' executes {key} "
                              f"{min(ok)}..{max(ok)}, not {bad}; allow only those")
    narrow = [b for b in target.allowed.get("weight_bits", [target.defaults.get("weight_bits")])
              if b < 8]
    if limits[2] == 8 and narrow and target.container_bits != 8:
        raise TargetError(f"{path}: backend '{target.backend}' runs int8 weights only; "
                          f"weight_bits {narrow} need container_bits = 8")


def _validate(target: Target, path: Path) -> None:
    for section in ("allowed", "defaults"):
        bad = set(getattr(target, section)) - set(SETTINGS) - set(EXTRA_DEFAULTS)
        if bad:
            raise TargetError(f"{path}: unknown settings in [{section}]: {sorted(bad)}; "
                              f"known: {', '.join(SETTINGS)}")
    cb = target.container_bits
    if cb is not None and (not isinstance(cb, int) or isinstance(cb, bool) or not 2 <= cb <= 16
                           or any(b > cb for b in target.allowed.get("weight_bits", []))):
        raise TargetError(f"{path}: container_bits={cb!r} must be an integer in 2..16 and at "
                          f"least every allowed weight_bits {target.allowed.get('weight_bits')}")
    missing = [k for k in SETTINGS if k not in target.defaults]
    if missing:
        raise TargetError(f"{path}: [defaults] must set {', '.join(missing)}")
    for key, value in target.defaults.items():
        target.check(key, value, f"[defaults] in {path}")
    _backend_fits(target, path)
