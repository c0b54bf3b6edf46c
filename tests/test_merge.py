"""merge_attentions against attention over all the keys, computed in float64 by a local reference."""

from __future__ import annotations

import itertools
import math
from typing import Optional, Union

import pytest
import torch

from attncore.merge import merge_attentions

B, M, G, H, K, KV = 2, 10, 2, 3, 4, 5
SPLITS = {2: [0, 4, 10], 3: [0, 3, 7, 10], 4: [0, 1, 5, 6, 10]}


def to5(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 5 else t.unsqueeze(2) if t.dim() == 4 else t.unsqueeze(2).unsqueeze(2)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(scale q k^T + bias) v`` and its logsumexp, in the public 3-D/4-D/5-D layouts.

    ``bias`` is ``[B, G, H, Mq, Mk]`` (broadcastable). A row with no allowed key gives 0 and ``-inf``.
    """
    nd = q.dim()
    q5, k5, v5 = to5(q).double(), to5(k).double(), to5(v).double()
    s = torch.einsum("bmghk,bnghk->bghmn", q5, k5) * q.shape[-1] ** -0.5 + bias.double()
    lse = torch.logsumexp(s, -1)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    out = torch.einsum("bghmn,bnghv->bmghv", torch.exp(s - safe.unsqueeze(-1)), v5)
    if nd == 5:
        return out, lse
    out = out.squeeze(2) if nd == 4 else out.squeeze(2).squeeze(2)
    return out, lse.squeeze(1)


def make_qkv(nd: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    heads = {3: (), 4: (H,), 5: (G, H)}[nd]
    return tuple(torch.randn((B, M, *heads, d), generator=g, dtype=torch.float64) for d in (K, K, KV))  # type: ignore[return-value]  # three tensors


def make_bias(kind: str, seed: int) -> torch.Tensor:
    """``[B, G, H, M, M]``-broadcastable additive bias of ``kind``."""
    if kind == "none":
        return torch.zeros(1, 1, 1, M, M, dtype=torch.float64)
    if kind == "causal":  # early queries attend nothing in the later chunks: their chunk LSE is -inf
        return torch.zeros(M, M, dtype=torch.float64).masked_fill(torch.ones(M, M, dtype=torch.bool).triu(1), -math.inf)
    g = torch.Generator().manual_seed(seed)
    return torch.randn((B, 1, 1, M, M), generator=g, dtype=torch.float64)


def chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, n: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    outs, lses = [], []
    bounds = SPLITS[n]
    for a, b in itertools.pairwise(bounds):
        o, lse = reference(q, k[:, a:b], v[:, a:b], bias[..., a:b])
        outs.append(o)
        lses.append(lse)
    return outs, lses


@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("kind", ["none", "causal", "random"])
@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("nd", [3, 4, 5])
def test_merge_equals_full_attention(nd: int, n: int, kind: str, stacked: bool) -> None:
    q, k, v = make_qkv(nd, seed=nd * 10 + n)
    bias = make_bias(kind, seed=n)
    want_out, want_lse = reference(q, k, v, bias)
    outs, lses = chunks(q, k, v, bias, n)
    if kind == "causal":
        assert bool(torch.isinf(lses[-1]).any()), "the test must include fully masked chunk rows"
    attn: Union[torch.Tensor, list[torch.Tensor]] = torch.stack(outs) if stacked else outs
    lse_in: Union[torch.Tensor, list[torch.Tensor]] = torch.stack(lses) if stacked else lses
    out, lse = merge_attentions(attn, lse_in)
    assert lse is not None
    assert out.shape == want_out.shape and lse.shape == want_lse.shape == {3: (B, 1, M), 4: (B, H, M), 5: (B, G, H, M)}[nd]
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(lse, want_lse)


@pytest.mark.parametrize("nd", [3, 4, 5])
def test_fully_masked_chunk_weighs_nothing(nd: int) -> None:
    q, k, v = make_qkv(nd, seed=7)
    bias = make_bias("random", seed=7)
    outs, lses = chunks(q, k, v, bias, 2)
    want, want_lse = merge_attentions(outs, lses)
    g = torch.Generator().manual_seed(8)
    garbage = torch.randn(outs[0].shape, generator=g, dtype=torch.float64) * 100  # whatever a masked chunk holds
    empty = torch.full_like(lses[0], -math.inf)
    out, lse = merge_attentions([garbage, *outs, garbage], [empty, *lses, empty])
    torch.testing.assert_close(out, want)
    assert lse is not None and want_lse is not None
    torch.testing.assert_close(lse, want_lse)


def test_query_masked_everywhere_gives_zero_and_neg_inf() -> None:
    q, k, v = make_qkv(4, seed=3)
    bias = make_bias("random", seed=3).expand(B, 1, 1, M, M).clone()
    bias[1, ..., 4, :] = -math.inf  # query 4 of batch 1 sees no key at all
    want_out, want_lse = reference(q, k, v, bias)
    out, lse = merge_attentions(*chunks(q, k, v, bias, 3))
    assert lse is not None
    assert not bool(out.isnan().any() or lse.isnan().any())
    assert bool((out[1, 4] == 0).all()) and bool((lse[1, :, 4] == -math.inf).all())
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(lse, want_lse)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_all_chunks_empty(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(4)
    attn = [torch.randn(B, M, H, KV, generator=g).to(dtype) for _ in range(3)]
    lse_in = [torch.full((B, H, M), -math.inf, dtype=torch.float32) for _ in range(3)]
    out, lse = merge_attentions(attn, lse_in)
    assert lse is not None
    assert out.dtype == dtype and bool((out == 0).all())
    assert bool((lse == -math.inf).all())


def test_write_lse_false() -> None:
    q, k, v = make_qkv(4, seed=5)
    outs, lses = chunks(q, k, v, make_bias("causal", 0), 2)
    out, lse = merge_attentions(outs, lses, write_lse=False)
    assert lse is None
    torch.testing.assert_close(out, merge_attentions(outs, lses)[0])


@pytest.mark.parametrize(
    ("chunk_dtype", "output_dtype", "want"),
    [(torch.float32, torch.float16, torch.float16), (torch.float32, None, torch.float32), (torch.bfloat16, torch.float32, torch.float32),
     (torch.float16, None, torch.float16), (torch.float64, torch.float32, torch.float32)],
)
def test_output_dtype(chunk_dtype: torch.dtype, output_dtype: Optional[torch.dtype], want: torch.dtype) -> None:
    q, k, v = make_qkv(5, seed=6)
    want_out, want_lse = reference(q, k, v, make_bias("random", 6))
    outs, lses = chunks(q, k, v, make_bias("random", 6), 3)
    out, lse = merge_attentions([o.to(chunk_dtype) for o in outs], [x.float() for x in lses], output_dtype=output_dtype)
    assert out.dtype == want and lse is not None and lse.dtype == torch.float32
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(chunk_dtype, 1e-5)
    tol = max(tol, 2e-3 if want == torch.float16 else 0.0)
    torch.testing.assert_close(out.double(), want_out, atol=tol, rtol=tol)
    torch.testing.assert_close(lse.double(), want_lse, atol=1e-5, rtol=1e-5)


def test_gradcheck_stacked_and_list() -> None:
    g = torch.Generator().manual_seed(9)
    attn = torch.randn(3, 1, 2, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    lse = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    lse[1, 0, 0, 1] = -math.inf  # one empty chunk row: its weight and gradient are zero, not NaN
    lse.requires_grad_(True)

    def stacked(a: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, merged = merge_attentions(a, s)
        assert merged is not None
        return out, merged

    def listed(a0: torch.Tensor, a1: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        return merge_attentions([a0, a1], [s0, s1], write_lse=False)[0]

    assert torch.autograd.gradcheck(stacked, (attn, lse))
    a0, a1 = (torch.randn(1, 2, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    s0, s1 = (torch.randn(1, 1, 2, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(listed, (a0, a1, s0, s1))


def test_gradients_match_full_attention() -> None:
    q, k, v = make_qkv(4, seed=10)
    bias = make_bias("random", 10)
    g = torch.Generator().manual_seed(11)
    go = torch.randn(B, M, H, KV, generator=g, dtype=torch.float64)
    gl = torch.randn(B, H, M, generator=g, dtype=torch.float64)

    def grads(split: bool) -> tuple[torch.Tensor, ...]:
        lq, lk, lv = (t.clone().requires_grad_(True) for t in (q, k, v))
        if split:
            out, lse = merge_attentions(*chunks(lq, lk, lv, bias, 3))
            assert lse is not None
        else:
            out, lse = reference(lq, lk, lv, bias)
        return torch.autograd.grad((out * go).sum() + (lse * gl).sum(), (lq, lk, lv))

    full, split = grads(False), grads(True)
    assert len(full) == len(split) == 3
    for a, b in zip(full, split, strict=True):
        torch.testing.assert_close(a, b)


def test_output_gradient_finite_when_query_sees_nothing() -> None:
    g = torch.Generator().manual_seed(12)
    attn = torch.randn(2, 1, 3, 2, 4, generator=g, requires_grad=True)
    lse = torch.randn(2, 1, 2, 3, generator=g)
    lse[:, 0, 1, 2] = -math.inf
    lse.requires_grad_(True)
    out, _ = merge_attentions(attn, lse)
    ga, gl = torch.autograd.grad(out.sum(), (attn, lse))
    assert bool(ga.isfinite().all()) and bool(gl.isfinite().all())


def test_merge_of_merges_matches_flat_merge_with_gradients() -> None:
    """Tree reduction (split-KV, ring attention) merges merged results; a query masked in every chunk
    must not turn the gradients into NaN (they would flow into each chunk's backward as grad_lse)."""
    g = torch.Generator().manual_seed(13)
    attn = torch.randn(4, 1, 3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    lse = torch.randn(4, 1, 2, 3, generator=g, dtype=torch.float64)
    lse[:, 0, 1, 2] = -math.inf  # query 2 of head 1 attends no key in any chunk
    lse.requires_grad_(True)
    o1, s1 = merge_attentions(attn[:2], lse[:2])
    o2, s2 = merge_attentions(attn[2:], lse[2:])
    assert s1 is not None and s2 is not None
    tree, _ = merge_attentions([o1, o2], [s1, s2])
    flat, _ = merge_attentions(attn, lse)
    torch.testing.assert_close(tree, flat)
    flat_grads = torch.autograd.grad(flat.sum(), (attn, lse))
    tree_grads = torch.autograd.grad(tree.sum(), (attn, lse))
    for name, t, f in zip(("attn_split", "lse_split"), tree_grads, flat_grads, strict=True):
        assert bool(t.isfinite().all()), f"NaN/inf in the gradient of {name}"
        torch.testing.assert_close(t, f)


def _t(*shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(len(shape)))


BAD: list[tuple[str, object, object, str]] = [
    ("attn_empty_list", [], [_t(B, H, M)], r"^attn_split:"),
    ("lse_empty_list", [_t(B, M, H, KV)], [], r"^lse_split:"),
    ("attn_chunk_shapes", [_t(B, M, H, KV), _t(B, M + 1, H, KV)], [_t(B, H, M)] * 2, r"^attn_split:"),
    ("lse_chunk_shapes", [_t(B, M, H, KV)] * 2, [_t(B, H, M), _t(B, H, M + 1)], r"^lse_split:"),
    ("attn_rank_low", [_t(M, KV)] * 2, [_t(B, H, M)] * 2, r"^attn_split:"),
    ("attn_rank_high", _t(2, B, M, 1, G, H, KV), _t(2, B, G, H, M), r"^attn_split:"),
    ("lse_heads", [_t(B, M, H, KV)] * 2, [_t(B, H + 1, M)] * 2, r"^lse_split:"),
    ("lse_length", [_t(B, M, H, KV)] * 2, [_t(B, H, M - 1)] * 2, r"^lse_split:"),
    ("lse_chunk_count", [_t(B, M, H, KV)] * 2, [_t(B, H, M)] * 3, r"^lse_split:"),
    ("lse_batch", _t(2, B, M, H, KV), _t(2, B + 1, H, M), r"^lse_split:"),
    ("lse_3d_heads", [_t(B, M, KV)] * 2, [_t(B, H, M)] * 2, r"^lse_split:"),
    ("lse_5d_groups", [_t(B, M, G, H, KV)] * 2, [_t(B, H, M)] * 2, r"^lse_split:"),
]


@pytest.mark.parametrize(("attn", "lse", "pattern"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_shape_mismatch_names_argument(attn: object, lse: object, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        merge_attentions(attn, lse)  # type: ignore[arg-type]  # deliberately wrong inputs
