"""The public functions end to end on the default (reference) backends: layouts, autograd, variants."""

from __future__ import annotations

import pytest
import torch

import attncore
from attncore import attn_bias as ab
from reference_math import attention

torch.manual_seed(0)


def rnd(*shape: int, dtype: torch.dtype = torch.float64, grad: bool = False) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (a.double() - b.double()).abs().max().item() <= tol


@pytest.mark.parametrize("shape", [(2, 9, 16), (2, 9, 3, 16), (2, 9, 2, 3, 16)], ids=["3-D", "4-D", "5-D"])
def test_layouts_forward_and_backward(shape: tuple[int, ...]) -> None:
    q = rnd(*shape, grad=True)
    k = rnd(shape[0], 13, *shape[2:], grad=True)
    v = rnd(shape[0], 13, *shape[2:-1], 24, grad=True)
    out = attncore.memory_efficient_attention(q, k, v, ab.LowerTriangularFromBottomRightMask())
    ref, _ = attention(q, k, v, ab.LowerTriangularFromBottomRightMask())
    assert out.shape == (*shape[:-1], 24)
    close(out, ref)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(got, want, strict=False):
        close(a, b)


def test_gqa_expanded_keys_are_not_copied_and_grads_flow() -> None:
    b, m, g, h, kd = 2, 10, 2, 4, 16
    q = rnd(b, m, g, h, kd, grad=True)
    k_small = rnd(b, m, g, 1, kd, grad=True)
    v_small = rnd(b, m, g, 1, kd, grad=True)
    k, v = k_small.expand(b, m, g, h, kd), v_small.expand(b, m, g, h, kd)
    assert k.stride(3) == 0
    exp = attncore.dispatch.explain(q, k, v)
    assert exp.inputs["shared kv heads (stride 0)"] is True
    out = attncore.memory_efficient_attention(q, k, v, ab.LowerTriangularMask())
    ref, _ = attention(q, k, v, ab.LowerTriangularMask())
    close(out, ref)
    gk, gv = torch.autograd.grad(out.sum(), (k_small, v_small))
    rk, rv = torch.autograd.grad(ref.sum(), (k_small, v_small))
    close(gk, rk)
    close(gv, rv)


def test_non_contiguous_inputs_custom_scale_and_output_dtype() -> None:
    qkv = rnd(2, 11, 3, 4, 16, dtype=torch.float32)
    q, k, v = qkv.unbind(2)  # strided views, last dim contiguous
    assert not q.is_contiguous()
    out = attncore.memory_efficient_attention(q, k, v, scale=0.3, output_dtype=torch.float64)
    ref, _ = attention(q, k, v, scale=0.3)
    assert out.dtype == torch.float64
    close(out, ref, 1e-5)


def test_fully_masked_rows_give_zero_output_and_minus_inf_lse() -> None:
    q, k, v = rnd(1, 6, 2, 8, grad=True), rnd(1, 3, 2, 8, grad=True), rnd(1, 3, 2, 8, grad=True)
    bias = ab.LowerTriangularFromBottomRightMask()  # the first 3 queries see no key
    out, lse = attncore.memory_efficient_attention_partial(q, k, v, bias)
    assert torch.equal(out[:, :3], torch.zeros_like(out[:, :3]))
    assert torch.isneginf(lse[..., :3]).all() and torch.isfinite(lse[..., 3:]).all()
    torch.autograd.backward(out.sum())
    assert q.grad is not None and torch.isfinite(q.grad).all()
    assert torch.equal(q.grad[:, :3], torch.zeros_like(q.grad[:, :3]))


