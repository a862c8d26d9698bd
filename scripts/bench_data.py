"""Data pipeline benchmark: prepare throughput, packing efficiency, loader throughput. Prints one table.

Synthetic ShareGPT-like data (deterministic; `vicuna_jax.bench.sharegpt`): exchanges per conversation
Geometric(p=0.35) >= 1, capped at 16 (mean ~2.8); user messages LogNormal(median 40 words, sigma 1.0);
assistant replies LogNormal(median 180 words, sigma 0.8), a third of them with a fenced code block;
`--html_fraction` of replies stored as ShareGPT HTML (the cleaner converts them). About 1,300 LLaMA tokens
per conversation on average, with a long tail that the splitter cuts at --max_length. Training-step
throughput on packed vs padded batches: `python scripts/bench_train.py --sections=packing`.

    python scripts/bench_data.py [--num_conversations=3000] [--tokenizer=PATH] [--seq_len=2048] \
        [--sections=throughput,memory] [--memory_sizes_mb=50,200]

The memory section writes synthetic ShareGPT files of each size (JSON array and JSONL; a pool of conversations
repeated with unique ids and first questions, so nothing is a duplicate) and cleans each in a fresh process,
printing its peak RSS: streaming cleaning should need the same memory for 50 MB as for 200 MB.
`--code_root=DIR` measures another checkout (e.g. an older commit exported with `git archive`) for comparison.

Speed and memory are measured here, on whatever machine runs it; they are never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vicuna_jax.bench.sharegpt import synthetic_sharegpt  # noqa: E402  (the generator lives in the package)
from vicuna_jax.data.clean import Cleaner  # noqa: E402
from vicuna_jax.data.formats import RawRecord  # noqa: E402
from vicuna_jax.data.loader import make_train_iterator  # noqa: E402
from vicuna_jax.data.pack import plan_efficiency, plan_rows, slots_needed  # noqa: E402
from vicuna_jax.data.prepare import prepare_dataset  # noqa: E402
from vicuna_jax.data.split import split_and_encode  # noqa: E402
from vicuna_jax.data.tokenizer import bundled_tokenizer_path, load_tokenizer  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


_MEASURE_CLEAN = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from vicuna_jax.data.clean import clean_file

def status_kb(key):  # /proc, not getrusage: Linux keeps ru_maxrss across exec (the parent's size at fork)
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith(key + ":"))

base_kb = status_kb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark: the peak measured is the cleaning's
t0 = time.perf_counter()
report = clean_file(sys.argv[2], sys.argv[3], rejects_path=sys.argv[4])
print(json.dumps({"seconds": time.perf_counter() - t0, "base_kb": base_kb, "total": report.total,
                  "kept": report.kept, "peak_kb": status_kb("VmHWM")}))
"""


def write_synthetic_file(path: str, megabytes: float, layout: str, html_fraction: float) -> int:
    """A ShareGPT file of about `megabytes` MB (a pool of 2,000 conversations repeated, each copy with its
    own id and first question); returns the number of records."""
    pool = synthetic_sharegpt(2000, html_fraction=html_fraction)
    target, size, n = megabytes * 1e6, 0, 0
    with open(path, "w", encoding="utf-8") as f:
        f.write("[\n" if layout == "array" else "")
        while size < target:
            rec = pool[n % len(pool)]
            first = dict(rec["conversations"][0], value=f"{rec['conversations'][0]['value']} (#{n})")
            line = json.dumps({"id": f"syn{n}", "conversations": [first] + rec["conversations"][1:]})
            sep = ",\n" if n and layout == "array" else ""
            f.write(sep + line + ("\n" if layout == "jsonl" else ""))
            size += len(line) + 2
            n += 1
        f.write("\n]\n" if layout == "array" else "")
    return n


