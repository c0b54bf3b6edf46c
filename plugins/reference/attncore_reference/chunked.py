"""Memory-efficient (flash-style) attention on the CPU, tile by tile.

The forward walks query blocks and, for each, streams over key blocks with an online softmax: a
running row maximum, a running sum of exponentials and an output accumulator rescaled whenever the
maximum grows. Scores are kept in base 2 (``log2(e)`` and the softmax scale are folded into the queries
once, the tensor bias is added with ``alpha=log2(e)``) so the exponential is ``exp2``, which is
markedly faster than ``exp`` on the CPU. The backward recomputes each tile's probabilities from the
saved LSE (FlashAttention-2 style) and accumulates ``dq``, ``dk`` and ``dv``.

Extra memory is one tile of scores (two in the backward) plus O(M) accumulators; only ``dbias`` is
inherently the size of the bias. Tiles outside the band or the blocks are skipped, masks are built only
for tiles that straddle an edge, and the tensor bias is read tile by tile.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple, Optional

import torch

from attncore.capabilities import BiasSupport, Capabilities
from attncore.inputs import Inputs
from attncore.ops import AttentionBwOpBase, AttentionFwOpBase, ForwardResult, Gradients

from ._common import LN2, LOG2E, Canonical, TileMasks, add_bias_and_mask, compute_dtype, prepare, rows, scatter_keys, to_canonical
from .dropout import DROPOUT_RNG, dropout_keep_mask

__all__ = ["ChunkedBwOp", "ChunkedFwOp", "OnlineSoftmax", "Tile", "TilePlan", "score_tile", "tiled_forward"]

_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
CAPABILITIES = Capabilities(
    devices=frozenset({"cpu"}),
    dtypes=_DTYPES,
    bias=BiasSupport.everything(),
    dropout=True,
    dropout_rng=DROPOUT_RNG,
    lse=True,
    tensor_bias_grad=True,
)


class TilePlan:
    """Tile sizes of one call: ``nb`` batch entries x ``tq`` queries x ``tk`` keys (x all G*H heads).

    ``block_q`` and ``block_k`` are upper bounds; ``tq`` shrinks so one tile of scores stays under
    ``budget`` elements however many heads there are, and (if ``batched``) ``nb`` grows to put several
    short sequences into one matrix product.
    """

    def __init__(self, c: Canonical, block_q: int, block_k: int, budget: int, *, batched: bool = True) -> None:
        heads = c.groups * c.heads
        self.tk = max(1, min(block_k, c.num_keys))
        self.tq = max(1, min(block_q, c.num_queries, budget // max(1, heads * self.tk)))
        per_batch = heads * self.tq * self.tk
        self.nb = max(1, min(c.batch, budget // max(1, per_batch))) if batched else 1
        self.elements = self.nb * per_batch

    def batches(self, batch: int) -> list[tuple[int, int]]:
        return [(b0, min(batch, b0 + self.nb)) for b0 in range(0, batch, self.nb)]

    def queries(self, num_queries: int) -> list[tuple[int, int]]:
        return [(q0, min(num_queries, q0 + self.tq)) for q0 in range(0, num_queries, self.tq)]

    def keys(self, masks: TileMasks, batch: tuple[int, int], span: tuple[int, int]) -> list[Tile]:
        """The tiles of queries ``span`` that hold at least one allowed pair."""
        (b0, b1), (q0, q1) = batch, span
        lo, hi = masks.key_span(q0, q1)
        tiles = [Tile(b0, b1, q0, q1, k0, min(hi, k0 + self.tk)) for k0 in range(lo, hi, self.tk)]
        return [t for t in tiles if not masks.is_empty(q0, q1, t.k0, t.k1)]


class Tile(NamedTuple):
    """Batch entries ``[b0, b1)``, queries ``[q0, q1)`` and keys ``[k0, k1)`` of one tile."""

    b0: int
    b1: int
    q0: int
    q1: int
    k0: int
    k1: int

    @property
    def nb(self) -> int:
        return self.b1 - self.b0

    @property
    def nq(self) -> int:
        return self.q1 - self.q0

    @property
    def nk(self) -> int:
        return self.k1 - self.k0


def score_tile(c: Canonical, masks: TileMasks, qt: torch.Tensor, tile: Tile, buf: torch.Tensor) -> torch.Tensor:
    """Base-2 scores ``qt @ k^T`` of one tile written into ``buf``, plus ``log2(e)`` times the bias tile,
    masked: ``[n, rows, nk]`` (``qt`` holds the queries scaled by ``scale * log2(e)``)."""
    kt = rows(c.k, (tile.b0, tile.b1), (tile.k0, tile.k1), c.kv_heads)
    n, nrows = qt.shape[0], qt.shape[1]
    s = torch.bmm(qt, kt.transpose(1, 2), out=buf[: n * nrows * tile.nk].view(n, nrows, tile.nk))
    bias = None if c.bias is None else c.bias[tile.b0 : tile.b1, :, :, tile.q0 : tile.q1, tile.k0 : tile.k1]
    mask = masks.additive(tile.q0, tile.q1, tile.k0, tile.k1)
    add_bias_and_mask(s.view(tile.nb, c.groups, c.heads, tile.nq, tile.nk), bias, mask, LOG2E)
    return s


def keep_tile(c: Canonical, tile: Tile, *, seed: int, p: float) -> torch.Tensor:
    """The dropout keep-mask of one tile, laid out like :func:`score_tile`'s result."""
    shape5 = (c.batch, c.groups, c.heads, c.num_queries, c.num_keys)
    keep = dropout_keep_mask(seed, shape5, p, tile.q0, tile.q1, tile.k0, tile.k1, b0=tile.b0, b1=tile.b1, device=c.q.device)
    return keep.view(tile.nb * c.groups * c.kv_heads, -1, tile.nk)


