"""Benchmark answers in FastChat's answer format, from a local model or any OpenAI-compatible server.

    python -m vicuna_jax.eval.answers --model=DIR --model_id=vicuna-7b \\
        --question_file=questions.jsonl --answer_file=answers/vicuna-7b.jsonl
    OPENAI_API_KEY=... python -m vicuna_jax.eval.answers --openai_model=gpt-3.5-turbo \\
        --question_file=questions.jsonl --answer_file=answers/gpt-3.5-turbo.jsonl

Local models answer in batches with the KV-cache generator, in the model's chat template; questions that
share a sampling temperature (a question's `required_temperature`, else chosen per category, as FastChat
does) share a batch. Through an OpenAI-compatible server, answers start with the system message FastChat's
API answerer sends (its "chatgpt" conversation template), unless --system says otherwise.
Multi-turn questions are answered turn by turn: turn 2's prompt holds turn 1's question and the model's
own answer. Each question's row is appended and flushed once its batch finishes, so a rerun skips what is
done; at the end the file is sorted by question_id with one row per question. A prompt with no room left in
the context gets `$ERROR$` turns and an `error` field (rerun with --redo_errors to try again); it never
stops the run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import logging

from vicuna_jax.cli import UserError, unknown_name
from vicuna_jax.eval.answerers import (  # noqa: F401 - GeneratorLike is re-exported for callers
    API_SYSTEM_MESSAGE,
    AnswerRequestError,
    GeneratorLike,
    LocalAnswerer,
    OpenAIAnswerer,
    TurnAnswers,
)
from vicuna_jax.eval.jsonl import EvalInputError, JsonlAppender, iter_jsonl, write_jsonl
from vicuna_jax.eval.questions import ERROR_ANSWER, Question, load_questions

DEFAULT_TEMPERATURE = 0.7
# FastChat's MT-bench table: deterministic answers where there is one right answer, a little variety for
# knowledge questions, 0.7 (DEFAULT_TEMPERATURE) for everything else (writing, roleplay, the Vicuna set).
CATEGORY_TEMPERATURES: Mapping[str, float] = {
    "coding": 0.0, "math": 0.0, "reasoning": 0.0, "extraction": 0.0, "stem": 0.1, "humanities": 0.1,
}  # fmt: skip
BUNDLED_QUESTIONS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "questions.jsonl")
_UUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # shortuuid's 57 symbols


def short_uuid() -> str:
    """A 22-character random id in shortuuid's alphabet (FastChat's answer_id), from uuid4."""
    n, out = uuid.uuid4().int, []
    for _ in range(22):
        n, r = divmod(n, len(_UUID_ALPHABET))
        out.append(_UUID_ALPHABET[r])
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class AnswerConfig:
    """One answering run; the CLI flags map onto these fields."""

    question_file: str
    answer_file: str
    model_id: str
    max_new_tokens: int = 1024
    batch_size: int = 16  # questions per generate call (local) / concurrent requests (OpenAI)
    num_choices: int = 1
    seed: int = 0
    temperature: float | None = None  # one temperature for every question, overriding the table
    default_temperature: float = DEFAULT_TEMPERATURE
    category_temperatures: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: dict(CATEGORY_TEMPERATURES))
    top_p: float = 1.0
    top_k: int = 0
    question_begin: int | None = None  # a slice of the file's questions, as in FastChat
    question_end: int | None = None
    question_ids: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    first_n: int | None = None
    redo_errors: bool = False

    def __post_init__(self) -> None:
        if not self.model_id:
            raise UserError("--model_id must not be empty")
        for name in ("max_new_tokens", "batch_size", "num_choices"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1, got {getattr(self, name)}")
        temps = [self.default_temperature, *self.category_temperatures.values()]
        if any(t < 0 for t in temps) or (self.temperature is not None and self.temperature < 0):
            raise UserError("temperatures must be >= 0")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise UserError(f"--top_p must be in (0, 1] and --top_k >= 0 (got {self.top_p}, {self.top_k})")

    def temperature_for(self, question: Question) -> float:
        """--temperature, else the question's required_temperature, else the category table (FastChat's
        order; select_questions refuses --temperature with questions that require their own)."""
        if self.temperature is not None:
            return self.temperature
        if question.required_temperature is not None:
            return question.required_temperature
        table = {k.lower(): v for k, v in self.category_temperatures.items()}
        return table.get(question.category.lower(), self.default_temperature)


def parse_temperature_table(items: Sequence[str]) -> dict[str, float]:
    """`["coding=0", "writing=0.9"]` -> {"coding": 0.0, "writing": 0.9}, merged over CATEGORY_TEMPERATURES."""
    table = dict(CATEGORY_TEMPERATURES)
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            table[name.strip()] = float(value)
        except ValueError:
            raise UserError(f"--category_temperatures: expected CATEGORY=TEMPERATURE, got {item!r}") from None
    return table


def select_questions(config: AnswerConfig) -> list[Question]:
    """The questions of this run: the file's [begin:end] slice, then id / category filters, then first_n."""
    try:
        questions = load_questions(config.question_file)
    except EvalInputError as e:
        raise UserError(str(e)) from None
    questions = questions[config.question_begin : config.question_end]
    if config.question_ids:
        known = {q.key for q in questions}
        unknown = [i for i in config.question_ids if i not in known]
        if unknown:
            raise UserError(f"--question_ids not in {config.question_file}: {', '.join(unknown)}")
        wanted = set(config.question_ids)
        questions = [q for q in questions if q.key in wanted]
    categories = sorted({q.category.lower() for q in questions})
    unknown = [("--categories", name) for name in config.categories if name.lower() not in categories] + [
        ("--category_temperatures", name) for name in config.category_temperatures
        if name.lower() not in categories and name not in CATEGORY_TEMPERATURES]  # MT-bench's are fine
    if unknown:
        flag, name = unknown[0]
        raise UserError(f"{flag}: {unknown_name('category', name, categories)} (the categories of the "
                        f"questions in {config.question_file})")
    if config.categories:
        wanted = {c.lower() for c in config.categories}
        questions = [q for q in questions if q.category.lower() in wanted]
    questions = questions[: config.first_n] if config.first_n is not None else questions
    fixed = [q.question_id for q in questions if q.required_temperature is not None]
    if fixed and config.temperature is not None:
        shown = ", ".join(map(str, fixed[:8])) + (" ..." if len(fixed) > 8 else "")
        raise UserError(f"--temperature conflicts with the required_temperature of question_id {shown} in "
                        f"{config.question_file}; drop --temperature (those questions say how to sample)")
    return questions


