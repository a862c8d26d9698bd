"""Jinja chat templates rendered exactly as transformers' `apply_chat_template` renders them.

The environment is the one transformers builds (`utils/chat_template_utils.py`, transformers 5): a
sandboxed Jinja environment with `trim_blocks`/`lstrip_blocks`, loop controls, the `{% generation %}` tag
that records the character span of each block, `raise_exception`, `strftime_now`, a `tojson` that does not
escape HTML, `dict` and a `namespace` that refuses dunder attributes. Templates see `messages`,
`add_generation_prompt`, `tools=None`, `documents=None` and the tokenizer's named special tokens
(`bos_token`, `eos_token`, ...).

A template is code from a model directory, so it renders in `template_sandbox.BudgetedEnvironment`: the
sandbox (no Python internals, no file or network access: no loader, no imports) plus a CPU-time and size
budget per rendering. Whatever a template does wrong - raises, divides by zero, recurses, runs over its
budget - `render` reports as one error naming the template (`origin`: its file when it came from one).

Also here: the built-in Jinja templates (`llama-3`, `chatml`, `mistral`, in the style of the official
ones) for base models whose tokenizer has no template of its own.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")

# Meta Llama-3-Instruct's format (the 3.0 template; 3.1+ add a dated system header for tools).
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
# ChatML (Qwen, many others), without a default system message.
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}")
# Mistral-Instruct ([INST] ... [/INST]reply</s>); a system message is put before the first user message.
MISTRAL = (
    "{%- if messages and messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set system = '' %}"
    "{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.first and system %}{{- '[INST] ' + system + '\n\n' + message['content'] + ' [/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + ' [/INST]' }}{%- endif %}"
    "{%- else %}{{- message['content'] + eos_token }}{%- endif %}{%- endfor %}")

BUILTIN_JINJA = {"llama-3": LLAMA3, "chatml": CHATML, "mistral": MISTRAL}
HF_TEMPLATE, AUTO_TEMPLATE = "hf", "auto"
JINJA_TEMPLATE_NAMES = (HF_TEMPLATE, AUTO_TEMPLATE, *BUILTIN_JINJA)


@dataclass(frozen=True)
class JinjaTemplate:
    """A Jinja chat template by name: `hf` (the tokenizer's own), `auto` (the tokenizer's own if it has one,
    else vicuna_v1.1) or a built-in (`llama-3`, `chatml`, `mistral`). `chat_encode.chat_for` binds it to a
    tokenizer. No stop strings: replies end with an end-of-turn token (its id is a stop id)."""

    name: str
    stop_strings: tuple[str, ...] = ()
    description: str = ""
    # The Jinja text itself, when it is not the built-in's nor the tokenizer's own (a recorded template:
    # what a dataset, workdir, checkpoint or export was made with).
    source: str | None = None
    # Where `source` came from (a file, for error messages); not part of the template's identity.
    origin: str | None = field(default=None, compare=False)

    @property
    def builtin_source(self) -> str | None:
        return BUILTIN_JINJA.get(self.name)


class ChatTemplateError(ValueError):
    """A template that cannot be used for training or serving (it fails to render, has no end-of-turn token,
    or the tokenizer lacks its tokens); the message names the template."""


class TemplateRenderError(ChatTemplateError):
    """A template failed while rendering: it called something wrongly, divided by zero, ... (not its own
    `raise_exception`, which is jinja2's TemplateError). The message names the template."""


class TemplateLimitError(TemplateRenderError):
    """A rendering went over its time or size budget, or recursed past Python's stack."""


MAX_TEMPLATE_CHARS = 1 << 20  # real chat templates are a few KB; compiling is linear in the size


class _Tracking:
    """The rendered blocks so far and the generation spans found, for the render in progress."""

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.spans: list[tuple[int, int]] = []


_TRACKING: contextvars.ContextVar[_Tracking | None] = contextvars.ContextVar("chat_tracking", default=None)


@functools.cache
def _environment():
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils

    from vicuna_jax.data.template_sandbox import BudgetedEnvironment

    class GenerationTracker(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            node = jinja2.nodes.CallBlock(self.call_method("_generation", []), [], [], body)
            return node.set_lineno(lineno)

        def _generation(self, caller) -> str:
            text = caller()
            tracking = _TRACKING.get()
            if tracking is not None:
                start = sum(len(b) for b in tracking.blocks)
                tracking.spans.append((start, start + len(text)))
            return text

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(format):
        if len(str(format)) > 1000:
            raise jinja2.exceptions.TemplateError("strftime_now: a format of over 1000 characters")
        return datetime.now().strftime(format)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")

    env = BudgetedEnvironment(trim_blocks=True, lstrip_blocks=True,
                              extensions=[GenerationTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.guard_filters()
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=TemplateDict(),
                       namespace=TemplateNamespace)
    return env


@functools.lru_cache(maxsize=16)
def _compile(source: str):
    """The compiled template; ChatTemplateError saying why not (the caller names the template)."""
    import jinja2

    if len(source) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(f"has {len(source):,} characters (at most {MAX_TEMPLATE_CHARS:,})")
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"does not compile: {e} (line {e.lineno})") from None
    except (RecursionError, MemoryError) as e:
        raise ChatTemplateError(f"does not compile: nested too deeply ({type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001 - whatever else compiling untrusted text raises
        raise ChatTemplateError(f"does not compile: {type(e).__name__}: {e}") from None


def compile_template(source: str, origin: str | None = None):
    """The compiled template (cached); ChatTemplateError (naming `origin`) when it cannot be compiled."""
    try:
        return _compile(source)
    except ChatTemplateError as e:
        raise ChatTemplateError(f"chat template {origin} {e}" if origin else f"chat template {e}") from None


def render(source: str, messages: Sequence[Mapping[str, Any]], variables: Mapping[str, Any], *,
           add_generation_prompt: bool = False, track: bool = False, origin: str | None = None,
           tools: Sequence[Mapping[str, Any]] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """(text, generation spans) of `messages`, as `apply_chat_template(tokenize=False)` renders them.

    `variables` are the tokenizer's special tokens (and any template kwargs); `tools` the JSON schemas passed
    as `apply_chat_template(messages, tools=...)` does (None: no tools). Spans are character ranges of
    the `{% generation %}` blocks (only when `track`). Raises jinja2.TemplateError from the template itself
    (`raise_exception`), TemplateLimitError over the budget (`template_sandbox`), TemplateRenderError for
    any other failure, ChatTemplateError when it does not compile; each names `origin` when given.
    """
    import jinja2

    from vicuna_jax.data import template_sandbox

    template = compile_template(source, origin)
    plain = [{k: v for k, v in m.items() if v is not None} for m in messages]
    context = {**variables, "messages": plain, "tools": list(tools) if tools else None, "documents": None,
               "add_generation_prompt": add_generation_prompt}
    where = f"chat template {origin}" if origin else "chat template"
    tracking = _Tracking()
    token = _TRACKING.set(tracking if track else None)
    try:
        with template_sandbox.budget(template_sandbox.input_size(context)):
            for block in template.generate(**context):
                tracking.blocks.append(block)
    except jinja2.TemplateError:
        raise
    except template_sandbox.BudgetExceeded as e:
        raise TemplateLimitError(f"{where}: {e}") from None
    except RecursionError:
        raise TemplateLimitError(f"{where}: recursion too deep (a macro or loop that calls itself without "
                                 "end)") from None
    except MemoryError:
        raise TemplateLimitError(f"{where}: ran out of memory") from None
    except Exception as e:  # noqa: BLE001 - a template's own failure on this input, as one error
        raise TemplateRenderError(f"{where} failed: {type(e).__name__}: {e}"[:1000]) from None
    finally:
        _TRACKING.reset(token)
    return "".join(tracking.blocks), tracking.spans


def has_generation_blocks(source: str) -> bool:
    return GENERATION_TAG.search(source) is not None
