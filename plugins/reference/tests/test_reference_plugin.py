"""The plugin hooks and the operators' declared capabilities."""

from __future__ import annotations

import torch

from attncore.ops import AttentionBwOpBase, AttentionFwOpBase
from attncore.plugin_info import PluginInfo
from attncore_reference import DROPOUT_RNG, ChunkedBwOp, ChunkedFwOp, DecodeFwOp, ExactBwOp, ExactFwOp, plugin
from attncore_reference.testing import inputs, make_qkv


def test_plugin_info() -> None:
    info = plugin.attncore_plugin_info()
    assert isinstance(info, PluginInfo)
    assert info.version and info.requires == {"torch": ">=2.1"}
    assert info.build is None and "reference" in info.description.lower()


def test_operators() -> None:
    ops = list(plugin.attncore_operators())
    assert ops == [ExactFwOp, ExactBwOp, ChunkedFwOp, ChunkedBwOp, DecodeFwOp]
    assert {(op.NAME, op.PRIORITY) for op in ops} == {("reference.exact", 0), ("reference.chunked", 10), ("reference.decode", 20)}
    for op in ops:
        assert issubclass(op, (AttentionFwOpBase, AttentionBwOpBase))
        assert op.CAPABILITIES.dropout and op.CAPABILITIES.dropout_rng == DROPOUT_RNG
        assert op.CAPABILITIES.lse and op.CAPABILITIES.bias.paged and op.CAPABILITIES.bias.tensor
        assert len(op.CAPABILITIES.dtypes) == 4
    assert ExactFwOp.CAPABILITIES.devices == {"cpu", "cuda"}
    assert ChunkedFwOp.CAPABILITIES.devices == DecodeFwOp.CAPABILITIES.devices == {"cpu"}
    assert ExactBwOp.CAPABILITIES.tensor_bias_grad and ChunkedBwOp.CAPABILITIES.tensor_bias_grad
    assert DecodeFwOp.CAPABILITIES.max_query_len == 16


def test_every_operator_accepts_a_training_call() -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v, _ = make_qkv("5d-gqa", 1, 8, 12, torch.bfloat16, gen, requires_grad=True)
    bias = torch.randn(1, 2, 3, 8, 12, generator=gen).to(torch.bfloat16).requires_grad_()
    inp = inputs(q, k, v, bias, p=0.1, scale=0.5)
    for op in (ExactFwOp, ExactBwOp, ChunkedFwOp, ChunkedBwOp, DecodeFwOp):
        assert op.not_supported_reasons(inp) == [], op
