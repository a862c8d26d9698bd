"""Device mesh and logical-axis sharding rules.

The model names the axes of every parameter and activation logically ("embed", "mlp", "batch"...);
`LOGICAL_RULES` is the one table that maps those names to mesh axes. Changing the parallelism layout means
changing this table or the mesh shape, never the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vicuna_jax.cli import UserError, unknown_name

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    # parameters
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "norm": None,
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_mlp": "tensor",
    "act_heads": "tensor",
    "act_vocab": "tensor",
}


def logical_to_spec(axes: Sequence[str | None] | None,
                    rules: dict[str, str | tuple[str, ...] | None] | None = None) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once per spec."""
    if axes is None:
        return PartitionSpec()
    rules = LOGICAL_RULES if rules is None else rules
    used: set[str] = set()
    out = []
    for name in axes:
        mesh_axes = rules.get(name) if name is not None else None
        if mesh_axes is None:
            out.append(None)
            continue
        as_tuple = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        free = tuple(a for a in as_tuple if a not in used)
        used.update(free)
        out.append(free[0] if len(free) == 1 else (free or None))
    return PartitionSpec(*out)


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes using exactly `num_devices`; -1 for one axis = the remaining devices.

    Errors start with the config key they concern (`mesh.fsdp: ...`, `mesh: ...`).
    """
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for axis, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
            raise ValueError(f"mesh.{axis}: must be a positive integer or -1, got {size!r}")
    if sum(s == -1 for s in sizes.values()) > 1:
        raise ValueError("mesh: at most one of data, fsdp, tensor may be -1")
    fixed = int(np.prod([s for s in sizes.values() if s != -1]))
    if num_devices % fixed:
        raise ValueError(f"mesh: data*fsdp*tensor = {fixed} does not divide the {num_devices} devices")
    resolved = tuple(num_devices // fixed if s == -1 else s for s in sizes.values())
    if int(np.prod(resolved)) != num_devices:
        raise ValueError(f"mesh: data={resolved[0]} x fsdp={resolved[1]} x tensor={resolved[2]} must use all "
                         f"{num_devices} devices")
    return resolved  # type: ignore[return-value]


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types; -1 for one axis means 'all remaining devices'.

    Devices of several TPU slices (multi-slice, joined by the data-center network) get a hybrid mesh: the
    slices split `data` when it divides evenly over them (only gradients then cross the slow network), else
    `fsdp`; the rest of each axis stays inside a slice."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * 3
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices == 1:
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    from jax.experimental import mesh_utils

    axis = 0 if shape[0] % slices == 0 else 1
    if shape[axis] % slices:
        raise ValueError(f"mesh: {slices} slices divide neither data={shape[0]} nor fsdp={shape[1]}")
    dcn = tuple(slices if i == axis else 1 for i in range(3))
    ici = tuple(n // slices if i == axis else n for i, n in enumerate(shape))
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    return Mesh(grid, MESH_AXES, axis_types=auto)


def current_mesh() -> jax.sharding.AbstractMesh | None:
    """The mesh set with `jax.set_mesh`, or None when there is none (or it has a single device)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size == 1:
        return None
    return mesh


def shard_activation(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Constrains an activation's sharding by logical names when a multi-device mesh is active."""
    mesh = current_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes)))


def mesh_axes(logical: str, rules: dict[str, str | tuple[str, ...] | None] | None = None) -> tuple[str, ...]:
    """The mesh axes one logical axis maps to (in order; empty when it is replicated)."""
    axes = (LOGICAL_RULES if rules is None else rules).get(logical)
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


# ------------------------------------------------------------------ parameter and optimizer shardings


def param_shardings(model: Any, mesh: Mesh, variables: Any = None) -> Any:
    """NamedShardings for `model`'s parameters (an NNX module, abstract or not) from each parameter's
    logical axes through `LOGICAL_RULES`, as a tree shaped like `model_params(model)`. `variables`: the
    variable type (NNX filter) to cover instead of `nnx.Param` (e.g. LoRA's adapters).

    A dimension that does not divide evenly over its mesh axes is replicated instead (with a warning)."""
    import math

    from absl import logging
    from flax import nnx

    which = nnx.Param if variables is None else variables
    specs = nnx.to_pure_dict(nnx.get_partition_spec(nnx.state(model, which)))
    shapes = nnx.to_pure_dict(nnx.state(model, which))

    def to_sharding(logical: PartitionSpec, leaf: Any) -> NamedSharding:
        spec = list(logical_to_spec(tuple(logical)))
        for dim, axes in enumerate(spec):
            if axes is None:
                continue
            size = math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
            if leaf.shape[dim] % size:
                logging.warning("dimension %d (%d) of a %s parameter does not divide over mesh axes %s (%d); "
                                "replicating it", dim, leaf.shape[dim], leaf.shape, axes, size)
                spec[dim] = None
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(to_sharding, specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def opt_state_shardings(tx: Any, abstract_opt_state: Any, params_shardings: Any, mesh: Mesh) -> Any:
    """The optimizer state's shardings: every leaf that mirrors a parameter (Adam's moments) gets that
    parameter's sharding, found by optax from the optimizer's own structure; the rest (counts) replicate."""
    import optax

    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_map_params(tx, lambda _, sharding: sharding, abstract_opt_state, params_shardings,
                                 transform_non_params=lambda _: replicated,
                                 is_leaf=lambda x: isinstance(x, NamedSharding))


# ------------------------------------------------------------------ several processes (multi-host)


DISTRIBUTED_MODES = ("auto", "on", "off")


def maybe_initialize_distributed(mode: str, key: str = "config.distributed") -> None:
    """`jax.distributed.initialize()` for multi-host runs: TPU pods and SLURM are detected by JAX itself;
    otherwise JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID name the cluster. `key` names the
    setting in errors."""
    import os

    from absl import logging

    if mode not in DISTRIBUTED_MODES:
        raise UserError(f"{key}: {unknown_name('value', mode, DISTRIBUTED_MODES)}")
    env = os.environ
    explicit = "JAX_COORDINATOR_ADDRESS" in env
    detected = explicit or int(env.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in env \
        or "MEGASCALE_COORDINATOR_ADDRESS" in env
    if mode == "off" or (mode == "auto" and not detected):
        return
    if jax.distributed.is_initialized():
        return
    if explicit:
        if env.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(env["JAX_NUM_PROCESSES"]),
                                   process_id=int(env["JAX_PROCESS_ID"]))
    else:
        try:
            jax.distributed.initialize()
        except ValueError as e:  # `on` without a cluster JAX can detect
            raise UserError(f"{key}={mode}: jax.distributed.initialize() found no cluster ({e}); set "
                            "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID, or use "
                            "auto") from None
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def sync_processes(name: str) -> None:
    """A barrier across processes (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True on every process if it is true on any one (e.g. one process got SIGTERM: all stop together)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def gather_to_host(tree: Any) -> Any:
    """Every process gets the full value of a sharded tree (for exports written by process 0)."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
