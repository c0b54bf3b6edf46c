"""The exact (float64 oracle) operator against a plain float64 torch formula and torch.autograd."""

from __future__ import annotations

import math
from typing import Optional

import pytest
import torch

from attncore import attn_bias as ab
from attncore_reference import ExactBwOp, ExactFwOp, dropout_keep_mask
from attncore_reference.testing import CASE_IDS, CASES, LAYOUTS, Bias, Case, assert_close, bias_tensor, build, case, from5, inputs, reference, to5

TOL64 = 1e-10


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Bias, seed: int = 0, **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
    inp = inputs(q, k, v, bias, **kw)
    res = ExactFwOp.apply(inp, needs_lse=True, dropout_seed=seed)
    assert res.lse is not None
    return inp.from5(res.out), res.lse


def _check_grads(c: Case, layout: str, scale: Optional[float] = None, p: float = 0.0, seed: int = 0, with_grad_lse: bool = True) -> None:
    """Op gradients (via ExactBwOp) against autograd through :func:`reference` for every leaf."""
    q, k, v, bias, leaves = build(c, layout, torch.float64, requires_grad=True)
    tb = bias_tensor(bias)
    inp = inputs(q, k, v, bias, p=p, scale=scale)
    keep = None
    if p > 0:
        b, _, g, h, _ = inp.shape5
        keep = dropout_keep_mask(seed, (b, g, h, inp.num_queries, inp.num_keys), p)
    out, lse = reference(q, k, v, bias, scale, keep, p)
    gen = torch.Generator().manual_seed(1)
    go = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    glse = torch.randn(lse.shape, generator=gen, dtype=torch.float64) if with_grad_lse else None
    loss = (out * go).sum() + ((lse.masked_fill(lse.isinf(), 0.0) * glse).sum() if glse is not None else 0.0)
    targets = [*leaves, *([tb] if tb is not None else [])]
    expected = torch.autograd.grad(loss, targets)
    fw = ExactFwOp.apply(inp, needs_lse=True, dropout_seed=seed)
    assert fw.lse is not None
    grads = ExactBwOp.apply(inp, to5(go), fw.out, fw.lse, dropout_seed=seed, grad_lse=glse)
    nd = q.dim()
    assert_close(from5(grads.dq, nd), expected[0], TOL64, "dq")
    for name, got, want in (("dk", grads.dk, expected[1]), ("dv", grads.dv, expected[2])):
        # per-head gradients of stride-0 shared keys sum to the gradient of the expanded leaf
        summed = got.sum(dim=3, keepdim=True) if layout.endswith("gqa") else got
        assert_close(from5(summed, nd), want, TOL64, name)
    if tb is not None:
        assert grads.dbias is not None
        user = grads.dbias[:, 0, 0] if nd == 3 else (grads.dbias[:, 0] if nd == 4 else grads.dbias)
        assert_close(user.sum_to_size(tb.shape), expected[3], TOL64, "dbias")
    else:
        assert grads.dbias is None


def test_catalogue_covers_every_bias_class() -> None:
    classes = {
        name for name in ab.__all__ if isinstance(getattr(ab, name), type) and issubclass(getattr(ab, name), ab.AttentionBias) and name != "AttentionBias"
    }
    assert classes <= set(CASE_IDS), f"missing cases: {sorted(classes - set(CASE_IDS))}"


@pytest.mark.parametrize("layout", ["4d", "5d-gqa"])
@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_forward_matches_formula(c: Case, layout: str) -> None:
    q, k, v, bias, _ = build(c, layout, torch.float64)
    out, lse = _forward(q, k, v, bias)
    ref_out, ref_lse = reference(q, k, v, bias)
    assert_close(out, ref_out, TOL64, "out")
    assert_close(lse, ref_lse, TOL64, "lse")


@pytest.mark.parametrize("layout", ["4d", "5d-gqa"])
@pytest.mark.parametrize("c", CASES, ids=CASE_IDS)
def test_backward_matches_autograd(c: Case, layout: str) -> None:
    _check_grads(c, layout)


@pytest.mark.parametrize("scale", [None, 0.37])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["tensor", "BlockDiagonalCausalMask", "PagedBlockDiagonalCausalWithOffsetGappyKeysMask"])
def test_layouts_and_scale(name: str, layout: str, scale: Optional[float]) -> None:
    c = case(name)
    q, k, v, bias, _ = build(c, layout, torch.float64)
    out, lse = _forward(q, k, v, bias, scale=scale)
    ref_out, ref_lse = reference(q, k, v, bias, scale)
    assert_close(out, ref_out, TOL64, "out")
    assert_close(lse, ref_lse, TOL64, "lse")
    _check_grads(c, layout, scale=scale)


