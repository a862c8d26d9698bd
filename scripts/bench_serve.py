"""Serving benchmark: generated tokens/s at 1, 4 and 16 concurrent clients vs one-at-a-time generation.

A small random LLaMA (bundled 4K tokenizer) is served in this process (uvicorn on 127.0.0.1, a free port)
and driven by the official `openai` client over HTTP with streaming, so times include the whole path:
HTTP, JSON, scheduling, detokenizing. Every request is greedy with `ignore_eos`, so each one generates
exactly --max_tokens tokens and every setup does the same work. Baselines, same model and prompts:
  - `vicuna_jax.generate.Generator`, one request at a time (no server): what serving without batching is;
  - the server with --max_batch=1 at the highest concurrency (a server that serialises requests).

    python scripts/bench_serve.py [--clients=1,4,16] [--requests=32] [--max_tokens=128] [--json=out.json]

Prints a markdown table and the JSON of the run. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from vicuna_jax.data import bundled_tokenizer_path, chat_format, encode_prompt, load_tokenizer  # noqa: E402
from vicuna_jax.decoding import SamplingParams, next_pow2  # noqa: E402
from vicuna_jax.generate import Generator  # noqa: E402
from vicuna_jax.model.config import LlamaConfig  # noqa: E402
from vicuna_jax.model.llama import build_model  # noqa: E402
from vicuna_jax.serve import Engine, ServeConfig, ServerThread, build_app  # noqa: E402

MODEL_NAME = "bench"
TOPICS = ["llamas", "the ocean", "compilers", "bread", "volcanoes", "chess", "rivers", "jazz", "bees",
          "glaciers", "printing", "trains", "owls", "tides", "clocks", "maps"]


def prompts(n: int) -> list[list[dict[str, str]]]:
    ask = "Question {}: tell me something surprising about {}."
    return [[{"role": "user", "content": ask.format(i, TOPICS[i % len(TOPICS)])}] for i in range(n)]


def run_clients(base_url: str, conversations: list[list[dict[str, str]]], clients: int,
                max_tokens: int) -> dict[str, Any]:
    """`clients` threads, each sending its next request when the last one finished (closed loop)."""
    import openai

    todo = list(range(len(conversations)))
    lock = threading.Lock()
    latencies, ttfts, tokens = [], [], []
    errors: list[BaseException] = []

    def client_loop() -> None:
        client = openai.OpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600)
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            start = time.perf_counter()
            first, usage = None, None
            try:
                stream = client.chat.completions.create(
                    model=MODEL_NAME, messages=conversations[i], temperature=0, max_tokens=max_tokens,
                    stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
                for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter()
                    if chunk.usage is not None:
                        usage = chunk.usage
            except BaseException as e:  # noqa: BLE001 - reported after the run
                errors.append(e)
                return
            end = time.perf_counter()
            with lock:
                latencies.append(end - start)
                ttfts.append((first or end) - start)
                tokens.append(usage.completion_tokens if usage else 0)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed; first: {errors[0]!r}")
    return {"clients": clients, "requests": len(latencies), "tokens": int(sum(tokens)), "wall_s": wall,
            "tokens_per_s": sum(tokens) / wall, "mean_latency_s": float(np.mean(latencies)),
            "mean_ttft_s": float(np.mean(ttfts))}


def bench_generator(model: Any, tokenizer: Any, conversations: list, max_tokens: int) -> dict[str, Any]:
    """One request at a time through `vicuna_jax.generate` (with ignore_eos, like the server's requests)."""
    gen = Generator(model)
    ids = [encode_prompt(c, tokenizer) for c in conversations]
    params = SamplingParams(max_new_tokens=max_tokens, ignore_eos=True)
    gen.generate_ids([ids[0]], params)  # compile
    latencies, tokens = [], 0
    start = time.perf_counter()
    for p in ids:
        t = time.perf_counter()
        tokens += len(gen.generate_ids([p], params)[0])
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    return {"clients": 1, "requests": len(ids), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "mean_latency_s": float(np.mean(latencies)), "mean_ttft_s": None}


def serve(model: Any, tokenizer: Any, max_batch: int, decode_steps: int, prompt_len: int,
          lengths: list[int]):
    engine = Engine(model, tokenizer, max_batch=max_batch, decode_steps=decode_steps)
    rows = [1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch]
    engine.warmup(prompt_lengths=(prompt_len,), rows=rows, lengths=lengths)  # timings exclude compilation
    engine.start()
    fmt = chat_format.resolve(tokenizer)
    return engine, ServerThread(build_app(engine, fmt, ServeConfig(MODEL_NAME))).start()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,4,16", help="Concurrency levels.")
    ap.add_argument("--requests", type=int, default=32, help="Requests per concurrency level.")
    ap.add_argument("--max_tokens", type=int, default=128, help="Tokens generated per request.")
    ap.add_argument("--max_batch", type=int, default=16, help="Server cache rows.")
    ap.add_argument("--decode_steps", type=int, default=8, help="Server tokens per decode call.")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--json", default=None, help="Also write the results here.")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    ffn = int(args.hidden * 8 / 3) // 8 * 8
    cfg = LlamaConfig(vocab_size=4096, hidden_size=args.hidden, intermediate_size=ffn, num_layers=args.layers,
                      num_heads=args.heads, num_kv_heads=max(1, args.heads // 2),
                      max_position_embeddings=1024, rms_norm_eps=1e-5)
    model = build_model(cfg, seed=0)
    tokenizer = load_tokenizer(bundled_tokenizer_path())
    conversations = prompts(args.requests)
    prompt_len = max(len(encode_prompt(c, tokenizer)) for c in conversations)
    device = jax.devices()[0]
    print(f"model: {cfg.num_params() / 1e6:.1f}M parameters ({args.layers} layers, hidden {args.hidden}), "
          f"{device.platform} ({device.device_kind}), {os.cpu_count()} CPUs; {args.requests} requests x "
          f"{args.max_tokens} tokens per row, prompts ~{prompt_len} tokens", flush=True)

    rows: list[dict[str, Any]] = []
    base = bench_generator(model, tokenizer, conversations, args.max_tokens)
    rows.append({"setup": "generate.Generator, one at a time", **base})
    print(f"  baseline: {base['tokens_per_s']:.0f} tok/s", flush=True)

    # Every cache-length bucket a request passes through, so no timing includes a compilation.
    longest = prompt_len + args.max_tokens + args.decode_steps
    lengths = sorted({next_pow2(n, 128) for n in range(prompt_len, longest + 1)})
    engine, server = serve(model, tokenizer, 1, args.decode_steps, prompt_len, lengths)
    try:
        r = run_clients(server.url + "/v1", conversations, max(levels), args.max_tokens)
        rows.append({"setup": "server, --max_batch=1 (serialised)", **r})
        print(f"  serialised server: {r['tokens_per_s']:.0f} tok/s", flush=True)
    finally:
        server.stop()
        engine.shutdown()

    engine, server = serve(model, tokenizer, args.max_batch, args.decode_steps, prompt_len, lengths)
    try:
        for clients in levels:
            r = run_clients(server.url + "/v1", conversations, clients, args.max_tokens)
            rows.append({"setup": f"server, --max_batch={args.max_batch}", **r})
            print(f"  {clients} clients: {r['tokens_per_s']:.0f} tok/s", flush=True)
        stats = engine.stats()
    finally:
        server.stop()
        engine.shutdown()

    print("\n| setup | clients | requests | tokens | wall s | tokens/s | vs one-at-a-time | mean latency s "
          "| mean TTFT s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ttft = "" if r["mean_ttft_s"] is None else f"{r['mean_ttft_s']:.3f}"
        print(f"| {r['setup']} | {r['clients']} | {r['requests']} | {r['tokens']} | {r['wall_s']:.2f} | "
              f"{r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}x | "
              f"{r['mean_latency_s']:.2f} | {ttft} |")
    result = {"model": {"params_m": cfg.num_params() / 1e6, "layers": args.layers, "hidden": args.hidden},
              "device": f"{device.platform} ({device.device_kind})", "cpus": os.cpu_count(),
              "max_tokens": args.max_tokens, "decode_steps": args.decode_steps, "rows": rows,
              "engine": {k: stats[k] for k in ("peak_active", "prefills", "decode_chunks", "resizes",
                                               "prefill_shapes", "decode_shapes")}}
    print("\n" + json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
