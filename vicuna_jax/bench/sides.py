"""The benchmark harness shared by `bench.train` and `bench.packing`: the benchmark models, the optimizer
both sides use, and `Worker`, one `bench.worker` process per side (see worker.py for why a process each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

# name -> (LlamaConfig fields, batch rows). LLaMA's 32000-token vocabulary: the LM head is real work.
BENCH_MODELS: dict[str, tuple[dict[str, Any], int]] = {
    "20m": (
        dict(
            vocab_size=32000,
            hidden_size=256,
            intermediate_size=688,
            num_layers=4,
            num_heads=8,
            num_kv_heads=8,
            max_position_embeddings=2048,
        ),
        4,
    ),
    "100m": (
        dict(
            vocab_size=32000,
            hidden_size=768,
            intermediate_size=2048,
            num_layers=8,
            num_heads=12,
            num_kv_heads=12,
            max_position_embeddings=2048,
        ),
        2,
    ),
}
OPTIMIZER = dict(
    learning_rate=1e-4,
    warmup_ratio=0.0,
    final_lr_ratio=0.0,
    weight_decay=0.0,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    grad_clip=1.0,
)

class Worker:
    """A `bench.worker` process; `call` sends one command and returns its reply (raising on errors)."""

    def __init__(self, label: str, env: dict[str, str], log_path: str):
        self.label = label
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vicuna_jax.bench.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            text=True,
            bufsize=1,
        )
        self.log_path = log_path

    def call(self, cmd: str, **kw: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label}: worker exited (log: {self.log_path}):\n{_tail(self.log_path)}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.label}: {reply['error']}\n{reply.get('traceback', '')}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit")
            except (RuntimeError, BrokenPipeError):
                pass
            self.proc.wait(timeout=60)
        self._log.close()


def _tail(path: str, n: int = 30) -> str:
    with open(path) as f:
        return "".join(f.readlines()[-n:])


def worker_env(xla_flags: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    return env


