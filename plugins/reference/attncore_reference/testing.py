"""Testing utilities: check an attention operator against the reference oracle.

For this plugin's tests and for other backends' authors:

* :data:`CASES`: one small case per bias kind of :mod:`attncore.attn_bias` (paged ones included), each
  building its bias for any layout; :func:`build` makes matching random inputs (3-D, 4-D, 5-D, and
  grouped-query layouts whose keys and values are stride-0 ``expand`` views).
* :func:`reference`: attention written the plainest way in float64 (differentiable, dropout via a
  given keep-mask), with every bias materialized: ground truth independent of the operators.
* :func:`compare_forward` / :func:`compare_backward`: an operator against :class:`ExactFwOp` /
  :class:`ExactBwOp` run on the same values in float64, within :func:`tolerance`: twice what torch's own
  ``scaled_dot_product_attention`` gets in that dtype, plus about one rounding of the largest value.
* :func:`deterministic_algorithms`: torch's deterministic mode for a block (backends that read it pick
  reproducible kernels), restored afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F

from attncore import attn_bias as ab
from attncore.inputs import Inputs
from attncore.ops import AttentionBwOpBase, AttentionFwOpBase

from .exact import ExactBwOp, ExactFwOp

Bias = Union[ab.AttentionBias, torch.Tensor, None]
LAYOUTS = ("3d", "4d", "5d", "4d-gqa", "5d-gqa")
G, H, K, KV = 2, 3, 8, 12


@dataclass(frozen=True)
class Case:
    """``bias(ndim, gen, dtype)`` builds the bias for inputs of ``batch`` x ``mq`` queries x ``mk`` (physical) keys."""

    name: str
    batch: int
    mq: int
    mk: int
    bias: Callable[[int, torch.Generator, torch.dtype], Bias]
    paged: bool = False

    def __repr__(self) -> str:
        return self.name


def _tensor_shape(ndim: int, batch: int, mq: int, mk: int) -> tuple[int, ...]:
    """A bias shape with a broadcast (size-1) dim, in the user layout of ``ndim``-D inputs."""
    return {3: (1, mq, mk), 4: (batch, 1, mq, mk), 5: (batch, 1, H, mq, mk)}[ndim]


def dense(name: str, mq: int, mk: int, make: Callable[[], ab.AttentionBias]) -> Case:
    """A case of batch 2 with a bias that needs no tensor."""
    return Case(name, 2, mq, mk, lambda nd, gen, dt: make())


def packed(name: str, mq: int, mk: int, make: Callable[[], ab.AttentionBias], paged: bool = False) -> Case:
    """A packed (batch 1) case of a block-diagonal bias."""
    return Case(name, 1, mq, mk, lambda nd, gen, dt: make(), paged)


def _tensor(nd: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(_tensor_shape(nd, 2, 11, 14), generator=gen, dtype=torch.float64).to(dtype)


def _causal_tensor(nd: int, gen: torch.Generator, dtype: torch.dtype) -> ab.AttentionBias:
    return ab.LowerTriangularMask().add_bias(_tensor(nd, gen, dtype))


# Pages of 4 keys: 3 sequences x 2 pages each, over a pool of 7 pages (page 6 unused).
TABLES = torch.tensor([[3, 0], [5, 1], [2, 4]], dtype=torch.int32)
PAGE = 4
POOL = 7 * PAGE

CASES: list[Case] = [
    Case("none", 2, 11, 14, lambda nd, gen, dt: None),
    Case("tensor", 2, 11, 14, _tensor),
    dense("LowerTriangularMask", 11, 14, ab.LowerTriangularMask),
    Case("LowerTriangularMaskWithTensorBias", 2, 11, 14, _causal_tensor),
    dense("LowerTriangularFromBottomRightMask", 11, 14, ab.LowerTriangularFromBottomRightMask),
    dense("LowerTriangularFromBottomRightLocalAttentionMask", 11, 14, lambda: ab.LowerTriangularFromBottomRightMask().make_local_attention(4)),
    dense("LocalAttentionFromBottomRightMask", 11, 14, lambda: ab.LocalAttentionFromBottomRightMask(3, 2)),
    packed("BlockDiagonalMask", 14, 17, lambda: ab.BlockDiagonalMask.from_seqlens([4, 7, 3], [6, 3, 8])),
    packed("BlockDiagonalCausalMask", 14, 14, lambda: ab.BlockDiagonalCausalMask.from_seqlens([4, 7, 3])),
    packed("BlockDiagonalCausalFromBottomRightMask", 14, 20, lambda: ab.BlockDiagonalCausalFromBottomRightMask.from_seqlens([4, 7, 3], [6, 11, 3])),
    packed("BlockDiagonalCausalLocalAttentionMask", 14, 18, lambda: ab.BlockDiagonalMask.from_seqlens([6, 8], [7, 11]).make_local_attention(3)),
    packed(
        "BlockDiagonalCausalLocalAttentionFromBottomRightMask",
        14,
        18,
        lambda: ab.BlockDiagonalMask.from_seqlens([6, 8], [7, 11]).make_local_attention_from_bottomright(3),
    ),
    packed("BlockDiagonalPaddedKeysMask", 10, 24, lambda: ab.BlockDiagonalPaddedKeysMask.from_seqlens([3, 5, 2], 8, [6, 8, 1])),
    packed("BlockDiagonalCausalWithOffsetPaddedKeysMask", 10, 24, lambda: ab.BlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens([3, 5, 2], 8, [6, 8, 1])),
    packed("BlockDiagonalGappyKeysMask", 10, 27, lambda: ab.BlockDiagonalGappyKeysMask.from_seqlens([3, 5, 2], [1, 9, 20, 27], [6, 8, 3])),
    packed(
        "BlockDiagonalCausalWithOffsetGappyKeysMask",
        10,
        27,
        lambda: ab.BlockDiagonalCausalWithOffsetGappyKeysMask.from_seqlens([3, 5, 2], [1, 9, 20, 27], [6, 8, 3]),
    ),
    packed("PagedBlockDiagonalPaddedKeysMask", 10, POOL, lambda: ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([3, 5, 2], [6, 8, 1], TABLES, PAGE), True),
    packed(
        "PagedBlockDiagonalCausalWithOffsetPaddedKeysMask",
        10,
        POOL,
        lambda: ab.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens([3, 5, 2], [6, 8, 1], TABLES, PAGE),
        True,
    ),
    packed(
        "PagedBlockDiagonalGappyKeysMask",
        10,
        POOL,
        lambda: ab.PagedBlockDiagonalGappyKeysMask.from_seqlens([3, 5, 2], [1, 0, 3], [6, 8, 4], TABLES, PAGE),
        True,
    ),
    packed(
        "PagedBlockDiagonalCausalWithOffsetGappyKeysMask",
        10,
        POOL,
        lambda: ab.PagedBlockDiagonalCausalWithOffsetGappyKeysMask.from_seqlens([3, 5, 2], [1, 0, 3], [6, 8, 4], TABLES, PAGE),
        True,
    ),
]
CASE_IDS = [c.name for c in CASES]


def case(name: str) -> Case:
    """The case of :data:`CASES` called ``name``."""
    return next(c for c in CASES if c.name == name)


def randn(*shape: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal values drawn in float64 (the same for every dtype), rounded to ``dtype``."""
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def named_bias(kind: str, shape: tuple[int, int, int, int], gen: torch.Generator, dtype: torch.dtype) -> Bias:
    """The bias a parametrized test names: "causal" (from the bottom right), "local LEFT RIGHT" (a window
    from the bottom right), "tensor" (random, of ``shape``: batch x heads x queries x keys) or "none"."""
    if kind == "causal":
        return ab.LowerTriangularFromBottomRightMask()
    if kind.startswith("local"):
        left, right = map(int, kind.split()[1:])
        return ab.LocalAttentionFromBottomRightMask(window_left=left, window_right=right)
    if kind == "tensor":
        return randn(*shape, gen=gen, dtype=dtype)
    if kind != "none":
        raise ValueError(f"kind: expected 'causal', 'local LEFT RIGHT', 'tensor' or 'none', found {kind!r}")
    return None


