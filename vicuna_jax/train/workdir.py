"""The run's working directory: created and checked writable up front, and locked for the run.

Two trainers in one workdir would interleave checkpoints and metrics. `WorkdirLock` takes an exclusive
`flock` on `workdir/.lock` for as long as the run lasts (the kernel drops it when the process dies, even on
kill -9, so a preempted run restarts freely); a second trainer fails at once, naming the holder's PID. The
lock file is opened without following a link (`fileio.hold_lock`): a `.lock` planted as a symbolic link to
another file is refused, and that file is left as it was.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from vicuna_jax.cli import UserError
from vicuna_jax.fileio import LockHeldError, UnsafePathError, hold_lock, release_lock

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
            self._fd = hold_lock(self.path, "workdir lock")
        except LockHeldError as e:
            raise WorkdirError(
                f"--workdir: {os.path.dirname(self.path)} is in use by another training run ({e.holder}); "
                "wait for it to finish or stop it, or choose another workdir") from None
        except UnsafePathError as e:
            raise WorkdirError(f"--workdir: {e}") from None
        except OSError as e:
            raise WorkdirError(f"--workdir: cannot create {self.path} ({e.strerror or e})") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            release_lock(self._fd)
            self._fd = None


# What the trainer writes under these names in the workdir; a directory among them may be a symbolic link
# of the run's own user (checkpoints on another disk), never one planted by someone else.
WRITTEN_DIRS = ("checkpoints", "checkpoints-damaged", "data", "hf", "tensorboard", "tokenizer", "adapter",
                "base")


def check_links(workdir: str) -> None:
    """Refuses a symbolic link among `WRITTEN_DIRS` owned by another user (as the kernel's
    protected_symlinks does in sticky directories): the trainer would write, replace or delete its
    target. (Fixed-name files are written by replacing them or with O_NOFOLLOW; see `fileio`.)"""
    for name in WRITTEN_DIRS:
        path = os.path.join(workdir, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode) and st.st_uid != os.geteuid():
            raise WorkdirError(f"--workdir: {path} is a symbolic link owned by another user (uid "
                               f"{st.st_uid}) to {os.readlink(path)}; the trainer would write there: remove "
                               "it and run again")
