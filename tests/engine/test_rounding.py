"""float64 -> bfloat16 on the host's fast road equals the round-to-odd road (both correctly rounded) everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_soup.engine.chunks import ReadBuffers
from hf_soup.engine.rounding import float32_to_storage, round_to_odd_float32, round_to_storage, round_to_storage_torch


def _hard_values(seed: int) -> np.ndarray:
    """Exact bfloat16 midpoints, values one float64 ulp either side, subnormals, the overflow edge, signs."""
    rng = np.random.default_rng(seed)
    upper = rng.integers(0, 1 << 16, 40_000, dtype=np.uint32) << np.uint32(16)
    with np.errstate(invalid="ignore"):
        midpoints = (upper | np.uint32(0x8000)).view(np.float32).astype(np.float64)
    midpoints = midpoints[np.isfinite(midpoints)]
    near = np.concatenate([np.nextafter(midpoints, np.inf), np.nextafter(midpoints, -np.inf)])
    with np.errstate(invalid="ignore"):
        means = sum(((rng.integers(0, 1 << 16, 40_000, dtype=np.uint32) << np.uint32(16)).view(np.float32)
                     .astype(np.float64) for _ in range(4))) / 3
    edges = np.array([0.0, -0.0, 3.3895313892515355e38, 3.3961775292304957e38, 3.4e38, -3.4e38, 1e39,
                      2.0**-133, 2.0**-134, 1.5 * 2.0**-134, 2.0**-127 * 1.00390625, 1e-45, -1e-46])
    values = np.concatenate([midpoints, near, means, rng.standard_normal(40_000) * 10.0 ** rng.integers(-40, 38,
                                                                                                        40_000), edges])
    return values[np.isfinite(values)]


def _reference(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return float32_to_storage(round_to_odd_float32(values), "BF16")


@pytest.mark.parametrize("seed", [0, 1])
def test_the_fast_bfloat16_road_is_the_round_to_odd_road(seed):
    values = _hard_values(seed)
    expected = _reference(values)
    buffers = ReadBuffers()
    np.testing.assert_array_equal(round_to_storage(values, "BF16"), expected)
    out = np.empty(values.size, np.uint16)
    np.testing.assert_array_equal(round_to_storage(values, "BF16", out=out, scratch=buffers.get, finite=True), expected)
    on_torch = round_to_storage_torch(torch.from_numpy(values), "BF16").numpy().view(np.uint16)
    np.testing.assert_array_equal(on_torch, expected)


def test_nan_and_infinities_survive_the_fast_road():
    values = np.array([np.nan, -np.nan, np.inf, -np.inf, 1.0], dtype=np.float64)
    bits = round_to_storage(values, "BF16")
    assert list(bits[2:]) == [0x7F80, 0xFF80, 0x3F80]
    assert all((b & 0x7F80) == 0x7F80 and (b & 0x7F) for b in bits[:2])  # still NaN