class OnlineSoftmax:
    """Running softmax of one block of query rows over successive key tiles (scores in base 2)."""

    def __init__(self, n: int, nrows: int, value_dim: int, like: torch.Tensor) -> None:
        self.m = torch.full((n, nrows), -math.inf, dtype=like.dtype, device=like.device)
        self.l = torch.empty((n, nrows), dtype=like.dtype, device=like.device)
        self.acc = torch.empty((n, nrows, value_dim), dtype=like.dtype, device=like.device)
        self.first = True

    def update(self, s: torch.Tensor, v: torch.Tensor, keep: Optional[torch.Tensor]) -> None:
        """Fold in scores ``s`` (``[n, rows, t]``, overwritten) against values ``v`` (``[n, t, Kv]``)."""
        m_new = torch.maximum(self.m, s.amax(-1))
        m_safe = m_new.masked_fill(m_new == -math.inf, 0.0)  # fully masked so far: keep exp2 finite
        s.sub_(m_safe.unsqueeze(-1)).exp2_()
        if self.first:
            torch.sum(s, -1, out=self.l)
        else:
            alpha = torch.sub(self.m, m_safe).exp2_()
            self.l.mul_(alpha).add_(s.sum(-1))
            self.acc.mul_(alpha.unsqueeze(-1))
        if keep is not None:
            s.mul_(keep)
        if self.first:
            torch.bmm(s, v, out=self.acc)
        else:
            self.acc.baddbmm_(s, v)
        self.m = m_new
        self.first = False

    def finish(self, out_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(out, lse)``: normalized output (0 for fully masked rows) and natural-log LSE (``-inf`` there)."""
        if self.first:  # no key tile at all: every row is fully masked
            self.l.zero_()
            self.acc.zero_()
        denom = self.l.masked_fill(self.l == 0, 1.0).reciprocal_().mul_(out_scale)
        out = self.acc.mul_(denom.unsqueeze(-1))
        lse = self.l.log2_().add_(self.m).mul_(LN2)
        return out, lse


def tiled_forward(inputs: Inputs, c: Canonical, plan: TilePlan, *, needs_lse: bool, dropout_seed: int) -> ForwardResult:
    """Attention of ``c`` (queries pre-scaled by ``scale * log2(e)``) over the tiles of ``plan``."""
    bsz, g, h, mq, _ = c.q.shape
    kv_dim = int(c.v.shape[-1])
    out = torch.empty((bsz, mq, g, h, kv_dim), dtype=inputs.out_dtype, device=c.q.device)
    lse = torch.empty((bsz, g, h, mq), dtype=inputs.lse_dtype, device=c.q.device) if needs_lse else None
    masks = TileMasks(c.geometry, mq, c.num_keys, c.q.dtype, c.q.device)
    buf = torch.empty(plan.elements, dtype=c.q.dtype, device=c.q.device)
    p = inputs.p
    for bs in plan.batches(bsz):
        for qs in plan.queries(mq):
            qt = c.query_rows(bs, qs)
            state = OnlineSoftmax(qt.shape[0], qt.shape[1], kv_dim, qt)
            for tile in plan.keys(masks, bs, qs):
                s = score_tile(c, masks, qt, tile, buf)
                keep = keep_tile(c, tile, seed=dropout_seed, p=p) if p > 0 else None
                state.update(s, rows(c.v, bs, (tile.k0, tile.k1), c.kv_heads), keep)
            o, lse_t = state.finish(1.0 / (1.0 - p))
            (b0, b1), (q0, q1) = bs, qs
            out[b0:b1, q0:q1].permute(0, 2, 3, 1, 4).copy_(o.view(b1 - b0, g, h, q1 - q0, kv_dim))
            if lse is not None:
                lse[b0:b1, :, :, q0:q1].copy_(lse_t.view(b1 - b0, g, h, q1 - q0))
    return ForwardResult(out, lse)


class ChunkedFwOp(AttentionFwOpBase):
    """Exact attention in O(M) memory on the CPU (float16/bfloat16 computed in float32).

    Computes ``softmax(scale * Q K^T + bias) @ V`` per head with an online softmax over key tiles of at
    most ``BLOCK_K`` keys, for blocks of at most ``BLOCK_Q`` queries; one tile of scores (at most
    ``TILE_ELEMENTS`` elements over all heads) is the only quadratic-in-tile buffer. Keys and values are
    read in place (views of the caller's tensors when their dtype is the compute dtype); grouped-query
    heads sharing a key/value head are processed as extra query rows, so they are never repeated.
    Returns the natural-log LSE of each query row (``-inf`` and a zero output for fully masked rows).
    """

    NAME: ClassVar[str] = "reference.chunked"
    PRIORITY: ClassVar[int] = 10
    CAPABILITIES: ClassVar[Capabilities] = CAPABILITIES
    BLOCK_Q: ClassVar[int] = 256
    BLOCK_K: ClassVar[int] = 512
    TILE_ELEMENTS: ClassVar[int] = 1 << 21

    @classmethod
    @torch.no_grad()
    def apply(cls, inputs: Inputs, *, needs_lse: bool, dropout_seed: int) -> ForwardResult:
        c = prepare(inputs, compute_dtype(inputs.query.dtype), q_scale=inputs.scale * LOG2E, fold_heads=True)
        plan = TilePlan(c, cls.BLOCK_Q, cls.BLOCK_K, cls.TILE_ELEMENTS)
        return tiled_forward(inputs, c, plan, needs_lse=needs_lse, dropout_seed=dropout_seed)


class ChunkedBwOp(AttentionBwOpBase):
    """Gradients of :class:`ChunkedFwOp` by recomputation, tile by tile, from the saved LSE.

    For each tile: ``P = exp(S - lse)``, ``dV += (P*Z)^T dO``, ``dP = (dO V^T) * Z``,
    ``dS = P * (dP - rowsum(dO * O) + grad_lse)``, ``dQ += scale dS K``, ``dK += scale dS^T Q``
    (``Z``: the regenerated dropout mask over ``1 - p``). Memory: two tiles of scores plus the
    float32/float64 accumulators of ``dq`` (one query block), ``dk`` and ``dv`` (per query head, as the
    gradient of each head's view of shared keys); ``dbias`` (when the tensor bias requires grad) is
    filled tile by tile in the ``[B, G, H, Mq, Mk]`` layout.
    """

    NAME: ClassVar[str] = "reference.chunked"
    PRIORITY: ClassVar[int] = 10
    CAPABILITIES: ClassVar[Capabilities] = CAPABILITIES
    BLOCK_Q: ClassVar[int] = 256
    BLOCK_K: ClassVar[int] = 512
    TILE_ELEMENTS: ClassVar[int] = 1 << 20

    @classmethod
    @torch.no_grad()
    def apply(
        cls,
        inputs: Inputs,
        grad_out: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        *,
        dropout_seed: int,
        grad_lse: Optional[torch.Tensor] = None,
    ) -> Gradients:
        c = prepare(inputs, compute_dtype(inputs.query.dtype), q_scale=inputs.scale * LOG2E, fold_heads=True)
        bw = _Backward(inputs, c, TilePlan(c, cls.BLOCK_Q, cls.BLOCK_K, cls.TILE_ELEMENTS), grad_out, out, lse, grad_lse, dropout_seed)
        for bs in bw.plan.batches(c.batch):
            for qs in bw.plan.queries(c.num_queries):
                bw.query_block(bs, qs)
        nphys = c.num_physical_keys
        return Gradients(
            dq=bw.dq,
            dk=to_canonical(scatter_keys(bw.dk, 3, c.rows, nphys), inputs.key.dtype),
            dv=to_canonical(scatter_keys(bw.dv, 3, c.rows, nphys), inputs.value.dtype),
            dbias=None if bw.dbias is None else scatter_keys(bw.dbias, 4, c.rows, nphys),
        )


class _Backward:
    """State of one :class:`ChunkedBwOp` call: the per-row terms and the gradient accumulators."""

    def __init__(
        self,
        inputs: Inputs,
        c: Canonical,
        plan: TilePlan,
        grad_out: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        grad_lse: Optional[torch.Tensor],
        seed: int,
    ) -> None:
        cd, dev = c.q.dtype, c.q.device
        self.c, self.plan, self.seed, self.p, self.scale = c, plan, seed, inputs.p, inputs.scale
        self.do = torch.empty((c.batch, c.groups, c.heads, c.num_queries, int(c.v.shape[-1])), dtype=cd, device=dev)
        self.do.copy_(grad_out.permute(0, 2, 3, 1, 4))
        # delta = rowsum(dO * O) - grad_lse, so that dS = P * (dP - delta)
        self.delta = torch.mul(self.do, out.permute(0, 2, 3, 1, 4)).sum(-1)
        if grad_lse is not None:
            self.delta.sub_(grad_lse)
        self.lse2 = lse.to(cd).mul(LOG2E).masked_fill_(lse == -math.inf, math.inf)  # fully masked rows: P = 0
        self.dq = torch.empty(inputs.q5.shape, dtype=inputs.query.dtype, device=dev)
        # dk and dv per query head: each head's gradient of its (possibly shared, stride-0) key/value view
        self.dk = torch.zeros((c.batch, c.groups, c.heads, c.num_keys, int(c.k.shape[-1])), dtype=cd, device=dev)
        self.dv = torch.zeros((c.batch, c.groups, c.heads, c.num_keys, int(c.v.shape[-1])), dtype=cd, device=dev)
        self.dbias: Optional[torch.Tensor] = None
        if inputs.features.bias_requires_grad and c.bias is not None:
            self.dbias = torch.zeros(c.bias.shape, dtype=c.bias.dtype, device=dev)
        self.masks = TileMasks(c.geometry, c.num_queries, c.num_keys, cd, dev)
        self.buf_s = torch.empty(plan.elements, dtype=cd, device=dev)
        self.buf_dp = torch.empty(plan.elements, dtype=cd, device=dev)

    def query_block(self, bs: tuple[int, int], qs: tuple[int, int]) -> None:
        """Accumulate the gradients of queries ``qs`` of batch entries ``bs`` over their key tiles."""
        c, hkv = self.c, self.c.kv_heads
        qt = c.query_rows(bs, qs)
        do_t = rows(self.do, bs, qs, hkv)
        lse_t = rows(self.lse2.unsqueeze(-1), bs, qs, hkv)
        delta_t = rows(self.delta.unsqueeze(-1), bs, qs, hkv)
        dq_t = torch.zeros_like(qt)
        for t in self.plan.keys(self.masks, bs, qs):
            nbh, kdim, kv_dim = t.nb * c.groups * c.heads, qt.shape[-1], do_t.shape[-1]
            kt, vt = rows(c.k, bs, (t.k0, t.k1), hkv), rows(c.v, bs, (t.k0, t.k1), hkv)
            prob = score_tile(c, self.masks, qt, t, self.buf_s).sub_(lse_t).exp2_()
            zt: Optional[torch.Tensor] = None
            pd = prob
            if self.p > 0:
                zt = keep_tile(c, t, seed=self.seed, p=self.p).to(prob.dtype).mul_(1.0 / (1.0 - self.p))
                pd = prob * zt
            dv_t = self.dv[t.b0 : t.b1, :, :, t.k0 : t.k1].view(nbh, t.nk, kv_dim)
            dv_t.baddbmm_(pd.view(nbh, t.nq, t.nk).transpose(1, 2), do_t.view(nbh, t.nq, kv_dim))
            ds = torch.bmm(do_t, vt.transpose(1, 2), out=self.buf_dp[: prob.numel()].view(prob.shape))
            if zt is not None:
                ds.mul_(zt)
            ds.sub_(delta_t).mul_(prob)
            if self.dbias is not None:
                self.dbias[t.b0 : t.b1, :, :, t.q0 : t.q1, t.k0 : t.k1].copy_(ds.view(t.nb, c.groups, c.heads, t.nq, t.nk))
            dq_t.baddbmm_(ds, kt)
            dk_t = self.dk[t.b0 : t.b1, :, :, t.k0 : t.k1].view(nbh, t.nk, kdim)
            dk_t.baddbmm_(ds.view(nbh, t.nq, t.nk).transpose(1, 2), qt.view(nbh, t.nq, kdim), alpha=LN2)  # qt carries log2(e)
        (b0, b1), (q0, q1) = bs, qs
        self.dq[b0:b1, q0:q1].permute(0, 2, 3, 1, 4).copy_(dq_t.mul_(self.scale).view(b1 - b0, c.groups, c.heads, q1 - q0, -1))
