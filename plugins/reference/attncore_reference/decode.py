"""Attention for decoding (a handful of queries against many keys) as plain matrix products."""

from __future__ import annotations

import math
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
        geo = inputs.geometry
        if inputs.p == 0.0 and (geo is None or (geo.blocks is None and geo.paging is None)):
            return _dense(inputs, needs_lse)
        c = prepare(inputs, compute_dtype(inputs.query.dtype), q_scale=inputs.scale * LOG2E, fold_heads=True)
        plan = TilePlan(c, max(1, c.num_queries), max(1, c.num_keys), sys.maxsize, batched=False)
        return tiled_forward(inputs, c, plan, needs_lse=needs_lse, dropout_seed=dropout_seed)


def _dense(inputs: Inputs, needs_lse: bool) -> ForwardResult:
    """The whole call as two matrix products per batch entry, for dense masks (a band and/or a tensor).

    A handful of torch calls, so small decoding steps are not dominated by the tiled loop's per-tile
    bookkeeping. Keys and values of the compute dtype are read in place; shared (stride-0) key/value
    heads are used once, the query heads becoming extra rows.
    """
    q5, k5, v5 = inputs.q5, inputs.k5, inputs.v5
    b, mq, g, h, kd = q5.shape
    mk, kv = k5.shape[1], v5.shape[-1]
    cd = compute_dtype(inputs.query.dtype)
    hk = 1 if inputs.features.shared_kv_heads else h
    if hk == 1:
        k5, v5 = k5[:, :, :, :1], v5[:, :, :, :1]
    # queries: a fresh [B, G*Hkv, rows, K] tensor, pre-scaled; rows = H*Mq when heads are shared
    q = (q5.permute(0, 2, 3, 1, 4).to(cd) * inputs.scale).reshape(b, g * hk, (h // hk) * mq, kd)
    s = torch.empty((b, g * hk, (h // hk) * mq, mk), dtype=cd, device=q.device)
    for i in range(b):
        torch.bmm(q[i], k5[i].to(cd).permute(1, 2, 3, 0).reshape(g * hk, kd, mk), out=s[i])
    s5 = s.view(b, g, h, mq, mk)
    geo = inputs.geometry
    if geo is not None:
        allowed = geo.allowed(0, mq, 0, mk, mq, mk)
        if allowed is not None:
            s5.masked_fill_(~allowed, -math.inf)
        bias = inputs.bias5
        if bias is not None:
            s5 += bias
    lse = torch.logsumexp(s5, dim=-1)
    s5 -= torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse).unsqueeze(-1)
    s.exp_()  # fully masked rows: exp(-inf) = 0, so their output is 0
    out = torch.empty((b, g * hk, (h // hk) * mq, kv), dtype=cd, device=q.device)
    for i in range(b):
        torch.bmm(s[i], v5[i].to(cd).permute(1, 2, 0, 3).reshape(g * hk, mk, kv), out=out[i])
    # straight into the caller's layout (saves the core a view on tiny decoding steps)
    nd = inputs.features.ndim
    if nd == 5:
        src = out.view(b, g, h, mq, kv).permute(0, 3, 1, 2, 4)
    elif nd == 4:
        src = out.view(b, h, mq, kv).transpose(1, 2)
    else:
        src = out.view(b, mq, kv)
    result = torch.empty(src.shape, dtype=inputs.out_dtype, device=q.device)
    result.copy_(src)
    return ForwardResult(result, lse.to(inputs.lse_dtype) if needs_lse else None)
