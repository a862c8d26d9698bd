"""`python -m vicuna_jax.serve` as a user runs it: key from the environment, a free port from the log line,
real requests, and a clean exit on SIGTERM; bad flags end with one `error:` line."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import openai
import pytest

KEY = "sk-cli-test-0a1b2c3d4e5f6a7b8c9d"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    env.pop("VICUNA_JAX_API_KEY", None)
    env.update(extra)
    return env


def test_cli_serves_with_key_from_env_and_stops_on_sigterm(tiny_checkpoint):
    proc = subprocess.Popen(
        [sys.executable, "-m", "vicuna_jax.serve", f"--model={tiny_checkpoint}", "--port=0", "--max_batch=2",
         "--model_name=cli-model"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env(VICUNA_JAX_API_KEY=KEY))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        port = None
        log = []
        while port is None:
            line = lines.get(timeout=120)
            log.append(line)
            found = re.search(r"serving model 'cli-model' .* at http://127\.0\.0\.1:(\d+)/", line)
            port = int(found.group(1)) if found else None
            assert proc.poll() is None, "".join(log)
        assert "API key required" in log[-1]
        base = f"http://127.0.0.1:{port}/v1"
        client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="cli-model", max_tokens=5, temperature=0,
                                               messages=[{"role": "user", "content": "Hi"}])
        assert reply.choices[0].finish_reason in ("length", "stop") and reply.usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="sk-nope-nope-nope", max_retries=0).models.list()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_bad_flags(tiny_checkpoint):
    proc = subprocess.run([sys.executable, "-m", "vicuna_jax.serve", f"--model={tiny_checkpoint}",
                           "--max_batch=0"], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: --max_batch, --decode_steps, --max_waiting and --max_prefill_tokens must be >= 1"


def test_cli_user_mistakes_end_with_one_error_line(tiny_checkpoint, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    missing = tmp_path / "no-such-model"
    cases = {  # flags: the whole last line of stderr, or a prefix of it
        (f"--model={missing}",): f"error: --model: no such directory: {missing}",
        (f"--model={tiny_checkpoint}", f"--port={port}"): f"error: cannot listen on 127.0.0.1:{port}: ",
        (f"--model={tiny_checkpoint}", "--header_timeout=0"):
            "error: --header_timeout, --body_timeout, --body_deadline and --keep_alive_timeout must be > 0 "
            "(seconds)",
        (f"--model={tiny_checkpoint}", "--max_connections=20", "--reserved_connections=20"):
            "error: --reserved_connections must be in [0, --max_connections), got 20",
        (f"--model={tiny_checkpoint}", "--max_body_bytes=-1"):
            "error: --max_body_bytes, --max_connections and --max_header_bytes must be >= 1",
    }
    try:
        for flags, want in cases.items():
            proc = subprocess.run([sys.executable, "-m", "vicuna_jax.serve", *flags], capture_output=True,
                                  text=True, env=_env(), timeout=120)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and lines and lines[-1].startswith(want), (flags, proc.stderr[-2000:])
            assert "Traceback" not in proc.stderr
    finally:
        taken.close()


LOOPING_TEMPLATE = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
                    "{{ messages[0].content }}</s>")


def test_cli_runaway_template_never_leaves_clients_hanging(tiny_checkpoint, tmp_path):
    """A model directory whose chat template loops for hours: while start-up checks it, the port refuses
    connections (it is bound, so a taken port still fails early, but not listened on: on main clients
    connected and /health never answered); the check then ends in one error line naming the template."""
    model = tmp_path / "looping"
    shutil.copytree(tiny_checkpoint, model)
    (model / "chat_template.jinja").write_text(LOOPING_TEMPLATE)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = subprocess.Popen([sys.executable, "-m", "vicuna_jax.serve", f"--model={model}", f"--port={port}"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env())
    try:
        deadline, refused = time.monotonic() + 90, 0
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    sock.settimeout(5)
                    try:
                        answer = sock.recv(100)
                    except TimeoutError:
                        answer = b""
                    assert answer.startswith(b"HTTP/1.1 "), "connected, but /health did not answer"
            except ConnectionRefusedError:
                refused += 1
            time.sleep(0.2)
        assert refused > 0
        # The render budget (vicuna_jax.data.template_sandbox) ends the check ~1 s of CPU after the load.
        assert proc.poll() is not None, "start-up was still rendering the template after 90 s"
        stderr = proc.stderr.read()
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2 and lines[-1].startswith("error: ") and "Traceback" not in stderr, stderr
        assert "chat_template" in lines[-1], lines[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
