"""One chat format: the template, the tokenizer, the ids that end a reply, the stop strings, the generation
prompt and the dataset's max_length — resolved once at a command's edge and recorded with everything made
from it.

The one rule every command follows (prepare, train, convert, lora, generate, chat, serve, answers,
check_template), for `--template=auto` (the default):
  1. what the thing you point at recorded (a dataset's meta.json, a workdir, a checkpoint, an export's
     `chat_format.json`);
  2. else the tokenizer's own chat template (tokenizer_config.json / chat_template.jinja; sentencepiece
     tokenizers too) — recognised as one of our named templates when it is the text we export for one;
  3. else vicuna_v1.1.
A template named explicitly wins over 2 and 3; against a record it must agree (training, export) or is
used with a warning (decoding: trying another format on a model is allowed, never silent).

The record (`ChatFormat.record()`, the JSON in `chat_format.json`, the `chat_format` checkpoint item and
`meta.json["chat_format"]`) holds the template's name, its exported Jinja text and that text's sha256, the
tokenizer's kind and fingerprint, BOS/EOS/end-of-turn ids, stop strings, the generation prompt and, for a
dataset, its max_length. It is enough to rebuild the encoder without the original files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from absl import logging

from vicuna_jax.cli import UserError
from vicuna_jax.data.chat_encode import ChatTemplateError, JinjaChat, chat_for, messages_for, stop_token_ids
from vicuna_jax.data.chat_template import AUTO_TEMPLATE, HF_TEMPLATE, JinjaTemplate, render
from vicuna_jax.data.encode import encode_conversation, encode_prompt
from vicuna_jax.data.hf_tokenizer import (
    SPECIAL_TOKENS_MAP,
    TOKENIZER_CONFIG,
    HFTokenizer,
    save_hf_tokenizer_files,
    sentencepiece_tokenizer_config,
)
from vicuna_jax.data.template import EOS, Template, get_template, template_names
from vicuna_jax.data.tokenizer import Tokenizer, load_tokenizer
from vicuna_jax.fileio import atomic_open, atomic_write_json

AUTO = AUTO_TEMPLATE
DEFAULT_TEMPLATE = "vicuna_v1.1"
FORMAT_FILE = "chat_format.json"
FORMAT_VERSION = 1
# What must agree for two things to be "the same chat format" (the rest is derived from these).
COMPARED = ("template_sha256", "tokenizer_fingerprint")


class ChatFormatError(UserError):
    """A template or tokenizer that cannot be used, or two recorded formats that disagree."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def part_template_for_source(source: str) -> Template | None:
    """The named template whose exported Jinja text is `source` (what our exports carry), if any."""
    for name in template_names():
        t = get_template(name)
        if source in (t.hf_chat_template(bos=True), t.hf_chat_template(bos=False)):
            return t
    return None


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """A chat format bound to its tokenizer. Equality is by template text and tokenizer fingerprint."""

    template: str  # a named template (vicuna_v1.1, llama-3, ...) or "hf" (a tokenizer's own / recorded text)
    # The Jinja text exported with the model (transformers renders the same ids from it).
    chat_template: str = dataclasses.field(repr=False)
    tokenizer_kind: str  # "sentencepiece" | "tokenizer.json"
    tokenizer_fingerprint: str
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]  # the tokenizer's EOS and the template's end-of-turn ids: replies stop
    end_of_turn: tuple[str, ...]
    stop_strings: tuple[str, ...]
    generation_prompt: str  # what a generation prompt ends with (the text after the last user message)
    max_length: int | None = None  # a dataset's: no example is longer
    resolved_from: str = dataclasses.field(default="", compare=False)
    tokenizer: Any = dataclasses.field(default=None, compare=False, repr=False)
    tokenizer_path: str | None = dataclasses.field(default=None, compare=False)
    spec: Template | JinjaTemplate | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def template_sha256(self) -> str:
        return _sha256(self.chat_template)

    @property
    def is_jinja(self) -> bool:
        return isinstance(self.spec, JinjaTemplate)

    @property
    def encoder(self) -> Template | JinjaChat:
        """The bound encoder (`data.encode` takes it wherever it takes a template)."""
        return chat_for(self.spec, self.tokenizer)

    def describe(self) -> str:
        return f"{self.template} (sha256 {self.template_sha256[:12]}, {self.resolved_from})"

    # -- encoding --------------------------------------------------------------------------------------------
    def encode_prompt(self, turns: Iterable[Mapping], system: str | None = None) -> list[int]:
        """Generation-prompt ids for a conversation that ends with a user turn."""
        return encode_prompt(turns, self.tokenizer, template=self.encoder, system=system)

    def encode(self, turns: Iterable[Mapping], system: str | None = None, max_length: int | None = None):
        """(input_ids, loss_mask) of a whole conversation, as training encodes it."""
        return encode_conversation(turns, self.tokenizer, max_length, template=self.encoder, system=system)

    # -- the record ------------------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        out = {
            "format_version": FORMAT_VERSION,
            "template": self.template,
            "template_sha256": self.template_sha256,
            "chat_template": self.chat_template,
            "tokenizer_kind": self.tokenizer_kind,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "bos_token_id": self.bos_token_id,
            "eos_token_ids": list(self.eos_token_ids),
            "end_of_turn": list(self.end_of_turn),
            "stop_strings": list(self.stop_strings),
            "generation_prompt": self.generation_prompt,
        }
        if self.max_length is not None:
            out["max_length"] = self.max_length
        return out

    def with_max_length(self, max_length: int | None) -> ChatFormat:
        return dataclasses.replace(self, max_length=max_length)

    def write(self, directory: str) -> str:
        """Writes `directory/chat_format.json`; returns its path."""
        path = os.path.join(directory, FORMAT_FILE)
        atomic_write_json(path, self.record(), indent=1)
        return path

    def write_hf_files(self, out_dir: str, model_max_length: int) -> None:
        """The tokenizer's files as transformers reads them, carrying this format's chat template
        (tokenizer.json + tokenizer_config.json, or tokenizer.model + tokenizer_config.json +
        special_tokens_map.json), and `chat_format.json` (this record)."""
        tok = self.tokenizer
        if isinstance(tok, HFTokenizer):
            save_hf_tokenizer_files(tok, out_dir, self.chat_template, model_max_length)
        else:
            with atomic_open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
                f.write(tok._proto)
            specials = dict(tok.special_tokens)
            config = sentencepiece_tokenizer_config(specials, self.chat_template, model_max_length)
            atomic_write_json(os.path.join(out_dir, TOKENIZER_CONFIG), config, indent=2, ensure_ascii=False)
            atomic_write_json(os.path.join(out_dir, SPECIAL_TOKENS_MAP), specials, indent=2)
        self.write(out_dir)

    def check_matches(self, recorded: Mapping[str, Any] | None, what: str, fix: str) -> None:
        """ChatFormatError when `recorded` (a record of `what`) is another format; `fix` says what to do."""
        diffs = differences(recorded, self.record()) if recorded else []
        if diffs:
            raise ChatFormatError(f"{what} was made in another chat format than this one "
                                  f"({'; '.join(diffs)}); {fix}")


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """'key: old -> new' for each compared key of two records that differs."""
    out = []
    if old.get("template_sha256") != new.get("template_sha256"):
        out.append(f"template: {old.get('template')} (sha256 {str(old.get('template_sha256'))[:12]}) -> "
                   f"{new.get('template')} (sha256 {str(new.get('template_sha256'))[:12]})")
    if old.get("tokenizer_fingerprint") != new.get("tokenizer_fingerprint"):
        out.append(f"tokenizer fingerprint: {old.get('tokenizer_fingerprint')} -> "
                   f"{new.get('tokenizer_fingerprint')}")
    return out


