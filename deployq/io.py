"""Output files: written to a temporary name and renamed, so a failure leaves nothing
half-written, and never onto one of the user's input files."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
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
    `with StagedDir(out) as tmp: write into tmp`. On error nothing replaces `out`."""

    def __init__(self, final: Path, protected: tuple[Path, ...] = ()):
        self.final = Path(final)
        for p in protected:
            if _inside(Path(p), self.final):
                raise InputError(f"output directory {self.final} holds the input {p}; "
                                 "choose another --out so inputs are never overwritten")

    def __enter__(self) -> Path:
        parent = self.final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", dir=parent))
            os.chmod(self.tmp, 0o777 & ~_umask())
        except OSError as e:
            raise InputError(f"cannot write to {parent}: {e.strerror}; "
                             "choose a writable --out") from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old.{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