def memory_table(sizes_mb: list[float], html_fraction: float, code_root: str) -> None:
    """Peak RSS of `clean_file` (a fresh process per file, Linux /proc) for each size and layout."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout in ("array", "jsonl"):
            for mb in sizes_mb:
                src = os.path.join(tmp, f"raw_{mb:g}.{'json' if layout == 'array' else 'jsonl'}")
                n = write_synthetic_file(src, mb, layout, html_fraction)
                out = subprocess.run(
                    [sys.executable, "-c", _MEASURE_CLEAN, code_root, src, os.path.join(tmp, "clean.jsonl"),
                     os.path.join(tmp, "rejects.jsonl")], capture_output=True, text=True, check=True,
                )  # fmt: skip
                m = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append((layout, os.path.getsize(src) / 1e6, n, m))
                os.remove(src)
    print(f"\npeak RSS of cleaning (python -m vicuna_jax.data.clean; a fresh process per file; code from "
          f"{code_root}; HTML {round(100 * html_fraction)}%)")  # fmt: skip
    print(f"{'layout':6}  {'input MB':>8}  {'records':>8}  {'kept':>8}  {'RSS after imports MB':>20}  "
          f"{'peak RSS MB':>11}  {'seconds':>7}")  # fmt: skip
    for layout, mb, n, m in rows:
        print(f"{layout:6}  {mb:8.1f}  {n:8d}  {m['kept']:8d}  {m['base_kb'] / 1024:20.1f}  "
              f"{m['peak_kb'] / 1024:11.1f}  {m['seconds']:7.1f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num_conversations", type=int, default=3000)
    ap.add_argument(
        "--tokenizer", default=os.environ.get("VICUNA_JAX_LLAMA_TOKENIZER") or bundled_tokenizer_path()
    )
    ap.add_argument("--seq_len", type=int, default=2048)
    ap.add_argument("--max_length", type=int, default=2048)
    ap.add_argument("--html_fraction", type=float, default=0.1)
    ap.add_argument("--loader_batches", type=int, default=40)
    ap.add_argument("--sections", default="throughput,memory", help="comma-separated: throughput, memory")
    ap.add_argument("--memory_sizes_mb", default="50,200", help="input sizes for the memory section")
    ap.add_argument("--code_root", default=ROOT, help="checkout whose vicuna_jax the memory section runs")
    args = ap.parse_args()
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    print(f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M %Z')}")  # fmt: skip
    if "throughput" in sections:
        throughput_table(args)
    if "memory" in sections:
        sizes = [float(x) for x in args.memory_sizes_mb.split(",") if x.strip()]
        memory_table(sizes, args.html_fraction, os.path.abspath(args.code_root))


def throughput_table(args: argparse.Namespace) -> None:
    tok = load_tokenizer(args.tokenizer)
    n = args.num_conversations
    records = synthetic_sharegpt(n, html_fraction=args.html_fraction)
    rows: list[tuple[str, str, str]] = []

    raws = [RawRecord("synthetic", k + 1, k, r) for k, r in enumerate(records)]
    cleaner = Cleaner()
    cleaned, t_clean = timed(lambda: list(cleaner(raws)))
    plain = [RawRecord("s", k + 1, k, r) for k, r in enumerate(synthetic_sharegpt(n, html_fraction=0.0))]
    cleaned_plain, t_clean_plain = timed(lambda: list(Cleaner()(plain)))
    texts = [t["value"] for r in cleaned for t in r["conversations"]]
    _, t_sp = timed(lambda: [tok.sp.EncodeAsIds(x) for x in texts])
    stats: Counter = Counter()
    encoded, t_enc = timed(
        lambda: [e for r in cleaned for e in split_and_encode(r, tok, args.max_length, stats=stats)]
    )
    lengths = np.array([len(ids) for _, ids, _ in encoded])
    targets = sum(int(m.sum()) for _, _, m in encoded)
    rows.append(
        (
            f"clean (HTML {round(100 * args.html_fraction)}%)",
            f"{n / t_clean:,.0f} conv/s",
            f"{len(cleaned)} kept of {n}",
        )
    )
    rows.append(("clean (no HTML)", f"{n / t_clean_plain:,.0f} conv/s", f"{len(cleaned_plain)} kept"))
    rows.append(
        (
            "split + encode",
            f"{len(cleaned) / t_enc:,.0f} conv/s",
            f"{lengths.sum() / t_enc / 1e6:.2f}M tok/s, {len(encoded)} pieces, "
            f"{stats['split_records']} split",
        )
    )
    rows.append(
        (
            "sentencepiece alone, same text",
            f"{len(cleaned) / t_sp:,.0f} conv/s",
            "the encode bound: plain EncodeAsIds of every message",
        )
    )
    rows.append(("clean + split + encode", f"{n / (t_clean + t_enc):,.0f} conv/s", "one core, in memory"))

    slots = slots_needed(lengths, args.seq_len)
    order = np.random.default_rng(0).permutation(len(slots))
    for name, packing, window in (
        ("pad to seq_len (FastChat)", False, 1),
        ("packed BFD, window 2048", True, 2048),
        ("packed BFD, window 256", True, 256),
    ):
        plan, t_plan = timed(lambda p=packing, w=window: plan_rows(order, slots, args.seq_len, p, w))
        eff = plan_efficiency(plan, slots, args.seq_len)
        tfrac = targets / (len(plan) * args.seq_len)
        rows.append(
            (
                f"{name} @ {args.seq_len}",
                f"{eff:.1%} non-pad",
                f"{tfrac:.1%} targets, {len(plan)} rows, plan {t_plan * 1e3:.0f} ms",
            )
        )

    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.json")
        with open(raw, "w") as f:
            json.dump(records, f)
        _, t_prep = timed(
            lambda: prepare_dataset(
                raw,
                os.path.join(tmp, "ds"),
                tokenizer=tok,
                max_length=args.max_length,
                validation_fraction=0.0,
                verbose=False,
            )
        )
        rows.append(("prepare CLI path (+ tfds write)", f"{n / t_prep:,.0f} conv/s", f"{t_prep:.1f} s total"))
        for packing in (True, False):
            it = make_train_iterator(
                os.path.join(tmp, "ds"),
                seq_len=args.seq_len,
                global_batch_size=8,
                seed=0,
                packing=packing,
                process_index=0,
                process_count=1,
            )
            next(it)
            t0 = time.perf_counter()
            slots_read = non_pad = 0
            for _ in range(args.loader_batches):
                b = next(it)
                slots_read += b["segment_ids"].size
                non_pad += int((b["segment_ids"] > 0).sum())
            dt = time.perf_counter() - t0
            rows.append(
                (
                    f"loader ({'packed' if packing else 'pad-only'}, batch 8x{args.seq_len})",
                    f"{slots_read / dt / 1e3:,.0f}K tok/s",
                    f"{non_pad / dt / 1e3:,.0f}K non-pad tok/s",
                )
            )

    print(
        f"tokenizer {tok.model_path} (vocab {tok.vocab_size}); {n} synthetic conversations, "
        f"{lengths.mean():.0f} tokens/piece mean, p50 {np.median(lengths):.0f}, "
        f"p99 {np.percentile(lengths, 99):.0f}"
    )
    w = max(len(r[0]) for r in rows)
    print(f"{'stage':{w}}  {'rate':>18}  notes")
    for name, rate, note in rows:
        print(f"{name:{w}}  {rate:>18}  {note}")


if __name__ == "__main__":
    main()
