"""Regressions found in review: each test reproduces a bug that once passed silently."""

from __future__ import annotations

import pytest
import torch

import attncore
from attncore import attn_bias as ab
from attncore import dispatch, registry
from attncore.inputs import Inputs
from fakeops import fake_bw, fake_fw
from reference_math import attention


def test_reload_never_revives_decisions_about_removed_operators(isolated_registry: None) -> None:
    reg = registry.get_registry()
    registry.register(fake_fw("ghost.fw", 10**6))
    q = torch.randn(1, 4, 1, 8)
    assert dispatch.select(Inputs.create(q, q, q), "forward").chosen is not None
    assert dispatch.select(Inputs.create(q, q, q), "forward").chosen.NAME == "ghost.fw"  # type: ignore[union-attr]  # checked above
    reg.reload()
    chosen = dispatch.select(Inputs.create(q, q, q), "forward").chosen
    assert chosen is not None and chosen.NAME != "ghost.fw"


def test_inputs_modified_in_place_after_forward_are_detected() -> None:
    q0 = torch.randn(1, 6, 2, 8, requires_grad=True)
    k, v = torch.randn(1, 6, 2, 8), torch.randn(1, 6, 2, 8)
    q = q0 * 1
    out = attncore.memory_efficient_attention(q, k, v)
    q.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(out.sum(), q0)


def test_page_tables_updated_in_place_are_revalidated() -> None:
    tables = torch.tensor([[0, 1], [2, 3]])
    mask = ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([1, 1], [3, 4], tables, 2)
    q, kv = torch.randn(1, 2, 1, 8), torch.randn(1, 8, 1, 8)
    attncore.memory_efficient_attention(q, kv, kv, mask)
    tables[1, 1] = 7  # a decode loop moving a sequence to a page beyond the pool
    with pytest.raises(ValueError, match=r"^attn_bias: .* addresses pages up to key row 16"):
        attncore.memory_efficient_attention(q, kv, kv, mask)


def test_forcing_a_forward_only_operator_by_name_leaves_the_backward_free() -> None:
    q = torch.randn(1, 4, 2, 8, requires_grad=True)
    out = attncore.memory_efficient_attention(q, q, q, op="reference.decode")
    (g,) = torch.autograd.grad(out.sum(), (q,))
    assert torch.isfinite(g).all()
    exp = dispatch.explain(q, q, q, op="reference.decode")
    assert exp.backward is not None and exp.backward.chosen is not None


def test_standalone_backward_checks_dtype_and_device() -> None:
    q = torch.randn(1, 5, 2, 8, dtype=torch.float64)
    out, lse = attncore.memory_efficient_attention_forward_requires_grad(q, q, q)
    with pytest.raises(ValueError, match=r"^lse: expected dtype torch.float64"):
        attncore.memory_efficient_attention_backward(out, out, lse.float(), q, q, q)
    with pytest.raises(ValueError, match=r"^grad: expected a floating-point tensor"):
        attncore.memory_efficient_attention_backward(out.long(), out, lse, q, q, q)
    with pytest.raises(ValueError, match=r"^output: expected device cpu"):
        attncore.memory_efficient_attention_backward(out, out.to("meta"), lse, q, q, q)


def test_three_d_inputs_take_a_one_head_bias_and_its_gradient() -> None:
    q, k, v = (torch.randn(2, 5, 8, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    out = attncore.memory_efficient_attention(q, k, v, bias)
    ref, _ = attention(q, k, v, bias.squeeze(1))
    assert (out - ref).abs().max().item() < 1e-12
    (g,) = torch.autograd.grad(out.sum(), (bias,))
    (gr,) = torch.autograd.grad(ref.sum(), (bias,))
    assert g.shape == bias.shape and (g - gr).abs().max().item() < 1e-12


def test_no_grad_mode_does_not_ask_for_training_capabilities() -> None:
    q = torch.randn(1, 4, 1, 8, requires_grad=True)
    with torch.no_grad():
        assert Inputs.create(q, q, q).features.requires_grad is False
    assert Inputs.create(q, q, q).features.requires_grad is True


def test_backward_keeps_the_policy_of_its_forward(isolated_registry: None) -> None:
    """Autograd runs backward on its own threads (CUDA) or after the caller's ``with`` block: the
    backward operator must be the one chosen under the forward's policy, not the default order."""
    registry.restore({})
    registry.register(fake_fw("a.fw", 20))
    registry.register(fake_bw("a.bw", 20))
    registry.register(fake_bw("b.bw", 10))
    q, k, v = (torch.randn(1, 8, 2, 16, requires_grad=True) for _ in range(3))
    with attncore.dispatch.policy(order=["a.fw", "b.bw"]):
        out = attncore.memory_efficient_attention(q, k, v)
    torch.autograd.backward(out.sum())  # outside the block, as a training loop would
    assert q.grad is not None and q.grad.flatten()[0].item() == 10
    # where no backward fits at forward time, the forward still runs; the backward explains the failure
    registry.restore({})
    registry.register(fake_fw("a.fw", 20))
    q2 = torch.randn(1, 8, 2, 16, requires_grad=True)
    out2 = attncore.memory_efficient_attention(q2, q2, q2)
    with pytest.raises(attncore.NotSupportedError, match="backward"):
        torch.autograd.backward(out2.sum())
    # ... also when one exists but the forward's policy excluded it: the backward does not quietly use it
    registry.register(fake_bw("b.bw", 10))
    q3 = torch.randn(1, 8, 2, 16, requires_grad=True)
    with attncore.dispatch.policy(order=["a.fw"]):
        out3 = attncore.memory_efficient_attention(q3, q3, q3)
    with pytest.raises(attncore.NotSupportedError, match=r"b\.bw"):
        torch.autograd.backward(out3.sum())
