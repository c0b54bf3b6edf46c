"""Attention biases: masks described by their geometry, so kernels never have to load them.

Each class here is a user-facing constructor over :class:`attncore.geometry.MaskGeometry`; the
kernels (and the capability checks) see only that geometry. The grids below show ``1`` where a query
(row) may attend a key (column).

``LowerTriangularMask`` (4 queries, 5 keys)::

    1 0 0 0 0
    1 1 0 0 0
    1 1 1 0 0
    1 1 1 1 0

``LowerTriangularFromBottomRightMask`` (4 queries, 5 keys)::

    1 1 0 0 0
    1 1 1 0 0
    1 1 1 1 0
    1 1 1 1 1

``LocalAttentionFromBottomRightMask(window_left=1, window_right=2)`` (4 queries, 5 keys)::

    1 1 1 1 0
    0 1 1 1 1
    0 0 1 1 1
    0 0 0 1 1

``BlockDiagonalCausalMask.from_seqlens([2, 3])``::

    1 0 0 0 0
    1 1 0 0 0
    0 0 1 0 0
    0 0 1 1 0
    0 0 1 1 1
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Optional, Sequence, Union

import torch

from attncore.geometry import Anchor, Band, BiasFeatures, BlockLayout, Layout, MaskGeometry, Paging

__all__ = [
    "AttentionBias",
    "BlockDiagonalCausalFromBottomRightMask",
    "BlockDiagonalCausalLocalAttentionFromBottomRightMask",
    "BlockDiagonalCausalLocalAttentionMask",
    "BlockDiagonalCausalMask",
    "BlockDiagonalCausalWithOffsetGappyKeysMask",
    "BlockDiagonalCausalWithOffsetPaddedKeysMask",
    "BlockDiagonalGappyKeysMask",
    "BlockDiagonalMask",
    "BlockDiagonalPaddedKeysMask",
    "LocalAttentionFromBottomRightMask",
    "LowerTriangularFromBottomRightLocalAttentionMask",
    "LowerTriangularFromBottomRightMask",
    "LowerTriangularMask",
    "LowerTriangularMaskWithTensorBias",
    "PagedBlockDiagonalCausalWithOffsetGappyKeysMask",
    "PagedBlockDiagonalCausalWithOffsetPaddedKeysMask",
    "PagedBlockDiagonalGappyKeysMask",
    "PagedBlockDiagonalPaddedKeysMask",
    "SeqLenInfo",
]

Lengths = Union[Sequence[int], torch.Tensor]


def _ints(name: str, values: Lengths, *, minimum: int = 0) -> tuple[int, ...]:
    """Validate a list of lengths or offsets given by the user; the error names the argument."""
    if isinstance(values, torch.Tensor):
        if values.dim() != 1 or values.is_floating_point():
            raise ValueError(f"{name}: expected a 1-D integer tensor, found shape {tuple(values.shape)} {values.dtype}")
        seq: Sequence[Any] = values.tolist()
    else:
        seq = values
    out = []
    for i, x in enumerate(seq):
        if isinstance(x, bool) or not isinstance(x, int):
            raise ValueError(f"{name}[{i}]: expected an int, found {type(x).__name__} {x!r}")
        if x < minimum:
            raise ValueError(f"{name}[{i}]: expected an int >= {minimum}, found {x}")
        out.append(int(x))
    return tuple(out)


def _window(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, found {value!r}")
    return value


@dataclass(frozen=True)
class SeqLenInfo:
    """Where each sequence of a packed batch lives along the sequence axis.

    Sequence ``b`` occupies ``[seqstart[b], seqstart[b] + seqlen[b])``; ``total`` is the axis length
    (for padded and gappy keys, the unused rows between sequences are part of it).
    """

    seqstart: tuple[int, ...]
    seqlen: tuple[int, ...]
    total: int

    @classmethod
    def from_seqlens(cls, seqlens: Lengths, name: str = "seqlen") -> SeqLenInfo:
        lens = _ints(name, seqlens)
        starts = [0]
        for n in lens:
            starts.append(starts[-1] + n)
        return cls(tuple(starts[:-1]), lens, starts[-1])

    @classmethod
    def padded(cls, seqlens: Lengths, padding: int, name: str = "kv_seqlen") -> SeqLenInfo:
        _window("kv_padding", padding, 1)
        lens = _ints(name, seqlens)
        for i, n in enumerate(lens):
            if n > padding:
                raise ValueError(f"{name}[{i}]: expected at most kv_padding={padding}, found {n}")
        return cls(tuple(i * padding for i in range(len(lens))), lens, padding * len(lens))

    @classmethod
    def gappy(cls, seqstarts: Lengths, seqlens: Lengths, total: Optional[int] = None) -> SeqLenInfo:
        """Keys at arbitrary starts. Without ``total``, ``seqstarts`` has one more entry (the total)."""
        starts = _ints("kv_seqstarts", seqstarts)
        lens = _ints("kv_seqlen", seqlens)
        if total is None:
            if len(starts) != len(lens) + 1:
                raise ValueError(
                    f"kv_seqstarts: expected len(kv_seqlen) + 1 = {len(lens) + 1} entries (the last one is the total key length), found {len(starts)}"
                )
            total, starts = starts[-1], starts[:-1]
        elif len(starts) != len(lens):
            raise ValueError(f"kv_seqstarts: expected {len(lens)} entries (one per sequence), found {len(starts)}")
        for i, (s, n) in enumerate(zip(starts, lens, strict=False)):
            if s + n > total:
                raise ValueError(f"kv_seqlen[{i}]: keys [{s}, {s + n}) run past the end of the key axis ({total})")
        return cls(starts, lens, total)

    @property
    def seqstart_py(self) -> list[int]:
        """Offsets with the total appended (``n + 1`` entries), as in the packed-batch convention."""
        return [*self.seqstart, self.total]

    @property
    def seqlen_py(self) -> list[int]:
        return list(self.seqlen)

    @property
    def max_seqlen(self) -> int:
        return max(self.seqlen, default=0)

    @property
    def min_seqlen(self) -> int:
        return min(self.seqlen, default=0)

    def intervals(self) -> list[tuple[int, int]]:
        return [(s, s + n) for s, n in zip(self.seqstart, self.seqlen, strict=False)]

    def seqstart_tensor(self, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        return torch.tensor(self.seqstart_py, dtype=torch.int32, device=device)

    def seqlen_tensor(self, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        return torch.tensor(self.seqlen, dtype=torch.int32, device=device)


class AttentionBias:
    """Base of every structured bias: something added to ``Q @ K^T`` before the softmax.

    Subclasses describe their mask through :meth:`geometry`; :meth:`materialize` turns that into a
    dense additive tensor (0 where attention is allowed, ``-inf`` where not) for debugging and tests.
    """

    def geometry(self) -> MaskGeometry:
        """The mask's description (built once per instance, then cached)."""
        geo: Optional[MaskGeometry] = self.__dict__.get("_geometry_cache")
        if geo is None:
            geo = self._build_geometry()
            self.__dict__["_geometry_cache"] = geo  # biases are immutable, so is their geometry
        return geo

    def _build_geometry(self) -> MaskGeometry:
        raise NotImplementedError(f"{type(self).__name__} does not describe its geometry")

    @property
    def features(self) -> BiasFeatures:
        return self.geometry().features

    def materialize(
        self,
        shape: Sequence[int],
        dtype: torch.dtype = torch.float32,
        device: Union[str, torch.device] = "cpu",
    ) -> torch.Tensor:
        """The bias as a dense tensor of ``shape`` (``[..., num_queries, num_keys]``). Slow; for tests."""
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2:
            raise ValueError(f"shape: expected at least 2 dims [..., num_queries, num_keys], found {shape}")
        geo = self.geometry()
        mq, mk = shape[-2], shape[-1]
        self._check_materialize_shape(geo, mq, mk)
        logical, rows = geo.unpaged()
        mask2d = logical.without_tensor().materialize(mq, logical.blocks.k_total if logical.blocks is not None else mk, dtype, device)
        if rows is not None:
            physical = torch.full((mq, mk), -math.inf, dtype=dtype, device=device)
            keep = rows < mk
            physical[:, rows[keep].to(device)] = mask2d[:, keep.to(device)]
            mask2d = physical
        out = mask2d.expand(shape)
        if geo.tensor is not None:
            out = torch.broadcast_to(out + geo.tensor.to(device=device, dtype=dtype), shape)
        return out.contiguous()

    def _check_materialize_shape(self, geo: MaskGeometry, mq: int, mk: int) -> None:
        if geo.blocks is None:
            return
        if mq != geo.blocks.q_total:
            raise ValueError(f"shape: expected {geo.blocks.q_total} queries (sum of q_seqlen), found {mq}")
        if geo.paging is None and mk != geo.blocks.k_total:
            raise ValueError(f"shape: expected {geo.blocks.k_total} keys, found {mk}")
        if geo.paging is not None and mk < geo.paging.rows_needed:
            raise ValueError(f"shape: expected at least {geo.paging.rows_needed} physical key rows (the pages block_tables uses), found {mk}")