Answerer = LocalAnswerer | OpenAIAnswerer


@dataclasses.dataclass
class AnswerSummary:
    questions: int = 0
    already_done: int = 0
    answered: int = 0
    error_rows: int = 0  # rows written with ERROR_ANSWER turns (no room in the context)
    failed: list[str] = dataclasses.field(default_factory=list)  # not written; retried by the next run
    new_tokens: int = 0
    length_stops: int = 0
    duplicates_dropped: int = 0


def _qid_order(qid: Any) -> tuple[int, int, str]:
    """Numeric ids in numeric order (ints or digit strings), then the rest alphabetically."""
    s = str(qid)
    return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)


def reorg_answer_file(path: str) -> int:
    """Sorts the file by question_id, keeping each question's last row; returns how many rows were dropped."""
    latest: dict[str, dict[str, Any]] = {}
    rows = 0
    for _, row in iter_jsonl(path):
        rows += 1
        latest[str(row.get("question_id"))] = row
    write_jsonl(path, sorted(latest.values(), key=lambda r: _qid_order(r.get("question_id"))))
    return rows - len(latest)


def answer_row(question: Question, model_id: str, choices: Sequence[TurnAnswers]) -> dict[str, Any]:
    """A FastChat answer row; `error` is added only when a turn could not be answered."""
    row: dict[str, Any] = {
        "question_id": question.question_id,
        "answer_id": short_uuid(),
        "model_id": model_id,
        "choices": [{"index": i, "turns": c.turns} for i, c in enumerate(choices)],
        "tstamp": time.time(),
    }
    errors = [c.error for c in choices if c.error]
    if errors:
        row["error"] = errors[0]
    return row


