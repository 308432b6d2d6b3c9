"""Progress of long work, in one place.

Library code reports two kinds of event through this module and never prints:
  stage(text)                 a stage of the pipeline: "[3/7] attacking tflite-int8"
  steps(total, what)          a context whose advance() counts the units of one stage
                              (attacks of one target, ...)

Where they go:
  - stage lines are logged on the 'deployq' logger at INFO (so `-q` silences them and
    they are the only progress written when stderr is not a terminal);
  - bars with an ETA (tqdm, on stderr) are drawn only when the CLI turned them on
    (terminal(True)), stderr is a terminal and INFO is enabled;
  - a callback given to the API (deployq.run(..., progress=cb)) gets every event as a
    Progress record, whatever the terminal.

Stage counters: `stages(total)` opens a numbered sequence; a nested `stages` (evaluate
inside run) joins the open one instead of starting its own count."""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("deployq")


@dataclass(frozen=True)
class Progress:
    """One progress event. kind 'stage': stage `index` of `total` starts (`text`);
    kind 'step': `done` of `total` units of the current stage are finished (`text`
    names the stage), `elapsed` seconds since it started."""
    kind: str
    text: str
    index: int = 0
    total: int = 0
    done: int = 0
    elapsed: float = 0.0


@dataclass
class _Stages:
    total: int
    index: int = 0


_callback: ContextVar[Callable[[Progress], None] | None] = ContextVar("progress_cb",
                                                                      default=None)
_stages: ContextVar[_Stages | None] = ContextVar("progress_stages", default=None)
_bars = {"on": False}
_active: list = []                     # bars being drawn
_pending: ContextVar[tuple | None] = ContextVar("progress_pending", default=None)


def terminal(on: bool) -> None:
    """Bars on stderr (when it is a terminal): the CLI turns them on, -q off. Called
    once per command, it also drops a line a previous command left pending."""
    _bars["on"] = bool(on)
    _pending.set(None)


@contextlib.contextmanager
def reporting(callback: Callable[[Progress], None] | None):
    """Send every event inside the block to `callback` too (None: no change)."""
    if callback is None:
        yield
        return
    if not callable(callback):
        from .errors import InputError
        raise InputError(f"progress must be a callable taking a deployq.progress.Progress, "
                         f"got {type(callback).__name__}")
    token = _callback.set(callback)
    try:
        yield
    finally:
        _callback.reset(token)


@contextlib.contextmanager
def stages(total: int):
    """A numbered sequence of `total` stages; inside an open sequence, that one."""
    if _stages.get() is not None:
        yield
        return
    token = _stages.set(_Stages(total))
    try:
        yield
    finally:
        _stages.reset(token)
        _pending.set(None)


def stage(text: str, defer: bool = False) -> None:
    """Start a stage: one log line '[i/n] text' (or 'text' outside a sequence). With
    defer, the line waits for the next stage or bar (and is dropped without one): a
    refusal right after it (bad input found once the data is loaded) stays the only
    line on stderr."""
    if defer:
        _pending.set((text, _stages.get()))
        return
    _flush()
    _announce(text)


def _flush() -> None:
    """The deferred line, within the sequence it was deferred in (else dropped)."""
    pending = _pending.get()
    if pending is not None:
        _pending.set(None)
        if pending[1] is _stages.get():
            _announce(pending[0])


def _announce(text: str) -> None:
    seq = _stages.get()
    if seq is None:
        index = total = 0
        log.info("%s", text)
    else:
        seq.index += 1
        seq.total = max(seq.total, seq.index)       # a stage nobody counted: grow
        index, total = seq.index, seq.total
        log.info("[%d/%d] %s", index, total, text)
    _emit(Progress("stage", text, index, total))


class _Steps:
    def __init__(self, total: int, text: str, unit: str):
        self.total, self.text, self.done = total, text, 0
        self.start = time.monotonic()
        self.bar = _bar(total, text, unit)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        _emit(Progress("step", self.text, done=self.done, total=self.total,
                       elapsed=time.monotonic() - self.start))


@contextlib.contextmanager
def steps(total: int, text: str, unit: str = "step"):
    """Count `total` units of work (advance() after each): a bar with ETA on a
    terminal, 'step' events to the callback."""
    _flush()
    s = _Steps(total, text, unit)
    try:
        yield s
    finally:
        if s.bar is not None:
            s.bar.close()
            _active.remove(s.bar)


def _bar(total: int, text: str, unit: str):
    if not (_bars["on"] and total > 0 and log.isEnabledFor(logging.INFO)
            and _isatty(sys.stderr)):
        return None
    import shutil
    from tqdm import tqdm
    # the size from $COLUMNS/$LINES or the terminal, 80x24 where it reports none (a
    # bare pty reports 0x0, and tqdm hides a bar below a screen of 0 lines)
    size = shutil.get_terminal_size((80, 24))
    bar = tqdm(total=total, desc=f"deployq: {text}", unit=unit, leave=False,
               file=sys.stderr, ncols=min(size.columns or 80, 120), nrows=size.lines or 24)
    _active.append(bar)
    return bar


@contextlib.contextmanager
def outside_bars():
    """Write a line while a bar is drawn: the bar is cleared first and drawn again
    after (the CLI's log handler writes through this)."""
    if not _active:
        yield
        return
    from tqdm import tqdm
    with tqdm.external_write_mode(file=sys.stderr):
        yield


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _emit(event: Progress) -> None:
    cb = _callback.get()
    if cb is not None:
        cb(event)


def printer(event: Progress) -> None:
    """A ready callback: stage lines and a per-stage percentage on stderr (for scripts
    and notebooks: deployq.run(cfg, progress=deployq.progress.printer))."""
    if event.kind == "stage":
        where = f"[{event.index}/{event.total}] " if event.total else ""
        print(f"deployq: {where}{event.text}", file=sys.stderr, flush=True)
    elif event.total and event.done in (event.total, max(1, event.total // 4),
                                        max(1, event.total // 2), max(1, 3 * event.total // 4)):
        print(f"deployq:   {event.text}: {event.done}/{event.total} "
              f"({event.elapsed:.0f} s)", file=sys.stderr, flush=True)
