"""Filesystem helpers shared by every writer that must never leave half-written output.

`atomic_open` / `atomic_write_text` / `atomic_write_json` write a file whole or not at all: the bytes go to
a temporary file in the same directory, are flushed to disk, and the temporary file is renamed over the
target (a symbolic link at the target is replaced, never written through). `replace_dir` does the same for
a directory. Files get the mode an ordinary `open()` would give them (0666 less the umask), not mkstemp's
0600. `hold_lock` and `open_append` open fixed-name files that are written in place (a lock, a log) without
following a symbolic link, so a link planted in a shared directory cannot redirect the write to its target.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from vicuna_jax.cli import UserError


class UnsafePathError(UserError):
    """A file the program writes in place is a symbolic link, a hard link or not a regular file."""


class LockHeldError(OSError):
    """`hold_lock`: another process holds the lock; `holder` is what it wrote in the lock file."""

    def __init__(self, path: str, holder: str):
        super().__init__(errno.EWOULDBLOCK, f"{path} is locked by {holder}")
        self.holder = holder


_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a planted FIFO must not hang us


def _open_in_place(path: str, flags: int, what: str) -> int:
    """`os.open(path, flags | O_NOFOLLOW)` of a regular file with one link: a new file is created with
    O_EXCL; an existing symbolic link, hard link, FIFO or device is refused (UnsafePathError)."""
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, 0o666)
        except FileExistsError:
            fd = os.open(path, flags | _NO_FOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePathError(f"{path} is a symbolic link; the {what} is never written through a link "
                                  "(someone else may have planted it): remove it and run again") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        kind = "a hard link to another file" if stat.S_ISREG(st.st_mode) else "not a regular file"
        raise UnsafePathError(f"{path} is {kind}; the {what} is written only to a file of its own: remove it "
                              "and run again")
    os.set_blocking(fd, True)
    return fd


def hold_lock(path: str | os.PathLike, what: str = "lock file") -> int:
    """Takes an exclusive `flock` on `path` (created if needed, never through a link) and writes
    "PID <pid> on <host>" into it; returns the descriptor (closing it releases the lock; so does the
    process's death, even by kill -9). Raises LockHeldError when another process holds it."""
    path = os.fspath(path)
    fd = _open_in_place(path, os.O_RDWR, what)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise LockHeldError(path, holder) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def release_lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def open_append(path: str | os.PathLike, what: str = "log") -> IO[str]:
    """A text file opened for appending, never through a link (see `_open_in_place`). A last line cut short
    (by a kill) is ended first, so the next line starts on its own."""
    path = os.fspath(path)
    fd = _open_in_place(path, os.O_RDWR | os.O_APPEND, what)
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")
    return os.fdopen(fd, "a", encoding="utf-8")


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """`with atomic_open(path) as f:` writes `path` atomically; on an exception the target is untouched and
    the temporary file is removed. `mode` is "w" (text) or "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, **dump_kwargs)


def resolve_output_dir(path: str | os.PathLike) -> str:
    """The absolute directory a writer should create or replace. A symlink, even a dangling one, is
    followed to its target: the link keeps pointing at the new content, and temporary siblings are made
    next to the real directory (on its filesystem, so the final rename is atomic)."""
    path = os.path.abspath(os.fspath(path))
    return os.path.realpath(path) if os.path.islink(path) else path


@contextlib.contextmanager
def writing_dir(final: str) -> Iterator[str]:
    """`with writing_dir(out) as tmp:` fill `tmp`; on success it replaces `out` whole (`replace_dir`), on an
    exception it is removed and `out` is untouched. `out` is resolved with `resolve_output_dir`."""
    final = resolve_output_dir(final)
    tmp = final + ".tmp-writing"
    _remove(tmp)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def replace_dir(tmp: str, final: str) -> None:
    """Moves a fully written `tmp` directory to `final` (see `resolve_output_dir`), replacing any existing
    one.

    The old directory is renamed aside before the new one is renamed in, so at every moment `final` is
    either the complete old or the complete new directory.
    """
    final = resolve_output_dir(final)
    if os.path.lexists(final):
        old = final + ".tmp-old"
        _remove(old)
        os.rename(final, old)
        os.rename(tmp, final)
        _remove(old)
    else:
        os.rename(tmp, final)


def _remove(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
