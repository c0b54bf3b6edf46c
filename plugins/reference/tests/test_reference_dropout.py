"""The counter-based dropout mask: deterministic, tile-invariant, the documented hash, the right rate."""

from __future__ import annotations

import pytest
import torch

from attncore_reference import dropout_keep_mask
from attncore_reference.dropout import keep_threshold

M32 = 0xFFFFFFFF


def _fmix32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & M32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & M32
    return x ^ (x >> 16)


def _keep_py(seed: int, flat: int, p: float) -> bool:
    """The documented hash in plain Python integers."""
    seed &= (1 << 64) - 1
    key_lo = _fmix32((seed & M32) ^ 0x9E3779B9)
    key_hi = _fmix32((seed >> 32) ^ _fmix32(0x9E3779B9 + 1))
    h = _fmix32((flat & M32) ^ key_lo)
    h = _fmix32(h ^ (flat >> 32) ^ key_hi)
    return h >= keep_threshold(p)


@pytest.mark.parametrize("seed", [0, 1, 2**31 + 5, 2**40 + 3, 2**64 - 1])
def test_matches_python_hash(seed: int) -> None:
    shape = (2, 3, 2, 5, 7)
    mask = dropout_keep_mask(seed, shape, 0.3)
    flat = [_keep_py(seed, i, 0.3) for i in range(mask.numel())]
    assert mask.flatten().tolist() == flat


def test_indices_beyond_32_bits() -> None:
    shape = (1, 1, 3, 70_000, 70_000)  # 1.5e10 pairs: flat indices past 2**32
    q0, k0 = 69_990, 69_980
    tile = dropout_keep_mask(11, shape, 0.5, q0, q0 + 4, k0, k0 + 6, b0=0, b1=1)
    assert tile.shape == (1, 1, 3, 4, 6)
    for h in range(3):
        for i in range(4):
            for j in range(6):
                flat = (h * 70_000 + q0 + i) * 70_000 + k0 + j
                assert bool(tile[0, 0, h, i, j]) == _keep_py(11, flat, 0.5)


def test_tiles_are_slices_of_the_full_mask() -> None:
    shape = (3, 2, 4, 19, 23)
    full = dropout_keep_mask(5, shape, 0.2)
    for b0, b1, q0, q1, k0, k1 in [(0, 3, 0, 19, 0, 23), (1, 2, 3, 9, 4, 21), (2, 3, 18, 19, 0, 1), (0, 1, 5, 5, 2, 7)]:
        tile = dropout_keep_mask(5, shape, 0.2, q0, q1, k0, k1, b0=b0, b1=b1)
        assert torch.equal(tile, full[b0:b1, :, :, q0:q1, k0:k1])


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_keep_rate(p: float) -> None:
    mask = dropout_keep_mask(123, (4, 1, 8, 128, 128), p)
    assert abs(float(mask.double().mean()) - (1 - p)) < 0.01
    if p == 0.0:
        assert mask.all()


def test_seeds_give_independent_masks() -> None:
    a = dropout_keep_mask(1, (1, 1, 4, 64, 64), 0.5)
    b = dropout_keep_mask(2, (1, 1, 4, 64, 64), 0.5)
    assert torch.equal(a, dropout_keep_mask(1, (1, 1, 4, 64, 64), 0.5))
    agreement = float((a == b).double().mean())
    assert 0.45 < agreement < 0.55


def test_rejects_tiles_outside_the_grid() -> None:
    with pytest.raises(ValueError, match="tile"):
        dropout_keep_mask(0, (1, 1, 1, 4, 4), 0.5, 0, 5)
