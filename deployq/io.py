"""Output files: written to a temporary name and renamed, so a failure leaves nothing
half-written, and never onto one of the user's input files.

Contracts:
- Every input the user names (model, weights, data, plans, configs, target files) is
  registered with register_input(); atomic_write refuses to write onto one and
  StagedDir refuses to replace a directory that holds one.
- One process at a time changes an output directory: out_lock(OUT) holds an exclusive
  flock on the folder OUT (re-entrant within a process). A second process waits.
- Staging names carry the writer's pid (`.NAME.stage.PID.xxxx`, `.NAME.old.PID.xxxx`,
  `.NAME.part.PID.xxxx`); under the lock, those whose process is gone (a SIGKILL) are
  removed, so an interrupted run leaves no litter after the next one.
- Replacing OUT/TARGET/ first removes OUT's results.json, report.md, report.html and
  manifest.json: results on disk always describe the artifacts beside them (a run
  killed half-way leaves no results rather than stale ones).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from .errors import InputError

RESULT_FILES = ("results.json", "report.md", "report.html", "manifest.json")
MANIFEST, MANIFEST_FORMAT = "manifest.json", "deployq-manifest"
_STAGING = re.compile(r"^\..+\.(stage|old|part)\.(\d+)\.[^/]+$")
_LEGACY = re.compile(r"^\..+\.[a-z0-9_]{8}$")     # mkdtemp names of older versions
LEGACY_AGE = 3600.0                                 # seconds before those count as stale

_inputs: set[Path] = set()
_locks: dict[Path, list] = {}                       # folder -> [fd, depth, pid]


# --- the user's inputs -------------------------------------------------------------

def register_input(*paths) -> None:
    """Remember files or folders the user gave as inputs: never written or replaced."""
    for p in paths:
        if p:
            _inputs.add(_resolve(Path(p)))


def clear_inputs() -> None:
    _inputs.clear()


def inputs() -> set[Path]:
    return set(_inputs)


def _resolve(p: Path) -> Path:
    try:
        return p.expanduser().resolve()
    except (OSError, RuntimeError):
        return p.absolute()


def check_not_input(path: Path, what: str = "output") -> None:
    """InputError when writing `path` would overwrite an input (or a folder of one)."""
    target = _resolve(Path(path))
    for p in _inputs:
        if target == p or _inside(p, target):
            raise InputError(f"{what} {path} would overwrite the input {p}; "
                             "choose another path so inputs are never overwritten")


def check_holds_no_input(folder: Path, protected=()) -> None:
    for p in set(_inputs) | {_resolve(Path(q)) for q in protected}:
        if _inside(p, Path(folder)):
            raise InputError(f"output directory {folder} holds the input {p}; "
                             "choose another --out so inputs are never overwritten")


# --- locking and stale staging -------------------------------------------------------

@contextlib.contextmanager
def out_lock(folder: Path):
    """Exclusive use of an output folder by this process (re-entrant). The lock is a
    flock on the folder itself (no lock file is left behind); a folder this call
    created and that is still empty at the end is removed again, so a refused run
    leaves no empty OUT."""
    key = _resolve(Path(folder))
    held = _locks.get(key)
    if held and held[2] == os.getpid():
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    created = not key.exists()
    fd = _acquire(key)
    _locks[key] = [fd, 1, os.getpid()]
    try:
        clean_stale(key)
        yield
    finally:
        _locks.pop(key, None)
        if created:
            with contextlib.suppress(OSError):
                key.rmdir()                 # only when empty
        os.close(fd)                        # closing releases the flock


def _acquire(folder: Path) -> int:
    """An fd of `folder` holding its exclusive flock; retried when another process
    removed the folder while this one waited."""
    while True:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue                # its creator removed it (empty) between the two calls
        except OSError as e:
            raise InputError(f"cannot write to {folder}: {e.strerror}; "
                             "choose a writable --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            import logging
            logging.getLogger("deployq").info("waiting for another deployq process "
                                              "writing to %s", folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(folder))
        except OSError:
            same = False
        if same:
            return fd
        os.close(fd)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_entries(folder: Path) -> list[Path]:
    """Staging files and folders in `folder` left by processes that are gone."""
    stale = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    for p in entries:
        m = _STAGING.match(p.name)
        if m and not _alive(int(m.group(2))):
            stale.append(p)
        elif not m and _LEGACY.match(p.name) and p.is_dir() and _age(p) > LEGACY_AGE:
            stale.append(p)
    return stale


def _age(p: Path) -> float:
    try:
        return time.time() - p.stat().st_mtime
    except OSError:
        return 0.0


def clean_stale(folder: Path) -> None:
    for p in stale_entries(folder):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


# --- writing ---------------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    path = Path(path)
    check_not_input(path)
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a directory; choose a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.part.{os.getpid()}.", dir=path.parent)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror}; choose a writable path") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())          # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StagedDir:
    """A directory built under a temporary name and moved into place on success:
    `with StagedDir(out) as tmp: write into tmp`. On error nothing replaces `out`.
    The swap happens under out_lock(out.parent). With results=True (a target folder
    in OUT), OUT's results files are removed before the swap (module docstring)."""

    def __init__(self, final: Path, protected: tuple[Path, ...] = (), results: bool = False):
        self.final = Path(final)
        self.results = results
        register_input(*protected)
        check_holds_no_input(self.final, protected)
        if _not_a_dir(self.final):
            raise InputError(f"{self.final} exists and is not a directory; "
                             "choose another output directory")

    def __enter__(self) -> Path:
        parent = self.final.parent
        self._lock = out_lock(parent)
        self._lock.__enter__()
        try:
            self.tmp = Path(tempfile.mkdtemp(
                prefix=f".{self.final.name}.stage.{os.getpid()}.", dir=parent))
            os.chmod(self.tmp, 0o777 & ~_umask())
        except OSError as e:
            self._lock.__exit__(None, None, None)
            raise InputError(f"cannot write to {parent}: {e.strerror}; "
                             "choose a writable --out") from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return
            if self.results:
                retire_results(self.final.parent)
            self._swap()
        finally:
            self._lock.__exit__(None, None, None)

    def _swap(self) -> None:
        old = None
        if self.final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.old.{os.getpid()}.",
                                        dir=self.final.parent))
            os.replace(self.final, old / "d")
        try:
            os.replace(self.tmp, self.final)
        except OSError as e:
            if old is not None:                    # put the previous one back
                os.replace(old / "d", self.final)
            shutil.rmtree(self.tmp, ignore_errors=True)
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise InputError(f"{self.final} was changed while deployq wrote it; "
                                 "run again") from None
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)


