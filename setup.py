"""vicuna_jax: Vicuna-style chat fine-tuning of LLaMA in JAX/Flax NNX.

Lower bounds are the versions this project was tested with (2026-11, Python 3.11, CPU).
"""

from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "numpy>=2.0",
    "sentencepiece>=0.2.0",
    "tokenizers>=0.23.3",  # tokenizer.json (Llama-3, Qwen, Mistral)
    "jinja2>=3.1.6",  # models' own chat templates
    "absl-py>=2.1",
    "ml-collections>=1.0",
    "safetensors>=0.4",
    "tqdm>=4.66",
    # data pipeline
    "tensorflow-datasets>=4.9.10",
    "array-record>=0.8.1",
    "grain>=0.2.18",
    "markdownify>=1.2",
    "beautifulsoup4>=4.12",
    # evaluation
    "openai>=1.50",
    "matplotlib>=3.8",
    # metrics
    "tensorboardX>=2.6",
    # serving
    "starlette>=1.10",
    "uvicorn>=0.54",
]

# Hugging Face interop: loading an export in transformers, PEFT adapters. torch 2.13.0 resolves to the CPU
# wheel on the project machines (the parity tests are checked against it).
HF = ["transformers>=5.0", "torch==2.13.0", "peft>=0.21.2", "safetensors>=0.4"]

EXTRAS = {
    "hf": HF,
    # Parity tests against Hugging Face.
    "test": ["pytest>=8.0", *HF, "langid>=1.1.6", "ruff>=0.6", "selenium>=4.51"],
    "gpu": ["jax[cuda13]>=0.10.2"],
    "tpu": ["jax[tpu]>=0.10.2"],
    # The TPU compiler on a host without a TPU (planner --topology, tests/train/test_tpu_aot.py): libtpu must
    # be the one built for our jaxlib, so this pins jax[tpu] to the version the project is tested with
    # (move it with "jax" above). JAX keeps running on the CPU: only ahead-of-time TPU compiles use it.
    "tpu-aot": ["jax[tpu]==0.10.2"],
    # XLA's GPU compiler without a GPU (planner --topology=h100-8): the CUDA PJRT plugin alone, without the
    # CUDA libraries (~130 MB, not ~3 GB); same pin as above.
    "gpu-aot": ["jax-cuda13-plugin==0.10.2", "jax-cuda13-pjrt==0.10.2"],
}

setup(
    name="vicuna_jax",
    version="0.1.0",
    description="Vicuna chatbot training (LLaMA + ShareGPT) in JAX/Flax NNX",
    packages=find_packages(include=["vicuna_jax", "vicuna_jax.*"]),
    package_data={"vicuna_jax": ["assets/*", "assets/tokenizers/*/*", "eval/prompts/*", "serve_static/*"]},
    python_requires=">=3.11",
    install_requires=RUNTIME,
    extras_require=EXTRAS,
)
