"""Fake operators for dispatch tests: they fill outputs with their priority so tests see who ran."""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch

import attncore
from attncore.capabilities import BiasSupport, Capabilities
from attncore.inputs import Inputs
from attncore.ops import AttentionBwOpBase, AttentionFwOpBase, ForwardResult, Gradients

ALL_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


def fake_fw(name: str, priority: int = 0, calls: Optional[list[str]] = None, **caps: Any) -> type[AttentionFwOpBase]:
    """A forward op that fills its output with ``priority`` (so tests can tell who ran)."""
    capabilities = Capabilities(**{"devices": frozenset({"cpu"}), "dtypes": ALL_FLOATS, **caps})

    class FakeFw(AttentionFwOpBase):
        NAME: ClassVar[str] = name
        PRIORITY: ClassVar[int] = priority
        CAPABILITIES: ClassVar[Capabilities] = capabilities

        @classmethod
        def apply(cls, inputs: Inputs, *, needs_lse: bool, dropout_seed: int) -> ForwardResult:
            b, mq, g, h, _ = inputs.shape5
            out = torch.full((b, mq, g, h, inputs.value.shape[-1]), float(priority), dtype=inputs.out_dtype)
            lse = torch.zeros((b, g, h, mq), dtype=inputs.lse_dtype) if needs_lse else None
            return ForwardResult(out, lse)

        @classmethod
        def extra_reasons(cls, inputs: Inputs) -> list[attncore.Reason]:
            if calls is not None:
                calls.append(name)
            return []

    FakeFw.__name__ = f"Fw_{name.replace('.', '_')}"
    return FakeFw


def fake_bw(name: str, priority: int = 0, **caps: Any) -> type[AttentionBwOpBase]:
    """A backward op returning gradients filled with ``priority``."""
    capabilities = Capabilities(**{"devices": frozenset({"cpu"}), "dtypes": ALL_FLOATS, **caps})

    class FakeBw(AttentionBwOpBase):
        NAME: ClassVar[str] = name
        PRIORITY: ClassVar[int] = priority
        CAPABILITIES: ClassVar[Capabilities] = capabilities

        @classmethod
        def apply(
            cls, inputs: Inputs, grad_out: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, *, dropout_seed: int, grad_lse: Optional[torch.Tensor] = None
        ) -> Gradients:
            fill = float(priority)
            return Gradients(torch.full_like(inputs.q5, fill), torch.full_like(inputs.k5, fill), torch.full_like(inputs.v5, fill))

    FakeBw.__name__ = f"Bw_{name.replace('.', '_')}"
    return FakeBw


EVERY_BIAS = BiasSupport.everything()
