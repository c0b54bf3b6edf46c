"""Counter-based dropout shared by every reference operator.

Whether the attention probability of ``(b, g, h, i, j)`` is kept depends only on the seed and on the
flat index ``(((b * G + g) * H + h) * Mq + i) * Mk + j`` of that pair in the full ``[B, G, H, Mq, Mk]``
grid, never on how an operator tiles the work. Any operator (and a test building a float64
reference) regenerates the same mask for any tile, in any order, forward and backward.

The hash is two rounds of the MurmurHash3 32-bit finalizer (``fmix32``) over the low and high 32-bit
words of the index, keyed with the seed, computed with ``int64`` torch ops on the tensors' device. A
pair is kept iff its 32-bit hash is ``>= floor(p * 2**32)``, so the keep rate is ``1 - p``. For paged
keys the ``Mk`` axis is the *logical* (unpaged) key axis.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["DROPOUT_RNG", "dropout_keep_mask", "keep_threshold"]

#: The value of ``Capabilities.dropout_rng`` shared by the reference operators.
DROPOUT_RNG = "attncore-reference-hash"

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_C1 = 0x85EBCA6B
_C2 = 0xC2B2AE35
_GOLDEN = 0x9E3779B9


def _fmix32_int(x: int) -> int:
    """``fmix32`` on a Python int (used to derive per-seed keys)."""
    x &= _M32
    x ^= x >> 16
    x = (x * _C1) & _M32
    x ^= x >> 13
    x = (x * _C2) & _M32
    x ^= x >> 16
    return x


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` without overflowing ``int64``.

    ``c`` is split into 16-bit halves so that every intermediate stays below ``2**49``.
    """
    lo, hi = c & 0xFFFF, c >> 16
    high = torch.mul(x, hi).bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    return torch.mul(x, lo).add_(high).bitwise_and_(_M32)


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer on an ``int64`` tensor of values in ``[0, 2**32)``."""
    x = x.bitwise_xor(x.bitwise_right_shift(16))
    x = _mul32(x, _C1)
    x.bitwise_xor_(x.bitwise_right_shift(13))
    x = _mul32(x, _C2)
    return x.bitwise_xor_(x.bitwise_right_shift(16))


def keep_threshold(p: float) -> int:
    """The 32-bit hash threshold: a pair is kept iff its hash is ``>=`` this value."""
    return min(int(p * 2**32), 2**32)


def dropout_keep_mask(  # the positional tile bounds are the documented public signature
    seed: int,
    shape5_bghqk: tuple[int, int, int, int, int],
    p: float,
    q0: int = 0,
    q1: Optional[int] = None,
    k0: int = 0,
    k1: Optional[int] = None,
    *,
    b0: int = 0,
    b1: Optional[int] = None,
    device: Union[torch.device, str] = "cpu",
) -> torch.Tensor:
    """Boolean keep-mask ``[b1 - b0, G, H, q1 - q0, k1 - k0]`` of the tile of the ``[B, G, H, Mq, Mk]`` grid.

    ``shape5_bghqk`` is the full grid (it fixes the flat indices); the tile defaults to all of it.
    ``True`` means the probability is kept (and scaled by ``1 / (1 - p)`` by the caller).
    """
    bsz, g, h, mq, mk = (int(s) for s in shape5_bghqk)
    q1 = mq if q1 is None else q1
    k1 = mk if k1 is None else k1
    b1 = bsz if b1 is None else b1
    if not (0 <= b0 <= b1 <= bsz and 0 <= q0 <= q1 <= mq and 0 <= k0 <= k1 <= mk):
        raise ValueError(f"tile: expected ranges inside {tuple(shape5_bghqk)}, found b[{b0}:{b1}] q[{q0}:{q1}] k[{k0}:{k1}]")
    dev = torch.device(device)

    def ar(lo: int, hi: int, stride: int, dim: int) -> torch.Tensor:
        view = [1] * 5
        view[dim] = hi - lo
        return (torch.arange(lo, hi, dtype=torch.int64, device=dev) * stride).view(view)

    # Flat index in the full grid, built by broadcasting (the row part is small, the tile is the sum).
    rows = ar(b0, b1, g * h * mq * mk, 0) + ar(0, g, h * mq * mk, 1) + ar(0, h, mq * mk, 2) + ar(q0, q1, mk, 3)
    idx = rows + ar(k0, k1, 1, 4)
    seed &= _M64
    key_lo = _fmix32_int((seed & _M32) ^ _GOLDEN)
    key_hi = _fmix32_int((seed >> 32) ^ _fmix32_int(_GOLDEN + 1))
    word_hi = idx.bitwise_right_shift(32)
    hashed = _fmix32(idx.bitwise_and_(_M32).bitwise_xor_(key_lo))
    hashed = _fmix32(hashed.bitwise_xor_(word_hi).bitwise_xor_(key_hi))
    return hashed >= keep_threshold(p)
