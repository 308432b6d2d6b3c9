"""The one module that owns ctypes: builds the C runtime (runtime/*.c) into a shared
library on first use, declares its functions once, and wraps a loaded model.

Two kernel sets can be built (runtime/dq_kernels.h): "ref", the reference loops, and
"opt", the optimized kernels (bit-exact with ref). The library is cached under
$DEPLOYQ_CACHE (default ~/.cache/deployq), named by a hash of the sources and flags, so
an edited runtime is rebuilt and a stale one never loaded."""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import DeployqError, InputError, TargetError
from .rtformat import HEADER, OP, OPS, TENSOR

_HERE = Path(__file__).resolve().parent
SOURCES = next((d for d in (_HERE / "runtime_c", _HERE.parent / "runtime")
                if (d / "dq_runtime.h").is_file()), _HERE.parent / "runtime")
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-shared", "-fPIC"]
KERNELS = ("ref", "opt")
DEFAULT_KERNELS = "opt"         # what mcu-int8 and fpga-fixed run unless a target says ref
# not a user's choice: the Cortex-M DSP kernels (runtime/dq_arm_dsp.h) built for the
# host in portable C, for the exported project's arena size and host-side tests
DSP_TWIN = "opt-dsp"
OPT_FLAGS = os.environ.get("DEPLOYQ_OPT_CFLAGS", "-march=native").split()
OP_NAMES = {code: name for name, code in OPS.items()}


class RuntimeBuildError(DeployqError):
    """The C runtime could not be compiled."""


class ModelRejected(InputError):
    """The runtime's loader refused a model file; carries the status name."""

    def __init__(self, status: str, where: str):
        self.status = status
        super().__init__(f"the C runtime rejected {where}: {status} "
                         "(re-export it with 'deployq export')")


def _sources(sources: Path = SOURCES) -> list[Path]:
    return sorted(sources.glob("*.c")) + sorted(sources.glob("*.h"))


def _flags(kernels: str) -> list[str]:
    """The optimized set is compiled for this machine's instruction set (AVX2 where
    present: runtime/dq_*_opt.c test __AVX2__); the reference set for any x86-64.
    DSP_TWIN: the optimized set's Cortex-M kernels in portable C."""
    if kernels == DSP_TWIN:
        return [*CFLAGS, "-DDQ_KERNELS=opt", "-DDQ_DSP_PORTABLE"]
    if kernels not in KERNELS:
        raise InputError(f"unknown C kernel set {kernels!r}: choose {' or '.join(KERNELS)}")
    return [*CFLAGS, f"-DDQ_KERNELS={kernels}", *(OPT_FLAGS if kernels == "opt" else [])]


def library_path(kernels: str = "ref", sources: Path = SOURCES) -> Path:
    digest = hashlib.sha256(" ".join(_flags(kernels)).encode())
    for f in _sources(sources):
        digest.update(f.name.encode() + f.read_bytes())
    return cache_dir() / f"libdq-{kernels}-{digest.hexdigest()[:16]}.so"


