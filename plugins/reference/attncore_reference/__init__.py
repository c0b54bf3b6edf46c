"""attncore's CPU reference backend: an exact float64 oracle, a memory-efficient tiled operator and a
decoding operator, all sharing one counter-based dropout (:func:`dropout_keep_mask`)."""

from __future__ import annotations

from .chunked import ChunkedBwOp, ChunkedFwOp
from .decode import DecodeFwOp
from .dropout import DROPOUT_RNG, dropout_keep_mask
from .exact import ExactBwOp, ExactFwOp

__all__ = ["DROPOUT_RNG", "ChunkedBwOp", "ChunkedFwOp", "DecodeFwOp", "ExactBwOp", "ExactFwOp", "dropout_keep_mask"]
