"""Conformance: every registered operator against the float64 ground truth, for every bias kind.

Where an operator says it supports a call, its result must match the reference within about twice
the error PyTorch itself makes computing the same thing in the same precision. Where it says it
does not, forcing it must raise a clear error that quotes its reasons.
"""

from __future__ import annotations

import zlib

import pytest
import torch

import attncore
from attncore import registry
from attncore.inputs import Inputs
from attncore.ops import AttentionOpBase
from attncore_reference.testing import moved
from bias_cases import CASES, TENSOR_BIAS_CASES, Case
from reference_math import Bias, attention

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
DTYPES_BY_PRECISION = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
FW_OPS = list(registry.operators("forward"))
BW_OPS = list(registry.operators("backward"))


def _ids(ops: list[type[AttentionOpBase]]) -> list[str]:
    return [op.NAME for op in ops]


def device_for(op: type[AttentionOpBase]) -> torch.device:
    """Run each operator where it lives: on the GPU when it is a GPU operator and one is here."""
    if torch.cuda.is_available() and "cuda" in op.CAPABILITIES.devices:
        return torch.device("cuda")
    return torch.device("cpu")


def low_precision_error(out64: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Bias, dtype: torch.dtype) -> float:
    """What PyTorch's own math in ``dtype`` gets wrong (the yardstick), at least one ulp-ish floor."""
    if dtype == torch.float64:
        return 1e-12
    floor = {torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    try:
        out_lp, _ = attention(q, k, v, bias, dtype=dtype)
    except RuntimeError:  # old torch has no CPU matmul in this dtype: the floor is the yardstick
        return floor
    err = float((out_lp.double().nan_to_num(0.0) - out64).abs().max().item())
    return max(err, floor)


def check_refusal(op: type[AttentionOpBase], inputs: Inputs, run: object) -> None:
    reasons = op.not_supported_reasons(inputs)
    assert reasons, "called only for unsupported inputs"
    with pytest.raises(attncore.NotSupportedError) as info:
        run()  # type: ignore[operator]  # a zero-argument callable
    assert str(reasons[0]) in str(info.value)
    assert op.NAME in str(info.value)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("op", FW_OPS, ids=_ids(FW_OPS))
def test_forward(op: type[attncore.AttentionFwOpBase], case: Case, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(zlib.crc32(f"{case.name}/{dtype}".encode()))
    q, k, v, bias = case.make(dtype, g)
    qd, kd, vd, bd = moved(q, k, v, bias, device_for(op))
    inputs = Inputs.create(qd, kd, vd, bd, is_partial=True)
    if op.not_supported_reasons(inputs):
        check_refusal(op, inputs, lambda: attncore.memory_efficient_attention_partial(qd, kd, vd, bd, op=op))
        return
    out, lse = attncore.memory_efficient_attention_partial(qd, kd, vd, bd, op=op)
    out, lse = out.cpu(), lse.cpu()
    ref, ref_lse = attention(q, k, v, bias)
    assert out.shape == ref.shape and out.dtype == dtype
    assert not out.isnan().any()
    err = (out.double() - ref).abs().max().item()
    assert err <= 2 * low_precision_error(ref, q, k, v, bias, dtype), err
    lse64 = lse.double()
    ref_lse4 = ref_lse.squeeze(1)
    assert torch.equal(torch.isinf(lse64), torch.isinf(ref_lse4)), "fully masked rows must have LSE -inf"
    finite = torch.isfinite(ref_lse4)
    lse_tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert (lse64[finite] - ref_lse4[finite]).abs().max().item() <= lse_tol


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("op", BW_OPS, ids=_ids(BW_OPS))
def test_backward(op: type[attncore.AttentionBwOpBase], case: Case, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(zlib.crc32(f"{case.name}/bw/{dtype}".encode()))
    q, k, v, bias = case.make(dtype, g)
    dev = device_for(op)
    qd, kd, vd, bd = moved(q, k, v, bias, dev)
    qd, kd, vd = (t.detach().requires_grad_(True) for t in (qd, kd, vd))
    inputs = Inputs.create(qd, kd, vd, bd)
    if op.not_supported_reasons(inputs):
        check_refusal(op, inputs, lambda: torch.autograd.backward(attncore.memory_efficient_attention(qd, kd, vd, bd, op=(None, op)).sum()))
        return
    out = attncore.memory_efficient_attention(qd, kd, vd, bd, op=(None, op))
    grad = torch.randn(out.shape, generator=g).to(dtype)
    dq, dk, dv = (t.cpu() for t in torch.autograd.grad(out, (qd, kd, vd), grad.to(dev)))
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref, _ = attention(q64, k64, v64, bias)
    rq, rk, rv = torch.autograd.grad(ref, (q64, k64, v64), grad.double())
    floor = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    qlp, klp, vlp = (t.detach().requires_grad_(True) for t in (q, k, v))
    try:
        lp, _ = attention(qlp, klp, vlp, bias, dtype=dtype)
        yards = torch.autograd.grad(lp.nan_to_num(0.0), (qlp, klp, vlp), grad)
    except RuntimeError:  # old torch has no CPU matmul in this dtype: the floor is the yardstick
        yards = (rq, rk, rv)
    for name, got, want, yard in zip(("dq", "dk", "dv"), (dq, dk, dv), (rq, rk, rv), yards, strict=True):
        assert got.shape == want.shape and got.dtype == dtype, name
        err = (got.double() - want).abs().max().item()
        allowed = 2 * max((yard.double().nan_to_num(0.0) - want).abs().max().item(), floor)
        assert err <= allowed, (name, err, allowed)


@pytest.mark.parametrize("case", TENSOR_BIAS_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("op", BW_OPS, ids=_ids(BW_OPS))
def test_tensor_bias_gradient(op: type[attncore.AttentionBwOpBase], case: Case) -> None:
    g = torch.Generator().manual_seed(7)
    q, k, v, bias = case.make(torch.float64, g)
    assert bias is not None
    raw = bias if isinstance(bias, torch.Tensor) else bias.geometry().tensor
    assert raw is not None
    dev = device_for(op)
    dtype = next((d for d in DTYPES_BY_PRECISION if d in op.CAPABILITIES.dtypes), torch.float32)
    leaf = raw.detach().to(dev, dtype).requires_grad_(True)
    use = leaf if isinstance(bias, torch.Tensor) else attncore.LowerTriangularMask().add_bias(leaf)
    qd, kd, vd = (t.to(dev, dtype) for t in (q, k, v))
    inputs = Inputs.create(qd, kd, vd, use)
    reasons = op.not_supported_reasons(inputs)
    if reasons:
        pytest.skip(f"{op.NAME} cannot run this call here: {'; '.join(map(str, reasons))}")
    out = attncore.memory_efficient_attention(qd, kd, vd, use, op=(None, op))
    (dbias,) = torch.autograd.grad(out.sum(), (leaf,))
    dbias = dbias.cpu().double()
    leaf64 = raw.detach().double().requires_grad_(True)
    use64 = leaf64 if isinstance(bias, torch.Tensor) else attncore.LowerTriangularMask().add_bias(leaf64)
    ref, _ = attention(q, k, v, use64)
    (want,) = torch.autograd.grad(ref.sum(), (leaf64,))
    assert dbias.shape == raw.shape
    tol = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    assert (dbias - want).nan_to_num(0.0).abs().max().item() < tol


def test_every_op_is_covered() -> None:
    """The suite must see the reference backend's operators (installed through its entry point)."""
    names = {op.NAME for op in FW_OPS}
    assert {"reference.exact", "reference.chunked", "reference.decode"} <= names, names
    assert {"reference.exact", "reference.chunked"} <= {op.NAME for op in BW_OPS}