def moved(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Bias, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Bias]:
    """The same call on ``dev`` (tensors inside structured biases move too; GQA stride-0 views stay views)."""
    if dev.type == "cpu":
        return q, k, v, bias
    if isinstance(bias, torch.Tensor):
        bias = bias.to(dev)
    elif isinstance(bias, ab.LowerTriangularMaskWithTensorBias):
        bias = ab.LowerTriangularMaskWithTensorBias(bias._bias.to(dev))
    elif isinstance(bias, ab.PagedBlockDiagonalPaddedKeysMask):
        bias = dataclasses.replace(bias, block_tables=bias.block_tables.to(dev))
    return q.to(dev), k.to(dev), v.to(dev), bias


def make_qkv(
    layout: str, batch: int, mq: int, mk: int, dtype: torch.dtype, gen: torch.Generator, kv_dim: int = KV, requires_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(q, k, v, leaves)``: inputs in ``layout`` and the tensors autograd differentiates (GQA keys and
    values are stride-0 ``expand`` views of ``leaves``)."""
    nd = int(layout[0])
    heads = {3: (), 4: (H,), 5: (G, H)}[nd]
    kv_heads = (*heads[:-1], 1) if layout.endswith("gqa") else heads
    q = randn(batch, mq, *heads, K, gen=gen, dtype=dtype)
    k = randn(batch, mk, *kv_heads, K, gen=gen, dtype=dtype)
    v = randn(batch, mk, *kv_heads, kv_dim, gen=gen, dtype=dtype)
    leaves = (q.requires_grad_(requires_grad), k.requires_grad_(requires_grad), v.requires_grad_(requires_grad))
    if layout.endswith("gqa"):
        k, v = k.expand(batch, mk, *heads, K), v.expand(batch, mk, *heads, kv_dim)
    return q, k, v, leaves


def build(
    c: Case, layout: str, dtype: torch.dtype, seed: int = 0, kv_dim: int = KV, requires_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Bias, tuple[torch.Tensor, ...]]:
    """Inputs and bias of case ``c``; with ``requires_grad`` the leaves and the bias tensor require grad."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v, leaves = make_qkv(layout, c.batch, c.mq, c.mk, dtype, gen, kv_dim, requires_grad)
    bias = c.bias(int(layout[0]), gen, dtype)
    tb = bias_tensor(bias)
    if tb is not None:
        tb.requires_grad_(requires_grad)
    return q, k, v, bias, leaves


def _map_tensor(bias: Bias, fn: Callable[[torch.Tensor], torch.Tensor]) -> Bias:
    """The same bias with ``fn`` applied to its additive tensor (if it has one)."""
    if isinstance(bias, torch.Tensor):
        return fn(bias)
    if isinstance(bias, ab.LowerTriangularMaskWithTensorBias):
        tensor = bias.geometry().tensor
        assert tensor is not None  # this class always carries its tensor
        return ab.LowerTriangularMask().add_bias(fn(tensor))
    return bias


def widen(bias: Bias, requires_grad: bool = False) -> Bias:
    """The same bias with its tensor (if any) detached and in float64, for the oracle."""
    return _map_tensor(bias, lambda t: t.detach().double().requires_grad_(requires_grad))


def to5(t: torch.Tensor) -> torch.Tensor:
    """``[B, M, K]`` / ``[B, M, H, K]`` / ``[B, M, G, H, K]`` as ``[B, M, G, H, K]``."""
    return t if t.dim() == 5 else (t.unsqueeze(2) if t.dim() == 4 else t.unsqueeze(2).unsqueeze(2))


def from5(t: torch.Tensor, nd: int) -> torch.Tensor:
    """Undo :func:`to5` for ``nd``-D inputs."""
    return t if nd == 5 else (t.squeeze(2) if nd == 4 else t.squeeze(3).squeeze(2))


def bias_tensor(bias: Bias) -> Optional[torch.Tensor]:
    """The additive tensor of a bias (the raw tensor, or the one a bias class carries)."""
    if isinstance(bias, torch.Tensor):
        return bias
    if isinstance(bias, ab.AttentionBias):
        return bias.geometry().tensor
    return None


def dense_bias(bias: Bias, nd: int, b: int, g: int, h: int, mq: int, mk: int, device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """The bias as a ``[B, G, H, Mq, Mk]`` float64 tensor (differentiable in its tensor part), on ``device`` if given."""
    if bias is None:
        return None
    target = {3: (b, mq, mk), 4: (b, h, mq, mk), 5: (b, g, h, mq, mk)}[nd]
    if isinstance(bias, torch.Tensor):
        full = bias.to(torch.float64).broadcast_to(target)
    else:
        full = bias.materialize(target, dtype=torch.float64)
    if device is not None:
        full = full.to(device)
    return full.unsqueeze(1).unsqueeze(1) if nd == 3 else (full.unsqueeze(1) if nd == 4 else full)


def reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Bias = None, scale: Optional[float] = None, keep: Optional[torch.Tensor] = None, p: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 ``(out, lse)``: out in the layout of ``q``, lse ``[B, G, H, Mq]``; differentiable.

    ``keep`` is a ``[B, G, H, Mq, Mk]`` dropout keep-mask (kept probabilities are divided by ``1 - p``).
    Fully masked rows give output 0 and LSE -inf (and zero gradients).
    """
    nd = q.dim()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q5, k5, v5 = (to5(t).to(torch.float64).permute(0, 2, 3, 1, 4) for t in (q, k, v))
    b, g, h, mq, _ = q5.shape
    s = torch.matmul(q5, k5.transpose(-1, -2)) * scale
    full = dense_bias(bias, nd, b, g, h, mq, k.shape[1], q.device)
    if full is not None:
        s = s + full
    dead = torch.isneginf(s).all(dim=-1, keepdim=True)
    s_safe = torch.where(dead, torch.zeros_like(s), s)  # logsumexp of an all -inf row has a NaN gradient
    lse = torch.logsumexp(s_safe, dim=-1, keepdim=True)
    probs = torch.where(dead, torch.zeros_like(s), torch.exp(s_safe - lse))
    if keep is not None:
        probs = probs * keep.to(torch.float64) / (1.0 - p)
    out = from5(torch.matmul(probs, v5).permute(0, 3, 1, 2, 4), nd)
    return out, torch.where(dead, torch.full_like(lse, -math.inf), lse).squeeze(-1)


def sdpa_errors(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Bias, scale: Optional[float] = None, grad_out: Optional[torch.Tensor] = None
) -> dict[str, float]:
    """What torch itself gets in ``q.dtype``: max abs error of ``scaled_dot_product_attention`` run in
    ``q.dtype`` against the same in float64, for ``out`` and (given ``grad_out``, 5-D) per-head ``dq/dk/dv``."""

    def run(dt: torch.dtype) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        q5, k5, v5 = (to5(t).detach().permute(0, 2, 3, 1, 4).to(dt).contiguous().requires_grad_(grad_out is not None) for t in (q, k, v))
        b, g, h, mq, _ = q5.shape
        mask = dense_bias(_map_tensor(bias, torch.Tensor.detach), q.dim(), b, g, h, mq, k.shape[1], q.device)
        out = F.scaled_dot_product_attention(q5, k5, v5, attn_mask=None if mask is None else mask.to(dt), scale=scale)
        if grad_out is None:
            return out.detach().nan_to_num(0.0), ()
        grads = torch.autograd.grad(out, (q5, k5, v5), grad_out.permute(0, 2, 3, 1, 4).to(dt))
        return out.detach().nan_to_num(0.0), tuple(gr.nan_to_num(0.0) for gr in grads)

    try:
        lo, lo_grads = run(q.dtype)
    except RuntimeError:
        # old torch (< 2.2) has no CPU matmul in half precision: float32 math rounded to q.dtype is
        # the yardstick then, which is at least as accurate, so the check only gets stricter
        lo, lo_grads = run(torch.float32)
        lo, lo_grads = lo.to(q.dtype), tuple(gr.to(q.dtype) for gr in lo_grads)
    hi, hi_grads = run(torch.float64)
    errs = {"out": _max_abs(lo.double() - hi)}
    if grad_out is not None:
        for name, a, b in zip(("dq", "dk", "dv"), lo_grads, hi_grads, strict=True):
            errs[name] = _max_abs(a.double() - b)
    return errs


def _max_abs(t: torch.Tensor) -> float:
    """Largest absolute value (0 for an empty tensor)."""
    return float(t.abs().max()) if t.numel() else 0.0


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "") -> None:
    """Same shape, no NaN, infinities in the same places, every finite difference ``<= tol``."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert not actual.detach().isnan().any(), f"{what}: NaN"
    a, e = actual.detach().double(), expected.detach().double()
    both_inf = torch.isinf(a) & torch.isinf(e) & (a.sign() == e.sign())
    worst = _max_abs(torch.where(both_inf, torch.zeros_like(a), a - e))
    assert worst <= tol, f"{what}: max abs error {worst:.3g} > {tol:.3g}"


def inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Bias, **kw: Any) -> Inputs:
    """Shorthand for :meth:`Inputs.create`."""
    return Inputs.create(q, k, v, bias, **kw)


#: About one rounding (relative to the largest value) in each dtype, added to twice torch's own error.
FLOOR = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
#: LSE tolerance: it is computed in float32 (float64 for float64 inputs) whatever the input dtype.
LSE_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}


