"""Vicuna-7B with QLoRA (the QLoRA paper's recipe): a frozen NF4 LLaMA-2-7B base (blocks of 64, as
bitsandbytes), LoRA rank 64, alpha 16, dropout 0.05 on all seven projections; lr 2e-4, constant after a 3%
warmup, 3 epochs, context 2048.

    python -m vicuna_jax.train --config=configs/vicuna_7b_qlora.py --workdir=/runs/vicuna7b-qlora \
        --config.init_from_hf=/models/llama-2-7b-hf --config.data.path=/data/sharegpt_clean_split.json

16 packed rows per step in 2 micro-batches; on one 24 GB GPU add --config.grad_accum_steps=16. The merged
export (workdir/hf) merges the adapters into the original (unquantized) base weights.
"""

from vicuna_jax.train.config import vicuna_recipe


def get_config():
    c = vicuna_recipe("llama2_7b", seq_len=2048, batch_size=16)
    c.grad_accum_steps = 2
    c.optimizer.learning_rate = 2e-4
    c.optimizer.final_lr_ratio = 1.0  # constant after warmup
    c.lora.rank = 64
    c.lora.alpha = 16.0
    c.lora.dropout = 0.05
    c.lora.target_modules = "all"
    c.lora.base_quantization = "nf4"
    c.lora.quant_block_size = 64
    c.checkpoint_every = 200
    return c
