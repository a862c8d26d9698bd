"""The README's runnable blocks run as written (issue 20, item 7).

A block preceded by `<!-- runnable ... -->` is run line by line in a shell-free way: `pip install` lines are
skipped (this environment is the installed one), `/tmp/vicuna_tiny` becomes a temporary directory, the
training line gets `--config.total_steps=4` (tiny sizes), `chat` reads `/exit` from stdin, `serve` is started
on a free port and must answer /health, and the judge talks to a real local OpenAI-compatible HTTP server
(tests/eval/fake_openai.py) through the `openai` package. Every other line runs exactly as printed.
"""

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "eval"))
from fake_openai import TEST_API_KEY, FakeOpenAI  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runnable_blocks() -> list[list[str]]:
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    blocks = []
    for body in re.findall(r"<!-- runnable.*?-->\s*```bash\n(.*?)```", text, flags=re.S):
        lines, current = [], ""
        for raw in body.splitlines():
            line = raw.split("  #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
            if not line.strip():
                continue
            current += line.strip()[:-1].rstrip() + " " if line.endswith("\\") else line.strip()
            if not line.endswith("\\"):
                lines.append(current)
                current = ""
        blocks.append(lines)
    return blocks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp: str, judge_url: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", OPENAI_API_KEY=TEST_API_KEY,
               OPENAI_BASE_URL=judge_url)
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's machine
    return env


@pytest.mark.slow
def test_the_quick_tour_runs_as_written(tmp_path):
    blocks = runnable_blocks()
    assert blocks and any("vicuna_jax.train" in line for line in blocks[0])
    judge = FakeOpenAI(reply=lambda body: "Short. Rating: [[3]]", model_ids=("gpt-4.1",)).start()
    try:
        env = _env(str(tmp_path), judge.base_url)
        for name in ("configs", "vicuna_jax"):  # the README's relative paths are the repository's
            os.symlink(os.path.join(REPO, name), tmp_path / name)
        ran = []
        for line in blocks[0]:
            line = line.replace("/tmp/vicuna_tiny", str(tmp_path / "vicuna_tiny"))
            args = shlex.split(line)
            if args[:2] == ["pip", "install"]:
                continue
            if args[0] == "python":
                args[0] = sys.executable
            if "vicuna_jax.train" in args:
                args.append("--config.total_steps=4")
            if "vicuna_jax.serve" in args:
                port = _free_port()
                proc = subprocess.Popen(args + [f"--port={port}"], cwd=tmp_path, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                try:
                    deadline = time.monotonic() + 180
                    while True:
                        assert proc.poll() is None, proc.stderr.read()
                        try:
                            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                                assert r.status == 200
                                break
                        except OSError:
                            assert time.monotonic() < deadline, "serve never answered /health"
                            time.sleep(0.5)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
                ran.append("serve")
                continue
            stdin = "/exit\n" if "vicuna_jax.chat" in args else ""
            proc = subprocess.run(args, cwd=tmp_path, env=env, input=stdin, capture_output=True, text=True,
                                  timeout=900, check=False)
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, (line, proc.stderr[-3000:])
            ran.append(line)
        assert len(ran) >= 7, ran
        assert (tmp_path / "judgments" / "single.jsonl").exists()
    finally:
        judge.stop()
