"""The operator contract: what a backend implements to join the dispatcher.

An operator is a class (never instantiated) with a unique ``NAME``, a ``PRIORITY`` (higher wins when
several support a call), typed :class:`~attncore.capabilities.Capabilities`, and ``apply``. The core
validates inputs, checks capabilities, picks the operator, draws dropout seeds and converts layouts;
operators only compute, on the canonical ``[B, M, G, H, K]`` layout of :class:`~attncore.inputs.Inputs`.

Contract for ``extra_reasons``: it may only depend on ``inputs.features`` and
``inputs.num_queries`` (what the dispatch cache keys on), never on tensor values.
"""

from __future__ import annotations

import abc
from typing import ClassVar, NamedTuple, Optional

import torch

from attncore.capabilities import Capabilities, Direction, check_capabilities
from attncore.inputs import Inputs
from attncore.reasons import Reason

__all__ = ["AttentionBwOpBase", "AttentionFwOpBase", "AttentionOpBase", "ForwardResult", "Gradients"]


class ForwardResult(NamedTuple):
    """``out``: ``[B, Mq, G, H, Kv]`` in ``inputs.out_dtype`` (or already in the caller's layout, which
    saves a view on tiny calls); ``lse``: ``[B, G, H, Mq]`` in ``inputs.lse_dtype`` (``None`` when not
    asked for)."""

    out: torch.Tensor
    lse: Optional[torch.Tensor]


class Gradients(NamedTuple):
    """Gradients in the canonical layout (``dq`` like ``inputs.q5``...); ``dbias`` like ``inputs.bias5``, or
    ``[1, G, H, Mq, Mk]`` already summed over the batch when ``inputs.bias_shared_over_batch`` (so that a
    backend need not materialize B copies of a shared bias's gradient)."""

    dq: torch.Tensor
    dk: torch.Tensor
    dv: torch.Tensor
    dbias: Optional[torch.Tensor] = None


class AttentionOpBase(abc.ABC):
    """Shared by forward and backward operators."""

    NAME: ClassVar[str]
    PRIORITY: ClassVar[int] = 0
    CAPABILITIES: ClassVar[Capabilities]
    DIRECTION: ClassVar[Direction]

    @classmethod
    def not_supported_reasons(cls, inputs: Inputs, relax: frozenset[str] = frozenset()) -> list[Reason]:
        """Every reason this operator cannot run ``inputs``; empty means it can."""
        reasons = check_capabilities(cls.CAPABILITIES, inputs.features, cls.DIRECTION, inputs.num_queries, relax)
        return reasons + cls.extra_reasons(inputs)

    @classmethod
    def extra_reasons(cls, inputs: Inputs) -> list[Reason]:
        """Checks beyond the capability data (runtime availability, build records...)."""
        del inputs
        return []


class AttentionFwOpBase(AttentionOpBase):
    """A forward operator."""

    DIRECTION: ClassVar[Direction] = "forward"

    @classmethod
    @abc.abstractmethod
    def apply(cls, inputs: Inputs, *, needs_lse: bool, dropout_seed: int) -> ForwardResult:
        """Compute attention for ``inputs``; ``dropout_seed`` is meaningful only when ``inputs.p > 0``."""


class AttentionBwOpBase(AttentionOpBase):
    """A backward operator."""

    DIRECTION: ClassVar[Direction] = "backward"

    @classmethod
    @abc.abstractmethod
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
        """Gradients given ``grad_out`` and the forward's ``out`` (``[B, Mq, G, H, Kv]``) and ``lse``
        (``[B, G, H, Mq]``). ``grad_lse`` (same shape as ``lse``) is set when the LSE itself was used."""