def _not_a_dir(path: Path) -> bool:
    """path exists and is no directory (one stat: another process may be swapping it)."""
    try:
        return not stat.S_ISDIR(path.stat().st_mode)
    except FileNotFoundError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        _resolve(path).relative_to(_resolve(folder))
        return True
    except ValueError:
        return False


# --- results and the run manifest ----------------------------------------------------------

def retire_results(out: Path) -> None:
    """Remove OUT's results files: they describe artifacts about to be replaced."""
    for name in RESULT_FILES:
        p = Path(out) / name
        if p.is_file() or p.is_symlink():
            p.unlink()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(out: Path, result: dict) -> Path:
    """OUT/manifest.json: the model, data and seed of results.json, its hash, and the
    hash of every target's artifact and plan.json, so check_manifest can tell whether
    the results describe the files beside them."""
    out = Path(out)
    targets = {}
    for row in result.get("results", []):
        if "artifact" not in row:
            continue
        artifact = Path(row["artifact"])
        targets[row["target"]] = {
            "artifact": artifact.name, "artifact_sha256": sha256(artifact),
            "plan_sha256": sha256(artifact.parent / "plan.json")}
    doc = {"format": MANIFEST_FORMAT, "version": 1, "model": result.get("model"),
           "data": result.get("data"), "seed": result.get("seed"),
           "samples": result.get("samples"),
           "results_sha256": sha256(out / "results.json") if (out / "results.json").is_file()
           else None, "targets": targets}
    atomic_write(out / MANIFEST, (json.dumps(doc, indent=1) + "\n").encode())
    return out / MANIFEST


def check_manifest(out: Path) -> list[str]:
    """What in OUT disagrees with OUT/manifest.json (empty: consistent, or no results)."""
    out = Path(out)
    if not (out / "results.json").is_file():
        return []
    if not (out / MANIFEST).is_file():
        return ["results.json has no manifest.json beside it"]
    doc = json.loads((out / MANIFEST).read_text())
    problems = []
    if doc.get("results_sha256") != sha256(out / "results.json"):
        problems.append("results.json is not the one the manifest describes")
    for name, t in doc.get("targets", {}).items():
        folder = out / name
        for key, path in (("artifact_sha256", folder / t["artifact"]),
                          ("plan_sha256", folder / "plan.json")):
            if not path.is_file() or sha256(path) != t[key]:
                problems.append(f"{path} differs from the run that wrote results.json")
    return problems
