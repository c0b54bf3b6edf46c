"""The public functions: ``memory_efficient_attention`` and its forward/backward/partial variants.

Eager calls validate, look up the cached decision and run the chosen operator directly; they pay
for autograd only when a gradient is needed and never for ``torch.compile`` support. Inside
``torch.compile`` the call goes through the ``attncore::attention_v2`` custom op (``_compile.FORWARD_OP``) instead (see
:mod:`attncore._compile`), so graphs do not break.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union, cast

import torch

from attncore import _compile
from attncore._compile import compiled_attention
from attncore.attn_bias import AttentionBias
from attncore.dispatch import OpArg, Selection, lookup, not_supported, select
from attncore.inputs import Inputs, strict_determinism
from attncore.ops import AttentionBwOpBase, AttentionFwOpBase

__all__ = [
    "memory_efficient_attention",
    "memory_efficient_attention_backward",
    "memory_efficient_attention_forward",
    "memory_efficient_attention_forward_requires_grad",
    "memory_efficient_attention_partial",
]

Bias = Union[AttentionBias, torch.Tensor, None]

try:
    _is_compiling = torch.compiler.is_compiling
except AttributeError:  # torch < 2.3  # pragma: no cover

    def _is_compiling() -> bool:
        return False


def _seed(p: float) -> int:
    """A dropout seed from torch's default generator (so ``torch.manual_seed`` reproduces runs)."""
    return int(torch.randint(0, 2**62, (1,)).item()) if p > 0.0 else 0


def _fw_op(inputs: Inputs, op: OpArg) -> type[AttentionFwOpBase]:
    return select(inputs, "forward", op=op).chosen  # type: ignore[return-value]  # forward selections hold forward ops


def _bw_op(inputs: Inputs, op: OpArg, fw: type[AttentionFwOpBase]) -> type[AttentionBwOpBase]:
    return select(inputs, "backward", op=op, fw_rng=fw.CAPABILITIES.dropout_rng).chosen  # type: ignore[return-value]  # backward selections hold backward ops


_NO_TENSOR = torch.empty(0)  # stands in for the tensors ctx must not hold (they are in saved_tensors)


class _Attention(torch.autograd.Function):
    """Autograd around the dispatched forward and backward operators (returns out and LSE)."""

    @staticmethod
    def forward(
        ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias_tensor: Optional[torch.Tensor], inputs: Inputs, op: OpArg
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fw = _fw_op(inputs, op)
        # The backward operator is chosen now, under the caller's policy: autograd runs backward on its
        # own threads, where a `with dispatch.policy(...)` block around the forward is not active. Where
        # no backward fits, the forward still runs and the backward raises that explained error (built
        # then: its text costs more host time than the whole forward).
        bw_sel = lookup(inputs, "backward", op=op, fw_rng=fw.CAPABILITIES.dropout_rng)
        # torch's deterministic mode may be switched on between this forward and its backward: the choice
        # under it is made now too (same policy), where the op chosen above does not declare determinism
        bw_strict = bw_sel
        if bw_sel.chosen is not None and not bw_sel.chosen.CAPABILITIES.deterministic and not inputs.features.deterministic:
            strict = inputs._replace(features=inputs.features._replace(deterministic=True))
            bw_strict = lookup(strict, "backward", op=op, fw_rng=fw.CAPABILITIES.dropout_rng)
        seed = _seed(inputs.p)
        res = fw.apply(inputs, needs_lse=True, dropout_seed=seed)
        assert res.lse is not None  # operators must honour needs_lse=True
        # tensors go through save_for_backward (in-place modification checks, saved-tensor hooks);
        # ctx keeps only the non-tensor description of the call
        geo = inputs.geometry
        ctx.inputs = inputs._replace(
            query=_NO_TENSOR,
            key=_NO_TENSOR,
            value=_NO_TENSOR,
            attn_bias=None if isinstance(inputs.attn_bias, torch.Tensor) else inputs.attn_bias,
            geometry=dataclasses.replace(geo, tensor=None) if geo is not None and bias_tensor is not None else geo,
        )
        ctx.has_bias = bias_tensor is not None
        ctx.bw_sel, ctx.bw_strict, ctx.seed = bw_sel, bw_strict, seed
        ctx.save_for_backward(query, key, value, bias_tensor, Inputs._to5(res.out), res.lse)  # canonical out for backward ops
        ctx.set_materialize_grads(False)
        return inputs.from5(res.out), inputs.lse_from5(res.lse)

    @staticmethod
    def backward(ctx: Any, grad_out: Optional[torch.Tensor], grad_lse: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], ...]:
        query, key, value, bias_tensor, out5, lse5 = ctx.saved_tensors
        inputs: Inputs = ctx.inputs._replace(query=query, key=key, value=value)
        if ctx.has_bias and inputs.geometry is not None:
            inputs = inputs._replace(geometry=dataclasses.replace(inputs.geometry, tensor=bias_tensor))
        sel: Selection = ctx.bw_strict if strict_determinism() else ctx.bw_sel
        if sel.chosen is None:
            if ctx.has_bias and inputs.attn_bias is None:
                inputs = inputs._replace(attn_bias=bias_tensor)  # (the error names the bias)
            raise not_supported(inputs._replace(features=inputs.features._replace(deterministic=inputs.features.deterministic or sel is not ctx.bw_sel)), sel)
        bw = cast(type[AttentionBwOpBase], sel.chosen)  # backward selections hold backward ops
        g5 = torch.zeros_like(out5) if grad_out is None else Inputs._to5(grad_out)
        gl5 = None if grad_lse is None else inputs.lse_to5(grad_lse)
        grads = bw.apply(inputs, g5, out5, lse5, dropout_seed=ctx.seed, grad_lse=gl5)
        dbias = None
        if grads.dbias is not None and inputs.geometry is not None and inputs.geometry.tensor is not None:
            tb = inputs.geometry.tensor
            dbias = inputs.bias_grad_from5(grads.dbias).to(tb.dtype)
        return inputs.from5(grads.dq), inputs.from5(grads.dk), inputs.from5(grads.dv), dbias, None, None


