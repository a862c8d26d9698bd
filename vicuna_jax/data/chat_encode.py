"""Conversations in a Jinja chat template -> (input_ids, loss_mask), with the ids `apply_chat_template` gives.

The conversation is rendered to text exactly as transformers renders it and tokenized once, with the
tokenizer's character offsets (never decoded and re-tokenized). Each assistant reply's start is found in the
text, then its end: the first end-of-turn token after it (`<|eot_id|>`, `<|im_end|>`, `</s>`: the special
token a probe rendering shows right after a reply). A token is a target iff its character span overlaps
[reply start, end of its end-of-turn token) - transformers' own rule for `{% generation %}` spans.

Where a reply starts:
- with `{% generation %}` blocks: where each block starts (one per assistant message);
- otherwise: where the generation prompt of the conversation up to that message ends, when the full
  rendering begins with it for every reply (prefix stability: what the model is prompted with at inference
  is exactly what precedes the reply in training);
- where it does not (Mistral v0.3 puts the system message into the last user turn only, so no prompt before
  a reply is a prefix of the rendering): where the reply is found in the one full rendering, in order, each
  searched from the end of the previous reply's end-of-turn token (and from the end of the user message just
  before it, where its text is found): its text, stripped (as templates trim it), followed by only
  whitespace and then an end-of-turn token (so a user message quoting the reply is not taken for it). The
  target then starts where the generation prompt for that reply would end: right after the prompt's last
  special token and its text (`[/INST]`), when the rendering has exactly that just before the reply with
  only whitespace between — so Mistral's " " after `[/INST]` is a target, as on the prefix path. Otherwise
  it starts at the reply text, or where its first token starts when that token also covers whitespace.

So the mask is every token of each reply plus its end-of-turn token and nothing else, with or without
generation blocks; with blocks it equals `return_assistant_tokens_mask` whenever a block holds exactly the
reply and its end-of-turn token (where a block stops short of that token or runs past it, our rule wins).

A conversation that cannot be aligned raises `AlignmentError` with a short `reason` (the data pipeline counts
and skips it; it is never trained on unmasked): the template raised or failed (`template_error`), went
over its time or size budget (`template_limit`, see `template_sandbox`), a message contains
a special-token string (`special_token_text`), a reply has no end-of-turn token (`no_end_of_turn`), the reply
text is not where it should be or cannot be found in the rendering (`reply_not_found`), a token straddles the
prompt/reply boundary (`reply_start_inside_token`; a located reply's first token may extend over whitespace
only), or the generation blocks do not match the assistant messages (`generation_blocks`).
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from vicuna_jax.data.chat_template import (
    AUTO_TEMPLATE,
    HF_TEMPLATE,
    ChatTemplateError,
    JinjaTemplate,
    TemplateLimitError,
    TemplateRenderError,
    has_generation_blocks,
    render,
)
from vicuna_jax.data.template import ASSISTANT, SYSTEM, Template, get_template, normalize_turns

_PROBE_REPLY = "Probe reply 7431."


class AlignmentError(ValueError):
    """A conversation the template renders in a way the loss mask cannot be derived from exactly."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail

    def __reduce__(self):  # workers send these back to the main process
        return AlignmentError, (self.reason, self.detail)


def messages_for(turns: Iterable[Mapping], system: str | None = None) -> list[dict[str, str]]:
    """ShareGPT/OpenAI turns -> transformers `messages` (a system message first when there is one)."""
    system, pairs = normalize_turns(turns, system)
    head = [{"role": SYSTEM, "content": system}] if system is not None else []
    return head + [{"role": role, "content": text} for role, text in pairs]


