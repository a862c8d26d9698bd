"""Shared CLI plumbing: absl app start-up and clean one-line errors for bad user input."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the user (file, flag, config key): printed as one line, no traceback."""


def run(main: Callable[[list[str]], None], define_flags: Callable[[], None]) -> None:
    """`absl.app.run(main)` where a UserError ends the program with `error: <message>` on stderr and
    exit status 2 instead of a traceback."""
    from absl import app

    define_flags()

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)
