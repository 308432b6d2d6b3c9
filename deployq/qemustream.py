"""A persistent QEMU session of the stream firmware (runtime/mcu/stream_main.c): one
qemu-system-arm process serves every batch of a runner, instead of one process per
call. Square's 1000 queries per eps then cost one QEMU start, not 1000.

The firmware reads int8 samples from in.bin and appends each sample's outputs to
out.bin, both through semihosting relative to QEMU's working directory. Here both are
named pipes in a private temporary folder: run() writes a batch into in.bin and reads
exactly its outputs back from out.bin (the firmware runs samples one at a time and in
order, so the outputs of one batch are the next len(batch) * output_bytes bytes).
close() closes in.bin; the firmware sees end of file and exits, as after a one-shot
run. The outputs are the device's own, as cproject.run_stream's (tests/unit/
test_qemustream.py checks both agree, with a negative control)."""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from . import cproject
from .errors import ExportError

CHUNK = 1 << 16
POLL = 0.2                  # seconds between checks that QEMU still runs


def _try(call, fd, arg):
    """os.read / os.write on a non-blocking pipe: None (read) or 0 (write) when it
    would block."""
    try:
        return call(fd, arg)
    except BlockingIOError:
        return None if call is os.read else 0


class Session:
    """One running QEMU of `elf`; run(rows) -> (N, output_bytes) int8. Not thread-safe.
    `timeout` bounds each run() call (seconds without progress)."""

    def __init__(self, elf: Path, output_bytes: int, timeout: float = 600):
        cproject.require_tools(("qemu-system-arm",))
        self.elf, self.output_bytes, self.timeout = Path(elf).resolve(), output_bytes, timeout
        self.dir = Path(tempfile.mkdtemp(prefix="deployq-qemu-session-"))
        self.proc = None
        self.in_fd = self.out_fd = self.spare_fd = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        os.mkfifo(self.dir / "in.bin")
        os.mkfifo(self.dir / "out.bin")
        # Our ends first, none of them blocking: out.bin's read end and a spare write
        # end (so a read finds "empty", never end of file, before QEMU opens it), and
        # in.bin read-write (Linux opens a FIFO so at once). QEMU's opens then never
        # wait; closing in_fd is the end of file that stops the firmware.
        self.out_fd = os.open(self.dir / "out.bin", os.O_RDONLY | os.O_NONBLOCK)
        self.spare_fd = os.open(self.dir / "out.bin", os.O_WRONLY | os.O_NONBLOCK)
        self.in_fd = os.open(self.dir / "in.bin", os.O_RDWR | os.O_NONBLOCK)
        self.proc = subprocess.Popen(cproject.QEMU + ["-kernel", str(self.elf)], cwd=self.dir,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)

    def run(self, rows: np.ndarray) -> np.ndarray:
        """int8 rows (N, input bytes) through the device: its int8 outputs (N, output
        bytes). Writes and reads interleave, so a batch larger than a pipe's buffer
        cannot deadlock."""
        if self.proc is None:
            raise ExportError("the QEMU session is closed")
        data = memoryview(np.ascontiguousarray(rows, np.int8).tobytes())
        want = len(rows) * self.output_bytes
        try:
            got = self._exchange(data, want)
        except BaseException:
            # interrupted mid-batch, the pipes may hold a part of it: this session
            # could answer the next batch with the rest of this one, so it ends here
            self._stop(kill=True)
            raise
        return np.frombuffer(bytes(got), np.int8).reshape(len(rows), self.output_bytes)

    def _exchange(self, data: memoryview, want: int) -> bytearray:
        got = bytearray()
        idle_since = time.monotonic()
        while len(got) < want:
            moved = 0
            if len(data):
                moved = _try(os.write, self.in_fd, data[:CHUNK])
                data = data[moved:]
            chunk = _try(os.read, self.out_fd, min(CHUNK, want - len(got)))
            got += chunk or b""
            if moved or chunk:
                idle_since = time.monotonic()
                continue
            if self.proc.poll() is not None:
                self._fail("stopped before answering every sample")
            if time.monotonic() - idle_since > self.timeout:
                self._fail(f"gave no output for {self.timeout:.0f} s")
            select.select([self.out_fd], [self.in_fd] if len(data) else [], [], POLL)
        return got

    def _fail(self, what: str) -> None:
        log = self._stop(kill=True)
        raise ExportError(f"{self.elf.name} under QEMU {what}: {log.strip()[-500:]}")

    def _stop(self, kill: bool) -> str:
        """End QEMU (end of file on in.bin, or kill); its console output."""
        if self.proc is None:
            return ""
        proc, self.proc = self.proc, None
        if self.in_fd is not None:
            os.close(self.in_fd)
            self.in_fd = None
        try:
            if kill:
                proc.kill()
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return out.decode(errors="replace")

    def close(self) -> None:
        """Stop QEMU and remove the pipes. Safe to call twice."""
        try:
            self._stop(kill=False)
        finally:
            for fd in (self.in_fd, self.out_fd, self.spare_fd):
                if fd is not None:
                    os.close(fd)
            self.in_fd = self.out_fd = self.spare_fd = None
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:       # interpreter shutdown: nothing left to report to
            pass
