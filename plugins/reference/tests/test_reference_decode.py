"""The decoding operator (one matrix product over all keys) against the exact one."""

from __future__ import annotations

from typing import Optional

import pytest
import torch

from attncore import attn_bias as ab
from attncore_reference import DecodeFwOp
from attncore_reference.testing import CASE_IDS, CASES, Case, build, case, compare_forward, inputs, make_qkv

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_matches_exact(c: Case, dtype: torch.dtype) -> None:
    assert c.mq <= 16  # every catalogue case is a decoding-sized call
    q, k, v, bias, _ = build(c, "5d-gqa", dtype)
    assert not DecodeFwOp.not_supported_reasons(inputs(q, k, v, bias))
    compare_forward(DecodeFwOp, q, k, v, bias)


@pytest.mark.parametrize("layout", ["3d", "4d", "5d", "4d-gqa"])
@pytest.mark.parametrize("mq", [1, 5, 16])
def test_layouts_and_query_counts(layout: str, mq: int) -> None:
    gen = torch.Generator().manual_seed(mq)
    q, k, v, _ = make_qkv(layout, 2, mq, 40, torch.float32, gen)
    for bias in (None, ab.LowerTriangularFromBottomRightMask(), ab.LocalAttentionFromBottomRightMask(7, 0)):
        compare_forward(DecodeFwOp, q, k, v, bias, scale=0.4)


def test_float16() -> None:
    q, k, v, bias, _ = build(case("LowerTriangularMaskWithTensorBias"), "4d", torch.float16)
    compare_forward(DecodeFwOp, q, k, v, bias)


@pytest.mark.parametrize("name", ["none", "tensor", "BlockDiagonalCausalWithOffsetGappyKeysMask", "PagedBlockDiagonalCausalWithOffsetPaddedKeysMask"])
def test_dropout_matches_exact(name: str) -> None:
    q, k, v, bias, _ = build(case(name), "5d-gqa", torch.float32)
    compare_forward(DecodeFwOp, q, k, v, bias, p=0.4, seed=2024)


def test_rejects_long_queries() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v, _ = make_qkv("4d", 1, 17, 20, torch.float32, gen)
    reasons = DecodeFwOp.not_supported_reasons(inputs(q, k, v, None))
    assert [r.topic for r in reasons] == ["queries Mq"]


def test_reads_shared_keys_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stride-0 GQA keys and values of the compute dtype are neither repeated nor copied."""
    gen = torch.Generator().manual_seed(0)
    q, k, v, _ = make_qkv("5d-gqa", 2, 3, 64, torch.float32, gen)
    seen: list[int] = []
    bmm = torch.bmm

    def spy(a: torch.Tensor, b: torch.Tensor, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        seen.append(b.untyped_storage().data_ptr())
        return bmm(a, b, out=out)

    monkeypatch.setattr(torch, "bmm", spy)
    res = DecodeFwOp.apply(inputs(q, k, v, None), needs_lse=False, dropout_seed=0)
    monkeypatch.undo()
    assert res.lse is None
    # per batch entry: one product with the keys, one with the values, both read in place
    assert sorted(seen) == sorted([k.untyped_storage().data_ptr(), v.untyped_storage().data_ptr()] * 2)
    compare_forward(DecodeFwOp, q, k, v, None)
