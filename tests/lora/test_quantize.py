"""QLoRA's frozen-base quantization: NF4 levels, error bounds, packing, the per-layer map."""

import jax.numpy as jnp
import numpy as np
import pytest

from vicuna_jax.lora import quantize as q


def test_nf4_levels_are_bitsandbytes_normal_quantiles():
    """The 16 NF4 levels are QLoRA's construction: quantiles of N(0, 1) (8 positive, 7 negative, exact 0),
    normalised to [-1, 1] (bitsandbytes' create_normal_map(offset=0.9677083))."""
    from scipy.stats import norm

    offset = 0.9677083
    positive = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    negative = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    levels = np.sort(np.concatenate([positive, [0.0], negative]))
    levels /= levels.max()
    np.testing.assert_allclose(q.NF4_LEVELS, levels, atol=2e-7)


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_round_trip_error_is_within_the_bound_of_each_block(mode):
    rng = np.random.RandomState(0)
    w = rng.randn(2, 128, 24).astype(np.float32) * 0.02
    w[0, 5, 3] = 0.5  # an outlier only costs precision in its own block
    codes, scales = q.quantize_stacked(jnp.asarray(w), mode, 32)
    assert codes.dtype == (jnp.int8 if mode == "int8" else jnp.uint8)
    assert codes.shape == ((2, 64, 24) if mode == "nf4" else (2, 128, 24)) and scales.shape == (2, 4, 24)
    back = np.asarray(q.dequantize(codes, scales, mode, 32))
    absmax = np.abs(w.reshape(2, 4, 32, 24)).max(axis=2)  # per block
    err = np.abs(back - w).reshape(2, 4, 32, 24).max(axis=2)
    assert np.all(err <= q.max_error(mode) * absmax + 1e-7)
    np.testing.assert_allclose(np.asarray(scales), absmax, rtol=0)
    # Typical error, far below the bound (nf4 spends its levels where normal weights are).
    rel = np.abs(back - w).mean() / np.abs(w).mean()
    assert rel < (0.01 if mode == "int8" else 0.12), rel
    other = np.abs(back[1] - w[1]).max()
    assert other < 0.1 * 0.5  # blocks without the outlier keep their own scale


def test_levels_survive_exactly_and_zero_blocks_stay_zero():
    levels = np.tile(q.NF4_LEVELS, 2)[:, None] * np.array([[0.3, 2.0]], np.float32)  # [32, 2]
    codes, scales = q.quantize(jnp.asarray(levels), "nf4", 16)
    np.testing.assert_array_equal(np.asarray(q.dequantize(codes, scales, "nf4", 16)), levels)
    zeros = np.zeros((16, 3), np.float32)
    for mode in q.MODES:
        codes, scales = q.quantize(jnp.asarray(zeros), mode, 16)
        assert np.all(np.asarray(q.dequantize(codes, scales, mode, 16)) == 0)


def test_nf4_packs_two_rows_per_byte_in_order():
    w = np.zeros((4, 1), np.float32)
    w[:, 0] = [-1.0, 1.0, 0.0, q.NF4_LEVELS[3]]
    codes, _ = q.quantize(jnp.asarray(w), "nf4", 4)
    assert np.asarray(codes).tolist() == [[(0 << 4) | 15], [(7 << 4) | 3]]


def test_stacked_equals_layer_by_layer_and_bad_blocks_are_refused():
    w = jnp.asarray(np.random.RandomState(1).randn(3, 32, 8), jnp.float32)
    codes, scales = q.quantize_stacked(w, "nf4", 16)
    for i in range(3):
        c, s = q.quantize(w[i], "nf4", 16)
        np.testing.assert_array_equal(np.asarray(codes[i]), np.asarray(c))
        np.testing.assert_array_equal(np.asarray(scales[i]), np.asarray(s))
    with pytest.raises(ValueError, match="block 12"):
        q.quantize(w[0], "int8", 12)
    with pytest.raises(ValueError, match="unknown quantization"):
        q.quantize(w[0], "int4", 16)
