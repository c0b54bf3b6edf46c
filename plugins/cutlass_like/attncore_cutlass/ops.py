"""The operators: ``cutlass.mem_eff`` forward and backward (CUDA C++, built for an arch list).

Memory-efficient exact attention ``softmax(scale * Q K^T + bias) V``: the ``[Mq, Mk]`` scores never
exist in memory; masks are evaluated in the kernels from the bias geometry and tiles that cannot hold
a visible pair are skipped. Where the binary has sm_80+ code for the device, fp16/bf16 run on tensor
cores and fp32 too (3xTF32, fp32 accuracy) where the shared memory allows; everything else (older GPUs,
fp32 backward beyond the shared memory) runs the portable CUDA-core kernels. Whether a binary can
run here at all is decided from its build record (:mod:`attncore_cutlass.negotiation`).
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch

from attncore.capabilities import ALL_BANDS, BiasSupport, Capabilities
from attncore.geometry import Anchor, Layout
from attncore.inputs import Inputs
from attncore.ops import AttentionBwOpBase, AttentionFwOpBase, ForwardResult, Gradients
from attncore.reasons import Reason

from . import _launch, negotiation

__all__ = ["CAPABILITIES", "CutlassBwOp", "CutlassFwOp"]

CAPABILITIES = Capabilities(
    devices=frozenset({"cuda"}),
    dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}),
    min_head_dim=1,
    max_head_dim=256,
    different_value_dim=True,
    ndims=frozenset({3, 4, 5}),
    bias=BiasSupport(layouts=frozenset(Layout), bands=ALL_BANDS, anchors=frozenset(Anchor), paged=False, tensor=True),
    dropout=False,
    custom_scale=True,
    lse=True,
    tensor_bias_grad=True,
    deterministic=True,  # under torch.use_deterministic_algorithms: dK/dV per key tile, dQ per query tile (fp32 adds dQ atomically only outside it)
    min_compute_capability=(6, 0),
)


def _binary_reasons(inputs: Inputs) -> list[Reason]:
    dev = inputs.features.device
    if dev.kind != "cuda" or dev.capability is None:
        return []  # the capability check already rejects other devices
    reasons = negotiation.binary_reasons(negotiation.facts(), negotiation.current(dev.capability), dev.capability)
    failed = negotiation.failure(dev.capability)
    if failed is not None:  # this process tried to build or load the binary and could not
        reasons.append(Reason("binary", f"build or load failed in this process ({failed})", "a binary that builds and loads", negotiation.BUILD_HINT))
    return reasons


class _Cutlass:
    """What both directions share: the name, the priority, the capabilities and the binary's reasons."""

    NAME: ClassVar[str] = "cutlass.mem_eff"
    PRIORITY: ClassVar[int] = 50
    CAPABILITIES: ClassVar[Capabilities] = CAPABILITIES

    @classmethod
    def extra_reasons(cls, inputs: Inputs) -> list[Reason]:
        return _binary_reasons(inputs)


class CutlassFwOp(_Cutlass, AttentionFwOpBase):
    """Memory-efficient forward in CUDA C++: ``out = softmax(scale * Q K^T + bias) V`` and the natural-log LSE.

    One CTA per (query tile, head, sequence) streams the keys its rows can see with an online softmax
    in base 2. On sm_80+ the products run on mma.sync tensor cores: fp16/bf16 directly, fp32 as 3xTF32
    (each operand split into two tf32 parts: fp32 accuracy); older GPUs (and ``portable_kernels()``) run
    CUDA-core kernels. Under a causal or local mask the fp32 CTAs go out longest first over the whole call
    (``ATTNCORE_CUTLASS_FWD_ORDER``). Memory: the output and the LSE only.
    """

    @classmethod
    def apply(cls, inputs: Inputs, *, needs_lse: bool, dropout_seed: int) -> ForwardResult:
        del dropout_seed  # no dropout (see CAPABILITIES)
        out, lse = _launch.forward(inputs, needs_lse=needs_lse)
        return ForwardResult(out, lse)


class CutlassBwOp(_Cutlass, AttentionBwOpBase):
    """Memory-efficient backward in CUDA C++: ``dQ, dK, dV`` (and ``dbias = dS`` when the bias needs it).

    ``P`` is recomputed from the forward's LSE. One kernel per key tile accumulates ``dV = P^T dO`` and
    ``dK = scale dS^T Q`` over the query tiles that see it (and writes ``dS``). fp16/bf16 (and the portable
    kernels) then run a second kernel per query tile for ``dQ = scale dS K``: no atomics, bitwise reproducible.
    fp32 on tensor cores adds ``dQ`` from the key-tile CTAs instead: atomically by default (last bits vary
    run to run), or, under ``torch.use_deterministic_algorithms(True)``, serially into per-CTA slices summed
    in a fixed order (bitwise reproducible); ``_launch.last_backward_dq()`` says which ran.
    """

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
        del dropout_seed
        dq, dk, dv, dbias = _launch.backward(inputs, grad_out, out, lse, grad_lse)
        return Gradients(dq, dk, dv, dbias)
