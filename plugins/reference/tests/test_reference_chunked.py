"""The chunked (tiled, online-softmax) operator against the exact one, with tiles small enough that
every multi-tile path (rescaling, skipping, partial masks) runs at small shapes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attncore import attn_bias as ab
from attncore.geometry import MaskGeometry
from attncore_reference import chunked
from attncore_reference._common import TileMasks, prepare
from attncore_reference.chunked import ChunkedBwOp, ChunkedFwOp
from attncore_reference.decode import DecodeFwOp
from attncore_reference.testing import (
    CASE_IDS,
    CASES,
    PAGE,
    POOL,
    TABLES,
    Case,
    assert_close,
    build,
    case,
    compare_backward,
    compare_forward,
    inputs,
    make_qkv,
    reference,
)

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


@pytest.fixture
def tiny_tiles(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tiles of 4 queries x 8 keys (3 x 5 in the backward): every case spans several of them."""
    for op, bq, bk in ((ChunkedFwOp, 4, 8), (ChunkedBwOp, 3, 5)):
        monkeypatch.setattr(op, "BLOCK_Q", bq)
        monkeypatch.setattr(op, "BLOCK_K", bk)
    yield


@pytest.mark.usefixtures("tiny_tiles")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_forward_matches_exact(c: Case, dtype: torch.dtype) -> None:
    q, k, v, bias, _ = build(c, "5d-gqa", dtype)
    compare_forward(ChunkedFwOp, q, k, v, bias)


@pytest.mark.usefixtures("tiny_tiles")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_backward_matches_exact(c: Case, dtype: torch.dtype) -> None:
    q, k, v, bias, _ = build(c, "4d", dtype, requires_grad=True)
    compare_backward(ChunkedFwOp, ChunkedBwOp, q, k, v, bias)


@pytest.mark.usefixtures("tiny_tiles")
@pytest.mark.parametrize("layout", ["3d", "5d", "4d-gqa", "5d-gqa"])
@pytest.mark.parametrize("name", ["tensor", "LowerTriangularMaskWithTensorBias", "BlockDiagonalCausalLocalAttentionMask", "PagedBlockDiagonalGappyKeysMask"])
def test_layouts(name: str, layout: str) -> None:
    q, k, v, bias, _ = build(case(name), layout, torch.float32, requires_grad=True)
    compare_forward(ChunkedFwOp, q, k, v, bias, scale=0.29)
    compare_backward(ChunkedFwOp, ChunkedBwOp, q, k, v, bias)


@pytest.mark.usefixtures("tiny_tiles")
def test_float16_and_output_dtype() -> None:
    q, k, v, bias, _ = build(case("LowerTriangularMaskWithTensorBias"), "4d", torch.float16, requires_grad=True)
    compare_forward(ChunkedFwOp, q, k, v, bias)
    compare_backward(ChunkedFwOp, ChunkedBwOp, q, k, v, bias)
    res = ChunkedFwOp.apply(inputs(q, k, v, bias, output_dtype=torch.float32), needs_lse=False, dropout_seed=0)
    assert res.out.dtype == torch.float32 and res.lse is None


@pytest.mark.usefixtures("tiny_tiles")
@pytest.mark.parametrize("name", ["none", "tensor", "LowerTriangularMask", "BlockDiagonalCausalWithOffsetPaddedKeysMask", "PagedBlockDiagonalPaddedKeysMask"])
def test_dropout_matches_exact(name: str) -> None:
    q, k, v, bias, _ = build(case(name), "5d-gqa", torch.float32, requires_grad=True)
    compare_forward(ChunkedFwOp, q, k, v, bias, p=0.25, seed=99)
    compare_backward(ChunkedFwOp, ChunkedBwOp, q, k, v, bias, p=0.25, seed=99)


@pytest.mark.parametrize("name", ["none", "LowerTriangularMask", "BlockDiagonalCausalMask"])
def test_default_tiles_several_blocks(name: str) -> None:
    """Default tile sizes on sequences long enough for several query blocks."""
    gen = torch.Generator().manual_seed(0)
    m = 300
    bias = ab.BlockDiagonalCausalMask.from_seqlens([120, 180]) if name == "BlockDiagonalCausalMask" else (None if name == "none" else ab.LowerTriangularMask())
    q, k, v = (torch.randn(1, m, 2, 16, generator=gen, requires_grad=True) for _ in range(3))
    compare_forward(ChunkedFwOp, q, k, v, bias)
    compare_backward(ChunkedFwOp, ChunkedBwOp, q, k, v, bias)