# --- dense masks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LowerTriangularMask(AttentionBias):
    """Causal mask: query ``i`` attends keys ``j <= i`` (anchored at the top-left)."""

    def _build_geometry(self) -> MaskGeometry:
        return MaskGeometry(band=Band(Anchor.TOP_LEFT, None, 0))

    def add_bias(self, bias: torch.Tensor) -> LowerTriangularMaskWithTensorBias:
        """This causal mask plus an additive tensor broadcastable to ``[B, H, Mq, Mk]``."""
        return LowerTriangularMaskWithTensorBias(bias)


@dataclass(frozen=True, eq=False)
class LowerTriangularMaskWithTensorBias(LowerTriangularMask):
    """Causal (top-left) mask plus an additive tensor (ALiBi, relative positions...)."""

    _bias: torch.Tensor = field(default_factory=lambda: torch.zeros(()))

    def __post_init__(self) -> None:
        if not isinstance(self._bias, torch.Tensor):
            raise ValueError(f"bias: expected a torch.Tensor, found {type(self._bias).__name__}")
        if not self._bias.is_floating_point():
            raise ValueError(f"bias: expected a floating-point tensor, found {self._bias.dtype}")

    def _build_geometry(self) -> MaskGeometry:
        return MaskGeometry(band=Band(Anchor.TOP_LEFT, None, 0), tensor=self._bias)


