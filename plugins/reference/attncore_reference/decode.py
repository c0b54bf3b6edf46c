"""Attention for decoding (a handful of queries against many keys) as plain matrix products."""

from __future__ import annotations

import sys
from typing import ClassVar

import torch

from attncore.capabilities import BiasSupport, Capabilities
from attncore.inputs import Inputs
from attncore.ops import AttentionFwOpBase, ForwardResult

from ._common import LOG2E, compute_dtype, prepare
from .chunked import TilePlan, tiled_forward
from .dropout import DROPOUT_RNG

__all__ = ["DecodeFwOp"]

MAX_QUERIES = 16


class DecodeFwOp(AttentionFwOpBase):
    """Forward attention for ``Mq <= 16`` queries: one matrix product for the scores over all the keys
    the queries can reach (grouped-query heads folded into the query rows, so a shared key/value head is
    one plain matrix), a float32 softmax (float64 for float64 inputs), one matrix product with the values.

    It is the tiled loop of :class:`~attncore_reference.chunked.ChunkedFwOp` run as a single tile per
    batch entry: with few query rows the tiled path's per-tile work (a small product and half a dozen
    elementwise passes per key tile) dominates, and one large product avoids it. Keys and values are
    read in place (views of the caller's tensors when their dtype is the compute dtype; paged keys are
    gathered), one batch entry at a time. Memory: the ``[G * H, Mq, Mk']`` scores of one batch entry,
    ``Mk'`` being the span of keys the band or blocks let the queries reach. Forward only.
    """

    NAME: ClassVar[str] = "reference.decode"
    PRIORITY: ClassVar[int] = 20
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(
        devices=frozenset({"cpu"}),
        dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64}),
        max_query_len=MAX_QUERIES,
        bias=BiasSupport.everything(),
        dropout=True,
        dropout_rng=DROPOUT_RNG,
        lse=True,
    )

    @classmethod
    @torch.no_grad()
    def apply(cls, inputs: Inputs, *, needs_lse: bool, dropout_seed: int) -> ForwardResult:
        c = prepare(inputs, compute_dtype(inputs.query.dtype), q_scale=inputs.scale * LOG2E, fold_heads=True)
        plan = TilePlan(c, max(1, c.num_queries), max(1, c.num_keys), sys.maxsize, batched=False)
        return tiled_forward(inputs, c, plan, needs_lse=needs_lse, dropout_seed=dropout_seed)