class JinjaChat:
    """A Jinja template bound to an HF tokenizer: renders, tokenizes and masks conversations."""

    def __init__(self, name: str, source: str, tokenizer, origin: str | None = None):
        import jinja2

        self.name, self.source, self.tokenizer = name, source, tokenizer
        # How errors name it: 'hf' (/models/x/chat_template.jinja)
        self.label = f"{name!r} ({origin})" if origin else repr(name)
        self.variables = dict(tokenizer.special_tokens)
        self.has_generation = has_generation_blocks(source)
        specials = sorted((t for t, i in tokenizer.added_tokens.items() if tokenizer.is_special(i)),
                          key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, specials))) if specials else None
        self._jinja_error = jinja2.TemplateError
        self.end_of_turn = self._probe_end_of_turn(specials)
        self.end_of_turn_ids = tuple(tokenizer.added_tokens[t] for t in self.end_of_turn)
        self._eot_re = re.compile("|".join(map(re.escape, self.end_of_turn)))
        self._space_eot_re = re.compile(r"\s*(?:" + self._eot_re.pattern + ")")

    def __repr__(self) -> str:
        return f"JinjaChat({self.name!r}, end_of_turn={self.end_of_turn})"

    # -- rendering -------------------------------------------------------------------------------------------
    def render(self, messages: Sequence[Mapping], add_generation_prompt: bool = False,
               track: bool = False, tools: Sequence[Mapping] | None = None
               ) -> tuple[str, list[tuple[int, int]]]:
        try:
            return render(self.source, messages, self.variables, add_generation_prompt=add_generation_prompt,
                          track=track, origin=self.label, tools=tools)
        except TemplateLimitError as e:  # over its time or size budget
            raise AlignmentError("template_limit", str(e)) from None
        except TemplateRenderError as e:
            raise AlignmentError("template_error", str(e)) from None
        except self._jinja_error as e:
            raise AlignmentError("template_error", f"template {self.label} raised: {e}") from None

    def _probe_end_of_turn(self, specials: list[str]) -> tuple[str, ...]:
        """The special token a rendering puts right after an assistant reply (whitespace allowed between)."""
        probes = ([{"role": "user", "content": "Hi"}, {"role": ASSISTANT, "content": _PROBE_REPLY}],
                  [{"role": SYSTEM, "content": "Sys"}, {"role": "user", "content": "Hi"},
                   {"role": ASSISTANT, "content": _PROBE_REPLY}])
        problems = []
        for probe in probes:
            try:
                text, _ = self.render(probe)
            except AlignmentError as e:
                if e.reason == "template_limit":  # no second try: one runaway rendering is enough
                    raise ChatTemplateError(e.detail) from None
                problems.append(str(e))
                continue
            at = text.find(_PROBE_REPLY)
            if at < 0:
                problems.append(f"the reply does not appear in {text!r}")
                continue
            rest = text[at + len(_PROBE_REPLY):].lstrip()
            for token in specials:
                if rest.startswith(token):
                    return (token,)
            problems.append(f"no special token follows the reply: {text[at:at + 60]!r}")
        raise ChatTemplateError(
            f"chat template {self.label}: cannot find its end-of-turn token ({'; '.join(problems)}). "
            "Training needs a special token (like <|eot_id|>, <|im_end|> or </s>) after each assistant "
            "reply, so the model learns to stop")

    # -- encoding --------------------------------------------------------------------------------------------
    def prompt_ids(self, messages: Sequence[Mapping], tools: Sequence[Mapping] | None = None) -> list[int]:
        """`apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True)`."""
        text, _ = self.render(messages, add_generation_prompt=True, tools=tools)
        return self.tokenizer.encode_with_specials([text])[0][0].tolist()

    def encode(self, messages: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32, loss_mask bool): the ids of `apply_chat_template(messages)` and the reply targets."""
        full, replies, starts, located = self._render_replies(messages)
        ids, encoding = self.tokenizer.encode_with_specials([full])[0]
        return ids, self._align(messages, full, replies, starts, located, encoding)

    def encode_many(self, conversations: Sequence[Sequence[Mapping] | ValueError]
                    ) -> list[tuple[np.ndarray, np.ndarray] | ValueError]:
        """`encode` for many conversations, tokenized in one batched call; errors are returned in place."""
        rendered: list = []
        for messages in conversations:
            try:
                if isinstance(messages, ValueError):
                    raise messages
                rendered.append((messages, *self._render_replies(messages)))
            except ValueError as e:
                rendered.append(e)
        texts = [r[1] for r in rendered if not isinstance(r, ValueError)]
        encoded = iter(self.tokenizer.encode_with_specials(texts))
        out: list = []
        for r in rendered:
            if isinstance(r, ValueError):
                out.append(r)
                continue
            ids, encoding = next(encoded)
            try:
                out.append((ids, self._align(*r, encoding)))
            except AlignmentError as e:
                out.append(e)
        return out

    def _render_replies(self, messages: Sequence[Mapping]) -> tuple[str, list[int], list[int], bool]:
        """(full rendering, index of each assistant message, character where each reply starts, whether the
        starts were located in the rendering because the prefix-stable rule does not hold)."""
        if self._special_re is not None:
            for k, m in enumerate(messages):
                hit = self._special_re.search(m["content"])
                if hit:
                    raise AlignmentError("special_token_text", f"message {k} contains {hit.group()!r}, which "
                                         "would be encoded as a control token")
        full, spans = self.render(messages, track=self.has_generation)
        replies = [k for k, m in enumerate(messages) if m["role"] == ASSISTANT]
        if self.has_generation:
            if len(spans) != len(replies):
                raise AlignmentError("generation_blocks", f"{len(spans)} generation blocks for "
                                     f"{len(replies)} assistant messages")
            return full, replies, [s for s, _ in spans], False
        prompts = [self.render(messages[:k], add_generation_prompt=True)[0] for k in replies]
        if all(full.startswith(prompt) for prompt in prompts):
            return full, replies, [len(prompt) for prompt in prompts], False
        return full, replies, self._locate_replies(messages, full, replies, prompts), True

    def _locate_replies(self, messages: Sequence[Mapping], full: str, replies: list[int],
                        prompts: list[str]) -> list[int]:
        """Where each reply starts in `full`, found in order: its stripped text followed by only whitespace
        and an end-of-turn token, searched from the end of the previous reply's end-of-turn token, and from
        the end of the message before it when that is a user (not system) message whose text is found
        there (templates whose user turns end with the end-of-turn token: a user message ending with the
        reply's text is not the reply). `prompts`: the generation prompt before each reply."""
        starts, at = [], 0
        for k, prompt in zip(replies, prompts, strict=True):
            before = messages[k - 1] if k > 0 else None
            if before is not None and before["role"] not in (ASSISTANT, SYSTEM) and before["content"].strip():
                asked = full.find(before["content"].strip(), at)
                at = at if asked < 0 else asked + len(before["content"].strip())
            text = messages[k]["content"].strip()
            found = full.find(text, at)
            while found >= 0 and not (end := self._space_eot_re.match(full, found + len(text))):
                found = full.find(text, found + 1)
            if found < 0:
                raise AlignmentError("reply_not_found", f"message {k}'s text followed by "
                                     f"{'/'.join(self.end_of_turn)} is not in the rendering after the "
                                     "previous reply (the generation prompts are not prefixes of it either)")
            starts.append(self._after_prompt(prompt, full, found))
            at = end.end()
        return starts

    def _after_prompt(self, prompt: str, full: str, found: int) -> int:
        """Where a located reply starts: where the generation prompt for it would end — right after that
        prompt's last special token and the text after it (`[/INST]`, `<|im_start|>assistant\n`) when the
        rendering has exactly that just before the reply, with only whitespace between — so the template's
        " " before a reply is trained as on the prefix path. Otherwise `found` (the reply's text)."""
        if self._special_re is None:
            return found
        marks = list(self._special_re.finditer(prompt))
        if not marks:
            return found
        cue = prompt[marks[-1].start():]
        gap = found
        while gap > 0 and full[gap - 1].isspace():
            gap -= 1
        for end in range(found, gap - 1, -1):
            if end >= len(cue) and full.startswith(cue, end - len(cue)):
                return end
        return found

    def _align(self, messages: Sequence[Mapping], full: str, replies: list[int], starts: list[int],
               located: bool, encoding) -> np.ndarray:
        """The loss mask: tokens overlapping [reply start, end of its end-of-turn token), after the checks.
        A located start moves back to the start of its token when the token extends over whitespace only."""
        targets = []
        for j, (k, start) in enumerate(zip(replies, starts, strict=True)):
            eot = self._eot_re.search(full, start)
            limit = starts[j + 1] if j + 1 < len(starts) else len(full)
            if eot is None or eot.end() > limit:
                raise AlignmentError("no_end_of_turn", f"no {'/'.join(self.end_of_turn)} after message {k}")
            tail = messages[k]["content"].split("</think>")[-1].strip()[-48:]
            if tail not in full[start:eot.start()]:
                raise AlignmentError("reply_not_found", f"message {k}'s text is not between its start and "
                                     "its end-of-turn token")
            targets.append((start, eot.end()))
        if located:
            targets = [(_widened(full, start, encoding), end) for start, end in targets]
        # The tokens of each span from the encoding's character index (no [N, 2] offsets array to build);
        # a span edge on a character no token covers falls back to transformers' rule on all offsets.
        mask = np.zeros((len(encoding.ids),), bool)
        for k, (start, end) in zip(replies, targets, strict=True):
            first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
            if first is None or last is None:
                return _checked_overlap_mask(np.asarray(encoding.offsets, np.int64).reshape(-1, 2), targets,
                                             replies)
            if encoding.token_to_chars(first)[0] != start:
                raise _straddle(k)
            mask[first:last + 1] = True
        return mask


def _widened(full: str, start: int, encoding) -> int:
    """`start`, or where the token covering it starts when that token begins on whitespace before it."""
    token = encoding.char_to_token(start)
    if token is None:
        return start
    token_start = encoding.token_to_chars(token)[0]
    return token_start if token_start < start and full[token_start:start].isspace() else start


def _straddle(k: int) -> AlignmentError:
    return AlignmentError("reply_start_inside_token", f"a token spans the prompt and the start of "
                          f"message {k}")


def _checked_overlap_mask(offsets: np.ndarray, spans: Sequence[tuple[int, int]], replies: list[int]
                          ) -> np.ndarray:
    for k, (start, _) in zip(replies, spans, strict=True):
        if np.any((offsets[:, 0] < start) & (offsets[:, 1] > start)):
            raise _straddle(k)
    return overlap_mask(offsets, spans)


def overlap_mask(offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """transformers' assistant-mask rule: token i is masked iff it overlaps a span (spans sorted)."""
    mask = np.zeros((len(offsets),), bool)
    for start, end in spans:
        mask |= (offsets[:, 1] > start) & (offsets[:, 0] < end)
    return mask


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def chat_for(template: str | Template | JinjaTemplate | JinjaChat, tokenizer) -> Template | JinjaChat:
    """The template to encode with: a Part-based `Template`, or a `JinjaChat` bound to `tokenizer` (cached).

    `auto` gives the tokenizer's own template when it has one, else vicuna_v1.1 (`chat_format.resolve` is
    the one rule CLIs use; this is the encoder underneath). ChatTemplateError names what is missing."""
    if isinstance(template, JinjaChat):
        return template
    t = get_template(template)
    if isinstance(t, Template):
        return t
    own = getattr(tokenizer, "chat_template", None)
    if t.name == AUTO_TEMPLATE and t.source is None:
        if not own:
            return get_template("vicuna_v1.1")
        t = JinjaTemplate(HF_TEMPLATE)
    source = t.source or (t.builtin_source if t.name != HF_TEMPLATE else own)
    if not source:
        raise ChatTemplateError(f"template 'hf': {tokenizer.model_path} has no chat_template (in "
                                "tokenizer_config.json or chat_template.jinja); pick a named template")
    per_tokenizer = _CACHE.setdefault(tokenizer, {})
    if source not in per_tokenizer:
        needed = re.findall(r"<\|[a-z_]+\|>", source) if t.builtin_source and not t.source else []
        missing = [tok for tok in needed if tok not in tokenizer.added_tokens]
        if missing:
            raise ChatTemplateError(f"template {t.name!r} uses tokens {missing} that {tokenizer.model_path} "
                                    "does not have")
        origin = t.origin or (template_file(tokenizer) if source == own else None)
        per_tokenizer[source] = JinjaChat(t.name, source, tokenizer, origin)
    return per_tokenizer[source]


def template_file(tokenizer) -> str | None:
    """The file a tokenizer's own chat template was read from: chat_template.jinja (which wins) or
    tokenizer_config.json next to it (None when neither is there)."""
    path = getattr(tokenizer, "model_path", None)
    if not path:
        return None
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return None


def stop_token_ids(tokenizer, template: str | Template | JinjaTemplate | None) -> list[int]:
    """Ids that end a reply in `template`: the tokenizer's EOS and the template's end-of-turn tokens."""
    ids = [tokenizer.eos_id] if getattr(tokenizer, "eos_id", None) is not None else []
    if template not in (None, "none"):
        chat = chat_for(template, tokenizer)
        if isinstance(chat, JinjaChat):
            ids += list(chat.end_of_turn_ids)
    return list(dict.fromkeys(int(i) for i in ids if i is not None and i >= 0))
