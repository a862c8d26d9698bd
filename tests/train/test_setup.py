"""The one training-setup builder: shardings of parameters and optimizer state, typed config, init."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from vicuna_jax import parallel
from vicuna_jax.model.config import ConfigError, LlamaConfig
from vicuna_jax.train import config as config_lib
from vicuna_jax.train.config import RunOptions, TrainConfig
from vicuna_jax.train.optimizer import OptimizerConfig
from vicuna_jax.train.setup import build

MODEL = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                    num_kv_heads=2, max_position_embeddings=64)


def small_cfg(**overrides) -> TrainConfig:
    return TrainConfig(model=MODEL, run=RunOptions(dtype="float32", scan_layers=False, remat_policy="none",
                                                   attention="xla"),
                       optimizer=OptimizerConfig(learning_rate=1e-3, weight_decay=0.1), seq_len=16,
                       batch_size=8, loss_chunk_size=0, **overrides)


def test_optimizer_state_shardings_mirror_the_parameters():
    mesh = parallel.make_mesh(data=2, fsdp=4)
    setup = build(small_cfg(), mesh, total_steps=10)
    sh = setup.state_shardings
    flat_params = dict(jax.tree_util.tree_flatten_with_path(sh.params)[0])
    # AdamW's two moments carry exactly the parameter shardings; everything else (counts) is replicated.
    mirrored, replicated = 0, 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(sh.opt_state)[0]:
        tail = tuple(p for p in path if isinstance(p, jax.tree_util.DictKey))
        if tail in flat_params:
            assert leaf == flat_params[tail], (path, leaf)
            mirrored += 1
        else:
            assert leaf.spec == P(), path
            replicated += 1
    assert mirrored == 2 * len(flat_params)
    assert replicated >= 1
    assert "fsdp" in str(sh.params["embed_tokens"].spec)
    assert sh.params["norm"]["scale"].spec == P(None)


def test_abstract_state_matches_the_initialised_state():
    mesh = parallel.make_mesh(data=1, fsdp=8)
    setup = build(small_cfg(), mesh, total_steps=10)
    state = setup.init_state()
    for want, got in zip(jax.tree.leaves(setup.abstract_state), jax.tree.leaves(state), strict=True):
        assert want.shape == got.shape and want.dtype == got.dtype
        assert got.sharding == want.sharding
    # A step runs with the batch sharding, donates the state and reports typed metrics.
    rng = np.random.RandomState(0)
    batch = {k: rng.randint(1, 100, (8, 16)).astype(np.int32) for k in
             ("input_tokens", "target_tokens", "positions")}
    batch["segment_ids"] = np.ones((8, 16), np.int32)
    batch["loss_mask"] = np.ones((8, 16), np.float32)
    with jax.set_mesh(mesh):
        new, metrics = setup.train_step(state, setup.global_batch(batch))
    assert int(new.step) == 1 and bool(metrics.finite) and float(metrics.target_tokens) == 8 * 16


def test_host_params_are_placed_and_cast():
    mesh = parallel.make_mesh(data=1, fsdp=8)
    setup = build(small_cfg(), mesh, total_steps=10)
    host = jax.tree.map(lambda a: np.full(a.shape, 0.5, np.float64), setup.abstract_state.params)
    state = setup.init_state(host)
    leaf = state.params["layers"]["mlp"]["up_proj"]["kernel"]
    assert leaf.dtype == jnp.float32 and float(leaf[0, 0, 0]) == 0.5
    assert leaf.sharding == setup.state_shardings.params["layers"]["mlp"]["up_proj"]["kernel"]


def test_load_validates_once_into_a_frozen_config():
    from vicuna_jax.train.config import base_config

    c = base_config()
    c.model, c.seq_len, c.batch_size = "tiny", 128, 8
    c.optimizer.learning_rate = 3e-4
    cfg = config_lib.load(c, num_devices=8)
    assert cfg.optimizer.learning_rate == 3e-4 and cfg.run.remat_policy == c.remat_policy
    assert cfg.source["seq_len"] == 128  # written to train_config.json as given
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seq_len = 3
    bad = ml_collections.ConfigDict(c.to_dict())
    bad.optimizer.b1 = 1.5
    with pytest.raises(ConfigError, match="config.optimizer.b1"):
        config_lib.load(bad, num_devices=8)