def _done_keys(rows: list[dict[str, Any]], config: AnswerConfig) -> set[str]:
    for i, row in enumerate(rows, start=1):
        if "question_id" not in row or "choices" not in row:
            raise UserError(f"{config.answer_file}: row {i} is not an answer row (it needs 'question_id' and "
                            "'choices'); choose another --answer_file")
    other = sorted({str(r["model_id"]) for r in rows if "model_id" in r} - {config.model_id})
    if other:
        raise UserError(f"{config.answer_file} holds answers from model {', '.join(other)}, not "
                        f"'{config.model_id}'; use one answer file per model")
    return {str(r.get("question_id")) for r in rows if not (config.redo_errors and "error" in r)}


def run_answers(config: AnswerConfig, answerer: Answerer | Callable[[], Answerer]) -> AnswerSummary:
    """Answers every selected question not yet in the answer file, then sorts and de-duplicates the file.

    `answerer` may be a factory, called only when there is something to answer (a finished run loads no
    model). Interrupting loses only the batch in progress.
    """
    questions = select_questions(config)
    summary = AnswerSummary(questions=len(questions))
    try:
        appender = JsonlAppender(config.answer_file)
    except EvalInputError as e:
        raise UserError(f"{e} (in the existing answer file; fix or move it)") from None
    with appender:
        done = _done_keys(appender.existing, config)
        todo = [q for q in questions if q.key not in done]
        summary.already_done = len(questions) - len(todo)
        logging.info("%d questions, %d already answered in %s, %d to answer", len(questions),
                     summary.already_done, config.answer_file, len(todo))
        if todo:
            if not isinstance(answerer, LocalAnswerer | OpenAIAnswerer):
                answerer = answerer()
            run = _run_parallel if isinstance(answerer, OpenAIAnswerer) else _run_batched
            run(todo, config, answerer, appender, summary)  # type: ignore[arg-type]
    summary.duplicates_dropped = reorg_answer_file(config.answer_file)
    return summary


def _record(row: dict[str, Any], choices: Sequence[TurnAnswers], appender: JsonlAppender,
            summary: AnswerSummary) -> None:
    appender.append(row)
    summary.answered += 1
    summary.error_rows += "error" in row
    summary.new_tokens += sum(c.new_tokens for c in choices)
    summary.length_stops += sum(c.length_stops for c in choices)
    if "error" in row:
        logging.warning("question %s: %s; recorded as %s", row["question_id"], row["error"], ERROR_ANSWER)


def _batch_seed(config: AnswerConfig, choice: int, first: Question) -> int:
    """A per-batch seed from --seed, the choice index and the batch's first question (choices differ)."""
    return zlib.crc32(f"{config.seed}/{choice}/{first.key}".encode()) % (2**31 - 1)


def _run_batched(todo: list[Question], config: AnswerConfig, answerer: LocalAnswerer,
                 appender: JsonlAppender, summary: AnswerSummary) -> None:
    by_temperature: dict[float, list[Question]] = {}
    for q in todo:
        by_temperature.setdefault(config.temperature_for(q), []).append(q)
    done = 0
    for temperature, group in by_temperature.items():
        group = sorted(group, key=lambda q: len(q.turns[0]))  # similar lengths pad less
        for start in range(0, len(group), config.batch_size):
            batch = group[start : start + config.batch_size]
            t0 = time.monotonic()
            choices = [answerer.answer_batch([q.turns for q in batch], temperature,
                                             seed=_batch_seed(config, c, batch[0]))
                       for c in range(config.num_choices)]
            tokens = sum(a.new_tokens for per_choice in choices for a in per_choice)
            for k, q in enumerate(batch):
                per_question = [per_choice[k] for per_choice in choices]
                _record(answer_row(q, config.model_id, per_question), per_question, appender, summary)
            done += len(batch)
            seconds = time.monotonic() - t0
            logging.info("%d/%d answered (temperature %g, %d questions, %d tokens in %.1fs, %.0f tokens/s)",
                         done, len(todo), temperature, len(batch), tokens, seconds,
                         tokens / max(seconds, 1e-9))