def test_value_dim_equal_to_key_dim() -> None:
    q, k, v, bias, _ = build(case("LowerTriangularMask"), "4d", torch.float64, kv_dim=8)
    out, _ = _forward(q, k, v, bias)
    assert_close(out, reference(q, k, v, bias)[0], TOL64, "out")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_computed_in_float64(dtype: torch.dtype) -> None:
    """With a float64 output the only rounding left is the inputs'."""
    c = case("LowerTriangularMaskWithTensorBias")
    q, k, v, bias, _ = build(c, "4d", dtype)
    out, lse = _forward(q, k, v, bias, output_dtype=torch.float64)
    ref_out, ref_lse = reference(q, k, v, bias)
    assert out.dtype == torch.float64 and lse.dtype == torch.float32
    assert_close(out, ref_out, TOL64, "out")
    assert_close(lse, ref_lse, 1e-5, "lse")
    rounded, _ = _forward(q, k, v, bias)
    assert rounded.dtype == dtype
    assert torch.equal(rounded, ref_out.to(dtype))


def _fully_masked_bias() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    t = torch.randn(2, 1, 11, 14, generator=gen, dtype=torch.float64)
    t[:, :, 4] = -math.inf
    t[1, :, 7] = -math.inf
    return t


@pytest.mark.parametrize(
    "bias_fn",
    [
        pytest.param(_fully_masked_bias, id="tensor-rows-of-inf"),
        pytest.param(ab.LowerTriangularFromBottomRightMask, id="bottom-right-Mq>Mk"),
    ],
)
def test_fully_masked_rows(bias_fn: object) -> None:
    gen = torch.Generator().manual_seed(0)
    mq, mk = (11, 14) if bias_fn is _fully_masked_bias else (14, 9)
    q = torch.randn(2, mq, 3, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, mk, 3, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, mk, 3, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = bias_fn()  # type: ignore[operator]  # a bias factory
    inp = inputs(q, k, v, bias)
    fw = ExactFwOp.apply(inp, needs_lse=True, dropout_seed=0)
    assert fw.lse is not None
    dead = torch.isneginf(fw.lse)  # [B, G, H, Mq]
    assert dead.any() and not dead.all()
    out5 = fw.out.permute(0, 2, 3, 1, 4)
    assert not fw.out.isnan().any() and (out5[dead] == 0).all()
    glse = torch.randn(fw.lse.shape, dtype=torch.float64, generator=gen)
    grads = ExactBwOp.apply(inp, torch.randn(fw.out.shape, dtype=torch.float64, generator=gen), fw.out, fw.lse, dropout_seed=0, grad_lse=glse)
    for g in grads[:3]:
        assert not g.isnan().any()
    assert (grads.dq.permute(0, 2, 3, 1, 4)[dead] == 0).all()
    ref_out, ref_lse = reference(q, k, v, bias)
    assert_close(inp.from5(fw.out), ref_out, TOL64, "out")
    assert_close(fw.lse, ref_lse, TOL64, "lse")


@pytest.mark.parametrize("name", ["none", "tensor", "LowerTriangularMask", "BlockDiagonalCausalWithOffsetPaddedKeysMask"])
@pytest.mark.parametrize("layout", ["4d", "5d-gqa"])
def test_dropout(name: str, layout: str) -> None:
    c, p, seed = case(name), 0.3, 1234
    q, k, v, bias, _ = build(c, layout, torch.float64)
    inp = inputs(q, k, v, bias, p=p)
    b, _, g, h, _ = inp.shape5
    keep = dropout_keep_mask(seed, (b, g, h, inp.num_queries, inp.num_keys), p)
    assert 0.5 < keep.double().mean() < 0.9
    out, lse = _forward(q, k, v, bias, seed=seed, p=p)
    ref_out, ref_lse = reference(q, k, v, bias, keep=keep, p=p)
    assert_close(out, ref_out, TOL64, "out")
    assert_close(lse, ref_lse, TOL64, "lse (before dropout)")
    assert not torch.allclose(out, reference(q, k, v, bias)[0])
    _check_grads(c, layout, p=p, seed=seed)
