"""The process around one `deployq` command: a private temp folder (third-party litter
such as torchinductor_* caches and LiteRT/TensorFlow temp files lands there and is
removed at the end) and, unless verbose, native stderr (C/C++ log lines of LiteRT,
TensorFlow and torch, which bypass Python) kept off the terminal.

Python's own sys.stderr keeps pointing at the terminal, so deployq's messages and its
one-line errors still show; only writes to file descriptor 2 from native code (and
child processes) go to a log in the private folder."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile

QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0",
             "GLOG_minloglevel": "3"}


@contextlib.contextmanager
def private_run(verbose: bool = False):
    run_dir = tempfile.mkdtemp(prefix=f"deployq-run-{os.getpid()}-")
    quiet = {} if verbose else {k: v for k, v in QUIET_ENV.items() if k not in os.environ}
    saved_tempdir = tempfile.tempdir
    tempfile.tempdir = run_dir
    try:
        with environ({"TMPDIR": run_dir,
                      "TORCHINDUCTOR_CACHE_DIR": os.path.join(run_dir, "torchinductor"),
                      **quiet}), \
                _native_stderr_to(None if verbose else os.path.join(run_dir, "native.log")):
            yield run_dir
    finally:
        tempfile.tempdir = saved_tempdir
        shutil.rmtree(run_dir, ignore_errors=True)


@contextlib.contextmanager
def environ(values: dict):
    """os.environ with `values` set inside the block, as it was after it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _native_stderr_to(log_path: str | None):
    """File descriptor 2 to log_path; sys.stderr stays on the terminal. Does nothing
    when sys.stderr is not fd 2 (e.g. captured by a test runner)."""
    try:
        is_fd2 = log_path is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        is_fd2 = False
    if not is_fd2:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 2)
    os.close(log)
    old_stderr = sys.stderr
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1,
                           encoding=old_stderr.encoding, errors="backslashreplace")
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = old_stderr
        os.dup2(saved, 2)
        os.close(saved)


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def one_thread() -> None:
    """A worker process uses one thread per runtime: workers, not threads, share the
    cores (the sweep's workers, the refinement's). The variables bind the thread pools
    of libraries loaded from now on (OpenMP and BLAS read them when they load);
    threadpoolctl resizes those already loaded, such as numpy's BLAS in a Ray worker
    that a cluster started before the task arrived."""
    for var in THREAD_VARS:
        os.environ[var] = "1"
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(1)
    threadpool_limits(1)
