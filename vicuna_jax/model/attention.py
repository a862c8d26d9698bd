"""Attention: one interface, several backends.

Shapes use suffixes: B batch, T query length, S key length, H query heads, K key/value heads, G = H // K
query heads per key/value head (GQA), D head dim.

`attention` is causal self-attention over a batch that may be packed: `segment_ids` (0 = padding) keep
tokens of different conversations from attending to each other; an optional sliding `window` (Mistral) lets
each query see only itself and the `window - 1` keys before it (HF: `kv_idx > q_idx - window`).
`cached_attention` is the decode path against a KV cache with an explicit boolean mask.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import logging
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from vicuna_jax import parallel
from vicuna_jax.model import attention_kernels as kernels

BACKENDS = ("auto", "xla", "cudnn", "pallas")

log = logging.getLogger(__name__)

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _grouped_scores(q_BxTxHxD: jax.Array, k_BxSxKxD: jax.Array) -> jax.Array:
    """q·k over GQA groups without repeating K: returns fp32 scores [B, K, G, T, S].

    The operands are made head-major ([B, K, G, T, D] x [B, K, S, D]) first, so XLA:CPU runs these batched
    matmuls and their backward-pass transposes on contiguous [T, D] tiles; other backends get the layout
    they would choose anyway."""
    b, t, h, d = q_BxTxHxD.shape
    kv_heads = k_BxSxKxD.shape[2]
    q_BxKxGxTxD = q_BxTxHxD.reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)
    k_BxKxSxD = k_BxSxKxD.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkgtd,bksd->bkgts", q_BxKxGxTxD, k_BxKxSxD, preferred_element_type=jnp.float32)
    return scores * (d**-0.5)


def _grouped_output(probs_BxKxGxTxS: jax.Array, v_BxSxKxD: jax.Array) -> jax.Array:
    b, kv_heads, g, t, _ = probs_BxKxGxTxS.shape
    v_BxKxSxD = v_BxSxKxD.transpose(0, 2, 1, 3)
    out_BxKxGxTxD = jnp.einsum("bkgts,bksd->bkgtd", probs_BxKxGxTxS.astype(v_BxSxKxD.dtype), v_BxKxSxD)
    return out_BxKxGxTxD.transpose(0, 3, 1, 2, 4).reshape(b, t, kv_heads * g, v_BxSxKxD.shape[-1])


def masked_attention(q_BxTxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array,
                     mask_BxTxS: jax.Array) -> jax.Array:
    """Reference attention with an explicit boolean mask (True = may attend). fp32 softmax.

    Rows whose mask is all False (padding queries) produce zeros rather than NaN.
    """
    scores = _grouped_scores(q_BxTxHxD, k_BxSxKxD)
    mask_Bx1x1xTxS = mask_BxTxS[:, None, None, :, :]
    scores = jnp.where(mask_Bx1x1xTxS, scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(mask_Bx1x1xTxS, probs, 0.0)
    return _grouped_output(probs, v_BxSxKxD).astype(q_BxTxHxD.dtype)


def causal_segment_mask(segment_ids_BxT: jax.Array | None, batch: int, length: int,
                        window: int | None = None) -> jax.Array:
    """[B, T, T] mask: causal (within `window` when given), and within the same non-padding segment when
    segment ids are given. Segments are contiguous, so row distances are distances within a segment."""
    idx = jnp.arange(length)
    causal_TxT = idx[:, None] >= idx[None, :]
    if window is not None:
        causal_TxT &= idx[:, None] - idx[None, :] < window
    if segment_ids_BxT is None:
        return jnp.broadcast_to(causal_TxT, (batch, length, length))
    same_BxTxT = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
    real_BxT = segment_ids_BxT != 0
    return causal_TxT[None] & same_BxTxT & real_BxT[:, :, None]


def xla_attention(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array,
                  segment_ids_BxT: jax.Array | None = None, window: int | None = None) -> jax.Array:
    """The reference backend: causal (+ segment, + sliding window) masked attention in plain XLA ops."""
    b, t = q_BxTxHxD.shape[:2]
    mask_BxTxT = causal_segment_mask(segment_ids_BxT, b, t, window)
    return masked_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, mask_BxTxT)


# --- backend selection --------------------------------------------------------------------------------------

_SIMULATED_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("simulated_platform",
                                                                                  default=None)
_WARNED: set[str] = set()


@contextlib.contextmanager
def simulate_platform(platform: str) -> Iterator[None]:
    """Testing hook: trace `attention` as if on `platform` ("gpu" or "tpu"), running its Pallas kernels in
    interpret mode on the host. cuDNN cannot be interpreted, so it stays unavailable. Applies to functions
    traced inside the block (jit caches are keyed on shapes, not on this), so use fresh jits in tests.
    """
    if platform not in ("gpu", "tpu"):
        raise ValueError(f"can only simulate 'gpu' or 'tpu', got {platform!r}")
    token = _SIMULATED_PLATFORM.set(platform)
    try:
        yield
    finally:
        _SIMULATED_PLATFORM.reset(token)


def _platform() -> str:
    """The platform being traced for: a simulated one, else the active mesh's devices (compile-only TPU
    devices from `jax.experimental.topologies` included), else the default backend."""
    simulated = _SIMULATED_PLATFORM.get()
    if simulated:
        return simulated
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    if device is not None and getattr(device, "platform", None):
        return device.platform
    return jax.default_backend()


def _warn_once(message: str) -> None:
    """Fallbacks are decided at trace time, once per layer; log each distinct reason once per process."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def _kernel_import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure means "kernel unavailable", with its reason
        return f"cannot import {module} ({type(e).__name__}: {e})"
    return None


