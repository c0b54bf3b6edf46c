"""Pieces shared by the reference operators.

* :func:`prepare` turns validated :class:`~attncore.inputs.Inputs` into per-head views in the compute
  dtype: it unpages keys (gathering the logical rows), folds grouped-query heads (a stride-0 ``H`` axis
  of keys and values is dropped, the query heads are processed as extra query rows against one
  key/value head, see :func:`rows`) and gathers a paged tensor bias.
* :class:`TileMasks` answers the geometry questions a tiled loop asks: which keys can a block of
  queries reach, can a tile be skipped, and which pairs of a tile are masked (``None`` when none are,
  decided analytically so no mask is built for tiles fully inside a band or a block).
* :func:`add_bias_and_mask` applies the additive tensor and the mask to one tile of scores.
* :func:`to_canonical` and :func:`scatter_keys` put results back in the caller's layout.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from attncore.geometry import Band, MaskGeometry
from attncore.inputs import Inputs

__all__ = [
    "LN2",
    "LOG2E",
    "Canonical",
    "TileMasks",
    "add_bias_and_mask",
    "compute_dtype",
    "prepare",
    "rows",
    "scatter_keys",
    "to_canonical",
]

LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float16, bfloat16 and float32 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class Canonical(NamedTuple):
    """One call in the operators' working layout (``Hkv`` is 1 when query heads are folded, else ``H``).

    Tensors are views of the caller's when their dtype is the compute dtype (else converted copies in
    the same layout): ``q``: ``[B, G, H, Mq, K]``, unscaled; ``k``: ``[B, G, Hkv, Mk, K]``;
    ``v``: ``[B, G, Hkv, Mk, Kv]`` (``Mk`` counts logical keys; paged keys are gathered);
    ``q_scale``: the factor :meth:`query_rows` applies; ``bias``: the additive tensor as a
    ``[B, G, H, Mq, Mk]`` broadcast view, or ``None``; ``geometry``: band and blocks over logical keys,
    ``None`` when every pair is allowed; ``rows``: physical key row of each logical key row (paged keys).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_scale: float
    bias: Optional[torch.Tensor]
    geometry: Optional[MaskGeometry]
    rows: Optional[torch.Tensor]
    num_physical_keys: int

    @property
    def batch(self) -> int:
        return int(self.q.shape[0])

    @property
    def groups(self) -> int:
        return int(self.q.shape[1])

    @property
    def heads(self) -> int:
        return int(self.q.shape[2])

    @property
    def kv_heads(self) -> int:
        return int(self.k.shape[2])

    @property
    def num_queries(self) -> int:
        return int(self.q.shape[3])

    @property
    def num_keys(self) -> int:
        return int(self.k.shape[3])

    def query_rows(self, batch: tuple[int, int], span: tuple[int, int]) -> torch.Tensor:
        """Queries ``span`` of batch entries ``batch``, times ``q_scale``, as a new contiguous
        ``[nb * G * Hkv, (H / Hkv) * m, K]`` tensor (see :func:`rows`): the scale is folded in once per query."""
        (b0, b1), (m0, m1) = batch, span
        q = self.q[b0:b1, :, :, m0:m1]
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        torch.mul(q, self.q_scale, out=out)
        return out.view((b1 - b0) * self.groups * self.kv_heads, -1, out.shape[-1])


def rows(t: torch.Tensor, batch: tuple[int, int], span: tuple[int, int], kv_heads: int) -> torch.Tensor:
    """``t[b0:b1, :, :, m0:m1]`` (``[nb, G, H, m, D]``) as ``[nb * G * Hkv, (H / Hkv) * m, D]``: the query
    heads sharing a key/value head become extra rows (head-major). A view when the strides allow it
    (always for one batch entry of keys and values), else a copy of just this block."""
    (b0, b1), (m0, m1) = batch, span
    return t[b0:b1, :, :, m0:m1].reshape((b1 - b0) * t.shape[1] * kv_heads, -1, t.shape[-1])