def lse_tolerance(dtype: torch.dtype, expected: torch.Tensor) -> float:
    """:data:`LSE_TOL`, plus a few roundings of the largest LSE in its own precision (an LSE of a few
    hundred, from large scores, is only known to about 1e-5 in float32)."""
    finite = expected[torch.isfinite(expected)]
    biggest = float(finite.abs().max()) if finite.numel() else 0.0
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    return LSE_TOL[dtype] + 4 * eps * biggest


def tolerance(dtype: torch.dtype, torch_err: float, expected: torch.Tensor) -> float:
    """Twice torch's own error in ``dtype`` plus a floor of about one rounding of the largest value."""
    finite = expected[torch.isfinite(expected)]
    scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    return 2.0 * torch_err + FLOOR[dtype] * scale


def compare_forward(
    op: type[AttentionFwOpBase], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Bias, *, p: float = 0.0, seed: int = 0, scale: Optional[float] = None
) -> None:
    """``op`` against the exact operator run on the same values in float64."""
    inp = inputs(q, k, v, bias, p=p, scale=scale)
    want = ExactFwOp.apply(inputs(q.double(), k.double(), v.double(), widen(bias), p=p, scale=scale), needs_lse=True, dropout_seed=seed)
    got = op.apply(inp, needs_lse=True, dropout_seed=seed)
    assert got.out.dtype == inp.out_dtype and got.lse is not None and got.lse.dtype == inp.lse_dtype
    assert want.lse is not None
    err = sdpa_errors(q, k, v, bias, scale)["out"]
    assert_close(Inputs._to5(got.out), want.out, tolerance(q.dtype, err, want.out), "out")
    assert_close(got.lse, want.lse, lse_tolerance(q.dtype, want.lse), "lse")
    assert torch.equal(torch.isneginf(got.lse), torch.isneginf(want.lse))


