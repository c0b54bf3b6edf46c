"""Exact grids of every public attention bias, their constructors, helpers and argument errors."""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch

from attncore import attn_bias as ab
from attncore.geometry import Anchor, Band, Layout

Grid = list[list[int]]


def grid(bias: ab.AttentionBias, mq: int, mk: int) -> Grid:
    """1 where the materialized bias is 0 (allowed), 0 where it is -inf; checks nothing else leaks in."""
    m = bias.materialize((mq, mk))
    assert m.shape == (mq, mk)
    assert bool(((m == 0) | (m == -math.inf)).all()), "a mask must materialize to 0 / -inf only"
    out: Grid = (m == 0).to(torch.int64).tolist()
    return out


def _bt(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int32)


# (id, bias factory, Mq, Mk, expected grid written out literally)
GRID_CASES: list[tuple[str, Callable[[], ab.AttentionBias], int, int, Grid]] = [
    # Documented in the xFormers API reference (LocalAttentionFromBottomRightMask example).
    ("local_br_1_2_4x4_documented", lambda: ab.LocalAttentionFromBottomRightMask(1, 2), 4, 4,
     [[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]]),
    ("local_br_1_2_4x5_documented", lambda: ab.LocalAttentionFromBottomRightMask(window_left=1, window_right=2), 4, 5,
     [[1, 1, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]]),
    # Docstring grids of attn_bias.py.
    ("lower_triangular_4x5", ab.LowerTriangularMask, 4, 5,
     [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]),
    ("lower_triangular_bottom_right_4x5", ab.LowerTriangularFromBottomRightMask, 4, 5,
     [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
    ("bottom_right_local_w2_4x5", lambda: ab.LowerTriangularFromBottomRightLocalAttentionMask(2), 4, 5,
     [[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]),
    ("block_diagonal_2_3", lambda: ab.BlockDiagonalMask.from_seqlens([2, 3]), 5, 5,
     [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1]]),
    ("block_diagonal_causal_2_3", lambda: ab.BlockDiagonalCausalMask.from_seqlens([2, 3]), 5, 5,
     [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]),
    ("block_diagonal_causal_bottom_right_12_23", lambda: ab.BlockDiagonalCausalFromBottomRightMask.from_seqlens([1, 2], [2, 3]), 3, 5,
     [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]),
    ("padded_keys_docstring", lambda: ab.BlockDiagonalPaddedKeysMask.from_seqlens([1, 2], kv_padding=3, kv_seqlen=[2, 1]), 3, 6,
     [[1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 0, 0]]),
    ("gappy_keys_docstring", lambda: ab.BlockDiagonalGappyKeysMask.from_seqlens([1, 2], kv_seqstarts=[1, 3, 6], kv_seqlen=[1, 2]), 3, 6,
     [[0, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 0]]),
    # Causal top-left vs bottom-right with more queries than keys, and equal sizes.
    ("lower_triangular_5x3", ab.LowerTriangularMask, 5, 3,
     [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]]),
    ("lower_triangular_bottom_right_5x3", ab.LowerTriangularFromBottomRightMask, 5, 3,
     [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]]),
    ("lower_triangular_bottom_right_3x3", ab.LowerTriangularFromBottomRightMask, 3, 3,
     [[1, 0, 0], [1, 1, 0], [1, 1, 1]]),
    ("bottom_right_local_w2_5x3", lambda: ab.LowerTriangularFromBottomRightMask().make_local_attention(2), 5, 3,
     [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 1]]),
    ("local_br_0_1_3x5", lambda: ab.LocalAttentionFromBottomRightMask(0, 1), 3, 5,
     [[0, 0, 1, 1, 0], [0, 0, 0, 1, 1], [0, 0, 0, 0, 1]]),
    ("local_br_2_0_4x3", lambda: ab.LocalAttentionFromBottomRightMask(2, 0), 4, 3,
     [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]]),
    # Block-diagonal with different key lengths, and the make_* helpers.
    ("block_diagonal_21_13", lambda: ab.BlockDiagonalMask.from_seqlens([2, 1], [1, 3]), 3, 4,
     [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 1]]),
    ("make_causal_21_32", lambda: ab.BlockDiagonalMask.from_seqlens([2, 1], [3, 2]).make_causal(), 3, 5,
     [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 1, 0]]),
    ("make_causal_from_bottomright_21_32", lambda: ab.BlockDiagonalMask.from_seqlens([2, 1], [3, 2]).make_causal_from_bottomright(), 3, 5,
     [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 1]]),
    ("make_local_attention_w2_32", lambda: ab.BlockDiagonalMask.from_seqlens([3, 2]).make_local_attention(2), 5, 5,
     [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]),
    ("make_local_attention_from_bottomright_w2_21_32",
     lambda: ab.BlockDiagonalMask.from_seqlens([2, 1], [3, 2]).make_local_attention_from_bottomright(2), 3, 5,
     [[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 1]]),
    # Padded and gappy keys, causal from the bottom-right of each block.
    ("causal_padded_keys", lambda: ab.BlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens([1, 2], 3, [2, 3]), 3, 6,
     [[1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]),
    ("causal_gappy_keys", lambda: ab.BlockDiagonalCausalWithOffsetGappyKeysMask.from_seqlens([1, 2], [1, 3, 7], [2, 3]), 3, 7,
     [[0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 0]]),
    # Paged: logical key t of sequence b is physical row block_tables[b, t // 2] * 2 + t % 2.
    ("paged_padded", lambda: ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([1, 1], [3, 2], _bt([[2, 0], [1, 3]]), 2), 2, 8,
     [[1, 0, 0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0]]),
    ("paged_causal_padded", lambda: ab.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens([2, 1], [3, 2], _bt([[2, 0], [1, 3]]), 2), 3, 8,
     [[0, 0, 0, 0, 1, 1, 0, 0], [1, 0, 0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0]]),
    ("paged_gappy_via_make_paged",
     lambda: ab.BlockDiagonalGappyKeysMask.from_seqlens([1, 1], [1, 5, 8], [2, 3]).make_paged(_bt([[1, 0], [3, 2]]), 2, notional_padding=4), 2, 8,
     [[1, 0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0, 1]]),
]


