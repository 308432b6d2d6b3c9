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

from .errors import TargetError

SETTINGS = ("weight_bits", "activation_bits", "granularity", "weight_scheme",
            "activation_scheme", "scale", "calibration", "rounding")
EXTRA_DEFAULTS = ("percentile", "weight_clip")
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
    targets, errors = scan(targets_dir)
    if name in targets:
        return targets[name]
    broken = [e for p, e in errors.items() if p.stem == name]
    if broken:
        raise broken[0]
    raise TargetError(f"unknown target '{name}'; known: {', '.join(sorted(targets))} "
                      "(see 'deployq targets'; add one with a TOML file in --targets-dir)")


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
    if doc["backend"] not in backend_names():
        raise TargetError(f"{path}: unknown backend '{doc['backend']}'; "
                          f"known: {', '.join(backend_names())}")
    target = Target(doc["name"], doc["backend"], doc.get("description", ""),
                    doc.get("allowed", {}), doc["defaults"], doc.get("options", {}), path,
                    doc.get("container_bits"))
    _validate(target, path)
    return target


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
