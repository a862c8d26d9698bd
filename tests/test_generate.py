"""KV-cache generation: token-identical to transformers' greedy generate; batching changes nothing."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hf_models import make_hf_llama, save_hf_llama  # noqa: E402

from vicuna_jax.convert import load_hf  # noqa: E402
from vicuna_jax.generate import Generator, SamplingParams  # noqa: E402
from vicuna_jax.model.llama import model_from_params  # noqa: E402

NEW_TOKENS = 32


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    hf = make_hf_llama("gqa", seed=5)
    cfg, params = load_hf(save_hf_llama(hf, str(tmp_path_factory.mktemp("gen"))))
    return hf, cfg, Generator(model_from_params(cfg, params), chunk=8)


def _hf_greedy(hf, prompt, n):
    out = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                      eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _prompts(cfg):
    rng = np.random.RandomState(7)
    return [[1] + rng.randint(3, cfg.vocab_size, n).tolist() for n in (5, 17, 40)]


def test_greedy_matches_transformers_generate(models):
    hf, cfg, gen = models
    for prompt in _prompts(cfg):
        # No EOS on either side, so all NEW_TOKENS tokens are compared.
        ours = Generator(gen_model(gen), eos_token_ids=[-5], chunk=8).generate_ids(
            [prompt], SamplingParams(max_new_tokens=NEW_TOKENS))[0]
        theirs = _hf_greedy(hf, prompt, NEW_TOKENS)
        assert len(ours) == NEW_TOKENS >= 24
        assert ours == theirs, f"prompt of {len(prompt)} tokens"


def gen_model(gen):
    from flax import nnx

    return nnx.merge(gen.graphdef, gen.state)


def test_batched_equals_one_by_one(models):
    _, cfg, _ = models
    gen = Generator(gen_model(models[2]), eos_token_ids=[-5], chunk=8)
    prompts = _prompts(cfg)
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    batched = gen.generate_ids(prompts, params)
    single = [gen.generate_ids([p], params)[0] for p in prompts]
    assert batched == single


def test_eos_stops_each_row_independently(models):
    _, cfg, gen = models
    prompts = _prompts(cfg)
    free = Generator(gen_model(gen), eos_token_ids=[-5], chunk=8).generate_ids(
        prompts, SamplingParams(max_new_tokens=NEW_TOKENS))
    # Pretend the 6th token of row 1 is EOS: that row stops there, the others run on.
    eos = free[1][5]
    stopped = Generator(gen_model(gen), eos_token_ids=[eos], chunk=8).generate_ids(
        prompts, SamplingParams(max_new_tokens=NEW_TOKENS))
    for row, full in zip(stopped, free, strict=True):
        cut = full.index(eos) if eos in full else len(full)
        assert row == full[:cut]


def test_sampling_is_seeded_and_filters_work(models):
    _, cfg, gen = models
    prompt = _prompts(cfg)[1]
    greedy = gen.generate_ids([prompt], SamplingParams(max_new_tokens=12))[0]
    hot = SamplingParams(max_new_tokens=12, temperature=1.5, seed=3)
    a = gen.generate_ids([prompt], hot)[0]
    b = gen.generate_ids([prompt], hot)[0]
    c = gen.generate_ids([prompt], SamplingParams(max_new_tokens=12, temperature=1.5, seed=4))[0]
    assert a == b and a != c
    top1 = SamplingParams(max_new_tokens=12, temperature=1.5, top_k=1)
    assert gen.generate_ids([prompt], top1)[0] == greedy
    assert gen.generate_ids([prompt], SamplingParams(max_new_tokens=12, temperature=1.5,
                                                     top_p=1e-6))[0] == greedy


def test_context_limits(models):
    _, cfg, gen = models
    with pytest.raises(ValueError, match="does not fit the model's context"):
        gen.generate_ids([[1] * cfg.max_position_embeddings], SamplingParams(max_new_tokens=4))
    # Near the end of the context, generation stops at the context length.
    prompt = [1] * (cfg.max_position_embeddings - 3)
    no_eos = Generator(gen_model(gen), eos_token_ids=[-5])
    out = no_eos.generate_ids([prompt], SamplingParams(max_new_tokens=50))
    assert len(out[0]) == 3
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=-1)


def test_sampled_rows_do_not_depend_on_batch_mates(models):
    _, cfg, gen = models
    prompts = _prompts(cfg)
    hot = [SamplingParams(max_new_tokens=10, temperature=1.3, seed=100 + i) for i in range(3)]
    together = gen.generate_ids(prompts, hot)
    alone = [gen.generate_ids([p], [h])[0] for p, h in zip(prompts, hot, strict=True)]
    reordered = gen.generate_ids(prompts[::-1], hot[::-1])[::-1]
    assert together == alone == reordered
    # Per-row parameters: a greedy row next to sampled rows stays greedy.
    mixed = [SamplingParams(max_new_tokens=10), hot[1], hot[2]]
    greedy = gen.generate_ids([prompts[0]], SamplingParams(max_new_tokens=10))[0]
    assert gen.generate_ids(prompts, mixed)[0] == greedy
    with pytest.raises(ValueError, match="2 SamplingParams for 3 prompts"):
        gen.generate_ids(prompts, hot[:2])


def test_one_generation_at_a_time_and_the_cache_is_freed(models):
    _, cfg, gen = models
    prompts = _prompts(cfg)
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    first = gen.stream_ids(prompts, params)
    next(first)
    assert gen.batch.rows == 4  # three rows, in a power-of-two bucket
    assert gen.generate_ids(prompts[:1], params)[0] == gen.generate_ids(prompts, params)[0]
    with pytest.raises(RuntimeError, match="another generation started"):
        next(first)
    assert (gen.batch.rows, gen.batch.length) == (1, 128)  # back to the smallest cache between calls