@pytest.mark.parametrize(("factory", "mq", "mk", "expected"), [c[1:] for c in GRID_CASES], ids=[c[0] for c in GRID_CASES])
def test_exact_grid(factory: Callable[[], ab.AttentionBias], mq: int, mk: int, expected: Grid) -> None:
    assert grid(factory(), mq, mk) == expected


@pytest.mark.parametrize(("mq", "mk"), [(3, 3), (3, 6), (6, 3), (1, 4), (4, 1)])
def test_causal_top_left_vs_bottom_right(mq: int, mk: int) -> None:
    tl = ab.LowerTriangularMask().materialize((mq, mk)) == 0
    br = ab.LowerTriangularFromBottomRightMask().materialize((mq, mk)) == 0
    i = torch.arange(mq).unsqueeze(1)
    j = torch.arange(mk).unsqueeze(0)
    assert torch.equal(tl, j <= i)
    assert torch.equal(br, j <= i + (mk - mq))
    assert torch.equal(tl, br) == (mq == mk)


@pytest.mark.parametrize("window", [1, 2, 3, 7])
@pytest.mark.parametrize(("mq", "mk"), [(5, 5), (3, 6), (6, 3)])
def test_bottom_right_local_window(window: int, mq: int, mk: int) -> None:
    m = ab.LowerTriangularFromBottomRightLocalAttentionMask(window).materialize((mq, mk)) == 0
    i = torch.arange(mq).unsqueeze(1)
    j = torch.arange(mk).unsqueeze(0)
    d = j - i - (mk - mq)
    assert torch.equal(m, (d <= 0) & (d > -window))
    assert int(m.sum(1).max()) <= window
    assert ab.LowerTriangularFromBottomRightMask().make_local_attention(window).window_size == window


