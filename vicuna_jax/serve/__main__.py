"""`python -m vicuna_jax.serve`: an OpenAI-compatible server and a chat page for one model.

    python -m vicuna_jax.serve --model=DIR [--host=127.0.0.1] [--port=8000] [--max_batch=16]
        [--template=auto] [--model_name=NAME] [--api_key=KEY]   (or VICUNA_JAX_API_KEY=KEY)
        [--max_body_bytes=8388608] [--max_connections=512] [--header_timeout=20] [--body_timeout=30]
        [--body_deadline=120] [--min_body_rate=1024] [--keep_alive_timeout=30] [--max_header_bytes=16384]
        [--max_connections_per_client=N] [--reserved_connections=N] [--cors_origins=ORIGIN,...]

Then open http://127.0.0.1:8000/ to chat, or point any OpenAI client at it:
OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=KEY (any value when no key is set).
"""

from __future__ import annotations

import os
import signal

from vicuna_jax.cli import UserError

API_KEY_ENV = "VICUNA_JAX_API_KEY"


def main(argv: list[str]) -> None:
    from absl import flags, logging

    from vicuna_jax.data.chat_format import get_named
    from vicuna_jax.serve.api import ServeConfig, build_app
    from vicuna_jax.serve.limits import ConnectionLimits
    from vicuna_jax.serve.server import bind, load_engine, make_server

    f = flags.FLAGS
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    if min(f.max_batch, f.decode_steps, f.max_waiting, f.max_prefill_tokens) < 1:
        raise UserError("--max_batch, --decode_steps, --max_waiting and --max_prefill_tokens must be >= 1")
    if min(f.max_body_bytes, f.max_connections, f.max_header_bytes) < 1:
        raise UserError("--max_body_bytes, --max_connections and --max_header_bytes must be >= 1")
    if min(f.header_timeout, f.body_timeout, f.body_deadline, f.keep_alive_timeout) <= 0:
        raise UserError("--header_timeout, --body_timeout, --body_deadline and --keep_alive_timeout must be "
                        "> 0 (seconds)")
    if f.min_body_rate < 0:
        raise UserError(f"--min_body_rate must be >= 0 (bytes/s; 0 checks no rate), got {f.min_body_rate}")
    if f.max_connections_per_client is not None and f.max_connections_per_client < 1:
        raise UserError(f"--max_connections_per_client must be >= 1, got {f.max_connections_per_client}")
    if f.reserved_connections is not None and not 0 <= f.reserved_connections < f.max_connections:
        raise UserError("--reserved_connections must be in [0, --max_connections), got "
                        f"{f.reserved_connections}")
    limits = ConnectionLimits(header_timeout=f.header_timeout, keep_alive_timeout=f.keep_alive_timeout,
                              max_connections=f.max_connections, max_header_bytes=f.max_header_bytes,
                              max_per_client=f.max_connections_per_client, reserve=f.reserved_connections)
    if not 0 <= f.port <= 65535:
        raise UserError(f"--port must be in [0, 65535], got {f.port}")
    if f.template != "auto":
        get_named(f.template)  # an unknown name fails before the socket is bound
    if not os.path.exists(f.model):
        raise UserError(f"--model: no such directory: {f.model}")
    api_key = f.api_key or os.environ.get(API_KEY_ENV) or None
    name = f.model_name or os.path.basename(os.path.normpath(os.path.abspath(f.model)))
    origins = tuple(o.strip() for o in (f.cors_origins or "").split(",") if o.strip())
    try:  # bound now (a taken port fails before the model loads), listened on once it has loaded
        sock = bind(f.host, f.port, listen=False)
    except OSError as e:
        raise UserError(f"cannot listen on {f.host}:{f.port}: {e}") from None
    try:
        engine, fmt = load_engine(f.model, tokenizer=f.tokenizer, dtype=f.dtype, max_batch=f.max_batch,
                                  decode_steps=f.decode_steps, max_seq_len=f.max_seq_len or None,
                                  max_waiting=f.max_waiting, max_prefill_tokens=f.max_prefill_tokens,
                                  template=f.template, adapter=f.adapter)
    except (FileNotFoundError, ValueError) as e:
        sock.close()
        raise UserError(str(e)) from None
    logging.info("chat format: %s", fmt.describe())
    app = build_app(engine, fmt, ServeConfig(name, api_key, max_body_bytes=f.max_body_bytes,
                                             body_timeout=f.body_timeout, body_deadline=f.body_deadline,
                                             min_body_rate=f.min_body_rate, cors_origins=origins))
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    logging.info("serving model '%s' (context %d, %d rows) at http://%s:%d/ (chat page) and /v1 (API)%s",
                 name, engine.context_len, f.max_batch, host, port, "; API key required" if api_key else "")
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to the handler it found;
    # let that handler end the process normally, so the engine is stopped and the exit status is 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_quietly)
    try:
        make_server(app, log_level=f.log_level, access_log=f.access_log, limits=limits).run(sockets=[sock])
    finally:
        engine.shutdown()
        sock.close()
        logging.info("server stopped")


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _define_flags() -> None:
    from absl import flags

    from vicuna_jax.cli import check_name
    from vicuna_jax.data.template import known_template_names
    from vicuna_jax.load import COMPUTE_DTYPES
    from vicuna_jax.serve.api import ServeConfig
    from vicuna_jax.serve.limits import ConnectionLimits

    flags.DEFINE_string("model", None, "HF directory or vicuna_jax checkpoint directory.", required=True)
    flags.DEFINE_string("adapter", None, "LoRA adapter for --model (PEFT dir or vicuna_jax LoRA workdir).")
    flags.DEFINE_string("tokenizer", None, "tokenizer.model, when the model directory has none.")
    flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on (0.0.0.0 for every interface).")
    flags.DEFINE_integer("port", 8000, "TCP port (0 picks a free one; the log says which).")
    flags.DEFINE_integer("max_batch", 16, "KV-cache rows: sequences decoded together; more wait in a queue.")
    flags.DEFINE_integer("decode_steps", 8, "Tokens per decode call between scheduling decisions.")
    flags.DEFINE_integer("max_seq_len", 0, "Cap on prompt + reply tokens (0 = the model's context); "
                         "sizes the KV cache.")
    flags.DEFINE_integer("max_waiting", 256, "Queued sequences before requests get HTTP 503.")
    flags.DEFINE_integer("max_prefill_tokens", 8192,
                         "Padded prompt tokens per prefill call (bounds its memory).")
    limits, body = ConnectionLimits(), ServeConfig("")
    flags.DEFINE_integer("max_body_bytes", body.max_body_bytes,
                         "Largest request body; a larger one gets HTTP 413 as soon as it passes this.")
    flags.DEFINE_float("body_timeout", body.body_timeout, "Seconds a request body may stall before HTTP 408.")
    flags.DEFINE_float("body_deadline", body.body_deadline,
                       "Seconds from a request's headers to the end of its body (HTTP 408 beyond).")
    flags.DEFINE_float("min_body_rate", body.min_body_rate, "Bytes/s a request body must average once "
                       "--body_timeout seconds have passed (HTTP 408 below; 0 checks no rate).")
    flags.DEFINE_float("header_timeout", limits.header_timeout, "Seconds a client has to send a request's "
                       "line and headers (from connecting, or from its first byte after a keep-alive wait).")
    flags.DEFINE_float("keep_alive_timeout", limits.keep_alive_timeout,
                       "Seconds an idle connection is kept open between requests.")
    flags.DEFINE_integer("max_connections", limits.max_connections,
                         "Connections with a request accepted; a request needing one more gets HTTP 503.")
    flags.DEFINE_integer("max_connections_per_client", None, "Of those, how many one client address may "
                         "hold (default: a quarter of --max_connections; raise it behind a reverse proxy).")
    flags.DEFINE_integer("reserved_connections", None, "The last connections, kept for client addresses "
                         "that hold none (default: an eighth of --max_connections).")
    flags.DEFINE_string("cors_origins", "", "Comma-separated web origins whose pages may call the API "
                        "(CORS; '*' for any). Default: none, so no web page can.")
    flags.DEFINE_integer("max_header_bytes", limits.max_header_bytes,
                         "Largest request target + headers (HTTP 431 beyond).")
    flags.DEFINE_string("api_key", None, f"Required bearer key for /v1 (prefer the {API_KEY_ENV} "
                        "environment variable: flags show up in process lists).")
    flags.DEFINE_string("template", "auto", "Chat template for /v1/chat/completions (auto: the model's own "
                        "when its tokenizer has one, else vicuna_v1.1).")
    flags.DEFINE_string("model_name", None, "Model id clients must send (default: the model directory name).")
    flags.DEFINE_enum("dtype", "float32", COMPUTE_DTYPES, "Compute dtype.")
    check_name("template", known_template_names(), "chat template")
    flags.DEFINE_enum("log_level", "warning", ["critical", "error", "warning", "info", "debug"],
                      "uvicorn's log level.")
    flags.DEFINE_bool("access_log", False, "Log every HTTP request.")


if __name__ == "__main__":
    from vicuna_jax.cli import run

    run(main, _define_flags)