def read_record(directory: str) -> dict[str, Any] | None:
    """`directory/chat_format.json`, or None; ChatFormatError for a file that is not a record."""
    path = os.path.join(directory, FORMAT_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ChatFormatError(f"{path}: unreadable chat format record ({e})") from None
    check_record(record, path)
    return record


def check_record(record: Any, where: str) -> None:
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in
                                               ("template", "chat_template", "template_sha256")):
        raise ChatFormatError(f"{where}: not a chat format record (needs template, chat_template, "
                              "template_sha256)")
    if _sha256(record["chat_template"]) != record["template_sha256"]:
        raise ChatFormatError(f"{where}: the recorded chat template does not match its sha256 (edited by "
                              "hand?)")


# ---------------------------------------------------------------- resolving


def resolve(tokenizer: str | Tokenizer | HFTokenizer, template: str | None = AUTO, *,
            recorded: Mapping[str, Any] | None = None, recorded_in: str = "", flag: str = "--template",
            on_conflict: str = "error") -> ChatFormat:
    """The chat format by the one rule (module docstring). `tokenizer`: a path or a loaded tokenizer.
    `recorded`: the record of what the command reads (None: nothing recorded). `on_conflict`: "error" or
    "warn" when an explicit `template` differs from `recorded`. Errors are ChatFormatError naming `flag`."""
    tok, tok_path = _load(tokenizer, flag)
    explicit = template not in (None, "", AUTO)
    if recorded is not None:
        check_record(recorded, recorded_in or "the recorded chat format")
        fingerprint = recorded.get("tokenizer_fingerprint")
        if fingerprint and fingerprint != tok.fingerprint:
            raise ChatFormatError(
                f"{recorded_in or 'the record'} was made with the tokenizer {fingerprint}, but the tokenizer "
                f"here is {tok_path} ({tok.fingerprint}); use the tokenizer stored with it (leave "
                "--tokenizer unset)")
    if explicit:
        fmt = _build(tok, tok_path, get_named(template, flag), f"{flag}={template}", flag)
        if recorded is not None and recorded["template_sha256"] != fmt.template_sha256:
            message = (f"{flag}={template} differs from the chat format {recorded_in} records "
                       f"({recorded['template']}, sha256 {recorded['template_sha256'][:12]})")
            if on_conflict == "error":
                raise ChatFormatError(f"{message}: it was made in that format; leave {flag} unset (auto) to "
                                      "use it")
            logging.warning("%s; using %s as asked", message, template)
        return fmt
    if recorded is not None:
        return _from_record(tok, tok_path, recorded, recorded_in, flag)
    own = getattr(tok, "chat_template", None)
    if own:
        spec = part_template_for_source(own) or JinjaTemplate(HF_TEMPLATE, source=own)
        return _build(tok, tok_path, spec, "the tokenizer's own chat template", flag)
    default = get_template(DEFAULT_TEMPLATE)
    return _build(tok, tok_path, default, "the default (the tokenizer has no chat template)", flag)


