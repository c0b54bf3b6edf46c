"""Inputs.create: every bad input is a ValueError naming the argument; valid inputs get the right views."""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch

from attncore import attn_bias as ab
from attncore.geometry import Layout
from attncore.inputs import Inputs

B, MQ, MK, G, H, K, KV = 2, 3, 5, 2, 2, 4, 6
Call = dict[str, Any]

_GEN = torch.Generator().manual_seed(0)


def rand(*shape: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    if device == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    return torch.randn(shape, generator=_GEN).to(dtype)


def shapes(nd: int, b: int = B, mq: int = MQ, mk: int = MK) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    heads = {3: (), 4: (H,), 5: (G, H)}[nd]
    return (b, mq, *heads, K), (b, mk, *heads, K), (b, mk, *heads, KV)


def call(nd: int = 4, **over: Any) -> Call:
    """A valid call with ``over`` replacing some arguments."""
    qs, ks, vs = shapes(nd)
    base: Call = {"query": rand(*qs), "key": rand(*ks), "value": rand(*vs)}
    base.update(over)
    return base


def packed(bias: ab.AttentionBias, mq: int, mk: int, b: int = 1) -> Call:
    return call(query=rand(b, mq, H, K), key=rand(b, mk, H, K), value=rand(b, mk, H, KV), attn_bias=bias)


def strided(*shape: int) -> torch.Tensor:
    """Right shape, last dimension not contiguous (stride 2)."""
    return rand(*shape, 2)[..., 0]


def _paged(rows: int) -> Call:
    bias = ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([2, 1], [3, 2], torch.tensor([[0, 3], [2, 1]]), 2)
    return packed(bias, 3, rows)


BAD: list[tuple[str, Callable[[], Call], str]] = [
    # wrong rank
    ("query_2d", lambda: call(query=rand(MQ, K), key=rand(MK, K), value=rand(MK, KV)), r"^query:"),
    ("query_6d", lambda: call(query=rand(B, MQ, 1, G, H, K), key=rand(B, MK, 1, G, H, K), value=rand(B, MK, 1, G, H, KV)), r"^query:"),
    ("key_rank", lambda: call(key=rand(B, MK, K)), r"^key:"),
    ("value_rank", lambda: call(value=rand(B, MK, 1, H, KV)), r"^value:"),
    # mismatched batch / heads / head dims / lengths
    ("key_batch", lambda: call(key=rand(B + 1, MK, H, K)), r"^key:"),
    ("value_batch", lambda: call(value=rand(B + 1, MK, H, KV)), r"^value:"),
    ("key_heads", lambda: call(key=rand(B, MK, H + 1, K)), r"^key:"),
    ("value_heads", lambda: call(value=rand(B, MK, H + 1, KV)), r"^value:"),
    ("key_groups_5d", lambda: call(5, key=rand(B, MK, G + 1, H, K)), r"^key:"),
    ("value_heads_5d", lambda: call(5, value=rand(B, MK, G, H + 1, KV)), r"^value:"),
    ("key_head_dim", lambda: call(key=rand(B, MK, H, K + 1)), r"^key:"),
    ("value_length", lambda: call(value=rand(B, MK + 1, H, KV)), r"^value:"),
    ("query_head_dim_zero", lambda: call(query=rand(B, MQ, H, 0), key=rand(B, MK, H, 0)), r"^query:"),
    ("value_head_dim_zero", lambda: call(value=rand(B, MK, H, 0)), r"^value:"),
    # non-tensors
    ("query_list", lambda: call(query=[[0.0]]), r"^query:"),
    ("key_none", lambda: call(key=None), r"^key:"),
    ("value_float", lambda: call(value=1.0), r"^value:"),
    # devices ("meta" tensors: only shapes and devices are looked at before the error)
    ("key_device", lambda: call(key=rand(B, MK, H, K, device="meta")), r"^key:"),
    ("value_device", lambda: call(value=rand(B, MK, H, KV, device="meta")), r"^value:"),
    ("bias_device", lambda: call(attn_bias=rand(B, H, MQ, MK, device="meta")), r"^attn_bias:"),
    # dtypes
    ("query_int", lambda: call(query=rand(B, MQ, H, K, dtype=torch.int32)), r"^query:"),
    ("all_int64", lambda: call(query=rand(B, MQ, H, K, dtype=torch.int64), key=rand(B, MK, H, K, dtype=torch.int64),
                                value=rand(B, MK, H, KV, dtype=torch.int64)), r"^query:"),
    ("query_complex", lambda: call(query=torch.randn(B, MQ, H, K, dtype=torch.complex64)), r"^query:"),
    ("key_dtype", lambda: call(key=rand(B, MK, H, K, dtype=torch.float16)), r"^key:"),
    ("value_dtype", lambda: call(value=rand(B, MK, H, KV, dtype=torch.float64)), r"^value:"),
    ("bias_int", lambda: call(attn_bias=torch.zeros(B, H, MQ, MK, dtype=torch.int32)), r"^attn_bias:"),
    # strides
    ("query_last_stride", lambda: call(query=strided(B, MQ, H, K)), r"^query:"),
    ("key_last_stride", lambda: call(key=strided(B, MK, H, K)), r"^key:"),
    ("value_last_stride", lambda: call(value=strided(B, MK, H, KV)), r"^value:"),
    # tensor bias of the wrong shape
    ("bias_keys", lambda: call(attn_bias=rand(B, H, MQ, MK + 1)), r"^attn_bias:"),
    ("bias_queries", lambda: call(attn_bias=rand(MQ + 1, MK)), r"^attn_bias:"),
    ("bias_batch_not_broadcastable", lambda: call(attn_bias=rand(B + 1, 1, MQ, MK)), r"^attn_bias:"),
    ("bias_too_many_dims", lambda: call(attn_bias=rand(1, B, H, MQ, MK)), r"^attn_bias:"),
    ("bias_3d_with_heads", lambda: call(3, attn_bias=rand(B, H, MQ, MK)), r"^attn_bias:"),
    ("tensor_bias_in_mask", lambda: call(attn_bias=ab.LowerTriangularMask().add_bias(rand(B, H, MQ, MK + 2))), r"^attn_bias:"),
    ("bias_wrong_type", lambda: call(attn_bias="causal"), r"^attn_bias:"),
    # structured biases whose sequence lengths do not add up
    ("block_diagonal_batch_2", lambda: packed(ab.BlockDiagonalMask.from_seqlens([1, 2]), 3, 3, b=2), r"^attn_bias:"),
    ("q_seqlen_sum", lambda: packed(ab.BlockDiagonalMask.from_seqlens([1, 2], [2, 3]), 4, 5), r"^attn_bias:"),
    ("kv_seqlen_sum", lambda: packed(ab.BlockDiagonalCausalMask.from_seqlens([1, 2], [2, 3]), 3, 6), r"^attn_bias:"),
    ("padded_keys_total", lambda: packed(ab.BlockDiagonalPaddedKeysMask.from_seqlens([1, 2], 4, [2, 3]), 3, 7), r"^attn_bias:"),
    ("gappy_keys_total", lambda: packed(ab.BlockDiagonalGappyKeysMask.from_seqlens([1, 2], [0, 4, 9], [2, 3]), 3, 8), r"^attn_bias:"),
    ("paged_too_few_rows", lambda: _paged(7), r"^attn_bias:"),
    # p, scale, output_dtype
    ("p_one", lambda: call(p=1.0), r"^p:"),
    ("p_negative", lambda: call(p=-0.1), r"^p:"),
    ("p_bool", lambda: call(p=True), r"^p:"),
    ("p_nan", lambda: call(p=math.nan), r"^p:"),
    ("p_str", lambda: call(p="0.1"), r"^p:"),
    ("p_none", lambda: call(p=None), r"^p:"),
    ("scale_nan", lambda: call(scale=math.nan), r"^scale:"),
    ("scale_inf", lambda: call(scale=math.inf), r"^scale:"),
    ("scale_neg_inf", lambda: call(scale=-math.inf), r"^scale:"),
    ("scale_str", lambda: call(scale="0.5"), r"^scale:"),
    ("scale_bool", lambda: call(scale=True), r"^scale:"),
    ("output_dtype_int", lambda: call(output_dtype=torch.int32), r"^output_dtype:"),
    ("output_dtype_str", lambda: call(output_dtype="float32"), r"^output_dtype:"),
]


@pytest.mark.parametrize(("make", "pattern"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_names_argument(make: Callable[[], Call], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern) as err:
        Inputs.create(**make())
    assert "found" in str(err.value), "the message says what was found"


def test_paged_with_exactly_enough_rows_passes() -> None:
    inputs = Inputs.create(**_paged(8))
    assert inputs.features.bias.paged and inputs.num_keys == 8


@pytest.mark.parametrize(
    ("scale", "custom"), [(None, False), (K**-0.5, False), (0.3, True), (1, True)]
)
def test_custom_scale_flag(scale: float | None, custom: bool) -> None:
    inputs = Inputs.create(**call(scale=scale))
    assert inputs.features.custom_scale is custom
    assert inputs.scale == (K**-0.5 if scale is None else float(scale))
    assert isinstance(inputs.scale, float)


@pytest.mark.parametrize("nd", [4, 5])
@pytest.mark.parametrize(
    ("expand_k", "expand_v", "heads", "shared"),
    [(True, True, H, True), (True, False, H, False), (False, False, H, False), (True, True, 1, False)],
)
def test_shared_kv_heads(nd: int, expand_k: bool, expand_v: bool, heads: int, shared: bool) -> None:
    lead = (B, MK, G) if nd == 5 else (B, MK)
    q = rand(*(B, MQ, *lead[2:], heads, K))

    def kv(dim: int, expand: bool) -> torch.Tensor:
        return rand(*lead, 1, dim).expand(*lead, heads, dim) if expand else rand(*lead, heads, dim)

    inputs = Inputs.create(q, kv(K, expand_k), kv(KV, expand_v))
    assert inputs.features.shared_kv_heads is shared


def test_requires_grad_flags() -> None:
    assert not Inputs.create(**call()).features.requires_grad
    for name in ("query", "key", "value"):
        c = call()
        c[name].requires_grad_(True)
        f = Inputs.create(**c).features
        assert f.requires_grad and not f.bias_requires_grad
    bias = rand(B, H, MQ, MK).requires_grad_(True)
    f = Inputs.create(**call(attn_bias=bias)).features
    assert f.requires_grad and f.bias_requires_grad
    f = Inputs.create(**call(attn_bias=ab.LowerTriangularMask().add_bias(bias))).features
    assert f.requires_grad and f.bias_requires_grad


def test_other_features() -> None:
    f = Inputs.create(**call(5, p=0.25, attn_bias=ab.LowerTriangularFromBottomRightMask()), is_partial=True).features
    assert (f.ndim, f.head_dim, f.value_dim, f.dropout, f.is_partial) == (5, K, KV, True, True)
    assert f.device.kind == "cpu" and f.dtype == torch.float32 and f.bias.band == "causal"
    f = Inputs.create(**packed(ab.BlockDiagonalCausalMask.from_seqlens([1, 2]), 3, 3)).features
    assert f.bias.layout is Layout.BLOCK_DIAGONAL and not f.dropout and not f.is_partial
    assert Inputs.create(**call(p=0)).p == 0.0


@pytest.mark.parametrize("nd", [3, 4, 5])
def test_canonical_views(nd: int) -> None:
    inputs = Inputs.create(**call(nd))
    g, h = (G if nd == 5 else 1), (H if nd >= 4 else 1)
    assert inputs.q5.shape == (B, MQ, g, h, K)
    assert inputs.k5.shape == (B, MK, g, h, K)
    assert inputs.v5.shape == (B, MK, g, h, KV)
    assert inputs.shape5 == (B, MQ, g, h, K)
    assert (inputs.num_queries, inputs.num_keys) == (MQ, MK)
    assert inputs.q5.data_ptr() == inputs.query.data_ptr()
    assert torch.equal(inputs.from5(inputs.q5), inputs.query)
    out5 = rand(B, MQ, g, h, KV)
    out = inputs.from5(out5)
    assert out.shape == (B, MQ, *shapes(nd)[2][2:])
    assert torch.equal(inputs._to5(out), out5)
    lse5 = rand(B, g, h, MQ)
    lse = inputs.lse_from5(lse5)
    assert lse.shape == {3: (B, 1, MQ), 4: (B, H, MQ), 5: (B, G, H, MQ)}[nd]
    assert torch.equal(inputs.lse_to5(lse), lse5)
    assert inputs.bias5 is None


@pytest.mark.parametrize(
    ("nd", "bias_shape"),
    [(3, (B, MQ, MK)), (3, (MK,)), (4, (MQ, MK)), (4, (B, 1, MQ, MK)), (4, (B, H, MQ, MK)), (5, (1, G, 1, MQ, MK)), (5, (H, MQ, MK))],
)
def test_bias5_is_broadcast_view(nd: int, bias_shape: tuple[int, ...]) -> None:
    bias = rand(*bias_shape)
    inputs = Inputs.create(**call(nd, attn_bias=bias))
    g, h = (G if nd == 5 else 1), (H if nd >= 4 else 1)
    b5 = inputs.bias5
    assert b5 is not None and b5.shape == (B, g, h, MQ, MK)
    assert b5.data_ptr() == bias.data_ptr(), "a view, not a copy"
    target = {3: (B, MQ, MK), 4: (B, H, MQ, MK), 5: (B, G, H, MQ, MK)}[nd]
    assert torch.equal(b5.reshape(target), torch.broadcast_to(bias, target))


@pytest.mark.parametrize(
    ("nd", "bias_shape", "shared"),
    [
        (3, (B, MQ, MK), False),
        (3, (MK,), True),
        (4, (MQ, MK), True),
        (4, (1, H, MQ, MK), True),
        (4, (B, 1, MQ, MK), False),
        (5, (1, G, 1, MQ, MK), True),
        (5, (H, MQ, MK), True),
    ],
)
def test_a_bias_shared_over_the_batch_takes_a_summed_gradient(nd: int, bias_shape: tuple[int, ...], shared: bool) -> None:
    """``bias_shared_over_batch``: the gradient may come back summed over B (``[1, G, H, Mq, Mk]``) and
    still reduce to the bias's own shape, equal to reducing the full one."""
    bias = rand(*bias_shape)
    inputs = Inputs.create(**call(nd, attn_bias=bias))
    assert inputs.bias_shared_over_batch is shared
    g, h = (G if nd == 5 else 1), (H if nd >= 4 else 1)
    full = rand(B, g, h, MQ, MK)
    want = inputs.bias_grad_from5(full)
    assert want.shape == bias.shape
    if shared:
        got = inputs.bias_grad_from5(full.sum(0, keepdim=True))
        assert got.shape == bias.shape and torch.allclose(got, want, atol=1e-5)


def test_bias5_of_structured_biases() -> None:
    t = rand(1, H, MQ, MK)
    b5 = Inputs.create(**call(attn_bias=ab.LowerTriangularMask().add_bias(t))).bias5
    assert b5 is not None and b5.shape == (B, 1, H, MQ, MK) and torch.equal(b5[1, 0], t[0])
    assert Inputs.create(**call(attn_bias=ab.LowerTriangularMask())).bias5 is None


@pytest.mark.parametrize(
    ("dtype", "out", "lse"),
    [(torch.float16, None, torch.float32), (torch.bfloat16, torch.float32, torch.float32), (torch.float64, None, torch.float64)],
)
def test_output_and_lse_dtypes(dtype: torch.dtype, out: torch.dtype | None, lse: torch.dtype) -> None:
    qs, ks, vs = shapes(4)
    inputs = Inputs.create(rand(*qs, dtype=dtype), rand(*ks, dtype=dtype), rand(*vs, dtype=dtype), output_dtype=out)
    assert inputs.out_dtype == (out or dtype) and inputs.lse_dtype == lse


@pytest.mark.parametrize("nd", [3, 4, 5])
def test_non_contiguous_last_stride_one_passes(nd: int) -> None:
    qs, ks, vs = shapes(nd)
    q = rand(qs[0], *qs[2:-1], qs[1], K).movedim(-2, 1) if nd > 3 else rand(B, 2 * MQ, K)[:, ::2]  # [B, H, M, K] transposed
    k = rand(*ks[:-1], K + 3)[..., 1 : K + 1]  # a slice of a wider last dimension
    v = rand(B, 2 * MK, *vs[2:])[:, 1::2]  # every other token
    for t, s in ((q, qs), (k, ks), (v, vs)):
        assert t.shape == s and t.stride(-1) == 1 and not t.is_contiguous()
    inputs = Inputs.create(q, k, v)
    assert inputs.query is q and inputs.key is k and inputs.value is v


def test_meta_tensors_shape_only() -> None:
    q = rand(1, 4096, 8, 16, 128, device="meta")
    kv = rand(1, 8192, 8, 1, 128, device="meta").expand(1, 8192, 8, 16, 128)
    inputs = Inputs.create(q, kv, kv, ab.LowerTriangularFromBottomRightMask())
    assert inputs.shape5 == (1, 4096, 8, 16, 128) and inputs.features.shared_kv_heads
    assert inputs.features.device.kind == "meta"
