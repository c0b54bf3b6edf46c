"""The composable description every attention bias reduces to.

Public bias classes (``attncore.attn_bias``) are thin, user-facing constructors. What a kernel needs
to know about a bias is captured here by a few orthogonal pieces:

* a diagonal :class:`Band` (causal, local window, or both), anchored top-left or bottom-right;
* a sequence :class:`Layout` (one dense block, or a block-diagonal packing of variable-length
  sequences, possibly with padded or gappy keys);
* optional paging of the keys (``block_tables`` and ``page_size``);
* optional additive tensor.

Capabilities are negotiated on :class:`BiasFeatures` (which pieces are present), never on class names.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import NamedTuple, Optional

import torch

__all__ = ["Anchor", "Band", "BiasFeatures", "BlockLayout", "Layout", "MaskGeometry", "Paging"]


class Anchor(str, enum.Enum):
    """Where the diagonal of a band sits when a block has more keys than queries (or fewer)."""

    TOP_LEFT = "top_left"
    BOTTOM_RIGHT = "bottom_right"


class Layout(str, enum.Enum):
    """How queries and keys are split into independent sequences."""

    DENSE = "dense"
    BLOCK_DIAGONAL = "block_diagonal"
    PADDED_KEYS = "padded_keys"
    GAPPY_KEYS = "gappy_keys"


@dataclass(frozen=True)
class Band:
    """Query ``i`` may attend key ``j`` of the same block iff ``lo <= j - i - shift <= hi``.

    ``shift`` is 0 for :attr:`Anchor.TOP_LEFT` and ``num_keys - num_queries`` (of the block) for
    :attr:`Anchor.BOTTOM_RIGHT`. ``None`` leaves that side unbounded. A causal mask is ``hi=0``; a
    causal local window of ``w`` keys is ``lo=-(w - 1), hi=0``.
    """

    anchor: Anchor
    lo: Optional[int]
    hi: Optional[int]

    @property
    def kind(self) -> str:
        """``causal``, ``causal_local``, ``local`` or ``lower_bound`` (a window with no upper side)."""
        if self.hi == 0:
            return "causal" if self.lo is None else "causal_local"
        return "local" if self.hi is not None else "lower_bound"

    def shift(self, num_queries: int, num_keys: int) -> int:
        return 0 if self.anchor is Anchor.TOP_LEFT else num_keys - num_queries

    def allowed(self, q_idx: torch.Tensor, k_idx: torch.Tensor, shift: torch.Tensor | int) -> torch.Tensor:
        """Boolean grid ``[len(q_idx), len(k_idx)]`` (or broadcast of the inputs) of allowed pairs."""
        d = k_idx.unsqueeze(-2) - q_idx.unsqueeze(-1) - shift
        ok = torch.ones_like(d, dtype=torch.bool)
        if self.lo is not None:
            ok &= d >= self.lo
        if self.hi is not None:
            ok &= d <= self.hi
        return ok

    def describe(self) -> str:
        side = "top-left" if self.anchor is Anchor.TOP_LEFT else "bottom-right"
        lo = "-inf" if self.lo is None else str(self.lo)
        hi = "+inf" if self.hi is None else str(self.hi)
        return f"{self.kind} ({side}, {lo} <= key - query - shift <= {hi})"


@dataclass(frozen=True)
class BlockLayout:
    """Variable-length sequences packed along the sequence axis of a batch of one.

    ``q_seqstart`` holds ``n + 1`` offsets; block ``b`` owns queries ``[q_seqstart[b], q_seqstart[b+1])``.
    Block ``b`` owns keys ``[k_start[b], k_start[b] + k_len[b])``; ``k_total`` is the key axis length.
    """

    kind: Layout
    q_seqstart: tuple[int, ...]
    k_start: tuple[int, ...]
    k_len: tuple[int, ...]
    k_total: int

    @property
    def num_blocks(self) -> int:
        return len(self.k_len)

    @property
    def q_total(self) -> int:
        return self.q_seqstart[-1]

    def q_len(self, b: int) -> int:
        return self.q_seqstart[b + 1] - self.q_seqstart[b]

    @property
    def keys_disjoint(self) -> bool:
        """No two blocks' (non-empty) key spans overlap, so per-block key gradients can be written in place."""
        spans = sorted((s, s + n) for s, n in zip(self.k_start, self.k_len, strict=True) if n > 0)
        return all(a[1] <= b[0] for a, b in itertools.pairwise(spans))

    @property
    def key_offsets(self) -> tuple[int, ...]:
        """``n + 1`` running totals of ``k_len``: where each block's keys start when packed back to back."""
        return tuple(itertools.accumulate(self.k_len, initial=0))

    def intervals_overlapping(self, q0: int, q1: int) -> list[tuple[int, int, int, int]]:
        """The :meth:`intervals` of the blocks whose queries intersect ``[q0, q1)``."""
        first = max(bisect.bisect_right(self.q_seqstart, q0) - 1, 0)
        last = bisect.bisect_left(self.q_seqstart, q1)
        return [
            (self.q_seqstart[b], self.q_seqstart[b + 1], self.k_start[b], self.k_start[b] + self.k_len[b]) for b in range(first, min(last, self.num_blocks))
        ]

    def intervals(self) -> list[tuple[int, int, int, int]]:
        """``(q_start, q_end, k_start, k_end)`` for each block."""
        return [(self.q_seqstart[b], self.q_seqstart[b + 1], self.k_start[b], self.k_start[b] + self.k_len[b]) for b in range(self.num_blocks)]


