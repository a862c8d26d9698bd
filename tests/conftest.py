"""Test-wide setup: JAX on CPU with 8 simulated devices, so sharding tests can build real meshes.

Must run before anything imports jax.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402

# A tiny random LLaMA that shares the bundled tokenizer's vocabulary; for generation/eval/serving tests.
TINY_TEST_MODEL = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                       num_kv_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A vicuna_jax model checkpoint directory (random weights + the bundled tokenizer.model)."""
    from vicuna_jax import checkpoint
    from vicuna_jax.data import bundled_tokenizer_path
    from vicuna_jax.model.config import LlamaConfig
    from vicuna_jax.model.llama import build_model, model_params

    cfg = LlamaConfig(**TINY_TEST_MODEL)
    params = model_params(build_model(cfg, seed=0))
    path = str(tmp_path_factory.mktemp("tiny") / "model")
    return checkpoint.save_model(path, params, cfg, tokenizer_path=bundled_tokenizer_path())