@pytest.mark.parametrize(("left", "right"), [(0, 0), (1, 2), (3, 0), (0, 4)])
def test_local_attention_total_window(left: int, right: int) -> None:
    m = ab.LocalAttentionFromBottomRightMask(left, right).materialize((6, 9)) == 0
    assert int(m.sum(1).max()) == min(left + 1 + right, 9)
    assert ab.LocalAttentionFromBottomRightMask(left, right).geometry().band == Band(Anchor.BOTTOM_RIGHT, -left, right)


def test_block_diagonal_from_seqlens_tensor_and_info() -> None:
    bias = ab.BlockDiagonalMask.from_seqlens(torch.tensor([2, 3]), torch.tensor([4, 1]))
    assert bias.q_seqinfo.seqstart_py == [0, 2, 5]
    assert bias.k_seqinfo.seqstart_py == [0, 4, 5]
    assert bias.k_seqinfo.max_seqlen == 4 and bias.k_seqinfo.min_seqlen == 1
    assert torch.equal(bias.q_seqinfo.seqstart_tensor(), torch.tensor([0, 2, 5], dtype=torch.int32))
    assert grid(bias, 5, 5) == [[1, 1, 1, 1, 0]] * 2 + [[0, 0, 0, 0, 1]] * 3


def test_from_tensor_list_batches_and_split_round_trip() -> None:
    torch.manual_seed(0)
    tensors = [torch.randn(2, 3, 2, 4), torch.randn(1, 2, 2, 4), torch.randn(3, 1, 2, 4)]
    bias, packed = ab.BlockDiagonalMask.from_tensor_list(tensors)
    assert type(bias) is ab.BlockDiagonalMask
    assert bias.q_seqinfo.seqlen == (3, 3, 2, 1, 1, 1)
    assert packed.shape == (1, 11, 2, 4)
    assert torch.equal(packed[0, 3:6], tensors[0][1])
    assert torch.equal(packed[0, 8:9], tensors[2][0])
    for b in (bias, bias.make_causal(), bias.make_local_attention(2)):
        parts = b.split(packed)
        assert len(parts) == 3
        for got, want in zip(parts, tensors, strict=True):
            assert torch.equal(got, want)
    m = grid(bias, 11, 11)
    assert m[0][:4] == [1, 1, 1, 0] and m[3][:7] == [0, 0, 0, 1, 1, 1, 0]


def test_split_queries_and_kv() -> None:
    torch.manual_seed(1)
    bias = ab.BlockDiagonalMask.from_seqlens([2, 1], [3, 2])
    q = torch.randn(1, 3, 4)
    k = torch.randn(1, 5, 4)
    assert [tuple(t.shape) for t in bias.split_queries(q)] == [(1, 2, 4), (1, 1, 4)]
    kparts = bias.split_kv(k)
    assert [tuple(t.shape) for t in kparts] == [(1, 3, 4), (1, 2, 4)]
    assert torch.equal(torch.cat(kparts, 1), k)
    with pytest.raises(ValueError, match=r"^tensor:"):
        bias.split_queries(k)
    with pytest.raises(ValueError, match=r"^tensor:"):
        bias.split_kv(torch.randn(2, 5, 4))


@pytest.mark.parametrize(
    ("make", "cls", "anchor", "lo"),
    [
        (lambda b: b.make_causal(), ab.BlockDiagonalCausalMask, Anchor.TOP_LEFT, None),
        (lambda b: b.make_causal_from_bottomright(), ab.BlockDiagonalCausalFromBottomRightMask, Anchor.BOTTOM_RIGHT, None),
        (lambda b: b.make_local_attention(3), ab.BlockDiagonalCausalLocalAttentionMask, Anchor.TOP_LEFT, -2),
        (lambda b: b.make_local_attention_from_bottomright(3), ab.BlockDiagonalCausalLocalAttentionFromBottomRightMask, Anchor.BOTTOM_RIGHT, -2),
    ],
)
def test_make_helpers_class_and_geometry(make: Callable[[ab.BlockDiagonalMask], ab.BlockDiagonalMask], cls: type, anchor: Anchor, lo: int | None) -> None:
    base = ab.BlockDiagonalMask.from_seqlens([2, 3], [4, 3])
    made = make(base)
    assert type(made) is cls
    geo = made.geometry()
    assert geo.band is not None and geo.band.anchor is anchor and geo.band.lo == lo and geo.band.hi == 0
    assert geo.blocks is not None and geo.blocks.kind is Layout.BLOCK_DIAGONAL
    assert made.q_seqinfo == base.q_seqinfo and made.k_seqinfo == base.k_seqinfo


