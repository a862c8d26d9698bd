"""LoRA and QLoRA fine-tuning with PEFT-compatible adapters.

- `config`: the `config.lora` keys and `LoRAConfig`.
- `quantize`: blockwise absmax int8 / NF4 for the frozen base (QLoRA).
- `model`: `attach` turns the NNX LLaMA into its LoRA model (`LoRALinear`: x W + scale (x A) B).
- `setup`: the adapters / frozen-base split the training step is built around (`train.setup.build`).
- `base`: the base model of a run, its fingerprint, and the record checkpoints keep of it.
- `peft`: PEFT adapter directories (export, import) and merged Hugging Face exports.
- `inference`: `--model=BASE --adapter=DIR` for generate, chat, answers and serve.
- `python -m vicuna_jax.lora`: export a run's adapter as a PEFT directory, or merged into an HF model.
"""
