"""Shared CLI plumbing: absl app start-up and clean one-line errors for bad user input."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the user (file, flag, config key): printed as one line, no traceback."""


_CHATTY_LIBRARIES = ("/orbax/", "/tensorflow_datasets/", "/etils/", "/grain/", "/jax/_src/")


class _QuietLibraries(logging.Filter):
    """Keeps our INFO logs; from checkpoint/dataset libraries only warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(s in record.pathname for s in _CHATTY_LIBRARIES)


def quiet_library_logs() -> None:
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_QuietLibraries())


def run(main: Callable[[list[str]], None], define_flags: Callable[[], None]) -> None:
    """`absl.app.run(main)` where a UserError ends the program with `error: <message>` on stderr and
    exit status 2 instead of a traceback."""
    from absl import app

    define_flags()

    def guarded(argv: list[str]) -> None:
        quiet_library_logs()
        try:
            main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)
