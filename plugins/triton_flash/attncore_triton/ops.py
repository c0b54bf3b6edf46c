"""The operators: ``triton.flash`` forward and backward.

Both compute exact attention ``softmax(scale * Q K^T + bias) V`` (dropout on the probabilities) with
flash-attention tiling: the ``[Mq, Mk]`` scores never exist in memory, masks are evaluated inside the
kernels from the bias geometry (band, block layout, paging) and tiles that cannot hold an allowed pair
are skipped. See :mod:`attncore_triton._kernels` for the kernels and :mod:`attncore_triton._launch`
for the host side.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch

from attncore.capabilities import ALL_BANDS, BiasSupport, Capabilities
from attncore.geometry import Anchor, Layout
from attncore.inputs import Inputs
from attncore.ops import AttentionBwOpBase, AttentionFwOpBase, ForwardResult, Gradients
from attncore.reasons import Reason

from . import _launch

__all__ = ["CAPABILITIES", "DROPOUT_RNG", "TritonFlashBwOp", "TritonFlashFwOp"]

#: Dropout masks come from ``tl.rand`` (Philox) on the flat pair index; only these kernels regenerate them.
DROPOUT_RNG = "triton-philox"

CAPABILITIES = Capabilities(
    devices=frozenset({"cuda"}),
    dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}),
    min_head_dim=1,
    max_head_dim=256,
    different_value_dim=True,
    ndims=frozenset({3, 4, 5}),
    bias=BiasSupport(
        layouts=frozenset(Layout),
        bands=ALL_BANDS,
        anchors=frozenset(Anchor),
        paged=True,
        tensor=True,
    ),
    dropout=True,
    dropout_rng=DROPOUT_RNG,
    custom_scale=True,
    lse=True,
    tensor_bias_grad=True,
    deterministic=False,  # the backward may add dQ with fp32 atomics (chosen by the autotuner)
    min_compute_capability=(8, 0),
    max_compute_capability=(9, 0),
)


def _extra_reasons(inputs: Inputs) -> list[Reason]:
    bias = inputs.features.bias
    if bias.paged and bias.tensor:
        return [Reason("attn_bias", "paged keys with an additive tensor", "paged keys or a tensor bias, not both")]
    return []


class TritonFlashFwOp(AttentionFwOpBase):
    """Flash-attention forward in Triton: ``out = softmax(scale * Q K^T + bias) V`` and the natural-log LSE.

    One program per (query tile, head, sequence) streams the keys its rows can reach, keeping a running
    maximum and sum in base 2 (the scale is folded into ``log2(e)``); only tiles on a band or block edge
    evaluate a mask. fp16/bf16 use tensor cores (wgmma on Hopper, with TMA tensor descriptors when the
    layout allows); fp32 uses exact (non-tf32) dots. Memory: the output and the LSE only.
    """

    NAME: ClassVar[str] = "triton.flash"
    PRIORITY: ClassVar[int] = 100
    CAPABILITIES: ClassVar[Capabilities] = CAPABILITIES

    @classmethod
    def extra_reasons(cls, inputs: Inputs) -> list[Reason]:
        return _extra_reasons(inputs)

    @classmethod
    def apply(cls, inputs: Inputs, *, needs_lse: bool, dropout_seed: int) -> ForwardResult:
        out, lse = _launch.forward(inputs, needs_lse=needs_lse, dropout_seed=dropout_seed)
        return ForwardResult(out, lse)


class TritonFlashBwOp(AttentionBwOpBase):
    """Flash-attention backward in Triton: ``dQ, dK, dV`` (and ``dbias = dS`` for a tensor bias that needs it).

    ``delta = rowsum(dO * O) - grad_lse`` comes from the dQ kernel, which runs first (or from a preprocess
    kernel when dQ is added atomically); one program per key tile accumulates
    ``dV = (P*Z)^T dO`` and ``dK = scale dS^T Q`` over the query tiles that reach it (recomputing ``P`` from
    the LSE), and ``dQ = scale dS K`` comes either from a second kernel over query tiles or from fp32
    atomic adds in the first (whichever the autotuner measured faster). Dropout masks are regenerated
    from the forward's seed. dK/dV hold every query head's gradient (also for stride-0 shared keys);
    paged keys get their rows summed back onto the physical pages.
    """

    NAME: ClassVar[str] = "triton.flash"
    PRIORITY: ClassVar[int] = 100
    CAPABILITIES: ClassVar[Capabilities] = CAPABILITIES

    @classmethod
    def extra_reasons(cls, inputs: Inputs) -> list[Reason]:
        return _extra_reasons(inputs)

    @classmethod
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
        dq, dk, dv, dbias = _launch.backward(inputs, grad_out, out, lse, dropout_seed=dropout_seed, grad_lse=grad_lse)
        return Gradients(dq, dk, dv, dbias)