def cache_dir() -> Path:
    """$DEPLOYQ_CACHE, else $XDG_CACHE_HOME/deployq, else ~/.cache/deployq."""
    if os.environ.get("DEPLOYQ_CACHE"):
        return Path(os.environ["DEPLOYQ_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deployq"


def build(kernels: str = "ref", extra_flags: list[str] = (), out: Path | None = None,
          sources: Path = SOURCES) -> Path:
    """Compile sources/*.c with the kernel set into a shared library (atomically) and
    return its path; a cached library is reused unless extra_flags are given."""
    out = out or library_path(kernels, sources)
    if out.is_file() and not extra_flags:
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeBuildError("no C compiler found for the C runtime: install one "
                                "(e.g. 'apt-get install gcc') or set CC")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    except OSError as e:
        raise RuntimeBuildError(f"cannot write the C runtime's cache {out.parent} "
                                f"({e.strerror}); set DEPLOYQ_CACHE to a writable "
                                "directory") from None
    os.close(fd)
    cmd = [cc, *_flags(kernels), *extra_flags, "-o", tmp, *map(str, sorted(sources.glob("*.c"))),
           "-lm"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise RuntimeBuildError(f"cannot run the C compiler {cc!r} ({e.strerror}); "
                                "install one or set CC to a working compiler") from None
    if result.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        raise RuntimeBuildError(f"compiling the C runtime failed: {result.stderr.strip()[:500]}")
    os.replace(tmp, out)
    return out


@lru_cache(maxsize=None)
def library(kernels: str = "ref") -> ctypes.CDLL:
    """The runtime built with the kernel set, loaded once per process."""
    return load_library(build(kernels))


def load_library(path: Path) -> ctypes.CDLL:
    """A built runtime library with its functions declared."""
    lib = ctypes.CDLL(str(path))
    u8p, i8p = ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(ctypes.c_int8)
    sigs = {
        "dq_model_struct_bytes": ([], ctypes.c_size_t),
        "dq_model_init": ([ctypes.c_void_p, u8p, ctypes.c_size_t], ctypes.c_int),
        "dq_arena_bytes": ([ctypes.c_void_p], ctypes.c_size_t),
        "dq_tensor_bytes": ([ctypes.c_void_p, ctypes.c_uint32], ctypes.c_size_t),
        "dq_scratch_bytes": ([ctypes.c_void_p, ctypes.c_uint32], ctypes.c_size_t),
        "dq_invoke": ([ctypes.c_void_p, u8p, i8p, i8p, ctypes.c_int32], ctypes.c_int),
        "dq_invoke_dump": ([ctypes.c_void_p, u8p, i8p, i8p], ctypes.c_int),
        "dq_quantize_multiplier": ([ctypes.c_double, ctypes.POINTER(ctypes.c_int32),
                                    ctypes.POINTER(ctypes.c_int32)], None),
        "dq_invoke_profile": ([ctypes.c_void_p, u8p, i8p, ctypes.c_int32,
                               ctypes.POINTER(ctypes.c_int64)], ctypes.c_int),
        "dq_clocks_per_sec": ([], ctypes.c_int64),
        "dq_status_name": ([ctypes.c_int], ctypes.c_char_p),
        "dq_kernels_name": ([], ctypes.c_char_p),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


def kernels_of(target) -> str:
    """The kernel set a target asks for: its option 'kernels' ('opt', the default, or
    'ref', the reference loops); both give the same integers."""
    kernels = (target.options.get("kernels") if target is not None else None) or DEFAULT_KERNELS
    if kernels not in KERNELS:
        raise TargetError(f"target {target.name}: kernels={kernels!r}; choose "
                          f"{' or '.join(KERNELS)} (runtime/dq_kernels.h)")
    return kernels


def _ptr(a: np.ndarray, ctype):
    assert a.flags.c_contiguous, "arrays passed to the runtime must be C-contiguous"
    return a.ctypes.data_as(ctypes.POINTER(ctype))


class Model:
    """A model file loaded (and validated) by the C runtime."""

    def __init__(self, blob: bytes, where: str = "the model", kernels: str | None = None,
                 lib: ctypes.CDLL | None = None):
        self.lib = lib or library(kernels or DEFAULT_KERNELS)
        self.blob = np.frombuffer(blob, np.uint8).copy()      # numpy aligns to 16 bytes
        self.handle = ctypes.create_string_buffer(self.lib.dq_model_struct_bytes())
        status = self.lib.dq_model_init(self.handle, _ptr(self.blob, ctypes.c_uint8),
                                        len(self.blob))
        if status != 0:
            raise ModelRejected(status_name(status, self.lib), where)
        self.arena = np.zeros(max(self.lib.dq_arena_bytes(self.handle), 1), np.uint8)
        header = np.frombuffer(self.blob[:HEADER.itemsize].tobytes(), HEADER)[0]
        self.n_tensors, self.n_ops = int(header["n_tensors"]), int(header["n_ops"])
        self.input_index, self.output_index = int(header["input"]), int(header["output"])
        self.tensor_bytes = [self.lib.dq_tensor_bytes(self.handle, t) for t in range(self.n_tensors)]
        self.kernels = self.lib.dq_kernels_name().decode()

    def scratch_bytes(self) -> list[int]:
        """Scratch bytes each op's kernel asked for (planned inside the arena)."""
        return [self.lib.dq_scratch_bytes(self.handle, i) for i in range(self.n_ops)]

    def run(self, q: np.ndarray) -> np.ndarray:
        """int8 inputs (N, input bytes) -> int8 outputs (N, output bytes), one call."""
        q = np.ascontiguousarray(q, np.int8).reshape(len(q), -1)
        if q.shape[1] != self.tensor_bytes[self.input_index]:
            raise InputError(f"the runtime model takes {self.tensor_bytes[self.input_index]} "
                             f"int8 values per sample, got {q.shape[1]}")
        out = np.empty((len(q), self.tensor_bytes[self.output_index]), np.int8)
        status = self.lib.dq_invoke(self.handle, _ptr(self.arena, ctypes.c_uint8),
                                    _ptr(q, ctypes.c_int8), _ptr(out, ctypes.c_int8), len(q))
        if status != 0:
            raise DeployqError(f"the C runtime failed: {status_name(status, self.lib)}")
        return out

    def dump(self, q: np.ndarray) -> list[np.ndarray]:
        """Every tensor (index order) for one int8 input sample."""
        q = np.ascontiguousarray(q, np.int8).reshape(-1)
        buf = np.empty(sum(self.tensor_bytes), np.int8)
        status = self.lib.dq_invoke_dump(self.handle, _ptr(self.arena, ctypes.c_uint8),
                                         _ptr(q, ctypes.c_int8), _ptr(buf, ctypes.c_int8))
        if status != 0:
            raise DeployqError(f"the C runtime failed: {status_name(status, self.lib)}")
        return np.split(buf, np.cumsum(self.tensor_bytes)[:-1])


    def op_times(self, q: np.ndarray, runs: int = 50) -> list[dict]:
        """The runtime's own timers: seconds per run of each op (index order) for one
        int8 input sample, with the op's type and output tensor index."""
        q = np.ascontiguousarray(q, np.int8).reshape(-1)
        ticks = np.zeros(self.n_ops, np.int64)
        status = self.lib.dq_invoke_profile(self.handle, _ptr(self.arena, ctypes.c_uint8),
                                            _ptr(q, ctypes.c_int8), runs,
                                            _ptr(ticks, ctypes.c_int64))
        if status != 0:
            raise DeployqError(f"the C runtime failed: {status_name(status, self.lib)}")
        records = self._op_records()
        per_sec = self.lib.dq_clocks_per_sec()
        return [{"op": OP_NAMES.get(int(t), "?"), "output": int(o),
                 "seconds": float(k) / per_sec / runs} for (t, o), k in zip(records, ticks)]

    def _op_records(self) -> list[tuple[int, int]]:
        start = HEADER.itemsize + self.n_tensors * TENSOR.itemsize
        recs = np.frombuffer(self.blob.tobytes()[start:start + self.n_ops * OP.itemsize], OP)
        return [(int(r["type"]), int(r["output"])) for r in recs]


def quantize_multiplier_c(real: float) -> tuple[int, int]:
    m, s = ctypes.c_int32(), ctypes.c_int32()
    library().dq_quantize_multiplier(real, ctypes.byref(m), ctypes.byref(s))
    return m.value, s.value


def status_name(code: int, lib: ctypes.CDLL | None = None) -> str:
    """The C runtime's name of a dq_status (dq_status_name, the one table of names)."""
    return (lib or library()).dq_status_name(code).decode()