@pytest.mark.parametrize("n", [2, 3, 4])
def test_paged_materialize_is_unpaged_permuted(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    page_size, pages = 2, 3
    tables = torch.randperm(n * pages + 2, generator=g)[: n * pages].reshape(n, pages).to(torch.int32)
    kv = [int(x) for x in torch.randint(0, pages * page_size + 1, (n,), generator=g)]
    q = [1 + i % 2 for i in range(n)]
    for causal in (False, True):
        padded_cls = ab.BlockDiagonalCausalWithOffsetPaddedKeysMask if causal else ab.BlockDiagonalPaddedKeysMask
        padded = padded_cls.from_seqlens(q, pages * page_size, kv)
        paged = padded.make_paged(tables, page_size)
        assert type(paged) is (ab.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask if causal else ab.PagedBlockDiagonalPaddedKeysMask)
        mk = (n * pages + 2) * page_size
        physical = paged.materialize((sum(q), mk))
        logical = padded.materialize((sum(q), n * pages * page_size))
        rows = (tables.long().unsqueeze(-1) * page_size + torch.arange(page_size)).reshape(-1)
        assert torch.equal(physical[:, rows], logical)
        unused = torch.ones(mk, dtype=torch.bool)
        unused[rows] = False
        assert bool((physical[:, unused] == -math.inf).all())


def test_gappy_make_paged_matches_gappy() -> None:
    gappy = ab.BlockDiagonalCausalWithOffsetGappyKeysMask.from_seqlens([2, 1], [1, 4, 8], [3, 2])
    tables = _bt([[3, 1], [0, 2]])
    paged = gappy.make_paged(tables, page_size=2, notional_padding=4)
    assert type(paged) is ab.PagedBlockDiagonalCausalWithOffsetGappyKeysMask
    physical = paged.materialize((3, 8))
    rows = (tables.long().unsqueeze(-1) * 2 + torch.arange(2)).reshape(-1)
    assert torch.equal(physical[:, rows], gappy.materialize((3, 8)))


def test_lower_triangular_add_bias() -> None:
    torch.manual_seed(2)
    extra = torch.randn(2, 3, 4, 5)
    bias = ab.LowerTriangularMask().add_bias(extra)
    assert isinstance(bias, ab.LowerTriangularMaskWithTensorBias) and isinstance(bias, ab.LowerTriangularMask)
    assert bias.features.tensor and bias.features.band == "causal"
    causal = ab.LowerTriangularMask().materialize((2, 3, 4, 5))
    assert torch.equal(bias.materialize((2, 3, 4, 5)), causal + extra)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("factory", "mq", "mk"),
    [
        (ab.LowerTriangularMask, 4, 5),
        (lambda: ab.LocalAttentionFromBottomRightMask(1, 2), 4, 5),
        (lambda: ab.BlockDiagonalCausalMask.from_seqlens([2, 3]), 5, 5),
        (lambda: ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([1, 1], [3, 2], _bt([[2, 0], [1, 3]]), 2), 2, 8),
    ],
)
def test_materialize_leading_dims_and_dtype(factory: Callable[[], ab.AttentionBias], mq: int, mk: int, dtype: torch.dtype) -> None:
    bias = factory()
    flat = bias.materialize((mq, mk), dtype=torch.float32)
    out = bias.materialize((2, 3, mq, mk), dtype=dtype)
    assert out.shape == (2, 3, mq, mk) and out.dtype == dtype and out.is_contiguous()
    assert torch.equal(out.float(), flat.expand(2, 3, mq, mk))
    assert bias.materialize((7, mq, mk), dtype=dtype).shape == (7, mq, mk)


