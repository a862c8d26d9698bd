"""Peak FLOP/s for MFU by the device kind JAX reports: TPUs by exact kind (v5p reports itself as "TPU v5",
which a substring table would miss or confuse with v5e's "TPU v5 lite"), GPUs by model name."""

import pytest

from vicuna_jax.train.metrics import peak_flops


@pytest.mark.parametrize("kind,expected", [("TPU v5", 459e12), ("TPU v5 lite", 197e12), ("TPU v4", 275e12),
                                           ("TPU v6 lite", 918e12), ("NVIDIA H100 80GB HBM3", 989e12),
                                           ("cpu", None)])
def test_peak_by_device_kind(kind, expected):
    assert peak_flops(kind) == expected


def test_fp32_compute_halves_the_peak():
    assert peak_flops("TPU v5", "float32") == 459e12 / 2
