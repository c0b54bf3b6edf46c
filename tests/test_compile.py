"""torch.compile(fullgraph=True) over attncore calls: no graph break, same numbers, forward and backward."""

from __future__ import annotations

import pytest
import torch

import attncore
from attncore import _compile
from attncore import attn_bias as ab
from attncore._compile import decode_geometry, encode_geometry

pytestmark = pytest.mark.skipif(not _compile.REGISTERED, reason=f"no compile support on this torch: {_compile.UNAVAILABLE_REASON}")


class Attn(torch.nn.Module):
    def __init__(self, heads: int = 2, dim: int = 32) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor, alibi: torch.Tensor) -> torch.Tensor:
        b, m, d = x.shape
        q, k, v = self.qkv(x).reshape(b, m, 3, self.heads, d // self.heads).unbind(2)
        causal = attncore.memory_efficient_attention(q, k, v, ab.LowerTriangularMask())
        local = attncore.memory_efficient_attention(q, k, v, ab.LocalAttentionFromBottomRightMask(2, 1), scale=0.2)
        biased = attncore.memory_efficient_attention(q, k, v, alibi)
        packed = attncore.memory_efficient_attention(
            q.reshape(1, b * m, self.heads, -1),
            k.reshape(1, b * m, self.heads, -1),
            v.reshape(1, b * m, self.heads, -1),
            ab.BlockDiagonalCausalMask.from_seqlens([m] * b),
        ).reshape(b, m, self.heads, -1)
        out, lse = attncore.memory_efficient_attention_partial(q, k, v)
        return (causal + local + biased + packed + out).sum() + lse.sum()


def test_fullgraph_forward_and_backward_match_eager() -> None:
    torch.manual_seed(0)
    model = Attn()
    x = torch.randn(2, 12, 32)
    alibi = torch.randn(1, 2, 12, 12, requires_grad=True)
    eager = model(x, alibi)
    eager.backward()
    want = [p.grad.clone() for p in model.parameters() if p.grad is not None] + [alibi.grad.clone() if alibi.grad is not None else alibi]
    model.zero_grad()
    alibi.grad = None
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: any graph break is an error
    got_loss = compiled(x, alibi)
    got_loss.backward()
    got = [p.grad for p in model.parameters() if p.grad is not None] + [alibi.grad]
    assert torch.allclose(got_loss, eager, atol=1e-5)
    for a, b in zip(got, want, strict=False):
        assert a is not None and torch.allclose(a, b, atol=1e-5)


def test_eager_calls_do_not_touch_the_custom_op(monkeypatch: pytest.MonkeyPatch) -> None:
    from attncore import api

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("eager call went through the custom op")

    monkeypatch.setattr(api, "compiled_attention", boom)
    q = torch.randn(1, 4, 1, 8)
    attncore.memory_efficient_attention(q, q, q)


@pytest.mark.parametrize(
    "bias",
    [
        ab.LowerTriangularMask(),
        ab.LocalAttentionFromBottomRightMask(3, 0),
        ab.BlockDiagonalMask.from_seqlens([2, 3], [4, 4]).make_local_attention_from_bottomright(2),
        ab.PagedBlockDiagonalGappyKeysMask.from_seqlens([1, 2], [1, 0], [3, 2], torch.tensor([[1, 0], [2, 3]]), 2),
    ],
    ids=lambda b: type(b).__name__,
)
def test_geometry_encoding_round_trips(bias: ab.AttentionBias) -> None:
    geo = bias.geometry()
    ints, tensor, tables = encode_geometry(geo)
    back = decode_geometry(ints, tensor, tables)
    assert back is not None
    assert back.band == geo.band and back.blocks == geo.blocks
    assert (back.paging is None) == (geo.paging is None)


def test_compiled_calls_honour_both_halves_of_an_op_tuple(isolated_registry: None) -> None:
    """op=(fw, bw): the compiled backward runs the tuple's backward, not the one named like the forward."""
    from attncore import registry
    from fakeops import fake_bw, fake_fw

    registry.restore({})
    fw, bw_a, bw_b = fake_fw("a.fw", 20), fake_bw("a.bw", 20), fake_bw("b.bw", 10)
    for op in (fw, bw_a, bw_b):
        registry.register(op)

    def f(q: torch.Tensor) -> torch.Tensor:
        return attncore.memory_efficient_attention(q, q, q, op=(fw, bw_b))

    q = torch.randn(1, 8, 2, 16, requires_grad=True)
    torch.autograd.backward(torch.compile(f, backend="aot_eager", fullgraph=True)(q).sum())
    assert q.grad is not None and q.grad.flatten()[0].item() == 30  # b.bw's 10, for q, k and v (the same tensor)


def test_compiled_backward_keeps_the_policy_of_its_forward(isolated_registry: None) -> None:
    """The backward runs after the caller's `with dispatch.policy(...)` block has ended (as autograd's
    device threads do): it must still choose under the forward's policy."""
    from attncore import registry
    from fakeops import fake_bw, fake_fw

    registry.restore({})
    fw, bw_a, bw_b = fake_fw("a.fw", 20), fake_bw("a.bw", 20), fake_bw("b.bw", 10)
    for op in (fw, bw_a, bw_b):
        registry.register(op)

    def f(q: torch.Tensor) -> torch.Tensor:
        return attncore.memory_efficient_attention(q, q, q)

    q = torch.randn(1, 8, 2, 16, requires_grad=True)
    with attncore.dispatch.policy(order=["a.fw", "b.bw"]):  # a.bw, the higher priority, is left out
        loss = torch.compile(f, backend="aot_eager", fullgraph=True)(q).sum()
    torch.autograd.backward(loss)
    assert q.grad is not None and q.grad.flatten()[0].item() == 30  # b.bw's 10, for q, k and v


def test_policy_tokens_round_trip() -> None:
    from attncore import policy

    with attncore.dispatch.policy(order=["reference"]) as pol:
        token = policy.token_of(pol)
    assert policy.token_of(pol) == token and policy.from_token(token) == pol  # equal policies share a token
    with policy.using(pol):
        assert policy.current_policy() is pol
    with pytest.raises(ValueError, match="token: expected a policy token"):
        policy.from_token(10**6)