def get_named(template: str, flag: str = "--template") -> Template | JinjaTemplate:
    """A named template (`hf` = the tokenizer's own); ChatFormatError listing the names for an unknown one."""
    try:
        return get_template(template)
    except ValueError as e:
        raise ChatFormatError(f"{flag}: {e}") from None


def _load(tokenizer: str | Tokenizer | HFTokenizer, flag: str) -> tuple[Any, str | None]:
    if not isinstance(tokenizer, str | os.PathLike):
        return tokenizer, getattr(tokenizer, "model_path", None)
    try:
        return load_tokenizer(tokenizer), os.fspath(tokenizer)
    except (OSError, ValueError) as e:
        raise ChatFormatError(f"--tokenizer: {e}") from None


def _from_record(tok: Any, tok_path: str | None, recorded: Mapping[str, Any], recorded_in: str,
                 flag: str) -> ChatFormat:
    name, source = recorded["template"], recorded["chat_template"]
    where = f"recorded in {recorded_in}" if recorded_in else "recorded"
    try:
        spec = get_template(name)
    except ValueError:
        spec = None
    if isinstance(spec, Template):
        if _sha256(spec.hf_chat_template(bos=True)) != recorded["template_sha256"]:
            raise ChatFormatError(f"{recorded_in}: its template {name!r} differs from this version's "
                                  f"{name!r}; pass {flag} explicitly")
    else:  # Jinja: the recorded text itself, whatever the tokenizer's own template is now
        spec = JinjaTemplate(name if spec is not None else HF_TEMPLATE, source=source, origin=recorded_in)
    fmt = _build(tok, tok_path, spec, where, flag)
    max_length = recorded.get("max_length")
    return fmt.with_max_length(int(max_length) if isinstance(max_length, int) else None)


def _build(tok: Any, tok_path: str | None, spec: Template | JinjaTemplate, resolved_from: str,
           flag: str) -> ChatFormat:
    try:
        encoder = chat_for(spec, tok)
    except ValueError as e:  # ChatTemplateError: no end-of-turn token, missing tokens, no own template
        raise ChatFormatError(f"{flag}: {e}") from None
    if isinstance(encoder, JinjaChat):
        spec = JinjaTemplate(encoder.name, source=encoder.source)
        chat_template, end_of_turn = encoder.source, tuple(encoder.end_of_turn)
        stop_strings: tuple[str, ...] = ()
        generation_prompt = _jinja_generation_prompt(encoder)
    else:
        spec = encoder
        chat_template = encoder.hf_chat_template(bos=True)
        ends_with_eos = any(p.special == EOS for p in encoder.assistant_suffix)
        end_of_turn = (tok.eos_piece,) if ends_with_eos and tok.eos_piece else ()
        stop_strings = tuple(encoder.stop_strings)
        generation_prompt = encoder.generation_cue
    try:
        eos_ids = tuple(stop_token_ids(tok, encoder))
    except ChatTemplateError as e:
        raise ChatFormatError(f"{flag}: {e}") from None
    return ChatFormat(
        template=spec.name, chat_template=chat_template,
        tokenizer_kind="tokenizer.json" if isinstance(tok, HFTokenizer) else "sentencepiece",
        tokenizer_fingerprint=tok.fingerprint, bos_token_id=tok.bos_id, eos_token_ids=eos_ids,
        end_of_turn=end_of_turn, stop_strings=stop_strings, generation_prompt=generation_prompt,
        resolved_from=resolved_from, tokenizer=tok, tokenizer_path=tok_path, spec=spec)


def _jinja_generation_prompt(chat: JinjaChat) -> str:
    """The text a generation prompt adds after one user message (informational; "" if it cannot render)."""
    messages = messages_for([{"from": "human", "value": "Hi"}])
    try:
        with_prompt, _ = render(chat.source, messages, chat.variables, add_generation_prompt=True)
        without, _ = render(chat.source, messages, chat.variables)
    except Exception:  # noqa: BLE001 - any template error: the field is informational
        return ""
    return with_prompt[len(without):] if with_prompt.startswith(without) else ""