def _cudnn_device_error(head_dim: int) -> str | None:
    """Why this host's first GPU cannot run cuDNN flash attention (None when it can)."""
    if _SIMULATED_PLATFORM.get() is not None:
        return "cuDNN cannot run in interpret mode"
    if jax.default_backend() != "gpu":  # tracing for compile-only GPU devices (hardware.gpu_target)
        return ("cuDNN attention cannot be compiled without a GPU here (jax needs libcudnn and a device to "
                "build its fusion)")
    device = jax.local_devices()[0]
    version = getattr(getattr(device, "client", None), "platform_version", "")
    if "cuda" not in version.lower():
        return f"the GPU runtime is not CUDA ({version!r})"
    capability = tuple(int(x) for x in str(getattr(device, "compute_capability", "0.0")).split("."))
    if capability < (8, 0):
        return f"cuDNN flash attention needs compute capability >= 8.0, this GPU has {capability}"
    max_dim = 256 if capability >= (9, 0) else 128
    if head_dim > max_dim:
        return f"head dim {head_dim} > {max_dim}, the cuDNN limit on this GPU"
    return None


def unavailable_reason(backend: str, dtype: jnp.dtype, head_dim: int, window: int | None = None,
                       length: int = 0) -> str | None:
    """Why `backend` cannot run for these inputs on the current platform, or None if it can.

    A sliding `window` shorter than the sequence `length` is supported by xla, cuDNN and splash (TPU); the
    Pallas GPU kernel has no window, so it is refused for it (a window >= length changes nothing)."""
    platform = _platform()
    if backend == "xla":
        return None
    if backend == "cudnn":
        if platform != "gpu":
            return f"cuDNN needs an NVIDIA GPU, the platform is {platform!r}"
        if jnp.dtype(dtype) not in [jnp.dtype(d) for d in kernels.CUDNN_DTYPES]:
            return f"cuDNN flash attention needs bfloat16/float16 inputs, got {jnp.dtype(dtype).name}"
        if head_dim % 8:
            return f"cuDNN flash attention needs a head dim divisible by 8, got {head_dim}"
        return _cudnn_device_error(head_dim)
    if backend == "pallas":
        if platform == "gpu":
            if window is not None and window < length:
                return (f"the Pallas GPU kernel has no sliding window (window {window} < sequence length "
                        f"{length})")
            if head_dim > 256:
                return f"the Pallas GPU kernel supports head dim <= 256, got {head_dim}"
            return _kernel_import_error(kernels.PALLAS_GPU_MODULE)
        if platform == "tpu":
            return _kernel_import_error(kernels.PALLAS_TPU_MODULE)
        return f"the Pallas kernels need a GPU or TPU, the platform is {platform!r}"
    raise ValueError(f"unknown attention backend {backend!r}")