def _run_parallel(todo: list[Question], config: AnswerConfig, answerer: OpenAIAnswerer,
                  appender: JsonlAppender, summary: AnswerSummary) -> None:
    def answer(q: Question) -> list[TurnAnswers]:
        temperature = config.temperature_for(q)
        return [answerer.answer(q.turns, temperature) for _ in range(config.num_choices)]

    logging.info("answering with %s at %s, %d requests at a time", answerer.model, answerer.client.base_url,
                 config.batch_size)
    with concurrent.futures.ThreadPoolExecutor(config.batch_size, thread_name_prefix="answer") as pool:
        futures = {pool.submit(answer, q): q for q in todo}
        try:
            for future in concurrent.futures.as_completed(futures):
                q = futures[future]
                try:
                    choices = future.result()
                except AnswerRequestError as e:
                    summary.failed.append(f"question {q.question_id}: {e}")
                    logging.error("question %s failed, will be retried on the next run: %s", q.question_id, e)
                    continue
                _record(answer_row(q, config.model_id, choices), choices, appender, summary)
                if summary.answered % 10 == 0 or summary.answered + len(summary.failed) == len(todo):
                    logging.info("%d/%d answered", summary.answered, len(todo))
        except BaseException:  # UserError (bad key or model) or Ctrl-C: start nothing new
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# ---------------------------------------------------------------------------------------------------- CLI


def config_from_flags() -> AnswerConfig:
    from absl import flags

    f = flags.FLAGS
    if not f.model and not f.openai_model:
        raise UserError("give --model (a local model directory) or --openai_model (a served model name)")
    if f.model and f.openai_model:
        raise UserError("give only one of --model and --openai_model")
    model_id = f.model_id or f.openai_model or os.path.basename(os.path.normpath(f.model))
    return AnswerConfig(
        question_file=f.question_file or BUNDLED_QUESTIONS, answer_file=f.answer_file, model_id=model_id,
        max_new_tokens=f.max_new_tokens, batch_size=f.batch_size, num_choices=f.num_choices, seed=f.seed,
        temperature=f.temperature, default_temperature=f.default_temperature,
        category_temperatures=parse_temperature_table(f.category_temperatures), top_p=f.top_p, top_k=f.top_k,
        question_begin=f.question_begin, question_end=f.question_end, question_ids=tuple(f.question_ids),
        categories=tuple(f.categories), first_n=f.first_n, redo_errors=f.redo_errors)


def main(argv: list[str]) -> None:
    from absl import flags

    f = flags.FLAGS
    if len(argv) > 1:
        raise flags.Error(f"unexpected arguments: {argv[1:]}")
    config = config_from_flags()
    logging.info("answers of model_id '%s' go to %s", config.model_id, config.answer_file)
    if f.openai_model:
        if f.top_k:
            raise UserError("--top_k is not part of the OpenAI chat API; leave it at 0 with --openai_model")
        answerer: Answerer | Callable[[], Answerer] = OpenAIAnswerer(
            f.openai_model, base_url=f.base_url, system=f.system, max_new_tokens=config.max_new_tokens,
            top_p=config.top_p, max_retries=f.max_retries, timeout_s=f.timeout)
    else:
        from vicuna_jax.data.chat_format import get_named

        if f.template != "auto":
            get_named(f.template)  # an unknown name fails before a model is loaded

        def answerer() -> LocalAnswerer:
            from vicuna_jax.generate import load_generator

            gen = load_generator(f.model, f.tokenizer, f.dtype, template=f.template, adapter=f.adapter)
            logging.info("model %s: context %d tokens, chat format %s", f.model,
                         gen.cfg.max_position_embeddings, gen.chat_format.describe())
            return LocalAnswerer(gen, system=f.system,
                                 max_new_tokens=config.max_new_tokens, top_p=config.top_p, top_k=config.top_k,
                                 stop_strings=tuple(f.stop or ()))
    summary = run_answers(config, answerer)
    logging.info("done: %d answered now (%d with %s), %d already done, %d new tokens, %d turns cut at the "
                 "length limit; %s", summary.answered, summary.error_rows, ERROR_ANSWER, summary.already_done,
                 summary.new_tokens, summary.length_stops, config.answer_file)
    if summary.failed:
        raise UserError(f"{len(summary.failed)} of {summary.questions} questions failed (see the log); "
                        "run the same command again to retry only those")


