"""Filesystem helpers shared by every writer that must never leave half-written output.

`atomic_open` / `atomic_write_text` / `atomic_write_json` write a file whole or not at all: the bytes go to
a temporary file in the same directory, are flushed to disk, and the temporary file is renamed over the
target. `replace_dir` does the same for a directory. Files get the mode an ordinary `open()` would give them
(0666 less the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any


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
