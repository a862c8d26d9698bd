"""The one CLI runner: every `python -m vicuna_jax.<tool>` ends a user mistake the same way.

A user mistake (a bad flag, a missing file, a mistyped config key, malformed data) ends the program with one
line `error: <message>` on stderr and exit status 2, never a traceback; Ctrl-C ends it with
`interrupted` and status 130 (after the tool's own cleanup, e.g. a checkpoint save, has run). Tools built on
absl flags call `run(main, define_flags)`; tools built on argparse use `ArgumentParser` and call
`run_argparse(main)`. A misspelt name (a flag value, a config key) is answered with the closest valid names
(`unknown_name`, `check_name`); `--help` exits 0 and, for a tool with a config file flag, lists every config
key with its type, value and meaning (`ConfigHelp`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
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


def _parse_absl_flags(argv: list[str], config_help: ConfigHelp | None = None) -> list[str]:
    """absl's flag parsing, with a parse error (unknown flag, bad value, a config file that does not load,
    a mistyped `--config.key`) reported as one `error:` line instead of usage text + exit 1, and `--help`
    answered with exit status 0 (absl's own help exits 1)."""
    from absl import flags

    if any(arg in _HELP_ARGS for arg in argv[1:]):
        _print_help(argv, config_help)
        sys.exit(0)
    try:
        rest = flags.FLAGS(argv)
    except flags.IllegalFlagValueError as e:
        fail(_bad_flag_value(e))
    except (flags.Error, AttributeError, KeyError) as e:
        # ml_collections: `--config.<key>` names no key (an unknown flag, or its own AttributeError)
        fail(_unknown_config_key(argv) or (f"config override: no such key: {_one_line(e)}"
                                           if isinstance(e, AttributeError | KeyError) else _one_line(e)))
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


def run(main: Callable[[list[str]], None], define_flags: Callable[[], None],
        config_help: ConfigHelp | None = None) -> None:
    """`absl.app.run(main)` with the error conventions of this module; `config_help`: how `--help` lists the
    keys of the `--config` file flag."""
    from absl import app

    define_flags()

    def main_guarded(argv: list[str]) -> None:
        quiet_library_logs()
        try:
            guarded(main, argv)
        except app.UsageError as e:  # absl would print its whole usage text
            fail(str(e))

    app.run(main_guarded, flags_parser=lambda argv: _parse_absl_flags(argv, config_help))


def run_argparse(main: Callable[[list[str] | None], int | None]) -> NoReturn:
    """For argparse tools: `if __name__ == "__main__": run_argparse(main)`. argparse's own usage errors
    already exit 2 with one `error:` line."""
    sys.exit(guarded(main, None) or 0)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with this module's conventions: a usage error is one `error:` line (exit 2), and a value
    outside `choices` names the closest ones."""

    def error(self, message: str) -> NoReturn:
        found = re.match(r"argument ([^:]+): invalid choice: '(.*)' \(choose from (.*)\)$", message)
        if found:
            flag, value, choices = found.groups()
            names = re.findall(r"'([^']*)'", choices)
            message = f"{flag.split('/')[0]}: {unknown_name('value', value, names)}"
        fail(f"{message} (--help shows the usage)")


# ------------------------------------------------------------------------------ names and their suggestions


def close_names(value: str, names: Iterable[str], n: int = 3) -> list[str]:
    """The valid names closest to a misspelt `value` (at most n, closest first)."""
    return difflib.get_close_matches(str(value), [str(x) for x in names], n=n, cutoff=0.6)


def did_you_mean(value: str, names: Iterable[str], prefix: str = "'", suffix: str = "'") -> str:
    """`did you mean 'a' or 'b'?` for the closest names, or "" when none is close."""
    close = close_names(value, names)
    return f"did you mean {' or '.join(f'{prefix}{c}{suffix}' for c in close)}?" if close else ""


def unknown_name(what: str, value: Any, names: Iterable[str]) -> str:
    """`unknown chat template 'vicunna'; did you mean 'vicuna_v1.1'? known: a, b, c`."""
    names = [str(x) for x in names]
    hint = did_you_mean(str(value), names)
    return f"unknown {what} {value!r}; {hint + ' ' if hint else ''}known: {', '.join(names)}"


_NAME_FLAGS: set[str] = set()


def check_name(flag: str, names: Sequence[str], what: str = "value") -> None:
    """Makes absl flag `flag` accept only `names` (or None): a misspelt one fails while the flags are
    parsed, before anything is loaded, as one line with the closest names."""
    from absl import flags

    def check(value: Any) -> bool:
        if value is not None and value not in names:
            raise flags.ValidationError(unknown_name(what, value, names))
        return True

    _NAME_FLAGS.add(flag)
    flags.register_validator(flag, check)


def _bad_flag_value(e: Exception) -> str:
    """absl's `flag --mode=singel: value should be one of <...>` as `--mode: unknown value 'singel'; did you
    mean 'single'? known: ...` (enum flags and `check_name` flags; other messages stay as they are)."""
    from absl import flags

    text = _one_line(e)
    found = re.match(r"flag --([\w.-]+)=(.*?): (.*)$", text)
    if not found or found.group(1) not in flags.FLAGS:
        return text
    name, value, message = found.groups()
    enum_values = getattr(flags.FLAGS[name].parser, "enum_values", None)
    if enum_values:
        return f"--{name}: {unknown_name('value', value, enum_values)}"
    return f"--{name}: {message}" if name in _NAME_FLAGS else text


# ------------------------------------------------------------------------------ config keys: help, typos


@dataclasses.dataclass(frozen=True)
class ConfigHelp:
    """How `--help` lists the keys of the config file flag `flag`: the values of the file given with
    `--config=FILE`, else of `defaults()`, each with its one-line meaning from `meanings` (dotted key ->
    text)."""

    defaults: Callable[[], Any]
    meanings: Mapping[str, str]
    flag: str = "config"


_HELP_ARGS = {"--help", "-help", "-h", "-?", "--helpshort", "-helpshort", "--helpfull", "-helpfull"}


def config_keys(c: Any, prefix: str = "") -> dict[str, tuple[str, Any]]:
    """Every leaf key of a ConfigDict as a dotted path -> (type name, value), in definition order."""
    from ml_collections import ConfigDict

    keys: dict[str, tuple[str, Any]] = {}
    for key in c.keys():
        value = c[key]
        path = f"{prefix}{key}"
        if isinstance(value, ConfigDict):
            keys.update(config_keys(value, f"{path}."))
        else:
            kind = c.get_type(key)
            keys[path] = (getattr(kind, "__name__", str(kind)), value)
    return keys


def _print_help(argv: list[str], config_help: ConfigHelp | None) -> None:
    from absl import app

    full = any(arg in ("--helpfull", "-helpfull") for arg in argv[1:])
    app.usage(shorthelp=not full, writeto_stdout=True)
    if config_help is not None:
        print(_config_table(argv, config_help))
    if not full:
        print("--helpfull also lists the flags of the libraries.")


def _config_table(argv: list[str], spec: ConfigHelp) -> str:
    from absl import flags

    name, config = spec.flag, None
    source = _config_file_arg(argv, name)
    if source:
        try:
            config = _load_config_file(flags.FLAGS[name], source)
        except Exception as e:  # noqa: BLE001 - the help still lists the keys, with the base values
            config, source = None, f"the defaults ({source} does not load: {_one_line(e)})"
    if config is None:
        config, source = spec.defaults(), source or "the defaults"
    keys = config_keys(config)
    width = max(len(k) for k in keys)
    shown = {k: _short_repr(v) for k, (_, v) in keys.items()}
    value_width = min(max(len(v) for v in shown.values()), 24)
    lines = ["", f"config keys: --{name}.KEY=VALUE sets one (values: {source}; `None` = unset)",
             f"  {'KEY':<{width}}  {'TYPE':<5}  {'VALUE':<{value_width}}  MEANING"]
    for key, (kind, _) in keys.items():
        meaning = spec.meanings.get(key, "")
        lines.append(f"  {key:<{width}}  {kind:<5}  {shown[key]:<{value_width}}  {meaning}")
    return "\n".join(lines) + "\n"


def _config_file_arg(argv: list[str], name: str) -> str:
    """The FILE of `--name=FILE` / `--name FILE` in argv ("" when absent)."""
    source = ""
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith(f"--{name}="):
            source = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            source = argv[i + 1]
    return source


def _load_config_file(flag: Any, source: str) -> Any:
    """The ConfigDict the config file flag `flag` reads from `source`, without its overrides."""
    config = flag.parser.parse(source)
    config.keys()  # a file that does not load raises when first read
    return config


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _unknown_config_key(argv: list[str]) -> str | None:
    """For the first `--config.a.b=v` naming no key of the loaded config: the error, with the dotted paths of
    the whole key tree closest to it (by leaf name and by spelling)."""
    from ml_collections import ConfigDict

    for name, flag in _config_flags():
        source = _config_file_arg(argv, name)
        try:  # the flag's value is not set when one of its overrides failed: load the file again
            config = _load_config_file(flag, source) if source else None
        except Exception:  # noqa: BLE001 - the file itself does not load: the original error says so
            continue
        if not isinstance(config, ConfigDict):
            continue
        keys = list(config_keys(config))
        for arg in argv[1:]:
            if not arg.startswith(f"--{name}."):
                continue
            path = arg[len(name) + 3:].split("=", 1)[0]
            if path in keys:
                continue
            close = closest_keys(path, keys)
            hint = f"; did you mean {' or '.join(f'--{name}.{k}' for k in close)}?" if close else ""
            return f"--{name}.{path}: no such config key{hint} (--help lists every key)"
    return None


def closest_keys(path: str, keys: Sequence[str], n: int = 3) -> list[str]:
    """The dotted keys a mistyped `path` most likely meant: the same leaf name anywhere in the tree first,
    then the closest spellings of the whole path or of its leaf name."""
    leaf = path.rsplit(".", 1)[-1]
    score: dict[str, float] = {}
    for key in keys:
        key_leaf = key.rsplit(".", 1)[-1]
        if key_leaf == leaf:
            score[key] = 2.0
            continue
        ratio = max(difflib.SequenceMatcher(None, path, key).ratio(),
                    difflib.SequenceMatcher(None, leaf, key_leaf).ratio())
        if ratio >= 0.75:
            score[key] = ratio
    ranked = sorted(score, key=lambda k: -score[k])
    return [k for k in ranked if score[k] >= score[ranked[0]] - 0.1][:n]  # the best, and any as close
