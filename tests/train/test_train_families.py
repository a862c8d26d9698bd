"""End to end per family: a tiny Llama-3-, Qwen3- and Mistral-style HF model with its tokenizer.json and chat
template -> train (configs/tiny_<family>.py: packed, assistant-only loss in the model's own template, FSDP
over 8 simulated devices) -> HF export that transformers loads, whose greedy output equals ours."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_models import hf_logits, make_hf_family  # noqa: E402
from hf_tokenizers import LLAMA3_TEMPLATE, MISTRAL_TEMPLATE, QWEN3_TEMPLATE, save_hf_tokenizer  # noqa: E402
from train_utils import REPO  # noqa: E402

from vicuna_jax import checkpoint as ckpt_lib  # noqa: E402
from vicuna_jax.data import encode_prompt, load_tokenizer  # noqa: E402
from vicuna_jax.generate import Generator, SamplingParams, load_generator  # noqa: E402
from vicuna_jax.model.llama import model_from_params  # noqa: E402
from vicuna_jax.train import train  # noqa: E402

# family -> (tokenizer style, chat template, end-of-turn token)
FAMILIES = {
    "llama3": ("llama3", LLAMA3_TEMPLATE, "<|eot_id|>"),
    "qwen3": ("qwen", QWEN3_TEMPLATE, "<|im_end|>"),
    "mistral": ("mistral", MISTRAL_TEMPLATE, "</s>"),
}
NEW_TOKENS = 12


def _config(family: str, **overrides):
    spec = importlib.util.spec_from_file_location(f"tiny_{family}", os.path.join(REPO, "configs",
                                                                                  f"tiny_{family}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def trained(request, tmp_path_factory):
    family = request.param
    style, template, eot = FAMILIES[family]
    base = save_hf_tokenizer(str(tmp_path_factory.mktemp(f"{family}_base")), style, chat_template=template)
    tok = load_tokenizer(base)
    eos = [tok.piece_to_id("<|end_of_text|>"), tok.eos_id] if family == "llama3" else tok.eos_id
    hf = make_hf_family(family, seed=1, vocab_size=-(-tok.vocab_size // 64) * 64, max_position_embeddings=256,
                        bos_token_id=tok.bos_id, eos_token_id=eos)
    hf.save_pretrained(base)
    workdir = str(tmp_path_factory.mktemp(f"{family}_run"))
    c = _config(family, init_from_hf=base, total_steps=4, checkpoint_every=4, eval_every=0)
    summary = train(c, workdir)
    return family, base, workdir, summary, tok.piece_to_id(eot)


def test_trains_packed_masked_and_sharded(trained):
    family, _, workdir, summary, _ = trained
    assert summary["final_step"] == 4 and summary["loss"] < summary["first_loss"]
    # FSDP over the 8 simulated devices: the embedding is split along its hidden axis.
    assert "fsdp" in summary["param_shardings"]["embed_tokens"]
    with open(os.path.join(workdir, "data", "meta.json")) as f:
        meta = json.load(f)
    assert meta["chat_format"]["template"] == "hf"
    train_split = meta["splits"]["train"]
    assert 0.3 < train_split["target_tokens"] / train_split["tokens"] < 0.9  # assistant-only targets
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert min(r["packing_efficiency"] for r in rows if "packing_efficiency" in r) > 0.8


def test_export_carries_template_eos_and_tokenizer(trained):
    family, base, _, summary, eot_id = trained
    hf_dir = summary["hf_dir"]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    assert type(theirs).__name__ == {"llama3": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
                                     "mistral": "MistralForCausalLM"}[family]
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert hf_tok.chat_template == transformers.AutoTokenizer.from_pretrained(base).chat_template
    with open(os.path.join(hf_dir, "generation_config.json")) as f:
        eos = json.load(f)["eos_token_id"]
    assert eot_id in (eos if isinstance(eos, list) else [eos])
    if family == "llama3":  # both of the model's own EOS ids survive
        assert set(eos) == {hf_tok.convert_tokens_to_ids("<|end_of_text|>"), eot_id}
    # The server renders the export's template and stops at its end-of-turn token too.
    from vicuna_jax.serve.server import load_engine

    engine, tokenizer = load_engine(hf_dir, template="auto", warmup=False, max_batch=1)
    try:
        assert engine.batch.is_eos(eot_id)
    finally:
        engine.shutdown()


def test_export_equals_checkpoint_and_greedy_output_equals_transformers(trained):
    family, _, workdir, summary, eot_id = trained
    hf_dir = summary["hf_dir"]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    cfg, params = ckpt_lib.load_params(workdir)
    tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, (1, 40))
    ours = np.asarray(model_from_params(cfg, params)(tokens)[0])
    np.testing.assert_allclose(ours, hf_logits(theirs, tokens), atol=1e-4)

    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    messages = [{"role": "user", "content": "What is JAX? Answer in one line, and say why people like it "
                 "for training large language models on accelerators."}]
    prompt = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    assert len(prompt) > 24  # longer than Mistral's window: decoding runs with the window sliding
    gen = load_generator(hf_dir, template="auto")  # the export's own template, as generate/chat/serve use it
    assert encode_prompt(messages, gen.tokenizer, template="auto") == prompt
    assert eot_id in set(np.asarray(gen.eos_ids).tolist())
    # Without EOS on either side: every token compared (prompt longer than Mistral's window of 16).
    no_eos = Generator(model_from_params(cfg, params), eos_token_ids=[-5], chunk=8)
    got = no_eos.generate_ids([prompt], SamplingParams(max_new_tokens=NEW_TOKENS))[0]
    want = theirs.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS,
                           min_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0)[0, len(prompt):]
    assert got == want.tolist(), family
    # With the export's EOS ids on both sides: the same reply, ending at the same place.
    got = gen.generate_ids([prompt], SamplingParams(max_new_tokens=NEW_TOKENS))[0]
    want = theirs.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS,
                           pad_token_id=0)[0, len(prompt):].tolist()
    if want and want[-1] in set(np.asarray(gen.eos_ids).tolist()):
        want = want[:-1]
    assert got == want, family
