"""attncore: exact, memory-efficient attention for PyTorch with pluggable backends.

``memory_efficient_attention(q, k, v, attn_bias)`` runs on the fastest installed backend that
supports the call; ``attncore.dispatch.explain(q, k, v, attn_bias)`` says which and why.
Backends are separate distributions found through the ``attncore.plugins`` entry points; nothing is
loaded or activated by ``import attncore`` itself.
"""

from __future__ import annotations

from attncore import attn_bias, dispatch, registry
from attncore.api import (
    memory_efficient_attention,
    memory_efficient_attention_backward,
    memory_efficient_attention_forward,
    memory_efficient_attention_forward_requires_grad,
    memory_efficient_attention_partial,
)
from attncore.attn_bias import (
    AttentionBias,
    BlockDiagonalCausalFromBottomRightMask,
    BlockDiagonalCausalLocalAttentionFromBottomRightMask,
    BlockDiagonalCausalLocalAttentionMask,
    BlockDiagonalCausalMask,
    BlockDiagonalCausalWithOffsetGappyKeysMask,
    BlockDiagonalCausalWithOffsetPaddedKeysMask,
    BlockDiagonalGappyKeysMask,
    BlockDiagonalMask,
    BlockDiagonalPaddedKeysMask,
    LocalAttentionFromBottomRightMask,
    LowerTriangularFromBottomRightLocalAttentionMask,
    LowerTriangularFromBottomRightMask,
    LowerTriangularMask,
    LowerTriangularMaskWithTensorBias,
    PagedBlockDiagonalCausalWithOffsetGappyKeysMask,
    PagedBlockDiagonalCausalWithOffsetPaddedKeysMask,
    PagedBlockDiagonalGappyKeysMask,
    PagedBlockDiagonalPaddedKeysMask,
)
from attncore.capabilities import BiasSupport, Capabilities
from attncore.errors import NotSupportedError
from attncore.hookspecs import hookimpl
from attncore.inputs import Inputs
from attncore.merge import merge_attentions
from attncore.ops import AttentionBwOpBase, AttentionFwOpBase, AttentionOpBase, ForwardResult, Gradients
from attncore.plugin_info import PluginInfo
from attncore.reasons import Reason

__version__ = "0.1.0"

__all__ = [
    "AttentionBias",
    "AttentionBwOpBase",
    "AttentionFwOpBase",
    "AttentionOpBase",
    "BiasSupport",
    "BlockDiagonalCausalFromBottomRightMask",
    "BlockDiagonalCausalLocalAttentionFromBottomRightMask",
    "BlockDiagonalCausalLocalAttentionMask",
    "BlockDiagonalCausalMask",
    "BlockDiagonalCausalWithOffsetGappyKeysMask",
    "BlockDiagonalCausalWithOffsetPaddedKeysMask",
    "BlockDiagonalGappyKeysMask",
    "BlockDiagonalMask",
    "BlockDiagonalPaddedKeysMask",
    "Capabilities",
    "ForwardResult",
    "Gradients",
    "Inputs",
    "LocalAttentionFromBottomRightMask",
    "LowerTriangularFromBottomRightLocalAttentionMask",
    "LowerTriangularFromBottomRightMask",
    "LowerTriangularMask",
    "LowerTriangularMaskWithTensorBias",
    "NotSupportedError",
    "PagedBlockDiagonalCausalWithOffsetGappyKeysMask",
    "PagedBlockDiagonalCausalWithOffsetPaddedKeysMask",
    "PagedBlockDiagonalGappyKeysMask",
    "PagedBlockDiagonalPaddedKeysMask",
    "PluginInfo",
    "Reason",
    "__version__",
    "attn_bias",
    "dispatch",
    "hookimpl",
    "memory_efficient_attention",
    "memory_efficient_attention_backward",
    "memory_efficient_attention_forward",
    "memory_efficient_attention_forward_requires_grad",
    "memory_efficient_attention_partial",
    "merge_attentions",
    "registry",
]
