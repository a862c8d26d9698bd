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
    """A (data, fsdp, tensor) mesh with Auto axis types; -1 for one axis means 'all remaining devices'."""
    devices = list(jax.devices() if devices is None else devices)
    auto = (jax.sharding.AxisType.Auto,) * 3
    return jax.make_mesh(mesh_shape(data, fsdp, tensor, len(devices)), MESH_AXES, axis_types=auto,
                         devices=devices)


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
