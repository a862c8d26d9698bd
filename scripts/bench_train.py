"""Training benchmark, vicuna_jax vs Hugging Face transformers + torch; see `vicuna_jax/bench/train.py`.

    python scripts/bench_train.py [--models=20m,100m] [--steps=6] [--sections=speed,packing] [--out=DIR]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vicuna_jax.bench.train import _define_flags, main  # noqa: E402
from vicuna_jax.cli import run  # noqa: E402

if __name__ == "__main__":
    run(main, _define_flags)
