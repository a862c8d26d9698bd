"""LLM-as-a-judge over any OpenAI-compatible endpoint: single grades, pairwise with swap, Vicuna reviews.

    OPENAI_API_KEY=... python -m vicuna_jax.eval.judge --mode=single --judge_model=gpt-4.1 \\
        --question_file=questions.jsonl --answer_files=a.jsonl,b.jsonl --output_file=judgments.jsonl

There is no default judge model: --judge_model (or VICUNA_JAX_JUDGE_MODEL) names it, and every row records
it with the endpoint's host and the prompt's name and text hash. --verdicts=five asks pairwise judges for
Arena-Hard-style five-level verdicts; --rejudge_errors redoes unreadable judgments; matches that would show
an $ERROR$ answer are skipped and counted.

Every judgment is appended to --output_file and flushed as it arrives; rerunning the same command skips what
is done (no new requests, no duplicate rows), so an interrupted or partly failed run is finished by running
it again. OPENAI_BASE_URL (or --base_url) points the judge at any OpenAI-compatible server.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from absl import app, flags, logging

from vicuna_jax.cli import UserError
from vicuna_jax.eval.client import (
    Cancelled,
    ChatJudge,
    FatalJudgeError,
    JudgeRequestError,
    RetryPolicy,
    install_redaction,
    remove_redaction,
    resolve_api_key,
)
from vicuna_jax.eval.jsonl import EvalInputError, JsonlAppender
from vicuna_jax.eval.judging import Sampling, judge_match
from vicuna_jax.eval.matches import (
    DEFAULT_REFERENCE_CATEGORIES,
    MODES,
    Match,
    build_matches,
    is_unparsed,
    mode_kind,
    row_key,
    row_kind,
    row_verdict_levels,
)
from vicuna_jax.eval.prompts import default_prompt_file, load_prompts
from vicuna_jax.eval.questions import (
    ERROR_ANSWER,
    check_answers_cover,
    load_answer_files,
    load_questions,
    load_references,
)

JUDGE_MODEL_ENV = "VICUNA_JAX_JUDGE_MODEL"
VERDICT_SCALES = {"three": 3, "five": 5}


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    """Everything a judging run needs; the CLI flags map one to one onto these fields."""

    mode: str
    question_file: str
    answer_files: tuple[str, ...]
    output_file: str
    judge_model: str = ""  # required: no default judge (a retired default silently changes results)
    baseline_model: str | None = None
    reference_file: str | None = None
    reference_categories: tuple[str, ...] = DEFAULT_REFERENCE_CATEGORIES
    judge_prompts: str | None = None  # None: our shipped prompts for the mode
    model_list: tuple[str, ...] = ()  # () : every model with an answer file
    first_n: int | None = None
    parallel: int = 1
    max_retries: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 60.0
    timeout_s: float = 120.0
    temperature: float | None = None
    max_tokens: int | None = None
    base_url: str | None = None  # None: OPENAI_BASE_URL, else api.openai.com
    rejudge_errors: bool = False  # judge again what is on file only as unreadable (score -1, verdict error)
    verdicts: str = "three"  # pairwise: "three" (A / B / tie) or "five" (Arena-Hard: A>>B ... B>>A)
    dry_run: bool = False


@dataclasses.dataclass
class RunSummary:
    matches: int = 0
    already_done: int = 0
    judged: int = 0
    failed: int = 0
    unparsed: int = 0
    rejudged: int = 0  # of the judgments to do, those redone because only unreadable ones were on file
    skipped_error_answers: int = 0  # matches not judged because an answer shown is $ERROR$
    requests: int = 0
    interrupted: bool = False
    errors: list[str] = dataclasses.field(default_factory=list)


def prepare(config: JudgeConfig) -> tuple[list[Match], collections.Counter[str]]:
    """Loads and checks every input; returns the matches to judge (no request is made) and, per model, how
    many matches were left out because that model's answer is FastChat's $ERROR$ marker."""
    if not config.judge_model.strip():
        raise EvalInputError(
            f"no judge model: give --judge_model (the model name the endpoint serves) or set "
            f"{JUDGE_MODEL_ENV}; there is no default, so results always say which judge made them"
        )
    if config.parallel < 1 or config.max_retries < 0:
        raise EvalInputError("--parallel must be >= 1 and --max_retries >= 0")
    if config.verdicts not in VERDICT_SCALES:
        raise EvalInputError(f"--verdicts={config.verdicts}: expected one of {', '.join(VERDICT_SCALES)}")
    if config.verdicts == "five" and mode_kind(config.mode) != "pairwise":
        raise EvalInputError(f"--verdicts=five is for the pairwise modes, not --mode={config.mode}")
    questions = load_questions(config.question_file)
    if config.first_n is not None:
        questions = questions[: config.first_n]
    answers = load_answer_files(list(config.answer_files))
    models = list(config.model_list) or [
        m for m in answers if config.mode == "single" or m != config.baseline_model
    ]
    if config.mode == "single" and config.baseline_model and config.baseline_model not in models:
        models.append(config.baseline_model)  # the report compares totals with it
    prompts = load_prompts(config.judge_prompts or default_prompt_file(mode_kind(config.mode)))
    references = load_references(config.reference_file) if config.reference_file else None
    involved = [m for m in [*models, config.baseline_model] if m in answers]
    check_answers_cover(questions, answers, involved, first_turn_only=config.mode == "vicuna")
    matches = build_matches(
        config.mode,
        questions,
        answers,
        prompts,
        models=models,
        baseline=config.baseline_model,
        references=references,
        reference_categories=config.reference_categories,
        verdict_levels=VERDICT_SCALES[config.verdicts],
    )
    skipped: collections.Counter[str] = collections.Counter()
    kept = []
    for m in matches:
        failed = m.failed_answers()
        skipped.update(failed)
        if not failed:
            kept.append(m)
    if skipped:
        logging.warning(
            "not judging %d matches whose answer is %s (%s); produce those answers again "
            "(eval.answers --redo_errors), then rerun this command",
            len(matches) - len(kept),
            ERROR_ANSWER,
            ", ".join(f"{model}: {n}" for model, n in sorted(skipped.items())),
        )
    return kept, skipped


def _done_keys(
    rows: list[dict[str, Any]], path: str, kind: str, *, rejudge_errors: bool = False, levels: int = 3
) -> set[tuple[Any, ...]]:
    """Keys of the judgments on file; with rejudge_errors, only those with a readable judgment."""
    keys: set[tuple[Any, ...]] = set()
    for i, row in enumerate(rows, start=1):
        try:
            found = row_kind(row)
        except EvalInputError as e:
            raise EvalInputError(f"{path}: row {i}: {e}") from None
        if found != kind:
            raise EvalInputError(
                f"{path} holds {found} judgments but this run writes {kind} ones; "
                "choose another --output_file"
            )
        if kind == "pairwise" and row_verdict_levels(row) != levels:
            raise EvalInputError(
                f"{path} holds {row_verdict_levels(row)}-level pairwise verdicts but this run asks for "
                f"{levels}-level ones (--verdicts); choose another --output_file"
            )
        if not (rejudge_errors and is_unparsed(row)):
            keys.add(row_key(row))
    if len(keys) < len(rows) and not rejudge_errors:
        logging.warning(
            "%s: %d duplicate judgments (kept; the report counts each key once)", path, len(rows) - len(keys)
        )
    return keys


def run_judge(config: JudgeConfig, *, api_key: str | None = None) -> RunSummary:
    """Judges every match not already in the output file. `api_key` None reads OPENAI_API_KEY."""
    matches, skipped = prepare(config)
    summary = RunSummary(matches=len(matches), skipped_error_answers=sum(skipped.values()))
    kind = mode_kind(config.mode)
    appender = JsonlAppender(config.output_file)
    try:
        done = _done_keys(
            appender.existing,
            config.output_file,
            kind,
            rejudge_errors=config.rejudge_errors,
            levels=VERDICT_SCALES.get(config.verdicts, 3),
        )
        on_file = {row_key(r) for r in appender.existing}
        todo = [m for m in matches if m.key(config.judge_model) not in done]
        summary.already_done = len(matches) - len(todo)
        summary.rejudged = sum(m.key(config.judge_model) in on_file for m in todo)
        logging.info(
            "%d judgments in total, %d already in %s, %d to do%s",
            len(matches),
            summary.already_done,
            config.output_file,
            len(todo),
            f" ({summary.rejudged} of them unreadable before: --rejudge_errors)" if summary.rejudged else "",
        )
        if config.dry_run:
            _show_plan(todo, config)
            return summary
        if todo:
            _run(todo, config, api_key, appender, summary)
    finally:
        appender.close()
    return summary


def _show_plan(todo: list[Match], config: JudgeConfig) -> None:
    per_match = 2 if mode_kind(config.mode) == "pairwise" else 1
    print(f"{len(todo)} judgments to do, {len(todo) * per_match} requests to {config.judge_model}")
    for prompt, n in collections.Counter(m.prompt.name for m in todo).most_common():
        print(f"  {n:5d} with prompt '{prompt}'")


def _run(
    todo: list[Match], config: JudgeConfig, api_key: str | None, appender: JsonlAppender, summary: RunSummary
) -> None:
    stop = threading.Event()
    key = resolve_api_key(api_key)
    retry = RetryPolicy(config.max_retries, config.backoff_base_s, config.backoff_max_s)
    judge = ChatJudge(
        config.judge_model,
        api_key=key,
        base_url=config.base_url,
        timeout_s=config.timeout_s,
        retry=retry,
        stop=stop,
    )
    appender.redact = judge.redact  # a judge (or proxy) echoing the key must not put it in the file
    redaction = install_redaction(key)
    logging.info(
        "judging with %s at %s, %d parallel requests", config.judge_model, judge.base_url, config.parallel
    )
    host = urllib.parse.urlsplit(judge.base_url).netloc
    sampling = Sampling(config.judge_model, config.temperature, config.max_tokens, judge_host=host)
    work: queue.SimpleQueue[Match] = queue.SimpleQueue()
    for m in todo:
        work.put(m)
    results: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

    def worker() -> None:
        while not stop.is_set():
            try:
                match = work.get_nowait()
            except queue.Empty:
                return
            try:
                row = judge_match(match, judge, sampling)
                appender.append(row)  # written and flushed before anything else can go wrong
                results.put(("ok", row))
            except JudgeRequestError as e:
                results.put(
                    ("failed", f"question {match.question.question_id} {'/'.join(match.models)}: {e}")
                )
            except Cancelled:
                results.put(("cancelled", None))
            except FatalJudgeError as e:
                stop.set()
                results.put(("fatal", e))
            except Exception as e:  # noqa: BLE001 - a bug must reach the main thread, not kill a worker silently
                stop.set()
                results.put(("fatal", e))

    threads = [
        threading.Thread(target=worker, name=f"judge-{i}", daemon=True)
        for i in range(min(config.parallel, len(todo)))
    ]
    for t in threads:
        t.start()
    fatal: BaseException | None = None
    finished, last_log = 0, time.monotonic()
    try:
        while any(t.is_alive() for t in threads) or not results.empty():
            try:
                status, payload = results.get(timeout=0.2)
            except queue.Empty:
                continue
            finished += 1
            if status == "ok":
                summary.judged += 1
                summary.unparsed += is_unparsed(payload)
            elif status == "failed":
                summary.failed += 1
                summary.errors.append(payload)
                logging.error("judgment failed, will be retried on the next run: %s", payload)
            elif status == "fatal":
                fatal = fatal or payload
            if time.monotonic() - last_log > 30 or finished == len(todo):
                last_log = time.monotonic()
                logging.info("progress: %d/%d judged (%d failed)", summary.judged, len(todo), summary.failed)
    except KeyboardInterrupt:
        summary.interrupted = True
        stop.set()
        busy = sum(t.is_alive() for t in threads)
        logging.warning(
            "interrupted: saving the %d judgments in flight (Ctrl-C again to abandon them); "
            "rerun the same command to continue",
            busy,
        )
        for t in threads:
            t.join()
        while not results.empty():
            status, payload = results.get()
            summary.judged += status == "ok"
        raise
    finally:
        summary.requests = judge.requests_sent
        remove_redaction(redaction)
    if fatal is not None:
        raise fatal


# ---------------------------------------------------------------------------------------------------- CLI
FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the CLI flags, only when run as a program: eval modules share flag names."""
    flags.DEFINE_enum(
        "mode",
        "single",
        MODES,
        "single: 1-10 grades; pairwise_baseline / pairwise_all: A-vs-B "
        "verdicts judged in both orders; vicuna: the original blog's two-score review.",
    )
    flags.DEFINE_string("question_file", None, "Questions jsonl (FastChat MT-bench or older Vicuna format).")
    flags.DEFINE_list(
        "answer_files", [], "Comma-separated answer jsonl files, one per model (FastChat format)."
    )
    flags.DEFINE_string(
        "output_file", None, "Judgments jsonl; appended to, and rows already there are skipped."
    )
    flags.DEFINE_string(
        "judge_model",
        None,
        f"Model name sent to the judge endpoint (required; or set {JUDGE_MODEL_ENV}). Recorded in every row.",
    )
    flags.DEFINE_string(
        "baseline_model",
        None,
        "Model every other model is compared with (pairwise_baseline, "
        "vicuna); its model id as in its answer file.",
    )
    flags.DEFINE_enum(
        "verdicts",
        "three",
        list(VERDICT_SCALES),
        "Pairwise verdict scale: three (A better / B better / tie) or five (Arena-Hard style: A>>B, A>B, "
        "A=B, B>A, B>>A; the report counts a strong win as 3 wins in the Bradley-Terry fit).",
    )
    flags.DEFINE_string(
        "reference_file", None, "Reference answers (answer format) for reference-guided judging."
    )
    flags.DEFINE_list(
        "reference_categories",
        list(DEFAULT_REFERENCE_CATEGORIES),
        "Question categories judged against --reference_file.",
    )
    flags.DEFINE_string(
        "judge_prompts", None, "Judge-prompt jsonl in FastChat's format to use instead of ours."
    )
    flags.DEFINE_list("model_list", [], "Only judge these models (default: every model with an answer file).")
    flags.DEFINE_integer("first_n", None, "Only the first N questions (a cheap trial run).")
    flags.DEFINE_integer("parallel", 1, "Concurrent requests to the judge.")
    flags.DEFINE_integer("max_retries", 5, "Retries per request on 429/5xx/timeouts/malformed replies.")
    flags.DEFINE_float("backoff_base", 2.0, "First retry waits about this many seconds, doubling each time.")
    flags.DEFINE_float(
        "backoff_max", 60.0, "Longest wait between retries, unless the server's Retry-After says more."
    )
    flags.DEFINE_float(
        "timeout",
        120.0,
        "Seconds a judge request may take in all (connect, send, wait, receive) before it is abandoned and "
        "retried; a server that trickles its reply cannot hold a worker longer.",
    )
    flags.DEFINE_float("temperature", None, "Judge sampling temperature (default 0; 0.2 in vicuna mode).")
    flags.DEFINE_integer("max_tokens", None, "Judge reply length limit (default 2048; 1024 in vicuna mode).")
    flags.DEFINE_string(
        "base_url",
        None,
        "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default: OPENAI_BASE_URL, else OpenAI).",
    )
    flags.DEFINE_bool(
        "rejudge_errors",
        False,
        "Judge again the items on file only as unreadable judgments (score -1, verdict 'error'); the new "
        "row is appended and the report prefers it. Failed requests are never written, so a plain rerun "
        "already retries those.",
    )
    flags.DEFINE_bool("dry_run", False, "Check the inputs and print what would be judged; send nothing.")


