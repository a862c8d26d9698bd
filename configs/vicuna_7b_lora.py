"""Vicuna-7B with LoRA (FastChat's train_lora.py settings): rank 8, alpha 16, dropout 0.05 on q_proj and
v_proj of a frozen bf16 LLaMA-2-7B base; lr 2e-5, 3 epochs, warmup 3%, cosine, context 2048.

    python -m vicuna_jax.train --config=configs/vicuna_7b_lora.py --workdir=/runs/vicuna7b-lora \
        --config.init_from_hf=/models/llama-2-7b-hf --config.data.path=/data/sharegpt_clean_split.json

16 packed 2048-token rows per step in 2 micro-batches (one row per GPU per micro-batch on 8 GPUs). On one
24 GB GPU add --config.grad_accum_steps=16 (one row at a time; see the README's LoRA memory table). The run
writes workdir/adapter (a PEFT adapter directory) and workdir/hf (the merged model).
"""

from vicuna_jax.train.config import vicuna_recipe


def get_config():
    c = vicuna_recipe("llama2_7b", seq_len=2048, batch_size=16)
    c.grad_accum_steps = 2
    c.lora.rank = 8
    c.lora.alpha = 16.0
    c.lora.dropout = 0.05
    c.lora.target_modules = "q,v"
    c.lora.base_dtype = "bfloat16"
    c.checkpoint_every = 200
    return c
