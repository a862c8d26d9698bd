"""Raw ShareGPT -> cleaned -> split -> tokenized tfds dataset, in one command (or one call), cached.

    python -m vicuna_jax.data.prepare --input=raw.json --output_dir=DIR --tokenizer=tokenizer.model|HF_DIR \
        [--max_length=2048] [--template=auto|vicuna_v1.1|hf|llama-3|chatml|mistral] \
        [--validation_fraction=0.02] \
        [--num_workers=0] [clean flags]

The held-out split is chosen per original conversation (by a seeded hash of its id) before long conversations
are split, so pieces of one conversation never end up on both sides. `DIR/meta.json` records a key over the
input bytes, the tokenizer fingerprint, the chat template's sha256 and every option; a later call with the
same key reuses the dataset. `meta["chat_format"]` is the chat format record (`data.chat_format`: template,
tokenizer, end-of-turn ids, max_length) that training checks the run against.
`meta["splits"][split]["examples"]` is the number of training examples (pieces) in each split written, and
`["conversations"]` the number of cleaned conversations they came from. Input with no usable conversation, or
whose every conversation would be held out, is a UserError naming the file and the reject counts.

A conversation a Jinja chat template cannot be aligned on (see `chat_encode`) is skipped and counted by reason
in `meta["template_rejects"]` and `DIR/template_rejects.jsonl`; never trained on unmasked. Cleaning and
encoding run in `num_workers` processes (0 = every core for inputs over 4 MB; see `workers.py`); the result
does not depend on the number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter

from vicuna_jax.cli import ArgumentParser, UserError, run_argparse
from vicuna_jax.data import chat_format
from vicuna_jax.data.chat_encode import AlignmentError
from vicuna_jax.data.chat_format import ChatFormat
from vicuna_jax.data.clean import CleanConfig, Cleaner, add_clean_flags, config_from_flags
from vicuna_jax.data.formats import (
    check_input_file,
    check_output_dir,
    open_jsonl,
    os_error_message,
    read_records,
)
from vicuna_jax.data.split import add_encoding_flags
from vicuna_jax.data.store import BUILDER_NAME, META_FILE, write_dataset
from vicuna_jax.data.tokenizer import Tokenizer
from vicuna_jax.data.workers import WorkerPool, chunked, encode_chunk, resolve_workers
from vicuna_jax.fileio import (
    LockHeldError,
    atomic_write_json,
    hold_lock,
    release_lock,
    replace_dir,
    resolve_output_dir,
)

# 2: BOMs, list-of-parts content, size/time guards, lone surrogates removed; 3: HF tokenizers, Jinja
# templates; 4: the chat format record in meta.json (and HF tokenizer fingerprints without the chat template)
PIPELINE_VERSION = 4
TRAIN, VALIDATION = "train", "validation"
TEMPLATE_REJECTS = "template_rejects.jsonl"


def _key(options: dict) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:20]


def _version3_options(options: dict, fmt: ChatFormat) -> dict:
    """The options pipeline version 3 keyed the same inputs by (the template by name; a tokenizer.json
    tokenizer's fingerprint covering its chat template). Version 4 encodes identically."""
    legacy = {k: v for k, v in options.items() if k != "template_sha256"}
    fingerprint = getattr(fmt.tokenizer, "fingerprint_with_template", fmt.tokenizer.fingerprint)
    return {**legacy, "pipeline_version": 3, "template": fmt.template, "tokenizer_fingerprint": fingerprint}


def bundled_sample_path() -> str:
    """The raw ShareGPT-format sample shipped with the package (scripts/make_sample_data.py)."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(package_dir, "assets", "sharegpt_sample.json")


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unit_hash(seed: int, rec_id: str) -> float:
    digest = hashlib.sha256(f"{seed}:{rec_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def prepare_dataset(
    input_path: str,
    output_dir: str,
    *,
    tokenizer: str | Tokenizer,
    max_length: int = 2048,
    template: str | ChatFormat = chat_format.AUTO,
    validation_fraction: float = 0.02,
    seed: int = 0,
    clean_config: CleanConfig | None = None,
    long_exchange: str = "truncate",
    force: bool = False,
    verbose: bool = True,
    num_workers: int = 0,
) -> str:
    """Prepare (or reuse) a dataset; returns `output_dir`, ready for `loader.make_train_iterator`.

    `template`: a name (`auto`: the one rule of `data.chat_format`) or a resolved ChatFormat (whose tokenizer
    is then used). Raises UserError for an unreadable input, tokenizer or template, an unwritable
    `output_dir`, or input in which no conversation survives cleaning."""
    check_input_file(input_path)
    if isinstance(template, ChatFormat):
        fmt = template
    else:
        fmt = chat_format.resolve(tokenizer, template)
    fmt = fmt.with_max_length(max_length)
    tok = fmt.tokenizer
    if not 0.0 <= validation_fraction < 1.0:
        raise UserError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    clean_config = clean_config or CleanConfig()
    options = {
        "pipeline_version": PIPELINE_VERSION,
        "input_sha256": _file_digest(input_path),
        "tokenizer_fingerprint": tok.fingerprint,
        "max_length": max_length,
        "template_sha256": fmt.template_sha256,
        "validation_fraction": validation_fraction,
        "seed": seed,
        "long_exchange": long_exchange,
        "clean": dataclasses.asdict(clean_config),
    }
    key = _key(options)
    given, output_dir = output_dir, resolve_output_dir(output_dir)
    try:
        os.makedirs(os.path.dirname(output_dir), exist_ok=True)
        lock = hold_lock(lock_path(output_dir), "prepare lock")
    except LockHeldError as e:
        raise UserError(f"--output_dir: {output_dir} is being prepared by another process ({e.holder}); wait "
                        "for it to finish, or choose another output directory") from None
    except OSError as e:
        raise UserError(f"cannot write to the output directory {output_dir}: {e.strerror or e}") from None
    try:
        _prepare_locked(input_path, output_dir, key, options, fmt, validation_fraction, seed, clean_config,
                        force, verbose, num_workers)
        return given
    finally:
        release_lock(lock)


def lock_path(output_dir: str) -> str:
    """The lock a prepare holds while it checks, builds and publishes `output_dir`: a hidden file beside
    it (inside it, the lock would be replaced along with the directory)."""
    output_dir = resolve_output_dir(output_dir)
    return os.path.join(os.path.dirname(output_dir), f".{os.path.basename(output_dir)}.prepare-lock")


def _prepare_locked(input_path: str, output_dir: str, key: str, options: dict, fmt: ChatFormat,
                    validation_fraction: float, seed: int, clean_config: CleanConfig, force: bool,
                    verbose: bool, num_workers: int) -> str:
    """`prepare_dataset` holding the output's lock: reuse, or build in `<output_dir>.tmp-writing` and
    publish it by rename (meta.json, the completion record, is written last)."""
    tok = fmt.tokenizer
    meta_path = os.path.join(output_dir, META_FILE)
    if not force and os.path.isfile(meta_path):
        with open(meta_path) as f:
            stored = json.load(f)
        if key in (stored.get("key"), stored.get("current_key")):
            if verbose:
                print(f"prepare: reusing {output_dir} (inputs unchanged, key {key})", file=sys.stderr)
            return output_dir
        if "chat_format" not in stored and stored.get("key") == _key(_version3_options(options, fmt)):
            # Prepared by the previous version with these very inputs: the examples are the ones this version
            # would write, so record the format beside them rather than prepare again. The stored key stays
            # (a run's loader position is tied to it, so an old workdir resumes).
            stored.update(chat_format=fmt.record(), current_key=key)
            atomic_write_json(meta_path, stored, indent=1)
            if verbose:
                print(f"prepare: reusing {output_dir} (prepared by an earlier version; chat format "
                      f"{fmt.describe()} recorded)", file=sys.stderr)
            return output_dir
    _check_only_ours(output_dir)
    build = output_dir + ".tmp-writing"
    shutil.rmtree(build, ignore_errors=True)  # left by a prepare that was killed
    check_output_dir(build)
    t0 = time.time()
    workers = resolve_workers(num_workers, input_path)

    meta = {"key": key, "options": options, "input": os.path.abspath(input_path), "tokenizer": tok.model_path,
            "builder": BUILDER_NAME, "num_workers": workers, "chat_format": fmt.record()}
    encode_options = (tok, options["max_length"], fmt.spec, options["long_exchange"])
    try:
        with WorkerPool(workers, clean_config, encode_options) as pool:  # one set of processes: every stage
            cleaner, template_rejects = _clean_and_write(input_path, build, meta, fmt.template,
                                                         validation_fraction, seed, clean_config, pool,
                                                         shown_dir=output_dir)
        meta["seconds"] = round(time.time() - t0, 2)
        atomic_write_json(os.path.join(build, META_FILE), meta, indent=1)  # last: the completion record
    except UserError:
        replace_dir(build, output_dir)  # no meta.json: the reject lists the error points at, no dataset
        raise
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)  # the previous dataset, if any, stays as it was
        raise
    replace_dir(build, output_dir)
    if verbose:
        print(f"prepare: chat format {fmt.describe()}", file=sys.stderr)
        print(cleaner.report.table(), file=sys.stderr)
        for reason, n in template_rejects.most_common():
            print(f"prepare: rejected by the chat template: {reason}: {n}", file=sys.stderr)
        for s, c in meta["splits"].items():
            print(
                f"prepare: {s}: {c['examples']} examples, {c['tokens']} tokens, {c['target_tokens']} targets",
                file=sys.stderr,
            )
    return output_dir


def _clean_and_write(input_path: str, output_dir: str, meta: dict, template: str, validation_fraction: float,
                     seed: int, clean_config: CleanConfig, pool: WorkerPool, shown_dir: str
                     ) -> tuple[Cleaner, Counter]:
    """Cleans into output_dir/cleaned.jsonl, splits, encodes and writes the tfds splits (the stages run in
    `pool`); records the counts in `meta`. Returns the cleaner (its report) and the template rejects. Errors
    name the files as they will be published, in `shown_dir`."""
    cleaner = Cleaner(clean_config)
    cleaned_path = os.path.join(output_dir, "cleaned.jsonl")
    rejects_path = os.path.join(output_dir, "rejects.jsonl")
    ids: list[str] = []
    with open_jsonl(rejects_path) as rejects, open_jsonl(cleaned_path) as cleaned:
        for rec in cleaner(read_records(input_path), rejects, pool=pool):
            cleaned.append(rec)
            ids.append(rec["id"])
    if not ids:
        raise cleaner.report.nothing_kept_error(input_path, os.path.join(shown_dir, "rejects.jsonl"))
    held_out = {i for i in ids if _unit_hash(seed, i) < validation_fraction}
    if validation_fraction > 0 and not held_out and len(ids) > 1:
        held_out = {min(ids, key=lambda i: _unit_hash(seed, i))}

    split_stats: Counter = Counter()
    split_counts: dict[str, Counter] = {TRAIN: Counter(), VALIDATION: Counter()}
    template_rejects: Counter = Counter()

    def examples(split: str):
        def records():  # JSON lines, parsed in the workers; line k is the record ids[k]
            with open(cleaned_path, encoding="utf-8") as f:
                for line, rec_id in zip(f, ids, strict=True):
                    if (rec_id in held_out) == (split == VALIDATION):
                        yield line

        def gen():
            c = split_counts[split]
            for chunk_results, stats in pool.map(encode_chunk, chunked(records(), 32)):
                if split == TRAIN:
                    split_stats.update(stats)
                for result in chunk_results:
                    c["conversations"] += 1
                    if isinstance(result, AlignmentError):
                        template_rejects[result.reason] += 1
                        rejected.append({"split": split, "reason": result.reason, "detail": result.detail})
                        continue
                    for piece_id, text, ids_, mask in result:
                        c["examples"] += 1
                        c["tokens"] += len(ids_)
                        c["target_tokens"] += int(mask.sum())
                        yield piece_id, text, ids_, mask

        return gen

    wanted = [TRAIN] + ([VALIDATION] if held_out else [])
    if len(held_out) == len(ids):
        raise UserError(f"{input_path}: all {len(ids)} usable conversations would go to the validation "
                        f"split; lower validation_fraction (now {validation_fraction})")
    try:
        with open_jsonl(os.path.join(output_dir, TEMPLATE_REJECTS)) as rejected:
            write_dataset(output_dir, {s: examples(s) for s in wanted}, metadata={"key": meta["key"]})
    except Exception:
        empty = [s for s in wanted if not split_counts[s]["examples"]]
        if not (template_rejects and empty):
            raise
        counts = ", ".join(f"{r} {n}" for r, n in template_rejects.most_common())
        raise UserError(f"{input_path}: the chat template {template!r} could not be aligned on any "
                        f"{empty[0]} conversation ({counts}); see the reasons in "
                        f"{os.path.join(shown_dir, TEMPLATE_REJECTS)} and run `python -m "
                        "vicuna_jax.data.check_template` on the tokenizer") from None
    meta["splits"] = {s: dict(split_counts[s]) for s in wanted}
    meta["template_rejects"] = dict(template_rejects)
    meta["clean_report"] = cleaner.report.as_dict()
    meta["split_stats"] = dict(split_stats)
    return cleaner, template_rejects


# What a prepare writes in its output directory (tfds adds `downloads/`).
_OURS = (META_FILE, "cleaned.jsonl", "rejects.jsonl", TEMPLATE_REJECTS, f"lengths_{TRAIN}.npy",
         f"lengths_{VALIDATION}.npy", BUILDER_NAME, "downloads")


def _check_only_ours(output_dir: str) -> None:
    """The output directory is replaced whole when the new dataset is published: refuse one that holds
    anything else (a mistyped --output_dir=. must not take a project with it)."""
    if not os.path.isdir(output_dir):
        if os.path.lexists(output_dir):
            raise UserError(f"--output_dir: {output_dir} exists and is not a directory")
        return
    other = sorted(set(os.listdir(output_dir)) - set(_OURS))
    if other:
        shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
        raise UserError(f"--output_dir: {output_dir} holds files prepare did not write ({shown}); a prepared "
                        "dataset replaces its directory whole: choose a new or empty directory")


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, help="raw ShareGPT JSON/JSONL (or OpenAI messages JSONL)")
    ap.add_argument("--output_dir", required=True)
    add_encoding_flags(ap)
    ap.add_argument("--validation_fraction", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even if the cached dataset matches")
    ap.add_argument("--num_workers", type=int, default=0,
                    help="processes for cleaning and encoding (0 = every core for inputs over 4 MB, else 1)")
    add_clean_flags(ap)
    args = ap.parse_args(argv)
    try:
        prepare_dataset(
            args.input, args.output_dir, tokenizer=args.tokenizer, max_length=args.max_length,
            template=args.template, validation_fraction=args.validation_fraction, seed=args.seed,
            clean_config=config_from_flags(args), long_exchange=args.long_exchange, force=args.force,
            num_workers=args.num_workers,
        )  # fmt: skip
    except OSError as e:
        raise UserError(os_error_message(e)) from None
    return 0


if __name__ == "__main__":
    run_argparse(main)