def compare_backward(
    fw: type[AttentionFwOpBase], bw: type[AttentionBwOpBase], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Bias, *, p: float = 0.0, seed: int = 0
) -> None:
    """``bw`` (fed by ``fw``'s rounded output and LSE) against the exact backward in float64, ``grad_lse`` included."""
    tb = bias_tensor(bias)
    bias_grad = tb is not None and tb.requires_grad
    inp = inputs(q, k, v, bias, p=p)
    res = fw.apply(inp, needs_lse=True, dropout_seed=seed)
    assert res.lse is not None
    gen = torch.Generator().manual_seed(7)
    go = torch.randn(res.out.shape, generator=gen, dtype=torch.float64).to(device=q.device, dtype=q.dtype)
    glse = torch.randn(res.lse.shape, generator=gen, dtype=torch.float64).to(device=q.device, dtype=res.lse.dtype)
    got = bw.apply(inp, go, res.out, res.lse, dropout_seed=seed, grad_lse=glse)
    inp64 = inputs(q.detach().double(), k.detach().double(), v.detach().double(), widen(bias, bias_grad), p=p)
    want = ExactBwOp.apply(inp64, go.double(), res.out.double(), res.lse.double(), dropout_seed=seed, grad_lse=glse.double())
    errs = sdpa_errors(q, k, v, bias, grad_out=go)
    for name, a, b in (("dq", got.dq, want.dq), ("dk", got.dk, want.dk), ("dv", got.dv, want.dv)):
        assert a.dtype == q.dtype
        assert_close(a, b, tolerance(q.dtype, errs[name], b), name)
    if bias_grad:
        assert got.dbias is not None and want.dbias is not None
        want_d, summed = want.dbias, 1
        if got.dbias.shape != want.dbias.shape:  # summed over the batch by the backend (Gradients.dbias)
            assert inp.bias_shared_over_batch and tuple(got.dbias.shape) == (1, *want.dbias.shape[1:]), (
                f"dbias: expected {tuple(want.dbias.shape)}, or {(1, *want.dbias.shape[1:])} for a bias shared over the batch, "
                f"found {tuple(got.dbias.shape)}"
            )
            want_d, summed = want.dbias.sum(0, keepdim=True), want.dbias.shape[0]
        # a sum of n terms carries up to n times their error
        assert_close(got.dbias, want_d, tolerance(q.dtype, summed * max(errs.values()), want_d), "dbias")
    else:
        assert got.dbias is None


@contextlib.contextmanager
def deterministic_algorithms(on: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(on)`` inside the block (warn-only, so that torch's own ops in the
    reference do not refuse), both settings restored afterwards."""
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(on, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