@dataclass(frozen=True)
class LowerTriangularFromBottomRightMask(AttentionBias):
    """Causal mask whose diagonal ends at the last key: query ``i`` attends ``j <= i + Mk - Mq``."""

    def _build_geometry(self) -> MaskGeometry:
        return MaskGeometry(band=Band(Anchor.BOTTOM_RIGHT, None, 0))

    def make_local_attention(self, window_size: int) -> LowerTriangularFromBottomRightLocalAttentionMask:
        """Also limit each query to the ``window_size`` keys ending at its diagonal."""
        return LowerTriangularFromBottomRightLocalAttentionMask(window_size)


@dataclass(frozen=True)
class LowerTriangularFromBottomRightLocalAttentionMask(LowerTriangularFromBottomRightMask):
    """Bottom-right causal mask where each query sees at most ``window_size`` keys (its own included).

    ``window_size=2``, 4 queries, 5 keys::

        1 1 0 0 0
        0 1 1 0 0
        0 0 1 1 0
        0 0 0 1 1
    """

    _window_size: int = 1

    def __post_init__(self) -> None:
        _window("window_size", self._window_size, 1)

    @property
    def window_size(self) -> int:
        return self._window_size

    def _build_geometry(self) -> MaskGeometry:
        return MaskGeometry(band=Band(Anchor.BOTTOM_RIGHT, -(self._window_size - 1), 0))


@dataclass(frozen=True)
class LocalAttentionFromBottomRightMask(AttentionBias):
    """Query ``q`` attends key ``k`` iff ``q - window_left <= k + Mq - Mk <= q + window_right``.

    Each query sees at most ``window_left + 1 + window_right`` keys.
    """

    window_left: int
    window_right: int

    def __post_init__(self) -> None:
        _window("window_left", self.window_left, 0)
        _window("window_right", self.window_right, 0)

    def _build_geometry(self) -> MaskGeometry:
        return MaskGeometry(band=Band(Anchor.BOTTOM_RIGHT, -self.window_left, self.window_right))