def resolve_backend(impl: str, dtype: jnp.dtype, head_dim: int, window: int | None = None,
                    length: int = 0) -> str:
    """The backend `attention` runs for `impl`: "auto" picks by platform (TPU: pallas splash; GPU: cudnn, else
    pallas; CPU: xla) and logs a warning with the reason for every fallback; a named backend that cannot run
    raises ValueError instead of silently falling back."""
    if impl not in BACKENDS:
        raise ValueError(f"attention impl must be one of {BACKENDS}, got {impl!r}")
    if impl != "auto":
        reason = unavailable_reason(impl, dtype, head_dim, window, length)
        if reason is not None:
            raise ValueError(f"attention impl={impl!r} cannot run here: {reason}. "
                             "Use impl='auto' (picks a supported backend) or 'xla'.")
        return impl
    platform = _platform()
    preferred = {"tpu": ("pallas",), "gpu": ("cudnn", "pallas")}.get(platform, ())
    skipped: list[str] = []
    chosen = "xla"
    for backend in preferred:
        reason = unavailable_reason(backend, dtype, head_dim, window, length)
        if reason is None:
            chosen = backend
            break
        skipped.append(f"{backend!r} unavailable: {reason}")
    if skipped:
        _warn_once(f"attention 'auto' on {platform!r} falls back to {chosen!r} ({'; '.join(skipped)}).")
    return chosen


# --- sharding -----------------------------------------------------------------------------------------------

Kernel = Callable[[jax.Array, jax.Array, jax.Array, jax.Array | None], jax.Array]


def _dividing_axes(mesh: jax.sharding.AbstractMesh, free: list[str], wanted: tuple[str, ...],
                   sizes: tuple[int, ...], what: str) -> tuple[str, ...]:
    """The axes of `wanted` that are free on `mesh` and (cumulatively) divide every size in `sizes`."""
    chosen: list[str] = []
    shards = 1
    for name in wanted:
        if name not in free:
            continue
        if all(n % (shards * mesh.shape[name]) == 0 for n in sizes):
            chosen.append(name)
            shards *= mesh.shape[name]
        elif mesh.shape[name] > 1:
            _warn_once(f"attention: {what} not divisible over mesh axis {name!r} ({mesh.shape[name]}); the "
                       "kernel is replicated over it.")
    return tuple(chosen)