def _define_flags() -> None:
    from absl import flags

    from vicuna_jax.cli import check_name
    from vicuna_jax.data.template import known_template_names
    from vicuna_jax.load import COMPUTE_DTYPES

    flags.DEFINE_string("model", None, "Local model: HF dir, or vicuna_jax checkpoint / training workdir.")
    flags.DEFINE_string("adapter", None, "LoRA adapter for --model (PEFT dir or vicuna_jax LoRA workdir).")
    flags.DEFINE_string("openai_model", None, "Answer through an OpenAI-compatible server with this model "
                        "name (OPENAI_API_KEY, OPENAI_BASE_URL or --base_url) instead of --model.")
    flags.DEFINE_string("model_id", None, "Name written into the answers (default: the model's name).")
    flags.DEFINE_string("question_file", None, "Questions jsonl, FastChat or older Vicuna format "
                        "(default: the bundled sample questions).")
    flags.DEFINE_string("answer_file", None, "Answers jsonl; rows already there are skipped.", required=True)
    flags.DEFINE_string("template", "auto", "Chat template of the local model (auto: the format it records, "
                        "else its tokenizer's own template, else vicuna_v1.1).")
    flags.DEFINE_string("system", None, "System message. Unset: the chat template's default (local models) "
                        f"or FastChat's '{API_SYSTEM_MESSAGE}' (--openai_model); --system= sends none.")
    flags.DEFINE_string("tokenizer", None, "tokenizer.model, when the model directory has none.")
    flags.DEFINE_enum("dtype", "float32", COMPUTE_DTYPES, "Compute dtype of the local model.")
    check_name("template", known_template_names(), "chat template")
    flags.DEFINE_integer("max_new_tokens", 1024, "Most tokens per answer turn (less where the context ends).")
    flags.DEFINE_integer("batch_size", 16, "Questions per generate call; with --openai_model, concurrent "
                         "requests.")
    flags.DEFINE_integer("num_choices", 1, "Answers per question (choices[0..n-1]).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_float("temperature", None, "One temperature for every question (overrides the table).")
    flags.DEFINE_float("default_temperature", DEFAULT_TEMPERATURE, "For categories not in the table.")
    flags.DEFINE_list("category_temperatures", [], "CATEGORY=TEMPERATURE overrides of the table "
                      f"{dict(CATEGORY_TEMPERATURES)}, e.g. writing=0.9,fermi=0.")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
    flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = all; local models only).")
    flags.DEFINE_multi_string("stop", None, "Extra stop string (repeatable; local models).")
    flags.DEFINE_integer("question_begin", None, "Index of the first question of the file to answer.")
    flags.DEFINE_integer("question_end", None, "Index one past the last question to answer.")
    flags.DEFINE_list("question_ids", [], "Only these question ids.")
    flags.DEFINE_list("categories", [], "Only questions of these categories.")
    flags.DEFINE_integer("first_n", None, "Only the first N selected questions (a quick trial).")
    flags.DEFINE_bool("redo_errors", False, f"Answer again the questions recorded as {ERROR_ANSWER}.")
    flags.DEFINE_string("base_url", None, "OpenAI-compatible endpoint (default: OPENAI_BASE_URL).")
    flags.DEFINE_integer("max_retries", 5, "Retries per request on 429/5xx/timeouts (--openai_model).")
    flags.DEFINE_float("timeout", 600.0, "Seconds before a request is abandoned (--openai_model).")


if __name__ == "__main__":
    from vicuna_jax.cli import run

    run(main, _define_flags)