def config_from_flags() -> JudgeConfig:
    if not FLAGS.question_file or not FLAGS.answer_files or not FLAGS.output_file:
        raise EvalInputError("--question_file, --answer_files and --output_file are required")
    return JudgeConfig(
        mode=FLAGS.mode,
        question_file=FLAGS.question_file,
        answer_files=tuple(FLAGS.answer_files),
        output_file=FLAGS.output_file,
        judge_model=FLAGS.judge_model or os.environ.get(JUDGE_MODEL_ENV, ""),
        baseline_model=FLAGS.baseline_model,
        reference_file=FLAGS.reference_file,
        reference_categories=tuple(FLAGS.reference_categories),
        judge_prompts=FLAGS.judge_prompts,
        model_list=tuple(FLAGS.model_list),
        first_n=FLAGS.first_n,
        parallel=FLAGS.parallel,
        max_retries=FLAGS.max_retries,
        backoff_base_s=FLAGS.backoff_base,
        backoff_max_s=FLAGS.backoff_max,
        timeout_s=FLAGS.timeout,
        temperature=FLAGS.temperature,
        max_tokens=FLAGS.max_tokens,
        base_url=FLAGS.base_url,
        rejudge_errors=FLAGS.rejudge_errors,
        verdicts=FLAGS.verdicts,
        dry_run=FLAGS.dry_run,
    )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        summary = run_judge(config_from_flags())
    except FatalJudgeError as e:  # a rejected key or unknown model: the user's to fix
        raise UserError(str(e)) from None
    logging.info(
        "done: %d judged now, %d already done, %d unreadable judgments, %d requests, %d not judged "
        "because an answer is %s",
        summary.judged,
        summary.already_done,
        summary.unparsed,
        summary.requests,
        summary.skipped_error_answers,
        ERROR_ANSWER,
    )
    if summary.failed:
        raise UserError(
            f"{summary.failed} of {summary.matches} judgments failed after retries (see the log); "
            "run the same command again to retry only those"
        )


if __name__ == "__main__":
    from vicuna_jax.cli import run

    run(main, define_flags)