@dataclass(frozen=True, eq=False)
class Paging:
    """Keys live in pages of ``page_size`` rows; row ``t`` of sequence ``b`` is at physical row
    ``block_tables[b, t // page_size] * page_size + t % page_size``."""

    block_tables: torch.Tensor
    page_size: int

    @property
    def row_len(self) -> int:
        """Logical key capacity of one sequence (``max_pages_per_sequence * page_size``)."""
        return int(self.block_tables.shape[1]) * self.page_size

    @property
    def rows_needed(self) -> int:
        """How many physical key rows the page tables address (highest page + 1, times page_size).

        Recomputed whenever ``block_tables`` changed in place (decode loops update page tables), so a
        stale bound never lets an out-of-range page reach a kernel."""
        version = self.block_tables._version
        cached: Optional[tuple[int, int]] = self.__dict__.get("_rows_needed")
        if cached is None or cached[0] != version:
            rows = (int(self.block_tables.max()) + 1) * self.page_size if self.block_tables.numel() else 0
            cached = (version, rows)
            self.__dict__["_rows_needed"] = cached
        return cached[1]

    def physical_rows(self) -> torch.Tensor:
        """``[num_sequences * row_len]`` physical key row of each logical key row."""
        tables = self.block_tables.to(device="cpu", dtype=torch.int64)
        offs = torch.arange(self.page_size, dtype=torch.int64)
        rows = tables.unsqueeze(-1) * self.page_size + offs
        return rows.reshape(-1)


class BiasFeatures(NamedTuple):
    """Which pieces a bias uses: what backends declare support for, and part of the dispatch key."""

    layout: Layout = Layout.DENSE
    band: Optional[str] = None
    anchor: Optional[Anchor] = None
    paged: bool = False
    tensor: bool = False

    def describe(self) -> str:
        parts = [self.layout.value]
        if self.band is not None and self.anchor is not None:
            parts.append(f"{self.band} {self.anchor.value}")
        if self.paged:
            parts.append("paged")
        if self.tensor:
            parts.append("tensor")
        return ", ".join(parts)


NO_BIAS_FEATURES = BiasFeatures()


