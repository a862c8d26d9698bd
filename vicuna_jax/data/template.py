"""Chat templates (FastChat-compatible prompt strings) as data, so rendering, masks and the HF Jinja template
all come from one description.

A rendered conversation is a list of `Part`s: text or a special token (BOS/EOS), each marked as a training
target or not. `render` joins them into FastChat's prompt string (`</s>` written literally); `encode.py`
tokenizes the same parts, so the string a model is served with and the ids it was trained on cannot drift.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from vicuna_jax.cli import unknown_name
from vicuna_jax.data.chat_template import JINJA_TEMPLATE_NAMES, JinjaTemplate

USER, ASSISTANT, SYSTEM = "user", "assistant", "system"

# ShareGPT `from` values seen in the wild, and OpenAI `role` values.
ROLE_ALIASES = {
    "human": USER, "user": USER,
    "gpt": ASSISTANT, "chatgpt": ASSISTANT, "bard": ASSISTANT, "bing": ASSISTANT, "assistant": ASSISTANT,
    "model": ASSISTANT,
    "system": SYSTEM,
}  # fmt: skip

BOS, EOS = "bos", "eos"
_SPECIAL_TEXT = {BOS: "<s>", EOS: "</s>"}


@dataclass(frozen=True)
class Part:
    """A span of the rendered conversation: `text`, or a special token when `special` is BOS/EOS."""

    text: str = ""
    special: str | None = None
    target: bool = False


def normalize_turns(
    turns: Iterable[Mapping], system: str | None = None
) -> tuple[str | None, list[tuple[str, str]]]:
    """ShareGPT (`from`/`value`) or OpenAI (`role`/`content`) turns -> (system, [(role, text)]).

    A leading system turn sets the system message unless `system` is given. Raises ValueError naming the turn.
    """
    out: list[tuple[str, str]] = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise ValueError(f"turn {k}: expected a dict, got {type(turn).__name__}")
        if "from" in turn:
            raw_role, text = turn["from"], turn.get("value")
        elif "role" in turn:
            raw_role, text = turn["role"], turn.get("content")
        else:
            raise ValueError(f"turn {k}: no 'from' or 'role' key (keys: {sorted(turn)})")
        role = ROLE_ALIASES.get(str(raw_role).lower()) if isinstance(raw_role, str) else None
        if role is None:
            raise ValueError(f"turn {k}: unknown role {raw_role!r}")
        if not isinstance(text, str):
            raise ValueError(f"turn {k}: message text must be a string, got {type(text).__name__}")
        if role == SYSTEM:
            if out:
                raise ValueError(f"turn {k}: a system message is only allowed as the first turn")
            if system is None:
                system = text
            continue
        out.append((role, text))
    return system, out


def check_alternation(messages: Sequence[tuple[str, str]]) -> None:
    """Require user, assistant, user, ... (what every template here assumes)."""
    for k, (role, _) in enumerate(messages):
        want = USER if k % 2 == 0 else ASSISTANT
        if role != want:
            raise ValueError(f"message {k}: expected role {want!r}, got {role!r} (roles must alternate)")


@dataclass(frozen=True)
class Template:
    """One chat format. Strings are placed exactly as FastChat's `Conversation.get_prompt` places them."""

    name: str
    system_message: str
    system_format: str  # contains "{system}"
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: tuple[Part, ...]  # parts after each reply; `target` ones are trained on
    stop_strings: tuple[str, ...] = ()
    system_format_empty: str | None = None  # used when the system message is ""
    user_prefix_first: str | None = None  # the first user message's prefix (llama-2 folds it into system)
    description: str = field(default="", compare=False)

    @property
    def generation_cue(self) -> str:
        """What a generation prompt ends with: the assistant role marker, without its trailing space."""
        return self.assistant_prefix.rstrip()

    def parts(
        self, turns: Iterable[Mapping], system: str | None = None, add_generation_prompt: bool = False
    ) -> list[Part]:
        """The conversation as Parts (no leading BOS: the tokenizer step adds it, as HF does)."""
        system, messages = normalize_turns(turns, system)
        check_alternation(messages)
        system = self.system_message if system is None else system
        if system:
            out = [Part(self.system_format.format(system=system))]
        else:
            empty = self.system_format_empty
            out = [Part(self.system_format.format(system="") if empty is None else empty)]
        for k, (role, text) in enumerate(messages):
            if role == USER:
                first = k == 0 and self.user_prefix_first is not None
                prefix = self.user_prefix_first if first else self.user_prefix
                out.append(Part(prefix + text + self.user_suffix))
            else:
                # Everything after the generation cue is a target, including the prefix's trailing space:
                # the first token the model must produce after "ASSISTANT:" may be a lone "▁" (e.g. before a
                # digit), exactly as FastChat's masks have it.
                cue = self.generation_cue
                out.append(Part(cue))
                out.append(Part(self.assistant_prefix[len(cue) :] + text, target=True))
                out.extend(self.assistant_suffix)
        if add_generation_prompt:
            out.append(Part(self.generation_cue))
        return _merge(out)

    def render(
        self, turns: Iterable[Mapping], system: str | None = None, add_generation_prompt: bool = False
    ) -> str:
        """FastChat's prompt string; special tokens written as `<s>` / `</s>`."""
        return "".join(
            _SPECIAL_TEXT[p.special] if p.special else p.text
            for p in self.parts(turns, system, add_generation_prompt)
        )

    def hf_chat_template(self, bos: bool = False) -> str:
        """A transformers Jinja chat template rendering exactly `render` (plus `bos_token` first if `bos`).

        HF's `apply_chat_template(tokenize=True)` does not add BOS itself, so exports meant for tokenized use
        should pass `bos=True`; `bos=False` gives the same string as `render`.
        """
        sys_pre, sys_post = self.system_format.split("{system}")
        empty = (
            self.system_format.format(system="")
            if self.system_format_empty is None
            else self.system_format_empty
        )
        first = self.user_prefix if self.user_prefix_first is None else self.user_prefix_first
        suffix = " + ".join(
            (f"{p.special}_token" if p.special else _lit(p.text)) for p in self.assistant_suffix
        ) or _lit("")
        q = _lit
        return (
            "{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- set system = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}"
            f"{{%- else -%}}{{%- set system = {q(self.system_message)} -%}}"
            "{%- set loop_messages = messages -%}{%- endif -%}"
            + ("{%- if bos_token -%}{{- bos_token -}}{%- endif -%}" if bos else "")
            + f"{{%- if system -%}}{{{{- {q(sys_pre)} + system + {q(sys_post)} -}}}}"
            f"{{%- else -%}}{{{{- {q(empty)} -}}}}{{%- endif -%}}"
            "{%- for message in loop_messages -%}"
            "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
            "{{- raise_exception('Conversation roles must alternate user/assistant/user/...') -}}"
            "{%- endif -%}"
            "{%- if message['role'] == 'user' -%}"
            f"{{%- if loop.first -%}}{{{{- {q(first)} -}}}}{{%- else -%}}{{{{- {q(self.user_prefix)} -}}}}"
            f"{{%- endif -%}}{{{{- message['content'] + {q(self.user_suffix)} -}}}}"
            f"{{%- else -%}}{{{{- {q(self.assistant_prefix)} + message['content'] + {suffix} -}}}}"
            "{%- endif -%}{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{- {q(self.generation_cue)} -}}}}{{%- endif -%}}"
        )


