"""Time and size budgets for rendering untrusted Jinja chat templates (a model directory's `chat_template`).

Jinja's sandbox keeps a template away from Python's internals, but not from the CPU or memory: nested
`range(100000)` loops run for hours, `'a' * 10**10` asks for 10 GB, and a recursive macro doubles its output
at every level. `BudgetedEnvironment` is the sandbox plus:

- time: every loop iteration, call, filter, operator and output ticks a counter; every 16th tick compares
  this thread's CPU time (`time.thread_time`, so a busy server does not eat a rendering's budget) with the
  deadline, `RENDER_SECONDS` after the rendering began. Loops are instrumented when a template is compiled
  (each `{% for %}` iterates through `_Hooks.iterate`), so no loop escapes the count.
- size: no string, list or output may pass the rendering's size budget (`MIN_SIZE` characters or items plus
  `SIZE_PER_INPUT` per character of the conversation): `*`, `+`, `%`, `~`, `str` methods (`ljust`,
  `replace`, `join`, `format`, ...) and filters (`center`, `indent`, `join`, `replace`, `wordwrap`, ...) check
  the size of their result before making it; everything else is checked after, and all values made add up
  to at most `WORK_PER_SIZE` times the budget. Integers stay under `MAX_INT_BITS` bits, `range` under
  `MAX_RANGE` items; writing a container as text is measured first; `lipsum` is gone, `sum` adds numbers.
- compile time: filters are never evaluated while compiling (the wrappers take the context, which Jinja
  cannot constant-fold), so compiling is linear in the template's size (capped by the caller).

A breach raises `BudgetExceeded` (an Exception, so Jinja's compile-time folding treats it as "not constant").
Recursion that runs out of Python's stack is a RecursionError; `chat_template.render` reports both, and any
other error a template causes, as one line naming the template.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes as nodes
from jinja2.compiler import CodeGenerator
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

RENDER_SECONDS = 1.0  # CPU seconds of one rendering (real templates take milliseconds)
MIN_SIZE = 1 << 20  # characters (or items) any value, and the whole output, may reach ...
SIZE_PER_INPUT = 8  # ... plus this many per character of the messages and variables rendered
WORK_PER_SIZE = 16  # all values made while rendering, together, may reach this many times that size
MAX_INT_BITS = 4096
MAX_RANGE = 100_000  # as Jinja's own sandbox
MAX_JSON_INDENT = 64
_TICKS_PER_CLOCK = 16


class BudgetExceeded(Exception):
    """A rendering went over its time or size budget (the message says which)."""


class _Budget:
    __slots__ = ("deadline", "seconds", "size", "work", "made", "output", "ticks")

    def __init__(self, seconds: float, size: int):
        self.seconds, self.size, self.work = seconds, size, WORK_PER_SIZE * size
        self.deadline = time.thread_time() + seconds
        self.made = self.output = self.ticks = 0


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("template_budget", default=None)


@contextlib.contextmanager
def budget(input_chars: int, seconds: float | None = None) -> Iterator[_Budget]:
    """The budget of one rendering of `input_chars` characters of messages and variables, in this thread."""
    b = _Budget(RENDER_SECONDS if seconds is None else seconds, MIN_SIZE + SIZE_PER_INPUT * input_chars)
    token = _BUDGET.set(b)
    try:
        yield b
    finally:
        _BUDGET.reset(token)


def input_size(value: Any) -> int:
    """Characters of the strings in `value` (nested dict values, lists, tuples), counted without recursion."""
    total, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, (list, tuple, dict)):
            stack.extend(v.values() if isinstance(v, dict) else v)
    return total


def _tick_clock(b: _Budget) -> None:
    if time.thread_time() > b.deadline:
        raise BudgetExceeded(f"rendering took over {b.seconds:g} s of CPU time (the time budget of one "
                             "rendering)")


def _tick() -> None:
    b = _BUDGET.get()
    if b is not None:
        b.ticks += 1
        if not b.ticks % _TICKS_PER_CLOCK:
            _tick_clock(b)


def _limit() -> int:
    b = _BUDGET.get()
    return b.size if b is not None else MIN_SIZE


def _check_size(n: int, what: str) -> None:
    limit = _limit()
    if n > limit:
        raise BudgetExceeded(f"{what} would hold {n:,} characters or items, over the size budget of "
                             f"{limit:,}")


def _check_int(n: Any, what: str) -> None:
    limit = _limit()
    if isinstance(n, int) and not isinstance(n, bool) and abs(n) > limit:
        raise BudgetExceeded(f"{what} of {n:,} is over the size budget of {limit:,}")


def _account(value: Any, what: str) -> None:
    """Checks a value a call, filter or operator made, and counts it against the rendering's work: many
    values each under the size budget (a `map` of wide `center`s) must not add up to gigabytes."""
    if isinstance(value, (str, bytes, bytearray, list, tuple, dict, set, frozenset)):
        n = len(value)
        _check_size(n, what)
        b = _BUDGET.get()
        if b is not None:
            b.made += n
            if b.made > b.work:
                raise BudgetExceeded(f"rendering made over {b.work:,} characters or items in all (the work "
                                     "budget of one rendering)")
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise BudgetExceeded(f"{what} gave an integer of {value.bit_length():,} bits (at most "
                             f"{MAX_INT_BITS})")


_SCALARS = (str, int, float, bool, type(None))


def _check_text_size(value: Any, what: str) -> None:
    """Refuses to write `value` as text (str, tojson, a format) when that text would pass the size budget:
    a list of 100,000 references to one long string is small, its text is not. Stops counting there."""
    if isinstance(value, _SCALARS):
        return
    limit, total, stack = _limit(), 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, (str, bytes, bytearray)):
            total += len(v) + 2
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
            total += 2 * len(v) + 2
        elif isinstance(v, (list, tuple, set, frozenset)):
            stack.extend(v)
            total += 2 * len(v) + 2
        else:
            total += 8
        if total > limit:
            raise BudgetExceeded(f"{what} would write over {limit:,} characters (the size budget)")


def _str(value: Any) -> str:
    _check_text_size(value, "writing a value")
    return str(value)


_TEXT = (str, bytes, bytearray)
_SIZED = (str, bytes, bytearray, list, tuple)
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _check_percent(fmt: Any, args: Any) -> None:
    """`fmt % args`: no width or precision over the budget, written or given by `*`."""
    if not isinstance(fmt, str) or "%" not in fmt:
        return
    _check_text_size(args, "a % format")
    star = False
    for m in _PERCENT_SPEC.finditer(fmt):
        for part in m.groups():
            if part == "*":
                star = True
            elif part is not None:
                _check_int(int(part), "a width in a % format")
    if star:
        for a in args if isinstance(args, tuple) else (args,):
            _check_int(a, "a width in a % format")


def _check_format(fmt: str, args: tuple, kwargs: dict) -> None:
    """`fmt.format(...)`: no width over the budget, written in a field or given by a nested field."""
    _check_text_size((args, kwargs), "format()")
    for field in re.finditer(r"\{[^{}]*\}", fmt):
        spec = field.group().partition(":")[2]
        for digits in _DIGITS.findall(spec):
            _check_int(int(digits), "a width in a format string")
    if ":{" in fmt or "!{" in fmt:  # a width from the arguments
        mappings = [a for a in args if isinstance(a, dict)]  # format_map's
        for value in [*args, *kwargs.values(), *(v for m in mappings for v in m.values())]:
            _check_int(value, "a width in a format string")


def _joined(sep: Any, items: list) -> None:
    if items:
        _check_size(len(sep) * (len(items) - 1) + sum(len(x) for x in items if isinstance(x, _TEXT)),
                    "join")


def _replaced(s: Any, old: Any, new: Any, count: Any = -1) -> None:
    if not (isinstance(s, _TEXT) and isinstance(old, _TEXT) and isinstance(new, _TEXT)):
        return
    hits = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    _check_size(len(s) + hits * (len(new) - len(old)), "replace")


def _materialize(value: Any) -> Any:
    return value if isinstance(value, (*_SIZED, dict)) else list(value)


def _check_text_method(owner: Any, name: str, args: tuple, kwargs: dict) -> tuple:
    """Size checks before a str/bytes method runs; returns the arguments to call it with."""
    if name in ("ljust", "rjust", "center", "zfill") and args:
        _check_int(args[0], f"{name}() width")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            _check_size(len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * size, name)
    elif name == "replace":
        _replaced(owner, *args[:3])
    elif name == "join" and args:
        items = list(_materialize(args[0]))
        _check_text_size(items, "join()")
        _joined(owner, items)
        args = (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, _TEXT)), default=1)
        _check_size(len(owner) * max(longest, 1), name)
    elif name in ("format", "format_map") and isinstance(owner, str):
        _check_format(owner, args, kwargs)
    return args


def _check_call(obj: Any, args: tuple, kwargs: dict) -> tuple:
    target = getattr(obj, "__wrapped__", obj)  # the sandbox hands out str.format in a wrapper
    owner = getattr(target, "__self__", None)
    if isinstance(owner, _TEXT):
        return _check_text_method(owner, getattr(target, "__name__", ""), args, kwargs)
    return args


# Filters that go through their value item by item (each item is checked where it is written), and those that
# compare every item with others (a sort of 100,000 copies of a long string would run in C for hours).
_ITERATING_FILTERS = frozenset({"list", "length", "count", "first", "last", "map", "select", "reject",
                                "selectattr", "rejectattr", "join", "batch", "slice", "random", "reverse",
                                "items", "sum", "attr", "default", "d", "groupby", "sort", "unique", "min",
                                "max", "dictsort"})
_SORTING_FILTERS = frozenset({"sort", "unique", "min", "max", "dictsort", "groupby"})


def _check_filter(name: str, args: list, kwargs: dict) -> None:
    """Size checks before filter `name` runs on args[0] (the value); may replace args[0] (materialized)."""
    value, rest = args[0], args[1:]
    if name not in _ITERATING_FILTERS:
        _check_text_size(value, f"filter {name}")

    def arg(k: int, key: str, default: Any = None) -> Any:
        return rest[k] if len(rest) > k else kwargs.get(key, default)

    if name == "center":
        _check_int(arg(0, "width", 80), "center width")
    elif name == "indent":
        width = arg(0, "width", 4)
        per_line = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        _check_int(per_line, "indent width")
        text = str(value)
        _check_size(len(text) + per_line * (text.count("\n") + 1), "indent")
    elif name in ("batch", "slice"):
        _check_int(arg(0, "linecount" if name == "batch" else "slices"), f"{name} count")
    elif name == "wordwrap":
        width, wrap = arg(0, "width", 79), arg(2, "wrapstring") or "\n"
        text = str(value)
        if isinstance(width, int) and isinstance(wrap, str):
            _check_size(len(text) + (len(text) // max(width, 1) + 1) * len(wrap), "wordwrap")
    elif name == "replace":
        _replaced(str(value), arg(0, "old"), arg(1, "new"), arg(2, "count", -1))
    elif name == "join":
        items = list(_materialize(value))
        _check_text_size(items, "filter join")
        sep = arg(0, "d", "")
        if isinstance(sep, str) and arg(1, "attribute") is None:
            _joined(sep, items)
        args[0] = items
    elif name == "format":
        _check_percent(value, tuple(rest) or kwargs)
    elif name == "tojson":
        indent = arg(1, "indent")
        if isinstance(indent, int) and not isinstance(indent, bool) and indent > MAX_JSON_INDENT or (
                isinstance(indent, str) and len(indent) > MAX_JSON_INDENT):
            raise BudgetExceeded(f"tojson indent over {MAX_JSON_INDENT}")
    elif name in _SORTING_FILTERS:
        items = value if isinstance(value, dict) else list(_materialize(value))
        longest = max((len(x) for x in items if isinstance(x, _TEXT)), default=0)
        if len(items) > 1 and len(items) * math.log2(len(items)) * longest > WORK_PER_SIZE * _limit():
            raise BudgetExceeded(f"filter {name}: comparing {len(items):,} strings of up to {longest:,} "
                                 "characters is over the work budget")
        args[0] = items
    elif name == "sum":
        start = arg(1, "start", 0)
        if not isinstance(start, (int, float)):
            raise BudgetExceeded(f"sum() of {type(start).__name__} values (only numbers are added)")


def _guard_filter(name: str, f: Any) -> Any:
    """`f` with the budget checks; it takes the context, so Jinja never runs it while compiling."""
    kind = getattr(getattr(f, "jinja_pass_arg", None), "name", None)

    @jinja2.pass_context
    @functools.wraps(f)
    def guarded(context, *args, **kwargs):
        _tick()
        args = list(args)
        if args:
            _check_filter(name, args, kwargs)
        first = {"context": (context,), "eval_context": (context.eval_ctx,),
                 "environment": (context.environment,)}.get(kind, ())
        result = f(*first, *args, **kwargs)
        _account(result, f"filter {name}")
        return result

    return guarded  # pass_context, applied after wraps(), replaced the marker wraps() copied from f


def _check_binop(op: str, a: Any, b: Any) -> None:
    ints = isinstance(a, int) and isinstance(b, int)
    if op == "*":
        if ints:
            if a.bit_length() + b.bit_length() > MAX_INT_BITS:
                raise BudgetExceeded(f"a product of over {MAX_INT_BITS} bits")
            return
        seq, n = (a, b) if isinstance(b, int) else (b, a)
        if isinstance(seq, _SIZED) and isinstance(n, int):
            _check_size(len(seq) * max(n, 0), "a repetition (*)")
    elif op == "**":
        if ints and b > 0 and abs(a) > 1 and math.log2(abs(a)) * b > MAX_INT_BITS:
            raise BudgetExceeded(f"a power of over {MAX_INT_BITS} bits ({a} ** {b})")
    elif op == "+":
        if isinstance(a, _SIZED) and isinstance(b, _SIZED):
            _check_size(len(a) + len(b), "a concatenation (+)")
    elif op == "%":
        _check_percent(a, b)


class _BudgetIterable:
    """What a `{% for %}` loop iterates: its iterable, ticking the budget at every item."""

    __slots__ = ("_iterable",)

    def __init__(self, iterable: Any):
        self._iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        b = _BUDGET.get()
        if b is None:
            yield from self._iterable
            return
        for item in self._iterable:
            b.ticks += 1
            if not b.ticks % _TICKS_PER_CLOCK:
                _tick_clock(b)
            yield item

    def __len__(self) -> int:
        return len(self._iterable)


class _Hooks(jinja2.ext.Extension):
    """What instrumented templates call, directly (not through the sandbox's `call`, see
    `_BudgetCodeGenerator.visit_Call`): reached as `environment.extensions[...]`, which no template variable
    can shadow and no template can name."""

    def iterate(self, iterable: Any) -> _BudgetIterable:
        return _BudgetIterable(iterable)

    def output(self, value: Any) -> str:
        text = value if type(value) is str else _str(value)
        b = _BUDGET.get()
        if b is not None:
            b.ticks += 1
            if not b.ticks % _TICKS_PER_CLOCK:
                _tick_clock(b)
            b.output += len(text)
            if b.output > b.size:
                raise BudgetExceeded(f"the output passed the size budget of {b.size:,} characters")
        return text

    def concat(self, *parts: Any) -> str:
        texts = [p if isinstance(p, str) else _str(p) for p in parts]
        _check_size(sum(map(len, texts)), "a concatenation (~)")
        text = "".join(texts)
        _account(text, "a concatenation (~)")
        return text


class _Instrument(NodeTransformer):
    """Routes every loop, output and `~` of a template through `_Hooks`."""

    def __init__(self, environment: jinja2.Environment):
        self.environment = environment

    def _hook(self, name: str, args: list, lineno: int) -> nodes.Call:
        attr = nodes.ExtensionAttribute(_Hooks.identifier, name, lineno=lineno)
        return nodes.Call(attr, args, [], None, None, lineno=lineno).set_environment(self.environment)

    def visit_For(self, node: nodes.For) -> nodes.For:
        node = self.generic_visit(node)
        node.iter = self._hook("iterate", [node.iter], node.lineno)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Output:
        node = self.generic_visit(node)
        node.nodes = [self._hook("output", [nodes.Const(c.data, lineno=c.lineno).set_environment(
            self.environment) if isinstance(c, nodes.TemplateData) else c], c.lineno) for c in node.nodes]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        node = self.generic_visit(node)
        return self._hook("concat", node.nodes, node.lineno)


class _BudgetCodeGenerator(CodeGenerator):
    def visit_Template(self, node: nodes.Template, frame: Any = None) -> None:
        _Instrument(self.environment).visit(node)
        super().visit_Template(node, frame)

    def visit_Call(self, node: nodes.Call, frame: Any, forward_caller: bool = False) -> None:
        hook = node.node
        if not (isinstance(hook, nodes.ExtensionAttribute) and hook.identifier == _Hooks.identifier):
            return super().visit_Call(node, frame, forward_caller=forward_caller)
        self.write(f"environment.extensions[{_Hooks.identifier!r}].{hook.name}(")  # a plain call, unsandboxed
        for k, arg in enumerate(node.args):
            self.write(", " if k else "")
            self.visit(arg, frame)
        self.write(")")


def _range(*args: Any) -> range:
    try:
        r = range(*args)
        n = len(r)
    except OverflowError:
        n = math.inf
    if n > MAX_RANGE:
        raise BudgetExceeded(f"range() of more than {MAX_RANGE:,} items")
    return r


class BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the budgets of the module docstring. Call `guard_filters()` once every
    filter is registered."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BudgetCodeGenerator

    def __init__(self, *args: Any, extensions: Any = (), **kwargs: Any):
        super().__init__(*args, extensions=[*extensions, _Hooks], **kwargs)
        self.globals["range"] = _range
        self.globals.pop("lipsum", None)

    def guard_filters(self) -> None:
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        b = _BUDGET.get()
        if b is not None and operator == "+" and type(left) is str and type(right) is str:  # the usual case
            b.ticks += 1
            if not b.ticks % _TICKS_PER_CLOCK:
                _tick_clock(b)
            n = len(left) + len(right)
            b.made += n
            if n > b.size or b.made > b.work:
                _account(left + right if n <= b.size else "", "a concatenation (+)")
                _check_size(n, "a concatenation (+)")
            return left + right
        _tick()
        _check_binop(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        _account(result, f"the operator {operator}")
        return result

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        _tick()
        if isinstance(obj, LoopContext) and args:  # a recursive loop's next level
            args = (_BudgetIterable(args[0]), *args[1:])
        args = _check_call(obj, args, kwargs)
        result = super().call(context, obj, *args, **kwargs)
        _account(result, f"calling {getattr(obj, '__name__', type(obj).__name__)}")
        return result
