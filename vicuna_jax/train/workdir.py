"""The run's working directory: created and checked writable up front, and locked for the run.

Two trainers in one workdir would interleave checkpoints and metrics. `WorkdirLock` takes an exclusive
`flock` on `workdir/.lock` for as long as the run lasts (the kernel drops it when the process dies, even on
kill -9, so a preempted run restarts freely); a second trainer fails at once, naming the holder's PID.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from typing import Any

from vicuna_jax.cli import UserError

LOCK_FILE = ".lock"


class WorkdirError(UserError):
    """The workdir cannot be used: not a directory, not writable, or in use by another run."""


def ensure_workdir(workdir: str) -> None:
    """Creates `workdir` if needed; a clear error when it is a file or cannot be written."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir: {workdir} exists and is not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"--workdir: {workdir} is not writable ({e.strerror or e})") from None


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir for one run (see the module docstring)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WorkdirError(f"--workdir: cannot create {self.path} ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise WorkdirError(
                    f"--workdir: {os.path.dirname(self.path)} is in use by another training run ({holder}); "
                    "wait for it to finish or stop it, or choose another workdir") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
