"""Compile-only NVIDIA H100 devices on a host without a GPU (XLA's deviceless GPU compilation).

jax 0.10.2's CUDA PJRT plugin (`jax-cuda13-pjrt` + `jax-cuda13-plugin`, no CUDA libraries needed) creates a
GPU topology without a client when it is given the target GPU's description (a `GpuTargetConfigProto` in
text form, option `target_config`) and a shape (option `topology`: "<partitions>x<hosts>x<GPUs per host>").
`jax.experimental.topologies.get_topology_desc(platform="cuda")` without those options answers "No visible
GPU devices" (or "topology not implemented for cuda" when the plugin is absent or failed to register). XLA's
GPU pipeline then runs as for a real H100: Triton GEMM fusions, the Pallas Triton kernel, PTX (the plugin
links NVIDIA's PTX compiler). cuDNN fusions cannot be built: jax looks for libcudnn before lowering them.

The description below is written from NVIDIA's published H100 SXM5 80 GB properties (what
`cudaGetDeviceProperties` reports on one): compute capability 9.0, 132 SMs, 228 KiB shared memory per SM
(227 KiB per block opt-in), 50 MiB L2, 3.35 TB/s HBM3, 1.98 GHz boost.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from vicuna_jax.cli import UserError

H100_SXM = {
    "threads_per_block_limit": 1024, "threads_per_warp": 32, "shared_memory_per_block": 48 * 1024,
    "shared_memory_per_core": 228 * 1024, "threads_per_core_limit": 2048, "core_count": 132,
    "fpus_per_core": 128, "block_dim_limit_x": 2**31 - 1, "block_dim_limit_y": 65535,
    "block_dim_limit_z": 65535, "memory_bandwidth": 3_352_320_000_000, "l2_cache_size": 50 * 2**20,
    "clock_rate_ghz": 1.98, "device_memory_size": 84_942_979_072, "shared_memory_per_block_optin": 227 * 1024,
    "registers_per_core_limit": 65536, "registers_per_block_limit": 65536,
}
H100_NAME = "NVIDIA H100 80GB HBM3"


def target_config_text(info: dict[str, Any] = H100_SXM, name: str = H100_NAME, cudnn: str = "9.10.0") -> str:
    """A `stream_executor.GpuTargetConfigProto` in text form for a compute-capability-9.0 GPU."""
    fields = "\n".join(f"  {key}: {value}" for key, value in info.items())
    major, minor, patch = cudnn.split(".")
    return (f"gpu_device_info {{\n{fields}\n  cuda_compute_capability {{ major: 9 minor: 0 }}\n}}\n"
            f'platform_name: "CUDA"\ndnn_version_info {{ major: {major} minor: {minor} patch: {patch} }}\n'
            f'device_description_str: "{name}"\n')


def have_cuda_plugin() -> bool:
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda13") is not None
    except ModuleNotFoundError:  # no jax_plugins namespace at all
        return False


def cuda_plugin_missing_reason() -> str | None:
    if not have_cuda_plugin():
        import jax

        return ("compiling for an H100 without one needs JAX's CUDA PJRT plugin (no CUDA libraries): pip "
                f"install 'jax-cuda13-plugin=={jax.__version__}' 'jax-cuda13-pjrt=={jax.__version__}' "
                "(about 130 MB; or pip install -e '.[gpu-aot]')")
    return None


def compile_only_gpu_devices(hosts: int, per_host: int) -> list[Any]:
    """`hosts` x `per_host` compile-only H100s (one partition)."""
    reason = cuda_plugin_missing_reason()
    if reason:
        raise UserError(reason)
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(platform="cuda", topology_name="h100",
                                            target_config=target_config_text(),
                                            topology=f"1x{hosts}x{per_host}")
    except Exception as e:  # noqa: BLE001 - the plugin's refusal, in one line
        raise UserError(f"the CUDA plugin cannot describe {hosts}x{per_host} H100s: "
                        f"{str(e).strip().splitlines()[0]}") from None
    return list(desc.devices)