@dataclass(frozen=True, eq=False)
class MaskGeometry:
    """Concrete description of one bias: band, layout, paging and additive tensor, all optional."""

    band: Optional[Band] = None
    blocks: Optional[BlockLayout] = None
    paging: Optional[Paging] = None
    tensor: Optional[torch.Tensor] = None

    @cached_property
    def features(self) -> BiasFeatures:
        return BiasFeatures(
            layout=self.blocks.kind if self.blocks is not None else Layout.DENSE,
            band=self.band.kind if self.band is not None else None,
            anchor=self.band.anchor if self.band is not None else None,
            paged=self.paging is not None,
            tensor=self.tensor is not None,
        )

    def without_tensor(self) -> MaskGeometry:
        return replace(self, tensor=None)

    # --- unpaging -------------------------------------------------------------------------------
    def unpaged(self) -> tuple[MaskGeometry, Optional[torch.Tensor]]:
        """The same mask over logically laid-out keys, and the physical row of each logical row.

        Gathering ``key[:, rows]`` with the returned index turns paged keys into the layout the
        returned geometry describes; ``None`` means the keys are not paged.
        """
        if self.paging is None:
            return self, None
        assert self.blocks is not None  # paging is only ever built on top of a block layout
        row_len = self.paging.row_len
        starts = tuple(b * row_len + s for b, s in enumerate(self.blocks.k_start))
        blocks = replace(self.blocks, k_start=starts, k_total=row_len * self.blocks.num_blocks)
        return replace(self, blocks=blocks, paging=None), self.paging.physical_rows()

    # --- masks ----------------------------------------------------------------------------------
    def allowed(self, q0: int, q1: int, k0: int, k1: int, num_queries: int, num_keys: int) -> Optional[torch.Tensor]:
        """Boolean ``[q1 - q0, k1 - k0]`` grid of the tile's allowed pairs, ``None`` if all are allowed.

        Ignores paging (call :meth:`unpaged` first) and the additive tensor.
        """
        q_idx = torch.arange(q0, q1, dtype=torch.int64)
        k_idx = torch.arange(k0, k1, dtype=torch.int64)
        if self.blocks is None:
            if self.band is None:
                return None
            return self.band.allowed(q_idx, k_idx, self.band.shift(num_queries, num_keys))
        ok = torch.zeros((q1 - q0, k1 - k0), dtype=torch.bool)
        for qs, qe, ks, ke in self.blocks.intervals_overlapping(q0, q1):
            a0, a1, c0, c1 = max(qs, q0), min(qe, q1), max(ks, k0), min(ke, k1)
            if a0 >= a1 or c0 >= c1:
                continue
            cell = ok[a0 - q0 : a1 - q0, c0 - k0 : c1 - k0]
            if self.band is None:
                cell.fill_(True)
            else:
                q_loc = torch.arange(a0 - qs, a1 - qs, dtype=torch.int64)
                k_loc = torch.arange(c0 - ks, c1 - ks, dtype=torch.int64)
                cell.copy_(self.band.allowed(q_loc, k_loc, self.band.shift(qe - qs, ke - ks)))
        return ok

    def tile_is_empty(self, q0: int, q1: int, k0: int, k1: int, num_queries: int, num_keys: int) -> bool:
        """Cheap conservative test: ``True`` only if no pair of the tile can be allowed."""
        if self.blocks is None:
            if self.band is None:
                return False
            shift = self.band.shift(num_queries, num_keys)
            d_min, d_max = k0 - (q1 - 1) - shift, (k1 - 1) - q0 - shift
            return (self.band.hi is not None and d_min > self.band.hi) or (self.band.lo is not None and d_max < self.band.lo)
        for qs, qe, ks, ke in self.blocks.intervals_overlapping(q0, q1):
            if qs < qe and ks < k1 and k0 < ke:
                if self.band is None:
                    return False
                shift = self.band.shift(qe - qs, ke - ks)
                a0, a1 = max(qs, q0) - qs, min(qe, q1) - qs
                c0, c1 = max(ks, k0) - ks, min(ke, k1) - ks
                d_min, d_max = c0 - (a1 - 1) - shift, (c1 - 1) - a0 - shift
                if not ((self.band.hi is not None and d_min > self.band.hi) or (self.band.lo is not None and d_max < self.band.lo)):
                    return False
        return True

    def materialize(self, num_queries: int, num_keys: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """Additive ``[num_queries, num_keys]`` mask (0 or -inf) over logical keys, plus the tensor if any."""
        ok = self.allowed(0, num_queries, 0, num_keys, num_queries, num_keys)
        out = torch.zeros((num_queries, num_keys), dtype=dtype, device=device)
        if ok is not None:
            out.masked_fill_(~ok.to(device), -math.inf)
        return out
