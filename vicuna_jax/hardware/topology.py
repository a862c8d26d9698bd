"""Compile-only TPU devices for a Cloud TPU name, on a host without a TPU.

`jax.experimental.topologies.get_topology_desc` (with libtpu installed) describes a TPU slice as devices that
the real TPU compiler can target but nothing can run on: a `Mesh` over them and `jit(...).lower(...)
.compile()` give TPU's own buffer assignment and Mosaic-lowered Pallas kernels. Names are Cloud TPU's
accelerator types, where v4 and v5p count TensorCores (two per chip) and v5e and v6e count chips:

    v4-8 v4-16 ... v4-4096, v5p-8 v5p-16 ... v5p-12288, v5e-1 v5e-4 ... v5e-256, v6e-1 v6e-4 ... v6e-256

or libtpu's own `<generation>:<chips per dimension>` form (`v5p:2x2x1`, `v6e:4x4`); and `h100-N`, NVIDIA
H100s compiled by XLA's GPU compiler without a GPU (`gpu_target`). Host layouts follow the
Cloud machines (4 chips per v4/v5p host, 1, 4 or 8 per v5e/v6e host), so a multi-host slice compiles as the
multi-process program it will be.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import tempfile
from collections.abc import Iterator
from typing import Any

from vicuna_jax.cli import UserError
from vicuna_jax.hardware.chips import CHIPS, Chip

# Chips -> slice shape, as Cloud TPU lays them out. 3D tori (v4, v5p) and 2D (v5e, v6e).
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
              256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16),
              6144: (16, 16, 24)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
              256: (16, 16)}
_MAX_CHIPS = {"v4": 4096, "v5p": 6144, "v5e": 256, "v6e": 256}
_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}  # what the Cloud name counts
_ALIASES = {"v4": "v4", "v5p": "v5p", "v5": "v5p", "v5e": "v5e", "v5litepod": "v5e", "v6e": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as the user wrote it
    chip: Chip
    shape: tuple[int, ...]  # chips per dimension of one slice
    slices: int = 1

    @property
    def chips(self) -> int:
        return math.prod(self.shape) * self.slices

    @property
    def platform(self) -> str:
        return "gpu" if self.chip.name == "h100" else "tpu"

    @property
    def libtpu_name(self) -> str:
        """libtpu's name of the slice (for a GPU topology: XLA's "<partitions>x<hosts>x<GPUs per host>")."""
        if self.platform == "gpu":
            return f"1x{self.shape[0]}x{self.shape[1]}"
        return f"{self.chip.name}:{'x'.join(map(str, self.shape))}"

    @property
    def cloud_name(self) -> str:
        return f"{self.chip.name}-{math.prod(self.shape) * _CORES_PER_CHIP.get(self.chip.name, 1)}"

    def describe_kwargs(self) -> dict[str, Any]:
        """The rest of `get_topology_desc`'s arguments: one device per chip (v4/v5p's two TensorCores as
        one "megacore" device, as JAX runs them), Cloud's chips per host, and wrap-around links where the
        slice is a torus (full 4x4x4 cubes; 16-chip sides of v5e/v6e)."""
        three_d = len(self.shape) == 3
        if three_d:
            cubes = all(n % 4 == 0 for n in self.shape)  # whole 4x4x4 cubes get optical wrap-around links
            hosts, wrap = (2, 2, 1), (cubes,) * 3
        else:
            per_host = {1: (1, 1, 1), 8: (2, 4, 1)}.get(math.prod(self.shape), (2, 2, 1))
            hosts, wrap = per_host, (*(n == 16 for n in self.shape), False)
        kwargs = dict(chips_per_host_bounds=hosts, wrap=wrap, num_slices=self.slices)
        if three_d:
            kwargs["chip_config_name"] = "megacore"
        return kwargs


def valid_names() -> dict[str, list[str]]:
    """Generation -> its Cloud TPU names, smallest first."""
    names = {}
    for gen, shapes in (("v4", _SHAPES_3D), ("v5p", _SHAPES_3D), ("v5e", _SHAPES_2D), ("v6e", _SHAPES_2D)):
        names[gen] = [f"{gen}-{n * _CORES_PER_CHIP[gen]}" for n in shapes if n <= _MAX_CHIPS[gen]]
    return names


def _unknown(name: str) -> UserError:
    listed = "; ".join(f"{gen}-" + "/".join(n.split("-")[1] for n in names)
                       for gen, names in valid_names().items())
    return UserError(f"unknown TPU topology {name!r}; valid: {listed}; or <generation>:<chips per dimension> "
                     "(v4:2x2x1, v5p:4x4x4, v5e:2x4, v6e:4x4); or h100-1/2/4/8/16/... (H100s, 8 per host)")


def parse(name: str, slices: int = 1) -> Topology:
    """`name` as a Topology; UserError naming the valid names when it is not one."""
    if slices < 1:
        raise UserError(f"--slices must be >= 1, got {slices}")
    gpus = re.fullmatch(r"h100-(\d+)", name.strip())
    if gpus:  # hosts of 8 GPUs (an HGX/DGX H100 node); fewer on one host
        n = int(gpus.group(1))
        if slices != 1 or n < 1 or (n > 8 and n % 8) or (n < 8 and 8 % n):
            raise _unknown(name)
        return Topology(name, CHIPS["h100"], (1, n) if n <= 8 else (n // 8, 8))
    cloud = re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", name.strip())
    explicit = re.fullmatch(r"(v4|v5p|v5|v5e|v6e):(\d+(?:x\d+)+)", name.strip())
    if cloud:
        gen = _ALIASES[cloud.group(1)]
        count = int(cloud.group(2))
        chips, rest = divmod(count, _CORES_PER_CHIP[gen])
        shapes = _SHAPES_3D if gen in ("v4", "v5p") else _SHAPES_2D
        if rest or chips not in shapes or chips > _MAX_CHIPS[gen]:
            raise _unknown(name)
        return Topology(name, CHIPS[gen], shapes[chips], slices)
    if explicit:
        gen = _ALIASES[explicit.group(1)]
        shape = tuple(int(n) for n in explicit.group(2).split("x"))
        if len(shape) != (3 if gen in ("v4", "v5p") else 2) or min(shape) < 1:
            raise _unknown(name)
        return Topology(name, CHIPS[gen], shape, slices)
    raise _unknown(name)


def libtpu_missing_reason() -> str | None:
    """Why TPU compilation is impossible in this environment (None when libtpu is importable)."""
    import importlib.util

    import jax

    if importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"):
        return ("compiling for TPU needs libtpu, which is not installed: "
                f"pip install 'jax[tpu]=={jax.__version__}' (about 700 MB; or pip install -e '.[tpu-aot]'). "
                "It adds the TPU compiler only: JAX keeps running on this host's CPU")
    return None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """libtpu prints a page of Cloud-VM warnings (no accelerator type, no worker hostnames) to the process's
    stderr when it loads on a machine that is not a TPU VM; they are expected here. Hidden on success,
    repeated when the call fails so nothing that explains a failure is lost."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def compile_only_devices(topology: Topology) -> list[Any]:
    """The slice's devices (compile-only: they have no runtime). UserError when libtpu (or, for H100s, the
    CUDA plugin) is missing."""
    if topology.platform == "gpu":
        from vicuna_jax.hardware.gpu_target import compile_only_gpu_devices

        return compile_only_gpu_devices(*topology.shape)
    reason = libtpu_missing_reason()
    if reason:
        raise UserError(reason)
    from jax.experimental import topologies

    # libtpu takes a machine-wide lock when it loads, to keep two processes off one TPU; compile-only use
    # touches no TPU, and the lock would serialise every planner and test process on this host.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        with _quiet_stderr():
            desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.libtpu_name,
                                                **topology.describe_kwargs())
    except Exception as e:  # noqa: BLE001 - libtpu's refusal (e.g. a shape it has no layout for), in one line
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"libtpu cannot describe TPU topology {topology.name!r} "
                        f"({topology.libtpu_name}): {message}") from None
    devices = list(desc.devices)
    if len(devices) != topology.chips:  # the one-device-per-chip reading of every figure depends on it
        raise UserError(f"TPU topology {topology.name!r} gave {len(devices)} devices for {topology.chips} "
                        "chips")
    return devices