def prepare(inputs: Inputs, dtype: torch.dtype, *, q_scale: float, fold_heads: bool) -> Canonical:
    """Canonical views of ``inputs`` in ``dtype`` (converted copies only when the dtype differs).

    ``fold_heads`` drops the stride-0 head axis of shared keys/values (``Hkv = 1``); without it keys and
    values keep ``H`` heads (stride-0 views when shared). Paged keys are gathered (a copy of the logical
    rows); so is a tensor bias over paged keys (rare: no public paged bias carries a tensor).
    """
    k5, v5 = inputs.k5, inputs.v5
    if fold_heads and inputs.features.shared_kv_heads:
        k5, v5 = k5[:, :, :, :1], v5[:, :, :, :1]
    bias = inputs.bias5
    geometry: Optional[MaskGeometry] = None
    rows_index: Optional[torch.Tensor] = None
    if inputs.geometry is not None:
        logical, rows_index = inputs.geometry.unpaged()
        if rows_index is not None:
            rows_index = rows_index.to(k5.device)
            k5, v5 = k5.index_select(1, rows_index), v5.index_select(1, rows_index)
            if bias is not None:
                bias = bias.index_select(4, rows_index)
        if logical.band is not None or logical.blocks is not None:
            geometry = logical.without_tensor()
    return Canonical(
        q=_bghm(inputs.q5, dtype),
        k=_bghm(k5, dtype),
        v=_bghm(v5, dtype),
        q_scale=q_scale,
        bias=bias,
        geometry=geometry,
        rows=rows_index,
        num_physical_keys=inputs.num_keys,
    )


def _bghm(t5: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, M, G, H, D]`` as ``[B, G, H, M, D]`` in ``dtype``: a view when the dtype matches."""
    return t5.permute(0, 2, 3, 1, 4).to(dtype)


def to_canonical(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, G, H, M, D]`` back to a contiguous ``[B, M, G, H, D]`` in ``dtype`` (one pass)."""
    out = torch.empty((t.shape[0], t.shape[3], t.shape[1], t.shape[2], t.shape[4]), dtype=dtype, device=t.device)
    out.permute(0, 2, 3, 1, 4).copy_(t)
    return out


def scatter_keys(t: torch.Tensor, dim: int, rows: Optional[torch.Tensor], num_physical: int) -> torch.Tensor:
    """Sum a gradient over logical key rows back onto the physical rows they were gathered from."""
    if rows is None:
        return t
    shape = list(t.shape)
    shape[dim] = num_physical
    return torch.zeros(shape, dtype=t.dtype, device=t.device).index_add_(dim, rows, t)


def add_bias_and_mask(scores: torch.Tensor, bias: Optional[torch.Tensor], mask: Optional[torch.Tensor], bias_scale: float) -> None:
    """In place: ``scores += bias_scale * bias + mask``; ``mask`` is an additive 0 / ``-inf`` grid from
    :meth:`TileMasks.additive` broadcast over the leading dims (an add is much cheaper than ``masked_fill_``)."""
    if bias is not None:
        scores.add_(bias, alpha=bias_scale)
    if mask is not None:
        scores.add_(mask)


def _band_span(band: Band, a0: int, a1: int, nq: int, nk: int) -> tuple[int, int]:
    """Keys ``[s0, s1)`` of a block of ``nq`` queries and ``nk`` keys that its queries ``[a0, a1)`` may reach."""
    shift = band.shift(nq, nk)
    s0 = 0 if band.lo is None else max(0, a0 + shift + band.lo)
    s1 = nk if band.hi is None else min(nk, a1 + shift + band.hi)
    return s0, max(s0, s1)


def _band_covers(band: Band, a0: int, a1: int, c0: int, c1: int, *, shift: int) -> bool:
    """Whether every pair of queries ``[a0, a1)`` and keys ``[c0, c1)`` lies inside the band."""
    d_min, d_max = c0 - (a1 - 1) - shift, (c1 - 1) - a0 - shift
    return (band.lo is None or d_min >= band.lo) and (band.hi is None or d_max <= band.hi)