def test_partial_and_merge_equal_full_attention_with_gradients() -> None:
    q = rnd(2, 7, 3, 16, grad=True)
    k, v = rnd(2, 20, 3, 16, grad=True), rnd(2, 20, 3, 16, grad=True)
    o1, l1 = attncore.memory_efficient_attention_partial(q, k[:, :12], v[:, :12])
    o2, l2 = attncore.memory_efficient_attention_partial(q, k[:, 12:], v[:, 12:])
    out, lse = attncore.merge_attentions([o1, o2], [l1, l2])
    ref, ref_lse = attention(q, k, v)
    close(out, ref)
    assert lse is not None
    close(lse, ref_lse.squeeze(1))
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum() + lse.sum(), (q, k, v))
    want = torch.autograd.grad((ref * g).sum() + ref_lse.sum(), (q, k, v))
    for a, b in zip(got, want, strict=False):
        close(a, b, 1e-9)


def test_standalone_forward_and_backward() -> None:
    q, k, v = rnd(2, 9, 2, 16), rnd(2, 9, 2, 16), rnd(2, 9, 2, 16)
    bias = ab.LowerTriangularMask()
    out, lse = attncore.memory_efficient_attention_forward_requires_grad(q, k, v, bias)
    close(attncore.memory_efficient_attention_forward(q, k, v, bias), out)
    grad = torch.randn_like(out)
    dq, dk, dv = attncore.memory_efficient_attention_backward(grad, out, lse, q, k, v, bias)
    qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
    ref, _ = attention(qr, kr, vr, bias)
    for a, b in zip((dq, dk, dv), torch.autograd.grad(ref, (qr, kr, vr), grad), strict=False):
        close(a, b)
    with pytest.raises(ValueError, match=r"^lse: expected shape \[2, 2, 9\]"):
        attncore.memory_efficient_attention_backward(grad, out, lse[:, :1], q, k, v, bias)
    with pytest.raises(ValueError, match=r"^p: "):
        attncore.memory_efficient_attention_forward_requires_grad(q, k, v, p=0.1)


def test_dropout_is_reproducible_and_backward_uses_the_same_mask() -> None:
    q, k, v = rnd(1, 16, 2, 8, grad=True), rnd(1, 16, 2, 8, grad=True), rnd(1, 16, 2, 8, grad=True)
    torch.manual_seed(123)
    a = attncore.memory_efficient_attention(q, k, v, p=0.3)
    torch.manual_seed(123)
    b = attncore.memory_efficient_attention(q, k, v, p=0.3)
    c = attncore.memory_efficient_attention(q, k, v, p=0.3)
    close(a, b, 0.0)
    assert (a - c).abs().max().item() > 1e-3
    assert (a - attncore.memory_efficient_attention(q, k, v)).abs().max().item() > 1e-3
    # gradient of the dropped-out attention equals finite differences of the same-seed forward
    torch.manual_seed(5)
    out = attncore.memory_efficient_attention(q, k, v, p=0.3)
    (gq,) = torch.autograd.grad(out.sum(), (q,))
    eps = 1e-6
    dq = torch.zeros_like(q)
    dq[0, 3, 1, 2] = eps
    torch.manual_seed(5)
    plus = attncore.memory_efficient_attention(q.detach() + dq, k.detach(), v.detach(), p=0.3).sum()
    torch.manual_seed(5)
    minus = attncore.memory_efficient_attention(q.detach() - dq, k.detach(), v.detach(), p=0.3).sum()
    assert abs((plus - minus).item() / (2 * eps) - gq[0, 3, 1, 2].item()) < 1e-6


def test_block_diagonal_packing_round_trip_matches_per_sequence_attention() -> None:
    xs = [rnd(1, n, 2, 8) for n in (3, 6, 2)]
    bias, packed = ab.BlockDiagonalCausalMask.from_tensor_list(xs)
    out = attncore.memory_efficient_attention(packed, packed, packed, bias)
    for x, part in zip(xs, bias.split(out), strict=False):
        ref, _ = attention(x, x, x, ab.LowerTriangularMask())
        close(part, ref)


def test_eager_calls_outside_autograd_build_no_graph() -> None:
    q = rnd(1, 4, 1, 8, grad=True)
    with torch.no_grad():
        out = attncore.memory_efficient_attention(q, q, q)
    assert out.grad_fn is None