def test_budget_shrinks_query_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ChunkedFwOp, "TILE_ELEMENTS", 3 * 2 * 3 * 8)  # G * H * 3 queries * 8 keys
    monkeypatch.setattr(ChunkedFwOp, "BLOCK_K", 8)
    q, k, v, bias, _ = build(case("LowerTriangularMask"), "5d-gqa", torch.float32)
    inp = inputs(q, k, v, bias)
    c = prepare(inp, torch.float32, q_scale=1.0, fold_heads=True)
    plan = chunked.TilePlan(c, ChunkedFwOp.BLOCK_Q, ChunkedFwOp.BLOCK_K, ChunkedFwOp.TILE_ELEMENTS)
    assert (plan.nb, plan.tq, plan.tk) == (1, 3, 8)
    compare_forward(ChunkedFwOp, q, k, v, bias)


def test_skips_empty_tiles_and_builds_few_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Causal 16 x 16 in 4 x 4 tiles: 10 of 16 tiles visited, one mask built (diagonal tiles share it)."""
    monkeypatch.setattr(ChunkedFwOp, "BLOCK_Q", 4)
    monkeypatch.setattr(ChunkedFwOp, "BLOCK_K", 4)
    calls = {"tiles": 0, "masks": 0}
    score_tile, allowed = chunked.score_tile, MaskGeometry.allowed

    def counting_tile(*args: object, **kw: object) -> torch.Tensor:
        calls["tiles"] += 1
        return score_tile(*args, **kw)  # type: ignore[arg-type]

    def counting_allowed(self: MaskGeometry, *args: int) -> object:
        calls["masks"] += 1
        return allowed(self, *args)

    monkeypatch.setattr(chunked, "score_tile", counting_tile)
    monkeypatch.setattr(MaskGeometry, "allowed", counting_allowed)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 16, 2, 8, generator=gen) for _ in range(3))
    ChunkedFwOp.apply(inputs(q, k, v, ab.LowerTriangularMask()), needs_lse=True, dropout_seed=0)
    assert calls == {"tiles": 10, "masks": 1}
    calls.update(tiles=0, masks=0)
    packed = ab.BlockDiagonalMask.from_seqlens([4, 8, 4])
    ChunkedFwOp.apply(inputs(q[:1], k[:1], v[:1], packed), needs_lse=True, dropout_seed=0)
    assert calls == {"tiles": 6, "masks": 0}  # tiles inside one block need no mask


@st.composite
def _tiles(draw: st.DrawFn) -> tuple[MaskGeometry, int, int, int, int, int, int]:
    c = draw(st.sampled_from([c for c in CASES if c.name not in ("none", "tensor")]))
    bias = c.bias(4, torch.Generator().manual_seed(0), torch.float32)
    assert isinstance(bias, ab.AttentionBias)
    geo, _ = bias.geometry().unpaged()
    mq = c.mq
    mk = geo.blocks.k_total if geo.blocks is not None else c.mk
    q0 = draw(st.integers(0, mq - 1))
    k0 = draw(st.integers(0, mk - 1))
    return geo.without_tensor(), mq, mk, q0, draw(st.integers(q0 + 1, mq)), k0, draw(st.integers(k0 + 1, mk))


@settings(max_examples=150, deadline=None)
@given(_tiles())
def test_tile_masks_agree_with_geometry(t: tuple[MaskGeometry, int, int, int, int, int, int]) -> None:
    geo, mq, mk, q0, q1, k0, k1 = t
    masks = TileMasks(geo, mq, mk, torch.float32, torch.device("cpu"))
    ok = geo.allowed(q0, q1, k0, k1, mq, mk)
    assert ok is not None
    mask = masks.additive(q0, q1, k0, k1)
    assert torch.equal(~ok, torch.zeros_like(ok) if mask is None else torch.isneginf(mask))
    assert mask is None or bool((mask[ok] == 0).all())
    if masks.is_empty(q0, q1, k0, k1):
        assert not ok.any()
    lo, hi = masks.key_span(q0, q1)
    row_any = geo.allowed(q0, q1, 0, mk, mq, mk)
    assert row_any is not None
    cols = row_any.any(0).nonzero().flatten()
    assert cols.numel() == 0 or (lo <= int(cols.min()) and int(cols.max()) < hi)


@st.composite
def _packed(draw: st.DrawFn) -> tuple[ab.AttentionBias, int, int]:
    n = draw(st.integers(1, 4))
    q_lens = draw(st.lists(st.integers(0, 7), min_size=n, max_size=n))
    k_lens = draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
    kind = draw(st.sampled_from(["bd", "bd-causal", "bd-causal-br", "bd-local", "padded", "padded-causal", "gappy", "gappy-causal"]))
    if kind.startswith("padded"):
        pad = max([*k_lens, 1])
        padded = ab.BlockDiagonalCausalWithOffsetPaddedKeysMask if kind.endswith("causal") else ab.BlockDiagonalPaddedKeysMask
        return padded.from_seqlens(q_lens, pad, k_lens), sum(q_lens), pad * n
    if kind.startswith("gappy"):
        gaps = draw(st.lists(st.integers(0, 3), min_size=n + 1, max_size=n + 1))
        starts, pos = [], 0
        for gap, kl in zip(gaps[:-1], k_lens, strict=True):
            starts.append(pos + gap)
            pos += gap + kl
        gappy = ab.BlockDiagonalCausalWithOffsetGappyKeysMask if kind.endswith("causal") else ab.BlockDiagonalGappyKeysMask
        return gappy.from_seqlens(q_lens, [*starts, pos + gaps[-1]], k_lens), sum(q_lens), pos + gaps[-1]
    base = ab.BlockDiagonalMask.from_seqlens(q_lens, k_lens)
    made = {
        "bd": base,
        "bd-causal": base.make_causal(),
        "bd-causal-br": base.make_causal_from_bottomright(),
        "bd-local": base.make_local_attention(draw(st.integers(1, 4))),
    }[kind]
    return made, sum(q_lens), sum(k_lens)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_packed(), st.sampled_from([(1, 2), (3, 4), (5, 16)]))
def test_packed_seqlens_match_exact(monkeypatch: pytest.MonkeyPatch, packed: tuple[ab.AttentionBias, int, int], tiles: tuple[int, int]) -> None:
    bias, mq, mk = packed
    monkeypatch.setattr(ChunkedFwOp, "BLOCK_Q", tiles[0])
    monkeypatch.setattr(ChunkedFwOp, "BLOCK_K", tiles[1])
    monkeypatch.setattr(ChunkedBwOp, "BLOCK_Q", tiles[1])
    monkeypatch.setattr(ChunkedBwOp, "BLOCK_K", tiles[0])
    gen = torch.Generator().manual_seed(mq * 31 + mk)
    q = torch.randn(1, mq, 2, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(1, mk, 2, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(1, mk, 2, 4, generator=gen, dtype=torch.float64)
    compare_forward(ChunkedFwOp, q, k, v, bias)
    compare_backward(ChunkedFwOp, ChunkedBwOp, q, k, v, bias)


@dataclasses.dataclass(frozen=True, eq=False)
class _PagedWithTensor(ab.PagedBlockDiagonalPaddedKeysMask):
    """No public bias pages keys *and* carries a tensor; the geometry allows it, so the operators do."""

    tensor: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(()))

    def geometry(self) -> MaskGeometry:
        return dataclasses.replace(super().geometry(), tensor=self.tensor)


@pytest.mark.usefixtures("tiny_tiles")
def test_paged_keys_with_tensor_bias() -> None:
    """The tensor bias (physical key layout) is gathered like the keys, and its gradient scattered back."""
    gen = torch.Generator().manual_seed(5)
    paged = ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([3, 5, 2], [6, 8, 1], TABLES, PAGE)
    q, k, v, _ = make_qkv("4d", 1, 10, POOL, torch.float32, gen)
    tensor = torch.randn(1, 3, 10, POOL, generator=gen, requires_grad=True)
    bias = _PagedWithTensor(paged.q_seqinfo, paged.k_seqinfo, block_tables=TABLES, page_size=PAGE, tensor=tensor)
    compare_forward(ChunkedFwOp, q, k, v, bias)
    compare_forward(DecodeFwOp, q, k, v, bias)
    compare_backward(ChunkedFwOp, ChunkedBwOp, q, k, v, bias)
    out, _ = reference(q, k, v, bias)
    (expected,) = torch.autograd.grad(out.sum(), tensor)
    inp = inputs(q, k, v, bias)
    fw = ChunkedFwOp.apply(inp, needs_lse=True, dropout_seed=0)
    assert fw.lse is not None
    grads = ChunkedBwOp.apply(inp, torch.ones_like(fw.out), fw.out, fw.lse, dropout_seed=0)
    assert grads.dbias is not None
    assert_close(grads.dbias[:, 0].sum_to_size(tensor.shape), expected, 1e-5, "dbias")
