"""Text generation with the bundled tokenizer: stop strings, streaming, the generate and chat CLIs."""

import io
import os
import subprocess
import sys

import pytest

from vicuna_jax.chat import chat_loop
from vicuna_jax.data import encode_prompt
from vicuna_jax.generate import SamplingParams, load_generator, prompt_ids


@pytest.fixture(scope="module")
def gen(tiny_checkpoint):
    return load_generator(tiny_checkpoint, chunk=4)


def test_stop_string_cuts_text(gen):
    ids = prompt_ids(gen, "Tell me about JAX.")
    full = gen.generate([ids], SamplingParams(max_new_tokens=40))[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 40
    text = full.text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop.strip(), text
    cut = gen.generate([ids], SamplingParams(max_new_tokens=40, stop_strings=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == text[: text.find(stop)]
    # Its tokens end with the one that completed the stop string, whatever the decode chunk size.
    ids_cut = cut.token_ids
    assert ids_cut == full.token_ids[:len(ids_cut)]
    assert stop in gen.tokenizer.decode(ids_cut) and stop not in gen.tokenizer.decode(ids_cut[:-1])


def test_stream_text_concatenates_to_generate(gen):
    ids = prompt_ids(gen, "Write a haiku about the sea.")
    for stops in ((), ("e",), ("zzz-not-there",)):
        params = SamplingParams(max_new_tokens=30, temperature=0.9, seed=1, stop_strings=stops)
        whole = gen.generate([ids], params)[0].text
        assert "".join(gen.stream_text(ids, params)) == whole


def test_chat_loop_keeps_history(gen):
    out = io.StringIO()
    history = chat_loop(gen, SamplingParams(max_new_tokens=8), stdin=io.StringIO("Hello\n\nHow are you?\n"),
                        stdout=out)
    assert [t["from"] for t in history] == ["human", "gpt", "human", "gpt"]
    assert history[2]["value"] == "How are you?"
    # The second reply was generated from a prompt holding the whole first exchange.
    second = encode_prompt(history[:3], gen.tokenizer)
    first = encode_prompt(history[:1], gen.tokenizer)
    assert second[: len(first)] == first
    assert out.getvalue().count("ASSISTANT: ") == 2


def test_chat_reset_and_too_long(gen):
    out = io.StringIO()
    long = "word " * 600
    history = chat_loop(gen, SamplingParams(max_new_tokens=4), stdin=io.StringIO(f"Hi\n/reset\n{long}\nOk\n"),
                        stdout=out)
    assert "[new conversation]" in out.getvalue() and "[message too long" in out.getvalue()
    assert [t["value"] for t in history if t["from"] == "human"] == ["Ok"]


def _run(args, stdin=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, input=stdin,
                          env=env, timeout=300)


def test_generate_cli_prints_only_the_text(gen, tiny_checkpoint):
    proc = _run(["vicuna_jax.generate", f"--model={tiny_checkpoint}", "--prompt=Hello!",
                 "--max_new_tokens=12"])
    assert proc.returncode == 0, proc.stderr
    ids = prompt_ids(gen, "Hello!")
    expected = gen.generate([ids], SamplingParams(max_new_tokens=12))[0].text
    assert proc.stdout == expected + "\n"
    assert "prompt:" in proc.stderr  # logs go to stderr


def test_chat_cli_streams_replies(tiny_checkpoint):
    proc = _run(["vicuna_jax.chat", f"--model={tiny_checkpoint}", "--max_new_tokens=6", "--temperature=0"],
                stdin="Hi there\nAnd again\n/exit\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ASSISTANT: ") == 2


def test_generate_cli_errors_clearly(tmp_path):
    proc = _run(["vicuna_jax.generate", f"--model={tmp_path}", "--prompt=x"])
    assert proc.returncode != 0
    assert "holds no complete vicuna_jax checkpoint" in proc.stderr


def test_ctrl_c_in_chat_ends_it_without_a_traceback(tiny_checkpoint):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "vicuna_jax.chat", f"--model={tiny_checkpoint}",
                             "--max_new_tokens=4", "--temperature=0"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("Hello!\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("ASSISTANT:")  # a reply came: it is waiting for input now
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "interrupted", stderr[-2000:]
