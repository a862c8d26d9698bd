"""Data preparation throughput, one process vs several: sentencepiece (today's path) next to tokenizer.json.

    python scripts/bench_prepare.py [--num_conversations=3000] [--workers=1,2] [--max_length=2048] \
        [--llama2_tokenizer=/path/to/llama2/tokenizer.model]

Sides (each on the same synthetic ShareGPT-like conversations, `vicuna_jax.bench.sharegpt`, 10% HTML):
- `sentencepiece`: the LLaMA-2 tokenizer.model (or the bundled 4K demo one) with vicuna_v1.1;
- `tokenizer.json (LLaMA-2)`: the same vocabulary converted by transformers to tokenizer.json (Rust);
- `tokenizer.json (Llama-3 style) + llama-3`: a byte-level BPE with Llama-3's pre-tokenizer trained here
  (32K merges; the real 128K one is not downloadable here) and the built-in Llama-3 Jinja template, whose
  masks come from rendering + offsets.
For each, `prepare` end to end (clean, split, encode, tfds write) and the encode stage alone (split + encode
of the cleaned records: the part the tokenizer and template decide), with 1 and N worker processes (workers
start with "spawn"; their start-up is included). The Rust tokenizer runs on one thread (RAYON_NUM_THREADS=1),
so one worker is one core. CPU seconds of the main process (reading, de-duplication, the tfds write: the
serial part) and of the workers are printed too, so a many-core figure can be estimated:
T(N cores) ~ main CPU + worker CPU / N, per conversation. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before the Rust tokenizer starts its thread pool
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>"]


def llama3_style_tokenizer(directory: str, texts: list[str], vocab_size: int = 32000) -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=LLAMA3_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    bos = LLAMA3_SPECIALS[0]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 0)])
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos,
                   "eos_token": "<|eot_id|>"}, f)
    return directory


def llama2_tokenizer_json(model: str, directory: str) -> str | None:
    try:
        import transformers
    except ImportError:
        return None
    slow = os.path.join(directory, "slow")
    os.makedirs(slow)
    shutil.copyfile(model, os.path.join(slow, "tokenizer.model"))
    with open(os.path.join(slow, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "legacy": True,
                   "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, f)
    out = os.path.join(directory, "fast")
    transformers.AutoTokenizer.from_pretrained(slow).save_pretrained(out)
    for extra in ("tokenizer.model",):
        if os.path.exists(os.path.join(out, extra)):
            os.remove(os.path.join(out, extra))
    return out


def encode_stage(records: list[dict], tokenizer_path: str, template: str, max_length: int,
                 workers: int) -> tuple[float, int, int]:
    """(seconds, pieces, tokens) of split + encode over cleaned records."""
    from vicuna_jax.data.tokenizer import load_tokenizer
    from vicuna_jax.data.workers import chunked, encode_chunk, ordered_map

    tok = load_tokenizer(tokenizer_path)
    t0 = time.perf_counter()
    pieces = tokens = 0
    for results, _ in ordered_map(encode_chunk, chunked(records, 32), workers,
                                  encode_options=(tok, max_length, template, "truncate")):
        for result in results:
            if isinstance(result, Exception):
                continue
            pieces += len(result)
            tokens += sum(len(ids) for _, _, ids, _ in result)
    return time.perf_counter() - t0, pieces, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num_conversations", type=int, default=3000)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--max_length", type=int, default=2048)
    ap.add_argument("--llama2_tokenizer", default=os.environ.get("VICUNA_JAX_LLAMA_TOKENIZER", ""))
    args = ap.parse_args()
    from vicuna_jax.bench.sharegpt import synthetic_sharegpt
    from vicuna_jax.data.clean import Cleaner
    from vicuna_jax.data.formats import RawRecord
    from vicuna_jax.data.prepare import prepare_dataset
    from vicuna_jax.data.tokenizer import bundled_tokenizer_path

    workers = [int(w) for w in args.workers.split(",")]
    tmp = tempfile.mkdtemp(prefix="bench_prepare_")
    records = synthetic_sharegpt(args.num_conversations, html_fraction=0.1)
    raw_path = os.path.join(tmp, "raw.json")
    with open(raw_path, "w") as f:
        json.dump(records, f)
    cleaned = list(Cleaner()(RawRecord("bench", k + 1, k, r) for k, r in enumerate(records)))
    texts = [t["value"] for r in cleaned for t in r["conversations"]]
    sp = args.llama2_tokenizer if os.path.isfile(args.llama2_tokenizer) else bundled_tokenizer_path()
    sides = [(f"sentencepiece ({'LLaMA-2' if sp != bundled_tokenizer_path() else 'bundled 4K'})", sp,
              "vicuna_v1.1")]
    converted = None
    if sp != bundled_tokenizer_path():
        converted = llama2_tokenizer_json(sp, os.path.join(tmp, "llama2"))
    if converted:
        sides.append(("tokenizer.json (LLaMA-2)", converted, "vicuna_v1.1"))
    sides.append(("tokenizer.json (Llama-3 style, 32K) + llama-3",
                  llama3_style_tokenizer(os.path.join(tmp, "llama3"), texts), "llama-3"))

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.node()}: {cores} cores usable, load {load:.1f}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; {args.num_conversations} synthetic conversations "
          f"({len(cleaned)} after cleaning), max_length {args.max_length}")
    print("| side | workers | prepare (s) | prepare conv/s | main / worker CPU (s) | encode (s) "
          "| encode conv/s | encode tokens/s | est. 70K on 32 cores (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, path, template in sides:
        for n in workers:
            out = os.path.join(tmp, f"out_{len(name)}_{n}")
            main0, kids0 = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
            t0 = time.perf_counter()
            prepare_dataset(raw_path, out, tokenizer=path, template=template, max_length=args.max_length,
                            num_workers=n, verbose=False, force=True)
            prep = time.perf_counter() - t0
            main1, kids1 = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
            main_cpu = main1.ru_utime + main1.ru_stime - main0.ru_utime - main0.ru_stime
            kids_cpu = kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime
            estimate = "" if n == 1 else f"{70_000 / args.num_conversations * (main_cpu + kids_cpu / 32):.0f}"
            seconds, _, tokens = encode_stage(cleaned, path, template, args.max_length, n)
            print(f"| {name} | {n} | {prep:.1f} | {args.num_conversations / prep:,.0f} | "
                  f"{main_cpu:.1f} / {kids_cpu:.1f} | {seconds:.2f} | {len(cleaned) / seconds:,.0f} | "
                  f"{tokens / seconds / 1e6:.2f}M | {estimate} |", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import contextlib

    with contextlib.redirect_stderr(open(os.devnull, "w")):  # tfds progress bars
        main()
