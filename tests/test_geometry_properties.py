"""Property tests of MaskGeometry: tiles, emptiness, closed-form counts, paging and the compile encoding."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attncore import attn_bias as ab
from attncore._compile import decode_geometry, encode_geometry
from attncore.geometry import Anchor, Band, BlockLayout, Layout, MaskGeometry

SETTINGS = settings(max_examples=50, deadline=None)

Case = tuple[MaskGeometry, int, int]  # geometry, number of queries, number of keys


def _band_ok(band: Optional[Band], i: int, j: int, nq: int, nk: int) -> bool:
    if band is None:
        return True
    d = j - i - (0 if band.anchor is Anchor.TOP_LEFT else nk - nq)
    return (band.lo is None or d >= band.lo) and (band.hi is None or d <= band.hi)


def naive(geo: MaskGeometry, mq: int, mk: int) -> torch.Tensor:
    """Pair-by-pair oracle of the documented semantics (no paging)."""
    out = torch.zeros((mq, mk), dtype=torch.bool)
    blocks = geo.blocks
    for i in range(mq):
        for j in range(mk):
            if blocks is None:
                out[i, j] = _band_ok(geo.band, i, j, mq, mk)
                continue
            for b in range(blocks.num_blocks):
                qs, qe = blocks.q_seqstart[b], blocks.q_seqstart[b + 1]
                ks, ke = blocks.k_start[b], blocks.k_start[b] + blocks.k_len[b]
                if qs <= i < qe and ks <= j < ke:
                    out[i, j] = _band_ok(geo.band, i - qs, j - ks, qe - qs, ke - ks)
    return out


@st.composite
def bands(draw: st.DrawFn) -> Optional[Band]:
    if draw(st.booleans()):
        return None
    lo = draw(st.none() | st.integers(-6, 3))
    hi = draw(st.none() | st.integers(-3 if lo is None else lo, 6))
    return Band(draw(st.sampled_from(list(Anchor))), lo, hi)


@st.composite
def dense_cases(draw: st.DrawFn) -> Case:
    return MaskGeometry(band=draw(bands())), draw(st.integers(1, 10)), draw(st.integers(1, 10))


def _cumsum(lens: list[int]) -> tuple[int, ...]:
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return tuple(out)


@st.composite
def block_cases(draw: st.DrawFn) -> Case:
    n = draw(st.integers(1, 4))
    q_lens = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    if sum(q_lens) == 0:  # at least one query; leading and inner empty blocks stay possible
        q_lens[-1] = 1
    k_lens = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    kind = draw(st.sampled_from([Layout.BLOCK_DIAGONAL, Layout.PADDED_KEYS, Layout.GAPPY_KEYS]))
    if kind is Layout.BLOCK_DIAGONAL:
        starts, total = _cumsum(k_lens)[:-1], sum(k_lens)
    elif kind is Layout.PADDED_KEYS:
        pad = max(*k_lens, 1) + draw(st.integers(0, 2))
        starts, total = tuple(i * pad for i in range(n)), n * pad
    else:
        starts = tuple(draw(st.lists(st.integers(0, 8), min_size=n, max_size=n)))
        total = max(s + k for s, k in zip(starts, k_lens, strict=True)) + draw(st.integers(0, 2))
    total = max(total, 1)
    blocks = BlockLayout(kind, _cumsum(q_lens), starts, tuple(k_lens), total)
    return MaskGeometry(band=draw(bands()), blocks=blocks), sum(q_lens), total


any_case = dense_cases() | block_cases()


@st.composite
def tiles(draw: st.DrawFn, mq: int, mk: int) -> tuple[int, int, int, int]:
    q0 = draw(st.integers(0, mq - 1))
    q1 = draw(st.integers(q0 + 1, mq))
    k0 = draw(st.integers(0, mk - 1))
    k1 = draw(st.integers(k0 + 1, mk))
    return q0, q1, k0, k1


@SETTINGS
@given(case=any_case, data=st.data())
def test_allowed_tile_is_slice_of_full_grid(case: Case, data: st.DataObject) -> None:
    geo, mq, mk = case
    full = naive(geo, mq, mk)
    assert torch.equal(geo.materialize(mq, mk, torch.float32, "cpu") == 0, full)
    q0, q1, k0, k1 = data.draw(tiles(mq, mk))
    tile = geo.allowed(q0, q1, k0, k1, mq, mk)
    want = full[q0:q1, k0:k1]
    if tile is None:
        assert bool(want.all())
    else:
        assert tile.shape == want.shape and torch.equal(tile, want)


@SETTINGS
@given(case=any_case, data=st.data())
def test_tile_is_empty_is_conservative(case: Case, data: st.DataObject) -> None:
    geo, mq, mk = case
    full = naive(geo, mq, mk)
    q0, q1, k0, k1 = data.draw(tiles(mq, mk))
    if bool(full[q0:q1, k0:k1].any()):
        assert not geo.tile_is_empty(q0, q1, k0, k1, mq, mk)


@SETTINGS
@given(case=dense_cases(), data=st.data())
def test_tile_is_empty_is_exact_for_dense_bands(case: Case, data: st.DataObject) -> None:
    geo, mq, mk = case
    q0, q1, k0, k1 = data.draw(tiles(mq, mk))
    has_pair = bool(naive(geo, mq, mk)[q0:q1, k0:k1].any())
    assert geo.tile_is_empty(q0, q1, k0, k1, mq, mk) == (not has_pair)


def _count(lo: int, hi: int, mk: int) -> int:
    """Number of keys in ``[lo, hi] & [0, mk)``."""
    return max(0, min(hi, mk - 1) - max(lo, 0) + 1)


sizes = st.integers(1, 12)


@SETTINGS
@given(mq=sizes, mk=sizes)
def test_causal_row_and_column_counts(mq: int, mk: int) -> None:
    tl = ab.LowerTriangularMask().materialize((mq, mk)) == 0
    br = ab.LowerTriangularFromBottomRightMask().materialize((mq, mk)) == 0
    s = mk - mq
    assert tl.sum(1).tolist() == [min(i + 1, mk) for i in range(mq)]
    assert br.sum(1).tolist() == [min(max(i + s + 1, 0), mk) for i in range(mq)]
    assert tl.sum(0).tolist() == [max(mq - j, 0) for j in range(mk)]
    assert br.sum(0).tolist() == [mq - min(max(j - s, 0), mq) for j in range(mk)]


@SETTINGS
@given(mq=sizes, mk=sizes, window=st.integers(1, 8), left=st.integers(0, 4), right=st.integers(0, 4))
def test_local_window_row_counts(mq: int, mk: int, window: int, left: int, right: int) -> None:
    s = mk - mq
    causal_local = ab.LowerTriangularFromBottomRightLocalAttentionMask(window).materialize((mq, mk)) == 0
    rows = causal_local.sum(1).tolist()
    assert rows == [_count(i + s - window + 1, i + s, mk) for i in range(mq)]
    assert max(rows) <= window
    local = ab.LocalAttentionFromBottomRightMask(left, right).materialize((mq, mk)) == 0
    rows = local.sum(1).tolist()
    assert rows == [_count(i + s - left, i + s + right, mk) for i in range(mq)]
    assert max(rows) <= left + 1 + right


@SETTINGS
@given(q_lens=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_block_diagonal_counts(q_lens: list[int], data: st.DataObject) -> None:
    k_lens = data.draw(st.lists(st.integers(1, 4), min_size=len(q_lens), max_size=len(q_lens)))
    window = data.draw(st.integers(1, 4))
    base = ab.BlockDiagonalMask.from_seqlens(q_lens, k_lens)
    shape = (sum(q_lens), sum(k_lens))
    plain = base.materialize(shape) == 0
    assert plain.sum(1).tolist() == [k for q, k in zip(q_lens, k_lens, strict=True) for _ in range(q)]
    assert int(plain.sum()) == sum(q * k for q, k in zip(q_lens, k_lens, strict=True))
    causal = base.make_causal().materialize(shape) == 0
    assert causal.sum(1).tolist() == [min(i + 1, k) for q, k in zip(q_lens, k_lens, strict=True) for i in range(q)]
    br = base.make_causal_from_bottomright().materialize(shape) == 0
    assert br.sum(1).tolist() == [min(max(i + k - q + 1, 0), k) for q, k in zip(q_lens, k_lens, strict=True) for i in range(q)]
    for local in (base.make_local_attention(window), base.make_local_attention_from_bottomright(window)):
        m = local.materialize(shape) == 0
        assert int(m.sum(1).max()) <= window
        assert not bool((m & ~plain).any())


@st.composite
def paged_biases(draw: st.DrawFn) -> tuple[ab.PagedBlockDiagonalPaddedKeysMask, int, int]:
    n = draw(st.integers(1, 3))
    page_size = draw(st.integers(1, 3))
    pages = draw(st.integers(1, 3))
    pool = n * pages + draw(st.integers(0, 2))
    perm = draw(st.permutations(list(range(pool))))
    tables = torch.tensor(perm[: n * pages], dtype=torch.int32).reshape(n, pages)
    capacity = pages * page_size
    q_lens = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    k_lens = draw(st.lists(st.integers(0, capacity), min_size=n, max_size=n))
    causal = draw(st.booleans())
    bias: ab.PagedBlockDiagonalPaddedKeysMask
    if draw(st.booleans()):
        starts = [draw(st.integers(0, capacity - k)) for k in k_lens]
        cls = ab.PagedBlockDiagonalCausalWithOffsetGappyKeysMask if causal else ab.PagedBlockDiagonalGappyKeysMask
        bias = cls.from_seqlens(q_lens, starts, k_lens, tables, page_size)
    else:
        pcls = ab.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask if causal else ab.PagedBlockDiagonalPaddedKeysMask
        bias = pcls.from_seqlens(q_lens, k_lens, tables, page_size)
    return bias, sum(q_lens), pool * page_size


@SETTINGS
@given(case=paged_biases())
def test_unpaged_gather_equals_paged_materialization(case: tuple[ab.PagedBlockDiagonalPaddedKeysMask, int, int]) -> None:
    bias, mq, mk = case
    geo = bias.geometry()
    assert geo.paging is not None
    logical, rows = geo.unpaged()
    assert rows is not None and logical.paging is None and logical.blocks is not None
    assert rows.shape == (logical.blocks.k_total,)
    physical = bias.materialize((mq, mk), dtype=torch.float64)
    logical_mask = logical.materialize(mq, logical.blocks.k_total, torch.float64, "cpu")
    assert torch.equal(physical[:, rows], logical_mask)
    unused = torch.ones(mk, dtype=torch.bool)
    unused[rows] = False
    assert bool((physical[:, unused] == -math.inf).all())
    # Attention over the gathered keys equals attention over the physical pool.
    g = torch.Generator().manual_seed(mq * 31 + mk)
    q = torch.randn(mq, 3, generator=g, dtype=torch.float64)
    k = torch.randn(mk, 3, generator=g, dtype=torch.float64)
    v = torch.randn(mk, 2, generator=g, dtype=torch.float64)
    seen = (logical_mask == 0).any(1)
    out_phys = torch.softmax(q @ k.T + physical, -1)[seen] @ v
    out_log = torch.softmax(q @ k[rows].T + logical_mask, -1)[seen] @ v[rows]
    torch.testing.assert_close(out_phys, out_log)


@dataclass(frozen=True, eq=False)
class _Wrapped(ab.AttentionBias):
    geo: MaskGeometry

    def geometry(self) -> MaskGeometry:
        return self.geo


def _assert_round_trip(geo: MaskGeometry) -> MaskGeometry:
    ints, tensor, tables = encode_geometry(geo)
    assert all(type(x) is int for x in ints)
    back = decode_geometry(ints, tensor, tables)
    assert back is not None
    assert back.band == geo.band and back.blocks == geo.blocks and back.tensor is geo.tensor
    assert (back.paging is None) == (geo.paging is None)
    if geo.paging is not None and back.paging is not None:
        assert back.paging.page_size == geo.paging.page_size
        assert torch.equal(back.paging.block_tables, geo.paging.block_tables)
    assert back.features == geo.features
    return back


@SETTINGS
@given(case=any_case, with_tensor=st.booleans())
def test_encode_decode_round_trip(case: Case, with_tensor: bool) -> None:
    geo, mq, mk = case
    if with_tensor:
        geo = MaskGeometry(band=geo.band, blocks=geo.blocks, tensor=torch.randn(mq, mk, generator=torch.Generator().manual_seed(mq + mk)))
    back = _assert_round_trip(geo)
    torch.testing.assert_close(_Wrapped(back).materialize((mq, mk)), _Wrapped(geo).materialize((mq, mk)))


@SETTINGS
@given(case=paged_biases())
def test_encode_decode_round_trip_paged(case: tuple[ab.PagedBlockDiagonalPaddedKeysMask, int, int]) -> None:
    bias, mq, mk = case
    back = _assert_round_trip(bias.geometry())
    assert torch.equal(_Wrapped(back).materialize((mq, mk)), bias.materialize((mq, mk)))


def test_encode_none_and_tensor_only() -> None:
    assert decode_geometry(*encode_geometry(None)) is None
    t = torch.randn(2, 3)
    back = _assert_round_trip(MaskGeometry(tensor=t))
    assert back.band is None and back.blocks is None and back.tensor is t
