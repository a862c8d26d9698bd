"""The one place the sharded training setup is built: the trainer, the memory planner and both benchmarks
call `build`, so what they plan or measure is exactly what trains.

`build(cfg, mesh, total_steps)` gives the model's graphdef; the parameter, optimizer-state and batch
shardings (parameters from their logical axes through `parallel.LOGICAL_RULES`, optimizer state from optax's
own structure); the abstract (sharded `ShapeDtypeStruct`) state; the optimizer and its schedule; and the
jitted train and eval steps with explicit shardings and donation. Nothing is allocated until `init_state`.
With `config.lora` on, what trains is LoRA's adapters and the base model rides in `TrainState.frozen`
(`vicuna_jax.lora.setup` supplies those pieces; the step, shardings and donation are built here alike).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vicuna_jax import parallel
from vicuna_jax.data.pack import BATCH_KEYS
from vicuna_jax.model.llama import abstract_model, build_model, model_params
from vicuna_jax.train.config import TrainConfig
from vicuna_jax.train.optimizer import lr_schedule, make_optimizer
from vicuna_jax.train.step import TrainState, make_eval_step, make_train_step


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    cfg: TrainConfig
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
    state_shardings: TrainState
    batch_sharding: NamedSharding
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    train_step: Callable  # jitted: (TrainState, batch) -> (TrainState, StepMetrics); donates the state
    eval_step: Callable  # jitted: (TrainState, batch) -> (loss sum, target tokens)
    lora: Any = None  # vicuna_jax.lora.setup.LoRAParts when config.lora is on

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def abstract_batch(self, rows: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
        """One global batch as sharded ShapeDtypeStructs (for AOT compilation)."""
        shape = (rows or self.cfg.batch_size, self.cfg.seq_len)
        return {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "loss_mask" else jnp.int32,
                                        sharding=self.batch_sharding) for k in BATCH_KEYS}

    def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a batch, assembled into global arrays with the batch sharding."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
                for k, v in local.items() if k in BATCH_KEYS}

    def init_state(self, host_params: Any = None, host_adapters: Any = None) -> TrainState:
        """A fresh state, placed per the shardings: random parameters (seeded by `cfg.seed`), or
        `host_params` (e.g. a Hugging Face model's, as numpy) cast to the parameter dtype.

        With LoRA, `host_params` is the base model (required) and goes to `frozen`; the adapters are
        `host_adapters` (an imported adapter) or freshly initialised."""
        shardings, abstract = self.state_shardings, self.abstract_state
        if self.lora is not None:
            params = self.lora.initial_adapters(host_adapters)
            opt_state = jax.jit(self.tx.init, out_shardings=shardings.opt_state)(params)
            return TrainState(params=params, opt_state=opt_state,
                              step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
                              frozen=self.lora.place_frozen(host_params))
        if host_params is None:
            cfg = self.cfg
            params = jax.jit(lambda: model_params(build_model(cfg.model, seed=cfg.seed,
                                                              **cfg.run.model_options())),
                             out_shardings=shardings.params)()
        else:
            def place(x, want):
                if isinstance(x, jax.Array) and x.sharding == want.sharding and x.dtype == want.dtype:
                    return x  # restored in place already (config.init_from)
                return jax.make_array_from_callback(want.shape, want.sharding,
                                                    lambda idx: np.asarray(x[idx], want.dtype))

            params = jax.tree.map(place, host_params, abstract.params)
        opt_state = jax.jit(self.tx.init, out_shardings=shardings.opt_state)(params)
        return TrainState(params=params, opt_state=opt_state,
                          step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step))


def build(cfg: TrainConfig, mesh: jax.sharding.Mesh, total_steps: int) -> TrainSetup:
    """The sharded training setup of `cfg` on `mesh`; `total_steps` sets the learning-rate schedule."""
    lora = loss_fn = eval_loss_fn = abstract_frozen = frozen_sh = None
    if cfg.lora.enabled:
        from vicuna_jax.lora.setup import lora_parts

        lora = lora_parts(cfg, mesh)
        graphdef, abstract_params, params_sh = lora.graphdef, lora.abstract_adapters, lora.adapter_shardings
        abstract_frozen, frozen_sh = lora.abstract_frozen, lora.frozen_shardings
        loss_fn, eval_loss_fn = lora.loss_fn, lora.eval_loss_fn
    else:
        abstract = abstract_model(cfg.model, **cfg.run.model_options())
        graphdef = nnx.graphdef(abstract)
        abstract_params = model_params(abstract)
        params_sh = parallel.param_shardings(abstract, mesh)
    tx = make_optimizer(cfg.optimizer, total_steps)
    schedule = lr_schedule(cfg.optimizer, total_steps)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)

    replicated = NamedSharding(mesh, P())
    state_sh = TrainState(params=params_sh,
                          opt_state=parallel.opt_state_shardings(tx, abstract_opt, params_sh, mesh),
                          step=replicated, frozen=frozen_sh)
    batch_sh = NamedSharding(mesh, parallel.logical_to_spec(("batch", "length")))
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        TrainState(params=abstract_params, opt_state=abstract_opt, step=jax.ShapeDtypeStruct((), jnp.int32),
                   frozen=abstract_frozen),
        state_sh)

    train_step = jax.jit(make_train_step(graphdef, tx, schedule, cfg.grad_accum_steps, cfg.loss_chunk_size,
                                         loss_fn),
                         in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated),
                         donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(graphdef, cfg.loss_chunk_size, eval_loss_fn),
                        in_shardings=(state_sh, batch_sh), out_shardings=replicated)
    return TrainSetup(cfg=cfg, mesh=mesh, graphdef=graphdef, abstract_state=abstract_state,
                      state_shardings=state_sh, batch_sharding=batch_sh, tx=tx, schedule=schedule,
                      train_step=train_step, eval_step=eval_step, lora=lora)
