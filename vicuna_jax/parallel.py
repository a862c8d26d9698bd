"""Device mesh and logical-axis sharding rules.

The model names the axes of every parameter and activation logically ("embed", "mlp", "batch"...);
`LOGICAL_RULES` is the one table that maps those names to mesh axes. Changing the parallelism layout means
changing this table or the mesh shape, never the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types; -1 for one axis means 'all remaining devices'."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive or -1, got data={data} fsdp={fsdp} tensor={tensor}")
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices are not divisible by data*fsdp*tensor={known}")
        sizes[sizes.index(-1)] = len(devices) // known
    total = int(np.prod(sizes))
    if total != len(devices):
        raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {total} devices, "
                         f"but {len(devices)} are available")
    auto = (jax.sharding.AxisType.Auto,) * 3
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=auto, devices=devices)


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