def test_features_of_biases() -> None:
    f = ab.BlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens([1], 4, [2]).make_paged(_bt([[0, 1]]), 2).features
    assert f.layout is Layout.PADDED_KEYS and f.paged and f.band == "causal" and f.anchor is Anchor.BOTTOM_RIGHT
    f2 = ab.LocalAttentionFromBottomRightMask(1, 1).features
    assert f2.layout is Layout.DENSE and f2.band == "local" and not f2.paged
    assert ab.LowerTriangularFromBottomRightLocalAttentionMask(3).features.band == "causal_local"
    assert ab.BlockDiagonalGappyKeysMask.from_seqlens([1], [0, 3], [2]).features.layout is Layout.GAPPY_KEYS


BAD: list[tuple[str, Callable[[], object], str]] = [
    ("negative_q_seqlen", lambda: ab.BlockDiagonalMask.from_seqlens([2, -1]), r"^q_seqlen\[1\]:"),
    ("negative_kv_seqlen", lambda: ab.BlockDiagonalMask.from_seqlens([2, 1], [-3, 1]), r"^kv_seqlen\[0\]:"),
    ("float_seqlen", lambda: ab.BlockDiagonalMask.from_seqlens([2.5]), r"^q_seqlen\[0\]:"),  # type: ignore[list-item]  # deliberately wrong type
    ("float_tensor_seqlen", lambda: ab.BlockDiagonalMask.from_seqlens(torch.tensor([2.0])), r"^q_seqlen:"),
    ("kv_count_mismatch", lambda: ab.BlockDiagonalMask.from_seqlens([2, 1], [3]), r"^kv_seqlen:"),
    ("bottom_right_window_0", lambda: ab.LowerTriangularFromBottomRightLocalAttentionMask(0), r"^window_size:"),
    ("make_local_attention_window_0", lambda: ab.LowerTriangularFromBottomRightMask().make_local_attention(0), r"^window_size:"),
    ("block_local_window_0", lambda: ab.BlockDiagonalMask.from_seqlens([2]).make_local_attention(0), r"^window_size:"),
    ("block_local_br_window_neg", lambda: ab.BlockDiagonalMask.from_seqlens([2]).make_local_attention_from_bottomright(-1), r"^window_size:"),
    ("window_left_negative", lambda: ab.LocalAttentionFromBottomRightMask(-1, 0), r"^window_left:"),
    ("window_right_negative", lambda: ab.LocalAttentionFromBottomRightMask(0, -2), r"^window_right:"),
    ("window_left_bool", lambda: ab.LocalAttentionFromBottomRightMask(True, 0), r"^window_left:"),
    ("kv_seqlen_over_padding", lambda: ab.BlockDiagonalPaddedKeysMask.from_seqlens([1, 1], 3, [2, 4]), r"^kv_seqlen\[1\]:"),
    ("kv_padding_zero", lambda: ab.BlockDiagonalPaddedKeysMask.from_seqlens([1], 0, [0]), r"^kv_padding:"),
    ("gappy_starts_count", lambda: ab.BlockDiagonalGappyKeysMask.from_seqlens([1, 1], [0, 3], [1, 1]), r"^kv_seqstarts:"),
    ("gappy_past_end", lambda: ab.BlockDiagonalGappyKeysMask.from_seqlens([1, 1], [0, 3, 5], [1, 3]), r"^kv_seqlen\[1\]:"),
    ("gappy_negative_start", lambda: ab.BlockDiagonalGappyKeysMask.from_seqlens([1], [-1, 5], [1]), r"^kv_seqstarts\[0\]:"),
    ("block_tables_rows", lambda: ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([1, 1], [2, 2], _bt([[0, 1]]), 2), r"^block_tables:"),
    ("block_tables_float", lambda: ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([1], [2], torch.zeros(1, 2), 2), r"^block_tables:"),
    ("block_tables_1d", lambda: ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([1], [2], torch.zeros(2, dtype=torch.int32), 2), r"^block_tables:"),
    ("block_tables_negative", lambda: ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([1], [2], _bt([[0, -1]]), 2), r"^block_tables:"),
    ("page_size_zero", lambda: ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([1], [2], _bt([[0, 1]]), 0), r"^page_size:"),
    ("paged_capacity", lambda: ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([1], [5], _bt([[0, 1]]), 2), r"^kv_seqlen\[0\]:"),
    ("make_paged_padded_rows", lambda: ab.BlockDiagonalPaddedKeysMask.from_seqlens([1, 1], 4, [2, 2]).make_paged(_bt([[0, 1]]), 2), r"^block_tables:"),
    ("gappy_paged_starts_count",
     lambda: ab.PagedBlockDiagonalGappyKeysMask.from_seqlens([1, 1], [0], [1, 1], _bt([[0], [1]]), 2), r"^kv_seqstarts:"),
    ("notional_padding_zero",
     lambda: ab.BlockDiagonalGappyKeysMask.from_seqlens([1], [0, 2], [2]).make_paged(_bt([[0]]), 2, notional_padding=0), r"^notional_padding:"),
    ("notional_padding_before_slot",
     lambda: ab.BlockDiagonalGappyKeysMask.from_seqlens([1, 1], [0, 1, 8], [1, 1]).make_paged(_bt([[0], [1]]), 4, notional_padding=4),
     r"^notional_padding:"),
    ("tensor_list_empty", lambda: ab.BlockDiagonalMask.from_tensor_list([]), r"^tensors:"),
    ("tensor_list_mismatch", lambda: ab.BlockDiagonalMask.from_tensor_list([torch.randn(1, 2, 3), torch.randn(1, 2, 4)]), r"^tensors\[1\]:"),
    ("add_bias_int_tensor", lambda: ab.LowerTriangularMask().add_bias(torch.ones(2, 2, dtype=torch.int64)), r"^bias:"),
    ("add_bias_not_tensor", lambda: ab.LowerTriangularMask().add_bias([[0.0]]), r"^bias:"),  # type: ignore[arg-type]  # deliberately wrong type
    ("materialize_1d_shape", lambda: ab.LowerTriangularMask().materialize((4,)), r"^shape:"),
    ("materialize_wrong_queries", lambda: ab.BlockDiagonalMask.from_seqlens([2, 3]).materialize((4, 5)), r"^shape:"),
    ("materialize_wrong_keys", lambda: ab.BlockDiagonalMask.from_seqlens([2, 3]).materialize((5, 6)), r"^shape:"),
    # Pages 2 and 3 live at physical rows 4..7: a 4-key materialization would silently drop keys.
    ("materialize_paged_too_few_keys",
     lambda: ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([1, 1], [3, 2], _bt([[2, 0], [1, 3]]), 2).materialize((2, 4)), r"^shape:"),
    ("gappy_paged_capacity", lambda: ab.PagedBlockDiagonalGappyKeysMask.from_seqlens([1], [3], [2], _bt([[0, 1]]), 2), r"^kv_seqlen\[0\]:"),
]


@pytest.mark.parametrize(("call", "pattern"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_arguments_name_the_argument(call: Callable[[], object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        call()


@pytest.mark.parametrize(
    "bias",
    [ab.BlockDiagonalPaddedKeysMask.from_seqlens([1, 2], 3, [2, 1]), ab.BlockDiagonalGappyKeysMask.from_seqlens([1, 2], [0, 3, 6], [2, 1])],
    ids=lambda b: type(b).__name__,
)
def test_padded_and_gappy_masks_do_not_derive_packed_variants(bias: ab.BlockDiagonalMask) -> None:
    with pytest.raises(TypeError, match="only derived from BlockDiagonalMask"):
        bias.make_causal()


def test_materialize_keeps_the_requested_shape_with_a_tensor() -> None:
    t = torch.randn(2, 3, 4, 5)
    assert ab.LowerTriangularMask().add_bias(t).materialize((2, 3, 4, 5)).shape == (2, 3, 4, 5)
    with pytest.raises(RuntimeError):
        ab.LowerTriangularMask().add_bias(t).materialize((4, 5))