class TileMasks:
    """Geometry queries of a tiled loop over ``num_queries x num_keys`` (logical keys).

    Masks are additive (0 where allowed, ``-inf`` where not) in ``dtype`` on ``device``. Those of dense
    bands depend only on the tile's offset from the diagonal and its size, so they are cached; block
    layouts build them per tile, only for tiles that straddle a block or band edge.
    """

    def __init__(self, geometry: Optional[MaskGeometry], num_queries: int, num_keys: int, dtype: torch.dtype, device: torch.device) -> None:
        self.geometry = geometry
        self.num_queries = num_queries
        self.num_keys = num_keys
        self.dtype = dtype
        self.device = device
        self._cache: dict[tuple[int, int, int], torch.Tensor] = {}

    def key_span(self, q0: int, q1: int) -> tuple[int, int]:
        """A range ``[lo, hi)`` holding every key that queries ``[q0, q1)`` may attend (``lo == hi``: none)."""
        geo = self.geometry
        if q0 >= q1:
            return 0, 0
        if geo is None:
            return 0, self.num_keys
        if geo.blocks is None:
            assert geo.band is not None  # prepare() drops geometries with neither band nor blocks
            return _band_span(geo.band, q0, q1, self.num_queries, self.num_keys)
        lo, hi = self.num_keys, 0
        for qs, qe, ks, ke in geo.blocks.intervals_overlapping(q0, q1):
            a0, a1 = max(qs, q0), min(qe, q1)
            if a0 >= a1 or ks >= ke:
                continue
            s0, s1 = (0, ke - ks) if geo.band is None else _band_span(geo.band, a0 - qs, a1 - qs, qe - qs, ke - ks)
            if s0 < s1:
                lo, hi = min(lo, ks + s0), max(hi, ks + s1)
        return (lo, hi) if lo < hi else (0, 0)

    def is_empty(self, q0: int, q1: int, k0: int, k1: int) -> bool:
        """``True`` if no pair of the tile is allowed (the tile can be skipped)."""
        if self.geometry is None:
            return q0 >= q1 or k0 >= k1
        return self.geometry.tile_is_empty(q0, q1, k0, k1, self.num_queries, self.num_keys)

    def is_full(self, q0: int, q1: int, k0: int, k1: int) -> bool:
        """``True`` if every pair of the tile is allowed, decided from the band and block bounds alone."""
        geo = self.geometry
        if geo is None:
            return True
        if geo.blocks is None:
            assert geo.band is not None  # prepare() drops geometries with neither band nor blocks
            return _band_covers(geo.band, q0, q1, k0, k1, shift=geo.band.shift(self.num_queries, self.num_keys))
        hits = [iv for iv in geo.blocks.intervals_overlapping(q0, q1) if iv[0] < iv[1] and iv[0] < q1 and q0 < iv[1]]
        if len(hits) != 1:
            return False
        qs, qe, ks, ke = hits[0]
        if not (qs <= q0 and q1 <= qe and ks <= k0 and k1 <= ke):
            return False
        return geo.band is None or _band_covers(geo.band, q0 - qs, q1 - qs, k0 - ks, k1 - ks, shift=geo.band.shift(qe - qs, ke - ks))

    def additive(self, q0: int, q1: int, k0: int, k1: int) -> Optional[torch.Tensor]:
        """``[q1 - q0, k1 - k0]`` grid, 0 where the pair is allowed and ``-inf`` where masked; ``None`` if none is."""
        if self.is_full(q0, q1, k0, k1):
            return None
        geo = self.geometry
        assert geo is not None  # is_full() is True without a geometry
        key = (k0 - q0, q1 - q0, k1 - k0)
        dense = geo.blocks is None
        if dense and key in self._cache:
            return self._cache[key]
        allowed = geo.allowed(q0, q1, k0, k1, self.num_queries, self.num_keys)
        assert allowed is not None  # a geometry with a band or blocks always yields a grid
        out = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill_(allowed.logical_not_(), -math.inf).to(self.device)
        if dense:
            self._cache[key] = out
        return out
