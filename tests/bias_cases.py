"""Every bias kind users rely on, as small concrete cases (inputs + bias) for the conformance suite."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch

from attncore import attn_bias as ab

Bias = Union[ab.AttentionBias, torch.Tensor, None]


@dataclass(frozen=True)
class Case:
    """``make(dtype, generator)`` returns ``(q, k, v, bias)`` in the 4-D layout."""

    name: str
    make: Callable[[torch.dtype, torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor, Bias]]


H, K, KV = 2, 16, 24


def _qkv(dtype: torch.dtype, g: torch.Generator, b: int, mq: int, mk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype)

    return rnd(b, mq, H, K), rnd(b, mk, H, K), rnd(b, mk, H, KV)


def dense(name: str, mq: int, mk: int, bias: Callable[[torch.dtype, torch.Generator], Bias]) -> Case:
    def make(dtype: torch.dtype, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Bias]:
        return (*_qkv(dtype, g, 2, mq, mk), bias(dtype, g))

    return Case(name, make)


def packed(name: str, q_lens: list[int], k_len: int, bias: Callable[[], Bias]) -> Case:
    def make(dtype: torch.dtype, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Bias]:
        return (*_qkv(dtype, g, 1, sum(q_lens), k_len), bias())

    return Case(name, make)


def _alibi(dtype: torch.dtype, g: torch.Generator, mq: int, mk: int) -> torch.Tensor:
    slopes = 2.0 ** (-torch.arange(1, H + 1, dtype=torch.float32))
    rel = (torch.arange(mk)[None, :] - torch.arange(mq)[:, None]).float()
    return (slopes[:, None, None] * rel[None] + 0.1 * torch.randn(H, mq, mk, generator=g)).unsqueeze(0).to(dtype)


TABLES = torch.tensor([[3, 0, 5], [1, 4, 2]], dtype=torch.int32)  # 2 sequences x 3 pages of 4 keys
PAGE = 4

CASES: list[Case] = [
    dense("none", 13, 17, lambda d, g: None),
    dense("tensor[B,H,Mq,Mk]", 13, 17, lambda d, g: torch.randn(2, H, 13, 17, generator=g).to(d)),
    dense("tensor[1,H,Mq,Mk] alibi", 13, 17, lambda d, g: _alibi(d, g, 13, 17)),
    dense("tensor[Mq,Mk] with -inf", 9, 9, lambda d, g: torch.randn(9, 9, generator=g).masked_fill(torch.rand(9, 9, generator=g) < 0.3, float("-inf")).to(d)),
    dense("LowerTriangularMask", 13, 17, lambda d, g: ab.LowerTriangularMask()),
    dense("LowerTriangularMask Mq>Mk", 17, 9, lambda d, g: ab.LowerTriangularMask()),
    dense("LowerTriangularMaskWithTensorBias", 11, 11, lambda d, g: ab.LowerTriangularMask().add_bias(torch.randn(2, H, 11, 11, generator=g).to(d))),
    dense("LowerTriangularFromBottomRightMask", 7, 19, lambda d, g: ab.LowerTriangularFromBottomRightMask()),
    dense("LowerTriangularFromBottomRightMask Mq>Mk (masked rows)", 19, 7, lambda d, g: ab.LowerTriangularFromBottomRightMask()),
    dense("LowerTriangularFromBottomRightLocalAttentionMask", 15, 21, lambda d, g: ab.LowerTriangularFromBottomRightMask().make_local_attention(4)),
    dense("LocalAttentionFromBottomRightMask", 16, 20, lambda d, g: ab.LocalAttentionFromBottomRightMask(3, 2)),
    packed("BlockDiagonalMask", [3, 7, 1], 11, lambda: ab.BlockDiagonalMask.from_seqlens([3, 7, 1])),
    packed("BlockDiagonalMask kv!=q", [3, 7, 1], 14, lambda: ab.BlockDiagonalMask.from_seqlens([3, 7, 1], [5, 2, 7])),
    packed("BlockDiagonalCausalMask", [5, 9, 2], 16, lambda: ab.BlockDiagonalCausalMask.from_seqlens([5, 9, 2])),
    packed("BlockDiagonalCausalFromBottomRightMask", [2, 6, 3], 17, lambda: ab.BlockDiagonalCausalFromBottomRightMask.from_seqlens([2, 6, 3], [5, 6, 6])),
    packed("BlockDiagonalCausalLocalAttentionMask", [6, 10], 16, lambda: ab.BlockDiagonalMask.from_seqlens([6, 10]).make_local_attention(3)),
    packed(
        "BlockDiagonalCausalLocalAttentionFromBottomRightMask",
        [4, 8],
        17,
        lambda: ab.BlockDiagonalMask.from_seqlens([4, 8], [7, 10]).make_local_attention_from_bottomright(3),
    ),
    packed("BlockDiagonalPaddedKeysMask", [3, 5], 16, lambda: ab.BlockDiagonalPaddedKeysMask.from_seqlens([3, 5], 8, [6, 2])),
    packed("BlockDiagonalCausalWithOffsetPaddedKeysMask", [3, 5], 16, lambda: ab.BlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens([3, 5], 8, [6, 7])),
    packed("PagedBlockDiagonalPaddedKeysMask", [3, 2], 6 * PAGE, lambda: ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([3, 2], [9, 6], TABLES, PAGE)),
    packed(
        "PagedBlockDiagonalCausalWithOffsetPaddedKeysMask",
        [3, 2],
        6 * PAGE,
        lambda: ab.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens([3, 2], [9, 12], TABLES, PAGE),
    ),
    packed("BlockDiagonalGappyKeysMask", [3, 4], 20, lambda: ab.BlockDiagonalGappyKeysMask.from_seqlens([3, 4], [2, 9, 20], [5, 7])),
    packed(
        "BlockDiagonalCausalWithOffsetGappyKeysMask",
        [3, 4],
        20,
        lambda: ab.BlockDiagonalCausalWithOffsetGappyKeysMask.from_seqlens([3, 4], [1, 10, 20], [6, 8]),
    ),
    packed("PagedBlockDiagonalGappyKeysMask", [3, 2], 6 * PAGE, lambda: ab.PagedBlockDiagonalGappyKeysMask.from_seqlens([3, 2], [2, 5], [8, 6], TABLES, PAGE)),
    packed(
        "PagedBlockDiagonalCausalWithOffsetGappyKeysMask",
        [3, 2],
        6 * PAGE,
        lambda: ab.PagedBlockDiagonalCausalWithOffsetGappyKeysMask.from_seqlens([3, 2], [1, 3], [9, 7], TABLES, PAGE),
    ),
]

TENSOR_BIAS_CASES = [c for c in CASES if c.name.startswith(("tensor", "LowerTriangularMaskWithTensorBias"))]