def _sharded(kernel: Kernel, q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array,
             segment_ids_BxT: jax.Array | None) -> jax.Array:
    """Runs `kernel` per device under `shard_map` when a multi-device mesh is active.

    Pallas/cuDNN calls cannot be auto-partitioned (XLA would gather and replicate them), so the batch and
    the heads are split over the mesh axes `parallel.LOGICAL_RULES` gives "batch" and "act_heads", each
    only if present and dividing the size; the sequence stays whole because the kernels need every key of a
    row. Axes already manual (an enclosing shard_map) are left alone.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT)
    free = [name for name in mesh.axis_names if name not in mesh.manual_axes]
    if not free:
        return kernel(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT)
    b, _, h, _ = q_BxTxHxD.shape
    kv_heads = k_BxTxKxD.shape[2]
    # Which mesh axes split the batch and the heads comes from the logical-axis table, as for every other
    # activation; an axis is used only if it divides the size (otherwise the kernel is replicated over it).
    batch_axes = _dividing_axes(mesh, free, parallel.mesh_axes("batch"), (b,), f"batch {b}")
    head_axes = _dividing_axes(mesh, free, parallel.mesh_axes("act_heads"), (h, kv_heads),
                               f"{h} query / {kv_heads} kv heads")
    head_axis = (head_axes[0] if len(head_axes) == 1 else head_axes) if head_axes else None
    batch_spec = tuple(batch_axes) if batch_axes else None
    qkv_spec = P(batch_spec, None, head_axis, None)
    if segment_ids_BxT is None:
        fn = lambda q, k, v: kernel(q, k, v, None)
        in_specs, args = (qkv_spec,) * 3, (q_BxTxHxD, k_BxTxKxD, v_BxTxKxD)
    else:
        fn = kernel
        in_specs = (qkv_spec,) * 3 + (P(batch_spec, None),)
        args = (q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT)
    # check_vma=False: pallas_call has no varying-manual-axes rule; the specs above are exact.
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=qkv_spec, axis_names=set(free),
                         check_vma=False)(*args)


# --- the interface ------------------------------------------------------------------------------------------

def _kernel_for(backend: str, window: int | None = None) -> Kernel:
    platform = _platform()
    interpret = _SIMULATED_PLATFORM.get() is not None
    if backend == "cudnn":
        return lambda q, k, v, s: kernels.cudnn_attention(q, k, v, s, window=window)
    if backend == "pallas" and platform == "gpu":  # no window: resolve_backend refused a short one
        return lambda q, k, v, s: kernels.pallas_gpu_attention(q, k, v, s, interpret=interpret)
    if backend == "pallas" and platform == "tpu":
        return lambda q, k, v, s: kernels.pallas_tpu_attention(q, k, v, s, interpret=interpret, window=window)
    raise AssertionError(f"no kernel for {backend!r} on {platform!r}")  # resolve_backend rules this out


def attention(q_BxTxHxD: jax.Array, k_BxTxKxD: jax.Array, v_BxTxKxD: jax.Array,
              segment_ids_BxT: jax.Array | None = None, *, impl: str = "xla",
              window: int | None = None) -> jax.Array:
    """Causal self-attention over a possibly packed batch.

    Args:
      q_BxTxHxD, k_BxTxKxD, v_BxTxKxD: queries, keys, values; K divides H (GQA).
      segment_ids_BxT: int ids, 0 = padding; tokens attend only within their own segment. None = one segment.
      impl: one of BACKENDS; see `resolve_backend`. Fused backends run under `shard_map` when a mesh is set.
      window: sliding attention window (None = full causal attention).

    Returns:
      [B, T, H, D] in q's dtype; padding queries are zeros.
    """
    h, d = q_BxTxHxD.shape[2:]
    if h % k_BxTxKxD.shape[2]:
        raise ValueError(f"kv heads ({k_BxTxKxD.shape[2]}) must divide query heads ({h})")
    t = q_BxTxHxD.shape[1]
    if window is not None and window >= t:
        window = None  # every key of the sequence is inside the window: plain causal attention
    backend = resolve_backend(impl, q_BxTxHxD.dtype, d, window, t)
    args = (q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT)
    if backend == "xla":
        return xla_attention(*args, window=window)
    if impl == "auto" and backend == "cudnn":
        # cuDNN's own checks (version, shape support) run at trace time; under "auto" they fall back too.
        try:
            return _sharded(_kernel_for("cudnn", window), *args)
        except (NotImplementedError, RuntimeError) as e:
            usable = unavailable_reason("pallas", q_BxTxHxD.dtype, d, window, t) is None
            fallback = "pallas" if usable else "xla"
            _warn_once(f"attention 'auto': cuDNN rejected these inputs ({e}); using {fallback!r}.")
            if fallback == "xla":
                return xla_attention(*args, window=window)
            backend = fallback
    return _sharded(_kernel_for(backend, window), *args)


def cached_attention(q_BxTxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array,
                     mask_BxTxS: jax.Array) -> jax.Array:
    """Decode/prefill against a KV cache; the mask encodes causality and which cache slots are valid."""
    return masked_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS)
