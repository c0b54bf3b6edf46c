"""The numerical oracle: attention with every score materialized, computed in float64.

Clarity over speed: the forward and the backward are the textbook formulas on ``[B, G, H, Mq, Mk]``
tensors, with the backward written out explicitly (not autograd) so the tests can check it against
``torch.autograd``. Runs on any device torch supports (CPU and CUDA are declared).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple, Optional

import torch

from attncore.capabilities import BiasSupport, Capabilities
from attncore.inputs import Inputs
from attncore.ops import AttentionBwOpBase, AttentionFwOpBase, ForwardResult, Gradients

from ._common import Canonical, TileMasks, add_bias_and_mask, prepare, scatter_keys, to_canonical
from .dropout import DROPOUT_RNG, dropout_keep_mask

__all__ = ["ExactBwOp", "ExactFwOp"]

CAPABILITIES = Capabilities(
    devices=frozenset({"cpu", "cuda"}),
    dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64}),
    bias=BiasSupport.everything(),
    dropout=True,
    dropout_rng=DROPOUT_RNG,
    custom_scale=True,
    lse=True,
    tensor_bias_grad=True,
)


class _Exact(NamedTuple):
    """The float64 forward of one call, kept whole for the backward."""

    c: Canonical  # k and v have all H heads (stride-0 views when shared)
    prob: torch.Tensor  # softmax(S), [B, G, H, Mq, Mk]; 0 on fully masked rows
    keep: Optional[torch.Tensor]  # dropout multiplier Z (0 or 1 / (1 - p)), [B, G, H, Mq, Mk]
    out: torch.Tensor  # [B, G, H, Mq, Kv]
    lse: torch.Tensor  # [B, G, H, Mq]; -inf on fully masked rows


def _forward(inputs: Inputs, dropout_seed: int) -> _Exact:
    c = prepare(inputs, torch.float64, q_scale=1.0, fold_heads=False)
    scores = torch.matmul(c.q, c.k.transpose(-1, -2)).mul_(inputs.scale)  # S = scale * Q K^T
    masks = TileMasks(c.geometry, c.num_queries, c.num_keys, torch.float64, c.q.device)
    add_bias_and_mask(scores, c.bias, masks.additive(0, c.num_queries, 0, c.num_keys), 1.0)  # S += bias, -inf where masked
    lse = torch.logsumexp(scores, dim=-1)
    finite_lse = lse.masked_fill(lse == -math.inf, 0.0)
    prob = torch.exp(scores - finite_lse.unsqueeze(-1))  # exp(-inf - 0) = 0 on fully masked rows
    keep: Optional[torch.Tensor] = None
    attn = prob
    if inputs.p > 0:
        shape5 = (c.batch, c.groups, c.heads, c.num_queries, c.num_keys)
        keep = dropout_keep_mask(dropout_seed, shape5, inputs.p, device=c.q.device).to(torch.float64) / (1.0 - inputs.p)
        attn = prob * keep
    return _Exact(c, prob, keep, torch.matmul(attn, c.v), lse)


class ExactFwOp(AttentionFwOpBase):
    """Reference attention: ``softmax(scale * Q K^T + bias)`` (dropout on the probabilities) ``@ V``,
    in float64 whatever the input dtype, rounded once to the output dtype.

    Memory: O(B * G * H * Mq * Mk) float64 (the full scores and probabilities), plus float64 copies of
    the inputs. Use it as an oracle on small shapes, never for speed.
    """

    NAME: ClassVar[str] = "reference.exact"
    PRIORITY: ClassVar[int] = 0
    CAPABILITIES: ClassVar[Capabilities] = CAPABILITIES

    @classmethod
    @torch.no_grad()
    def apply(cls, inputs: Inputs, *, needs_lse: bool, dropout_seed: int) -> ForwardResult:
        e = _forward(inputs, dropout_seed)
        return ForwardResult(to_canonical(e.out, inputs.out_dtype), e.lse.to(inputs.lse_dtype) if needs_lse else None)


class ExactBwOp(AttentionBwOpBase):
    """Reference gradients by the explicit formulas, in float64 over the full score matrix.

    ``dV = (P*Z)^T dO``, ``dP = (dO V^T) * Z``, ``dS = P * (dP - rowsum(dO * O) + grad_lse)``,
    ``dQ = scale dS K``, ``dK = scale dS^T Q``, ``dbias = dS``. As an oracle it recomputes ``P`` and ``O``
    in float64 instead of trusting the rounded ``out`` and ``lse`` it is given (their shapes are all it
    uses). ``dk``/``dv`` hold each query head's gradient of its (possibly stride-0 shared) key/value
    view; paged keys get their logical rows summed back onto physical rows. Memory as :class:`ExactFwOp`.
    """

    NAME: ClassVar[str] = "reference.exact"
    PRIORITY: ClassVar[int] = 0
    CAPABILITIES: ClassVar[Capabilities] = CAPABILITIES

    @classmethod
    @torch.no_grad()
    def apply(
        cls,
        inputs: Inputs,
        grad_out: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        *,
        dropout_seed: int,
        grad_lse: Optional[torch.Tensor] = None,
    ) -> Gradients:
        del out, lse  # recomputed in float64 (see the class docstring)
        e = _forward(inputs, dropout_seed)
        c = e.c
        d_out = grad_out.permute(0, 2, 3, 1, 4).to(torch.float64)  # [B, G, H, Mq, Kv]
        attn = e.prob if e.keep is None else e.prob * e.keep
        dv = torch.matmul(attn.transpose(-1, -2), d_out)
        dp = torch.matmul(d_out, c.v.transpose(-1, -2))
        if e.keep is not None:
            dp = dp * e.keep
        delta = (d_out * e.out).sum(-1, keepdim=True)
        if grad_lse is not None:
            delta = delta - grad_lse.to(torch.float64).unsqueeze(-1)
        ds = e.prob * (dp - delta)
        dq = torch.matmul(ds, c.k) * inputs.scale
        dk = torch.matmul(ds.transpose(-1, -2), c.q) * inputs.scale
        dbias: Optional[torch.Tensor] = None
        if inputs.features.bias_requires_grad and c.bias is not None:
            dbias = scatter_keys(ds, 4, c.rows, c.num_physical_keys).to(c.bias.dtype)
        return Gradients(
            dq=to_canonical(dq, inputs.query.dtype),
            dk=to_canonical(scatter_keys(dk, 3, c.rows, c.num_physical_keys), inputs.key.dtype),
            dv=to_canonical(scatter_keys(dv, 3, c.rows, c.num_physical_keys), inputs.value.dtype),
            dbias=dbias,
        )