def _lit(s: str) -> str:
    """A Jinja string literal (Jinja decodes the same backslash escapes JSON writes)."""
    return json.dumps(s)


def _merge(parts: list[Part]) -> list[Part]:
    """Join adjacent text parts with the same target flag and drop empty ones (fewer, longer spans)."""
    out: list[Part] = []
    for p in parts:
        if not p.special and not p.text:
            continue
        if out and not p.special and not out[-1].special and out[-1].target == p.target:
            out[-1] = Part(out[-1].text + p.text, target=p.target)
        else:
            out.append(p)
    return out


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_V0_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

_TEMPLATES: dict[str, Template] = {}


def register_template(template: Template) -> Template:
    _TEMPLATES[template.name] = template
    return template


register_template(Template(
    name="vicuna_v1.1",
    system_message=VICUNA_SYSTEM,
    system_format="{system} ",
    user_prefix="USER: ",
    user_suffix=" ",
    assistant_prefix="ASSISTANT: ",
    assistant_suffix=(Part(special=EOS, target=True),),
    description="SYSTEM USER: q ASSISTANT: a</s>USER: ... (FastChat ADD_COLON_TWO, sep ' ', sep2 '</s>')",
))  # fmt: skip
register_template(Template(
    name="vicuna_v0",
    system_message=VICUNA_V0_SYSTEM,
    system_format="{system}\n### ",
    user_prefix="Human: ",
    user_suffix="\n### ",
    assistant_prefix="Assistant: ",
    # The reply ends with "\n###": trained on, so the model learns to emit the stop string.
    assistant_suffix=(Part("\n###", target=True), Part(" ")),
    stop_strings=("###",),
    description="SYSTEM\\n### Human: q\\n### Assistant: a\\n### ... (FastChat ADD_COLON_SINGLE)",
))  # fmt: skip
register_template(Template(
    name="llama-2",
    system_message="",
    system_format="[INST] <<SYS>>\n{system}\n<</SYS>>\n\n",
    system_format_empty="[INST] ",
    user_prefix="[INST] ",
    user_prefix_first="",
    user_suffix=" ",
    assistant_prefix="[/INST] ",
    assistant_suffix=(Part(" ", target=True), Part(special=EOS, target=True), Part(special=BOS)),
    description="[INST] <<SYS>>\\nS\\n<</SYS>>\\n\\nq [/INST] a </s><s>[INST] ... (Meta / FastChat LLAMA2)",
))  # fmt: skip


def get_template(name: str | Template | JinjaTemplate) -> Template | JinjaTemplate:
    """Look up a template by name (a Template passes through). `hf`, `auto`, `llama-3`, `chatml` and `mistral`
    are Jinja templates (`JinjaTemplate`), bound to a tokenizer by `chat_encode.chat_for`."""
    if isinstance(name, Template | JinjaTemplate):
        return name
    if name in JINJA_TEMPLATE_NAMES:
        return JinjaTemplate(name)
    try:
        return _TEMPLATES[name]
    except KeyError:
        raise ValueError(unknown_name("chat template", name, known_template_names())) from None


def template_names() -> list[str]:
    """The Part-based templates (Jinja ones: `chat_template.JINJA_TEMPLATE_NAMES`)."""
    return sorted(_TEMPLATES)


def known_template_names() -> list[str]:
    """Every name `--template` / `data.template` accepts: auto, hf, the Part-based and the Jinja built-ins."""
    return [*template_names(), *JINJA_TEMPLATE_NAMES]
