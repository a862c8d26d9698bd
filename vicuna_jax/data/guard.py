"""A time limit per record, so one hostile record is rejected instead of stalling a cleaning run.

Every cleaning step of ours is linear in the text size and the size is capped, but HTML parsing is
third-party code (Python's `html.parser` takes minutes on 100 KB of `<a <a <a ...`). In the main thread of a
process that does not use SIGALRM itself, `time_limit` arms a one-shot timer that interrupts the work wherever
it is (pure-Python code and regex matching both notice signals). Anywhere else only `check()`, called between
steps, notices the deadline.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator


class RecordTimeout(BaseException):
    """The record's time is up. A BaseException, so library code that catches Exception cannot swallow it."""


class _Limit:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds if seconds > 0 else math.inf
        self.armed = False

    def check(self) -> None:
        """Raise RecordTimeout if the deadline has passed (for steps between which a signal may not come)."""
        if time.monotonic() > self.deadline:
            raise RecordTimeout

    def on_alarm(self, signum, frame) -> None:
        if self.armed:
            raise RecordTimeout


def _can_use_alarm() -> bool:
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) == signal.SIG_DFL  # nobody else uses it
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    )


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[_Limit]:
    """`with time_limit(s) as limit:` raises RecordTimeout inside the block once `s` seconds have passed
    (see the module docstring for where this is immediate); `seconds <= 0` means no limit. The RecordTimeout
    may also come from the `with` statement's exit (the timer fired as the block finished)."""
    limit = _Limit(seconds)
    if seconds <= 0 or not _can_use_alarm():
        yield limit
        return
    previous = signal.signal(signal.SIGALRM, limit.on_alarm)
    limit.armed = True
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield limit
    finally:
        limit.armed = False
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)
