"""The one CLI runner: every `python -m vicuna_jax.<tool>` ends a user mistake the same way.

A user mistake (a bad flag, a missing file, a mistyped config key, malformed data) ends the program with one
line `error: <message>` on stderr and exit status 2, never a traceback; Ctrl-C ends it with
`interrupted` and status 130 (after the tool's own cleanup, e.g. a checkpoint save, has run). Tools built on
absl flags call `run(main, define_flags)`; tools built on argparse call `run_argparse(main)`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

USAGE_EXIT = 2
INTERRUPT_EXIT = 130


class UserError(ValueError):
    """Bad input from the user (file, flag, config key): printed as one line, no traceback.

    `exit_now`: end the process right after the message without waiting for library threads (for failures
    that leave a library's background threads waiting forever, e.g. an orbax save to a read-only disk)."""

    exit_now = False


_CHATTY_LIBRARIES = ("/orbax/", "/tensorflow_datasets/", "/etils/", "/grain/", "/jax/_src/")


class _QuietLibraries(logging.Filter):
    """Keeps our INFO logs; from checkpoint/dataset libraries only warnings and errors, as one line each
    (their tracebacks are for their developers; ours says what happened and what to do)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not any(s in record.pathname for s in _CHATTY_LIBRARIES):
            return True
        if record.exc_info or record.exc_text:
            record.exc_info, record.exc_text = None, None
        return record.levelno >= logging.WARNING


def quiet_library_logs() -> None:
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_QuietLibraries())


def fail(message: str, exit_now: bool = False) -> NoReturn:
    """Prints `error: message` and exits with the usage status (at once, skipping thread joins, when
    `exit_now`)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    if exit_now:
        sys.stdout.flush()
        os._exit(USAGE_EXIT)
    sys.exit(USAGE_EXIT)


def guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """Calls fn(*args), turning a UserError into `error: ...` + exit 2 and Ctrl-C into exit 130."""
    try:
        return fn(*args)
    except UserError as e:
        fail(str(e), exit_now=e.exit_now)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(INTERRUPT_EXIT)


def _parse_absl_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a parse error (unknown flag, bad value, a config file that does not load,
    a mistyped `--config.key`) reported as one `error:` line instead of usage text + exit 1."""
    from absl import flags

    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        fail(_one_line(e))
    except (AttributeError, KeyError) as e:  # ml_collections: `--config.<key>` names no key
        fail(f"config override: no such key: {_one_line(e)}")
    except (TypeError, ValueError) as e:  # ml_collections: an override of the wrong type
        fail(f"config override: {_one_line(e)}")
    for name, flag in _config_flags():
        try:  # a config file that failed to load only raises when first read: read it now
            flag.value.keys()
        except OSError as e:
            fail(f"--{name}: {_one_line(e)}")
        except AttributeError:  # an override flag (`--config.key`): its value is the plain value
            pass
    return rest


def _config_flags() -> list[tuple[str, Any]]:
    from absl import flags

    return [(name, flags.FLAGS[name]) for name in list(flags.FLAGS)
            if type(flags.FLAGS[name]).__module__.startswith("ml_collections.config_flags")]


def _one_line(e: BaseException) -> str:
    text = str(e)
    if "Failed loading config file" in text:  # ml_collections: the OS error is on the last line
        return "cannot load the config file: " + text.strip().splitlines()[-1].strip()
    text = text.replace("\\n", "\n").replace("\\'", "'").strip("'\"")
    return "; ".join(line.strip().strip("'\"") for line in text.splitlines() if line.strip())


def run(main: Callable[[list[str]], None], define_flags: Callable[[], None]) -> None:
    """`absl.app.run(main)` with the error conventions of this module."""
    from absl import app

    define_flags()

    def main_guarded(argv: list[str]) -> None:
        quiet_library_logs()
        try:
            guarded(main, argv)
        except app.UsageError as e:  # absl would print its whole usage text
            fail(str(e))

    app.run(main_guarded, flags_parser=_parse_absl_flags)


def run_argparse(main: Callable[[list[str] | None], int | None]) -> NoReturn:
    """For argparse tools: `if __name__ == "__main__": run_argparse(main)`. argparse's own usage errors
    already exit 2 with one `error:` line."""
    sys.exit(guarded(main, None) or 0)