def _needs_grad(inputs: Inputs) -> bool:
    return inputs.features.requires_grad and torch.is_grad_enabled()


def _run(inputs: Inputs, op: OpArg) -> tuple[torch.Tensor, torch.Tensor]:
    tb = inputs.geometry.tensor if inputs.geometry is not None else None
    out, lse = _Attention.apply(inputs.query, inputs.key, inputs.value, tb, inputs, op)  # type: ignore[no-untyped-call]  # torch's Function.apply is untyped
    return cast(torch.Tensor, out), cast(torch.Tensor, lse)


def memory_efficient_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_bias: Bias = None,
    p: float = 0.0,
    scale: Optional[float] = None,
    *,
    op: OpArg = None,
    output_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Exact attention without materializing the ``[Mq, Mk]`` score matrix, on the best backend.

    Equivalent to::

        scores = scale * query @ key^T + attn_bias      # per batch and head
        out = dropout(softmax(scores), p) @ value

    Args:
        query: ``[B, Mq, H, K]``; ``[B, Mq, K]`` means H=1; ``[B, Mq, G, H, K]`` for grouped-query
            attention (G key/value groups of H query heads). Last dimension contiguous.
        key: ``[B, Mk, H, K]`` (same rank as query). For GQA/MQA, keys may be an expanded view of
            ``[B, Mk, G, 1, K]`` (stride 0 on H); no copy is made.
        value: ``[B, Mk, H, Kv]``; Kv may differ from K.
        attn_bias: ``None``, an :class:`attncore.attn_bias.AttentionBias` (causal, local,
            block-diagonal, paged... never materialized), or a tensor broadcastable to
            ``[B, H, Mq, Mk]`` (``[B, G, H, Mq, Mk]`` for 5-D) added to the scores.
        p: dropout probability on the attention weights, in ``[0, 1)``.
        scale: multiplier of ``query @ key^T``; ``None`` means ``K ** -0.5``.
        op: force an operator: a forward op class, a ``(forward, backward)`` pair (``None`` in a
            slot leaves it free), or an operator name. Raises if it cannot run the call.
        output_dtype: dtype of the result (default: the query's).

    Returns:
        ``[B, Mq, H, Kv]`` (same rank as query). A query that may attend no key gets 0.

    Raises:
        ValueError: on malformed inputs (naming the argument), and
            :class:`attncore.NotSupportedError` (a ``ValueError``) when no operator fits; its
            message is the dispatcher's explanation.
    """
    if _is_compiling() and _compile.REGISTERED:
        return compiled_attention(query, key, value, attn_bias, p, scale, op, output_dtype, False)[0]
    inputs = Inputs.create(query, key, value, attn_bias, p, scale, output_dtype)
    if inputs.features.requires_grad and torch.is_grad_enabled():
        return _run(inputs, op)[0]
    fw = _fw_op(inputs, op)
    return inputs.from5(fw.apply(inputs, needs_lse=False, dropout_seed=_seed(p) if p else 0).out)


def memory_efficient_attention_partial(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_bias: Bias = None,
    p: float = 0.0,
    scale: Optional[float] = None,
    *,
    op: OpArg = None,
    output_dtype: Optional[torch.dtype] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over part of the keys, returning ``(out, lse)`` to combine with :func:`merge_attentions`.

    ``lse`` is ``[B, H, Mq]`` (``[B, G, H, Mq]`` for 5-D inputs), float32 (float64 for float64
    inputs), ``-inf`` for queries that attend no key. Both outputs are differentiable.
    """
    if _is_compiling() and _compile.REGISTERED:
        return compiled_attention(query, key, value, attn_bias, p, scale, op, output_dtype, True)
    inputs = Inputs.create(query, key, value, attn_bias, p, scale, output_dtype, is_partial=True)
    if _needs_grad(inputs):
        return _run(inputs, op)
    res = _fw_op(inputs, op).apply(inputs, needs_lse=True, dropout_seed=_seed(p))
    assert res.lse is not None  # operators must honour needs_lse=True
    return inputs.from5(res.out), inputs.lse_from5(res.lse)


def memory_efficient_attention_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_bias: Bias = None,
    p: float = 0.0,
    scale: Optional[float] = None,
    *,
    op: Optional[Union[str, type[AttentionFwOpBase]]] = None,
    output_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """The forward pass only (no autograd graph). Arguments as :func:`memory_efficient_attention`."""
    inputs = Inputs.create(query, key, value, attn_bias, p, scale, output_dtype)
    return inputs.from5(_fw_op(inputs, op).apply(inputs, needs_lse=False, dropout_seed=_seed(p)).out)


def memory_efficient_attention_forward_requires_grad(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_bias: Bias = None,
    p: float = 0.0,
    scale: Optional[float] = None,
    *,
    op: Optional[Union[str, type[AttentionFwOpBase]]] = None,
    output_dtype: Optional[torch.dtype] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward returning ``(out, lse)`` for a later :func:`memory_efficient_attention_backward`.

    Dropout is not available here: the standalone backward could not regenerate the mask.
    """
    if p:
        raise ValueError(f"p: expected 0.0 (the standalone backward cannot regenerate a dropout mask; use memory_efficient_attention), found {p!r}")
    inputs = Inputs.create(query, key, value, attn_bias, p, scale, output_dtype, is_partial=True)
    res = _fw_op(inputs, op).apply(inputs, needs_lse=True, dropout_seed=0)
    assert res.lse is not None  # operators must honour needs_lse=True
    return inputs.from5(res.out), inputs.lse_from5(res.lse)


def memory_efficient_attention_backward(
    grad: torch.Tensor,
    output: torch.Tensor,
    lse: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_bias: Bias = None,
    p: float = 0.0,
    scale: Optional[float] = None,
    *,
    op: Optional[Union[str, type[AttentionBwOpBase]]] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dq, dk, dv)`` given ``grad`` (like ``output``), and the ``output`` and ``lse``
    of :func:`memory_efficient_attention_forward_requires_grad`."""
    if p:
        raise ValueError(f"p: expected 0.0 (the standalone backward cannot regenerate a dropout mask), found {p!r}")
    inputs = Inputs.create(query, key, value, attn_bias, p, scale, is_partial=True)
    out_shape = (*query.shape[:-1], value.shape[-1])
    for name, t, shape in (("grad", grad, out_shape), ("output", output, out_shape)):
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name}: expected shape {list(shape)} (query's with value's head dim), found {list(t.shape)}")
    lse_shape = (*query.shape[:1], *(query.shape[2:-1] or (1,)), query.shape[1])
    if tuple(lse.shape) != lse_shape:
        raise ValueError(f"lse: expected shape {list(lse_shape)}, found {list(lse.shape)}")
    for name, t in (("grad", grad), ("output", output), ("lse", lse)):
        if t.device != query.device:
            raise ValueError(f"{name}: expected device {query.device} (as query), found {t.device}")
        if not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, found {t.dtype}")
    if lse.dtype != inputs.lse_dtype:
        raise ValueError(f"lse: expected dtype {inputs.lse_dtype} (as returned by the forward), found {lse.dtype}")
    bw_arg: OpArg = (None, op) if isinstance(op, (type, str)) else op  # a name here must be a backward operator's
    bw = select(inputs, "backward", op=bw_arg).chosen
    assert bw is not None and issubclass(bw, AttentionBwOpBase)  # select raises when nothing fits
    grads = bw.apply(inputs, Inputs._to5(grad), Inputs._to5(output), inputs.lse_to5(lse), dropout_seed=0)
    return inputs.from5(grads.dq), inputs.from5(grads.dk), inputs.from5(grads.dv)