# --- block-diagonal masks -------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockDiagonalMask(AttentionBias):
    """Packed batch of independent sequences: query block ``i`` attends only key block ``i``.

    Inputs have batch size 1 and the sequences concatenated along the sequence axis.
    ``from_seqlens([2, 3])``::

        1 1 0 0 0
        1 1 0 0 0
        0 0 1 1 1
        0 0 1 1 1
        0 0 1 1 1
    """

    q_seqinfo: SeqLenInfo
    k_seqinfo: SeqLenInfo
    _batch_sizes: Optional[tuple[int, ...]] = None

    _LAYOUT: ClassVar[Layout] = Layout.BLOCK_DIAGONAL

    def __post_init__(self) -> None:
        if len(self.q_seqinfo.seqlen) != len(self.k_seqinfo.seqlen):
            raise ValueError(f"kv_seqlen: expected one key length per query sequence ({len(self.q_seqinfo.seqlen)}), found {len(self.k_seqinfo.seqlen)}")

    def _band(self) -> Optional[Band]:
        return None

    def _build_geometry(self) -> MaskGeometry:
        blocks = BlockLayout(
            kind=self._LAYOUT,
            q_seqstart=tuple(self.q_seqinfo.seqstart_py),
            k_start=self.k_seqinfo.seqstart,
            k_len=self.k_seqinfo.seqlen,
            k_total=self.k_seqinfo.total,
        )
        return MaskGeometry(band=self._band(), blocks=blocks)

    @classmethod
    def from_seqlens(cls, q_seqlen: Lengths, kv_seqlen: Optional[Lengths] = None) -> BlockDiagonalMask:
        """Blocks of ``q_seqlen[i]`` queries and ``kv_seqlen[i]`` keys (defaults to ``q_seqlen``)."""
        q = SeqLenInfo.from_seqlens(q_seqlen, "q_seqlen")
        k = q if kv_seqlen is None else SeqLenInfo.from_seqlens(kv_seqlen, "kv_seqlen")
        return cls(q, k)

    @classmethod
    def from_tensor_list(cls, tensors: Sequence[torch.Tensor]) -> tuple[BlockDiagonalMask, torch.Tensor]:
        """Pack ``[B_i, M_i, ...]`` tensors into ``[1, sum(B_i * M_i), ...]`` and the matching mask."""
        if len(tensors) == 0:
            raise ValueError("tensors: expected at least one tensor, found an empty sequence")
        tail = tuple(tensors[0].shape[2:])
        seqlens: list[int] = []
        for i, t in enumerate(tensors):
            if t.dim() < 2 or tuple(t.shape[2:]) != tail:
                raise ValueError(f"tensors[{i}]: expected shape [B, M, {', '.join(map(str, tail))}], found {tuple(t.shape)}")
            seqlens += [int(t.shape[1])] * int(t.shape[0])
        packed = torch.cat([t.reshape(1, -1, *tail) for t in tensors], dim=1)
        batch_sizes = tuple(int(t.shape[0]) for t in tensors)
        info = SeqLenInfo.from_seqlens(seqlens)
        return cls(info, info, batch_sizes), packed

    def _split(self, tensor: torch.Tensor, info: SeqLenInfo, name: str) -> list[torch.Tensor]:
        if tensor.dim() < 2 or tensor.shape[0] != 1 or tensor.shape[1] != info.total:
            raise ValueError(f"{name}: expected shape [1, {info.total}, ...], found {tuple(tensor.shape)}")
        parts = [tensor[:, s:e] for s, e in info.intervals()]
        if self._batch_sizes is None:
            return parts
        out, i = [], 0
        for bs in self._batch_sizes:
            out.append(torch.cat(parts[i : i + bs], dim=0))
            i += bs
        return out

    def split_queries(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return self._split(tensor, self.q_seqinfo, "tensor")

    def split_kv(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return self._split(tensor, self.k_seqinfo, "tensor")

    def split(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of :meth:`from_tensor_list` for a ``[1, sum(M_i), ...]`` query-side tensor."""
        return self.split_queries(tensor)

    def _as(self, cls: type[Any], **extra: Any) -> Any:
        if self._LAYOUT is not Layout.BLOCK_DIAGONAL:
            # padded/gappy keys are not packed back to back: a plain block-diagonal variant would misplace them
            raise TypeError(f"{type(self).__name__}: causal/local variants are only derived from BlockDiagonalMask, not from {self._LAYOUT.value} keys")
        return cls(q_seqinfo=self.q_seqinfo, k_seqinfo=self.k_seqinfo, _batch_sizes=self._batch_sizes, **extra)

    def make_causal(self) -> BlockDiagonalCausalMask:
        """Each block causal, anchored at its top-left."""
        return self._as(BlockDiagonalCausalMask)  # type: ignore[no-any-return]  # _as builds cls

    def make_causal_from_bottomright(self) -> BlockDiagonalCausalFromBottomRightMask:
        """Each block causal, anchored at its bottom-right (a non-causal prefix when keys outnumber queries)."""
        return self._as(BlockDiagonalCausalFromBottomRightMask)  # type: ignore[no-any-return]  # _as builds cls

    def make_local_attention(self, window_size: int) -> BlockDiagonalCausalLocalAttentionMask:
        """Each block causal (top-left), each query seeing at most ``window_size`` keys."""
        return self._as(BlockDiagonalCausalLocalAttentionMask, _window_size=window_size)  # type: ignore[no-any-return]  # _as builds cls

    def make_local_attention_from_bottomright(self, window_size: int) -> BlockDiagonalCausalLocalAttentionFromBottomRightMask:
        """Each block causal (bottom-right), each query seeing at most ``window_size`` keys."""
        return self._as(BlockDiagonalCausalLocalAttentionFromBottomRightMask, _window_size=window_size)  # type: ignore[no-any-return]  # _as builds cls


@dataclass(frozen=True)
class BlockDiagonalCausalMask(BlockDiagonalMask):
    """Block-diagonal, each block causal from its top-left. ``from_seqlens([2, 3])``::

    1 0 0 0 0
    1 1 0 0 0
    0 0 1 0 0
    0 0 1 1 0
    0 0 1 1 1
    """

    def _band(self) -> Optional[Band]:
        return Band(Anchor.TOP_LEFT, None, 0)


@dataclass(frozen=True)
class BlockDiagonalCausalFromBottomRightMask(BlockDiagonalMask):
    """Block-diagonal, each block causal from its bottom-right. ``from_seqlens([1, 2], [2, 3])``::

    1 1 0 0 0
    0 0 1 1 0
    0 0 1 1 1
    """

    def _band(self) -> Optional[Band]:
        return Band(Anchor.BOTTOM_RIGHT, None, 0)


@dataclass(frozen=True)
class BlockDiagonalCausalLocalAttentionMask(BlockDiagonalCausalMask):
    """Block-diagonal causal (top-left) with each query limited to ``window_size`` keys."""

    _window_size: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _window("window_size", self._window_size, 1)

    def _band(self) -> Optional[Band]:
        return Band(Anchor.TOP_LEFT, -(self._window_size - 1), 0)


@dataclass(frozen=True)
class BlockDiagonalCausalLocalAttentionFromBottomRightMask(BlockDiagonalCausalFromBottomRightMask):
    """Block-diagonal causal (bottom-right) with each query limited to ``window_size`` keys."""

    _window_size: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _window("window_size", self._window_size, 1)

    def _band(self) -> Optional[Band]:
        return Band(Anchor.BOTTOM_RIGHT, -(self._window_size - 1), 0)


# --- padded and gappy keys ------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockDiagonalPaddedKeysMask(BlockDiagonalMask):
    """Keys in fixed slots of ``kv_padding`` rows, of which sequence ``i`` uses the first ``kv_seqlen[i]``.

    ``from_seqlens([1, 2], kv_padding=3, kv_seqlen=[2, 1])``::

        1 1 0 0 0 0
        0 0 0 1 0 0
        0 0 0 1 0 0
    """

    _LAYOUT: ClassVar[Layout] = Layout.PADDED_KEYS

    @classmethod
    def from_seqlens(  # type: ignore[override]  # the padded family takes the padding too
        cls, q_seqlen: Lengths, kv_padding: int, kv_seqlen: Lengths, causal_diagonal: Any = None
    ) -> BlockDiagonalPaddedKeysMask:
        del causal_diagonal  # accepted for compatibility with the incumbent API; it never had an effect
        return cls(SeqLenInfo.from_seqlens(q_seqlen, "q_seqlen"), SeqLenInfo.padded(kv_seqlen, kv_padding))

    def make_paged(
        self, block_tables: torch.Tensor, page_size: int, paged_type: Optional[type[PagedBlockDiagonalPaddedKeysMask]] = None
    ) -> PagedBlockDiagonalPaddedKeysMask:
        """The same mask over keys stored in pages (``block_tables`` is ``[num_sequences, pages_per_sequence]``)."""
        if paged_type is None:
            paged_type = (
                PagedBlockDiagonalCausalWithOffsetPaddedKeysMask
                if isinstance(self, BlockDiagonalCausalWithOffsetPaddedKeysMask)
                else PagedBlockDiagonalPaddedKeysMask
            )
        return paged_type.from_seqlens(self.q_seqinfo.seqlen, self.k_seqinfo.seqlen, block_tables, page_size)


@dataclass(frozen=True)
class BlockDiagonalCausalWithOffsetPaddedKeysMask(BlockDiagonalPaddedKeysMask):
    """Padded keys, each block causal from its bottom-right (the queries are the last ``q_seqlen[i]`` tokens)."""

    def _band(self) -> Optional[Band]:
        return Band(Anchor.BOTTOM_RIGHT, None, 0)


def _check_pages(block_tables: torch.Tensor, page_size: int, num_sequences: int) -> None:
    if not isinstance(block_tables, torch.Tensor) or block_tables.dim() != 2 or block_tables.is_floating_point():
        found = tuple(block_tables.shape) if isinstance(block_tables, torch.Tensor) else type(block_tables).__name__
        raise ValueError(f"block_tables: expected a 2-D integer tensor [num_sequences, pages], found {found}")
    if block_tables.shape[0] != num_sequences:
        raise ValueError(f"block_tables: expected {num_sequences} rows (one per sequence), found {block_tables.shape[0]}")
    _window("page_size", page_size, 1)
    if block_tables.numel() and int(block_tables.min()) < 0:
        raise ValueError(f"block_tables: expected page numbers >= 0, found {int(block_tables.min())}")


@dataclass(frozen=True, eq=False)
class PagedBlockDiagonalPaddedKeysMask(BlockDiagonalPaddedKeysMask):
    """:class:`BlockDiagonalPaddedKeysMask` over a page pool.

    Keys and values have shape ``[1, num_pages * page_size, H, K]``; logical key ``t`` of sequence ``b``
    lives in page ``block_tables[b, t // page_size]``.
    """

    block_tables: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 0), dtype=torch.int32))
    page_size: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_pages(self.block_tables, self.page_size, len(self.k_seqinfo.seqlen))
        capacity = int(self.block_tables.shape[1]) * self.page_size
        for i, (s, n) in enumerate(zip(self.k_seqinfo.seqstart, self.k_seqinfo.seqlen, strict=False)):
            rel = s - self._row_origin(i, capacity)
            if rel + n > capacity:
                raise ValueError(
                    f"kv_seqlen[{i}]: sequence needs keys up to {rel + n} but block_tables gives "
                    f"{self.block_tables.shape[1]} pages x page_size {self.page_size} = {capacity}"
                )

    def _row_origin(self, i: int, capacity: int) -> int:
        return i * capacity

    def _build_geometry(self) -> MaskGeometry:
        capacity = int(self.block_tables.shape[1]) * self.page_size
        base = super()._build_geometry()
        assert base.blocks is not None  # block-diagonal masks always have a block layout
        starts = tuple(s - self._row_origin(i, capacity) for i, s in enumerate(self.k_seqinfo.seqstart))
        blocks = replace(base.blocks, k_start=starts)
        return replace(base, blocks=blocks, paging=Paging(self.block_tables, self.page_size))

    @classmethod
    def from_seqlens(  # type: ignore[override]  # paged masks take the page tables
        cls, q_seqlen: Lengths, kv_seqlen: Lengths, block_tables: torch.Tensor, page_size: int
    ) -> PagedBlockDiagonalPaddedKeysMask:
        _check_pages(block_tables, page_size, len(_ints("kv_seqlen", kv_seqlen)))
        capacity = int(block_tables.shape[1]) * page_size
        return cls(
            SeqLenInfo.from_seqlens(q_seqlen, "q_seqlen"),
            SeqLenInfo.padded(kv_seqlen, max(capacity, 1)),
            block_tables=block_tables,
            page_size=page_size,
        )


@dataclass(frozen=True, eq=False)
class PagedBlockDiagonalCausalWithOffsetPaddedKeysMask(PagedBlockDiagonalPaddedKeysMask):
    """:class:`BlockDiagonalCausalWithOffsetPaddedKeysMask` over a page pool."""

    def _band(self) -> Optional[Band]:
        return Band(Anchor.BOTTOM_RIGHT, None, 0)


@dataclass(frozen=True)
class BlockDiagonalGappyKeysMask(BlockDiagonalMask):
    """Keys of sequence ``i`` at ``[kv_seqstarts[i], kv_seqstarts[i] + kv_seqlen[i])``, gaps ignored.

    ``from_seqlens([1, 2], kv_seqstarts=[1, 3, 6], kv_seqlen=[1, 2])``::

        0 1 0 0 0 0
        0 0 0 1 1 0
        0 0 0 1 1 0
    """

    _LAYOUT: ClassVar[Layout] = Layout.GAPPY_KEYS

    @classmethod
    def from_seqlens(  # type: ignore[override]  # gappy masks take the key starts
        cls, q_seqlen: Lengths, kv_seqstarts: Lengths, kv_seqlen: Lengths
    ) -> BlockDiagonalGappyKeysMask:
        return cls(SeqLenInfo.from_seqlens(q_seqlen, "q_seqlen"), SeqLenInfo.gappy(kv_seqstarts, kv_seqlen))

    def make_paged(
        self,
        block_tables: torch.Tensor,
        page_size: int,
        notional_padding: int,
        paged_type: Optional[type[PagedBlockDiagonalGappyKeysMask]] = None,
    ) -> PagedBlockDiagonalGappyKeysMask:
        """Paged version, assuming sequence ``i``'s keys were laid out in a slot starting at ``i * notional_padding``."""
        _window("notional_padding", notional_padding, 1)
        if paged_type is None:
            paged_type = (
                PagedBlockDiagonalCausalWithOffsetGappyKeysMask
                if isinstance(self, BlockDiagonalCausalWithOffsetGappyKeysMask)
                else PagedBlockDiagonalGappyKeysMask
            )
        starts = [s - i * notional_padding for i, s in enumerate(self.k_seqinfo.seqstart)]
        for i, s in enumerate(starts):
            if s < 0:
                raise ValueError(f"notional_padding: sequence {i} starts at key {self.k_seqinfo.seqstart[i]}, before its slot {i * notional_padding}")
        return paged_type.from_seqlens(self.q_seqinfo.seqlen, starts, self.k_seqinfo.seqlen, block_tables, page_size)


@dataclass(frozen=True)
class BlockDiagonalCausalWithOffsetGappyKeysMask(BlockDiagonalGappyKeysMask):
    """Gappy keys, each block causal from its bottom-right."""

    def _band(self) -> Optional[Band]:
        return Band(Anchor.BOTTOM_RIGHT, None, 0)


@dataclass(frozen=True, eq=False)
class PagedBlockDiagonalGappyKeysMask(PagedBlockDiagonalPaddedKeysMask):
    """:class:`BlockDiagonalGappyKeysMask` over a page pool; ``kv_seqstarts[i]`` is relative to sequence ``i``'s pages."""

    _LAYOUT: ClassVar[Layout] = Layout.GAPPY_KEYS

    @classmethod
    def from_seqlens(  # type: ignore[override]  # gappy paged masks take the key starts too
        cls, q_seqlen: Lengths, kv_seqstarts: Lengths, kv_seqlen: Lengths, block_tables: torch.Tensor, page_size: int
    ) -> PagedBlockDiagonalGappyKeysMask:
        lens = _ints("kv_seqlen", kv_seqlen)
        _check_pages(block_tables, page_size, len(lens))
        capacity = int(block_tables.shape[1]) * page_size
        starts = _ints("kv_seqstarts", kv_seqstarts)
        if len(starts) != len(lens):
            raise ValueError(f"kv_seqstarts: expected {len(lens)} entries (one per sequence), found {len(starts)}")
        absolute = [i * capacity + s for i, s in enumerate(starts)]
        return cls(
            SeqLenInfo.from_seqlens(q_seqlen, "q_seqlen"),
            SeqLenInfo(tuple(absolute), lens, capacity * len(lens)),
            block_tables=block_tables,
            page_size=page_size,
        )


@dataclass(frozen=True, eq=False)
class PagedBlockDiagonalCausalWithOffsetGappyKeysMask(PagedBlockDiagonalGappyKeysMask):
    """:class:`BlockDiagonalCausalWithOffsetGappyKeysMask` over a page pool."""

    def _band(self) -> Optional[Band]:
        return Band(Anchor.BOTTOM_RIGHT, None, 0)
