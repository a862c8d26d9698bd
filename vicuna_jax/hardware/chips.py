"""Per-chip figures for planning: HBM capacity, dense bf16 peak and HBM bandwidth, with their sources.

One JAX device is one chip on every generation here (v4 and v5p run their two TensorCores as one "megacore"
device), so per-device memory from the compiler compares directly with a chip's HBM.
"""

from __future__ import annotations

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # the Cloud TPU generation ("v5p") or GPU model
    device_kind: str  # what `jax.Device.device_kind` says for it
    hbm_bytes: int  # the datasheet's
    usable_hbm_bytes: int  # what the TPU compiler lets one program use (the runtime keeps the rest)
    peak_bf16_flops: float  # dense, per chip
    hbm_bytes_per_s: float
    source: str

    @property
    def hbm_gib(self) -> float:
        return self.hbm_bytes / GIB

    @property
    def usable_hbm_gib(self) -> float:
        return self.usable_hbm_bytes / GIB


_CLOUD_DOCS = "Cloud TPU docs, 'System architecture' of docs.cloud.google.com/tpu/docs/{}"

# Datasheet HBM as the docs state it ("32 GiB" for v4; "16 GB", "95 GB", "32 GB" for the others, read as GiB).
# Usable HBM is the TPU compiler's own figure, from its out-of-memory message ("exceeds available HBM
# (15.75G)") for a program too large for one chip, with libtpu 0.0.42.1; tests/train/test_tpu_aot.py
# checks it against the installed libtpu.
_USABLE_NOTE = "; usable: libtpu 0.0.42.1's compiler"
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", "TPU v4", 32 * GIB, int(30.75 * GIB), 275e12, 1200e9,
               _CLOUD_DOCS.format("v4") + _USABLE_NOTE),
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GIB, int(15.75 * GIB), 197e12, 819e9,
                _CLOUD_DOCS.format("v5e") + _USABLE_NOTE),
    "v5p": Chip("v5p", "TPU v5", 95 * GIB, int(95.74 * GIB), 459e12, 2765e9,
                _CLOUD_DOCS.format("v5p") + _USABLE_NOTE),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GIB, int(31.25 * GIB), 918e12, 1638e9,
                _CLOUD_DOCS.format("v6e") + _USABLE_NOTE),
    # One GPU as XLA is told it (hardware/gpu_target.py): 84,942,979,072 bytes of HBM3; nothing refuses a
    # program that is too large at compile time, and JAX preallocates 75% of it unless told otherwise.
    "h100": Chip("h100", "NVIDIA H100 80GB HBM3", 84_942_979_072, 84_942_979_072, 989e12, 3350e9,
                 "NVIDIA H100 datasheet (SXM5: 989 TFLOP/s dense bf16, 3.35 TB/s HBM3)"),
}


def chip_for_device_kind(device_kind: str) -> Chip | None:
    """The chip whose `device_kind` this is (exact match: "TPU v5" is v5p, "TPU v5 lite" is v5e)."""
    return next((c for c in CHIPS.values() if c.device_kind == device_kind), None)
