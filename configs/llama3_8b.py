"""The Vicuna recipe on Llama-3.1-8B: multi-turn SFT on ShareGPT, loss on assistant turns only, in the
Llama-3 chat format.

    python -m vicuna_jax.train --config=configs/llama3_8b.py --workdir=/runs/vicuna-llama3-8b \
        --config.init_from_hf=/path/to/Llama-3.1-8B --config.data.path=/path/to/sharegpt.json

The base model's tokenizer.json already holds the Llama-3 special tokens; `llama-3` renders Meta's
Llama-3-Instruct format with them (`<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>`) and each
reply's `<|eot_id|>` is trained on and exported as an EOS id. To fine-tune an Instruct checkpoint in its own
template use --config.data.template=hf. FastChat's hyperparameters (lr 2e-5, 3 epochs, warmup 3%, cosine, no
weight decay); 32 packed rows of 4096 tokens per step (Llama-3 was pretrained at 8K; 4K rows hold all but the
longest ShareGPT conversations whole), FSDP over every device, bf16 compute with fp32 master weights and full
remat. Check the memory first: python -m vicuna_jax.train.planner --config=configs/llama3_8b.py --devices=8
"""

from vicuna_jax.train.config import vicuna_recipe


def get_config():
    c = vicuna_recipe("llama3_1_8b", seq_len=4096, batch_size=32)
    c.data.template = "llama-3"
    c.mesh.fsdp = -1
    return c
