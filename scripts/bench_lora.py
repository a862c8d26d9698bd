"""LoRA training benchmark (ours full / LoRA / QLoRA vs transformers + peft); see `vicuna_jax/bench/lora.py`.

    python scripts/bench_lora.py [--models=20m,100m] [--rank=16] [--targets=all] [--steps=6] [--out=DIR]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vicuna_jax.bench.lora import _define_flags, main  # noqa: E402
from vicuna_jax.cli import run  # noqa: E402

if __name__ == "__main__":
    run(main, _define_flags)
