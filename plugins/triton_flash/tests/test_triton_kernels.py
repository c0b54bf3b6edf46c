"""The Triton kernels against the float64 ground truth, on every mask kind and layout.

Without a GPU they run under Triton's interpreter on CPU tensors at small shapes (tiles of 16, so
even these shapes span several tiles and every loop phase); with a GPU the same tests run on CUDA,
plus odd and long sequences and every autotuning candidate at the benchmark's shapes.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass
from typing import Optional, Union

import pytest
import torch

import attncore
import attncore.inputs
from attncore import attn_bias as ab
from attncore.inputs import Inputs
from attncore_triton import _launch
from attncore_triton.ops import TritonFlashBwOp, TritonFlashFwOp
from bias_cases import CASES, Case
from reference_math import attention

# ------------------------------------------------------------------------------------------------
# helpers: run the kernels, the float64 ground truth, the comparison
# ------------------------------------------------------------------------------------------------

Bias = Union[ab.AttentionBias, torch.Tensor, None]
ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

# Floors of the allowed error (on top of twice what torch's own low-precision math gets wrong).
OUT_FLOOR = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
GRAD_FLOOR = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 4e-2}


@dataclass
class Result:
    out: torch.Tensor
    lse: torch.Tensor  # [B, G, H, Mq]
    dq: Optional[torch.Tensor] = None
    dk: Optional[torch.Tensor] = None
    dv: Optional[torch.Tensor] = None
    dbias: Optional[torch.Tensor] = None  # in the bias tensor's own shape


def rnd(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, device: torch.device = DEVICE) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def to_device(bias: Bias, device: torch.device) -> Bias:
    if isinstance(bias, torch.Tensor):
        return bias.to(device)
    tb = _bias_tensor(bias)
    return _rebias(bias, tb.to(device)) if tb is not None else bias


def _bias_tensor(bias: Bias) -> Optional[torch.Tensor]:
    if isinstance(bias, torch.Tensor):
        return bias
    if bias is not None:
        return bias.geometry().tensor
    return None


def run_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: Bias = None,
    *,
    p: float = 0.0,
    scale: Optional[float] = None,
    seed: int = 1234,
    grad_out: Optional[torch.Tensor] = None,
    grad_lse: Optional[torch.Tensor] = None,
    fwd_config: Optional[_launch.FwdConfig] = None,
    bwd_config: Optional[_launch.BwdConfig] = None,
) -> Result:
    """Forward (and backward when ``grad_out`` is given) through the launch functions, outputs poisoned first."""
    _launch.POISON = True
    try:
        inputs = Inputs.create(q, k, v, bias, p, scale)
        out5, lse = _launch.forward(inputs, needs_lse=True, dropout_seed=seed, config=fwd_config)
        assert lse is not None
        res = Result(inputs.from5(out5), lse)
        if grad_out is None:
            return res
        gl5 = None if grad_lse is None else inputs.lse_to5(grad_lse)
        dq, dk, dv, dbias = _launch.backward(inputs, Inputs._to5(grad_out), out5, lse, dropout_seed=seed, grad_lse=gl5, config=bwd_config)
        res.dq, res.dk, res.dv = inputs.from5(dq), inputs.from5(dk), inputs.from5(dv)
        tb = _bias_tensor(bias)
        if dbias is not None and tb is not None:
            res.dbias = inputs.bias_grad_from5(dbias)
        return res
    finally:
        _launch.POISON = False


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64).requires_grad_(True)


def _rebias(bias: Bias, tensor: Optional[torch.Tensor]) -> Bias:
    """``bias`` with its additive tensor replaced by ``tensor``."""
    if tensor is None or bias is None:
        return bias
    if isinstance(bias, torch.Tensor):
        return tensor
    assert isinstance(bias, ab.LowerTriangularMaskWithTensorBias)
    return ab.LowerTriangularMask().add_bias(tensor)


def reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: Bias = None,
    *,
    scale: Optional[float] = None,
    keep: Optional[torch.Tensor] = None,
    p: float = 0.0,
    grad_out: Optional[torch.Tensor] = None,
    grad_lse: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float64,
) -> Result:
    """Ground truth (``dtype`` float64) or torch's own math in ``dtype`` (the yardstick), with gradients."""
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in (q, k, v)]
    tb = _bias_tensor(bias)
    tb_leaf = tb.detach().to(dtype).requires_grad_(True) if tb is not None and tb.requires_grad else None
    use_bias = _rebias(bias, tb_leaf) if tb_leaf is not None else bias
    if tb is not None and tb_leaf is None:
        use_bias = _rebias(bias, tb.to(dtype))
    out, lse = attention(leaves[0], leaves[1], leaves[2], use_bias, scale=scale, dtype=dtype, keep=keep, p=p)
    res = Result(out.detach(), lse.detach())
    if grad_out is None:
        return res
    loss = (out.nan_to_num(0.0) * grad_out.to(dtype)).sum()
    if grad_lse is not None:
        gl = grad_lse.to(dtype).reshape(lse.shape)  # [B, G, H, Mq] like the reference's LSE
        loss = loss + torch.where(torch.isinf(lse), torch.zeros_like(lse), lse * gl).sum()
    wrt = [*leaves, *([tb_leaf] if tb_leaf is not None else [])]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    res.dq, res.dk, res.dv = grads[0], grads[1], grads[2]
    if tb_leaf is not None:
        res.dbias = grads[3]
    return res


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max().item()) if a.numel() else 0.0


def check(
    got: Result,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: Bias = None,
    *,
    scale: Optional[float] = None,
    keep: Optional[torch.Tensor] = None,
    p: float = 0.0,
    grad_out: Optional[torch.Tensor] = None,
    grad_lse: Optional[torch.Tensor] = None,
    slack: float = 1.0,
) -> None:
    """Compare ``got`` with the float64 truth, allowing twice torch's own error in the input dtype (and a floor)."""
    dtype = q.dtype
    want = reference(q, k, v, bias, scale=scale, keep=keep, p=p, grad_out=grad_out, grad_lse=grad_lse)
    yard = reference(q, k, v, bias, scale=scale, keep=keep, p=p, grad_out=grad_out, grad_lse=grad_lse, dtype=dtype)
    assert got.out.shape == want.out.shape, (got.out.shape, want.out.shape)
    assert not got.out.isnan().any(), "NaN in the output"
    tol = slack * 2 * max(max_err(yard.out.nan_to_num(0.0), want.out), OUT_FLOOR[dtype])
    err = max_err(got.out, want.out)
    assert err <= tol, f"out error {err} > {tol}"
    want_lse = want.lse  # both [B, G, H, Mq]
    lse = got.lse.double()
    assert lse.shape == want_lse.shape, (lse.shape, want_lse.shape)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(want_lse)), "fully masked rows must have LSE -inf (and only they)"
    fin = torch.isfinite(want_lse)
    if fin.any():
        lerr = max_err(lse[fin], want_lse[fin])
        assert lerr <= 1e-3 * slack, f"lse error {lerr}"
    if grad_out is None:
        return
    for name in ("dq", "dk", "dv", "dbias"):
        g, w, y = getattr(got, name), getattr(want, name), getattr(yard, name)
        if w is None:
            continue
        assert g is not None, name
        assert g.shape == w.shape, (name, g.shape, w.shape)
        assert not g.isnan().any(), f"NaN in {name}"
        tol = slack * 2 * max(max_err(y.nan_to_num(0.0), w), GRAD_FLOOR[dtype] * max(1.0, float(w.abs().max())))
        err = max_err(g, w)
        assert err <= tol, f"{name} error {err} > {tol}"


gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")


def _gen(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def _case_inputs(case: Case, dtype: torch.dtype, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Bias]:
    q, k, v, bias = case.make(dtype, g)
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), to_device(bias, DEVICE)


_CASE_DTYPES = [torch.float32, torch.bfloat16, torch.float16] if ON_GPU else [torch.float32]


@pytest.mark.parametrize("dtype", _CASE_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_triton_every_bias_kind(case: Case, dtype: torch.dtype) -> None:
    """Forward, LSE and gradients on every bias kind of the conformance suite (K=16, Kv=24)."""
    g = _gen(case.name)
    q, k, v, bias = _case_inputs(case, dtype, g)
    grad = rnd(g, *q.shape[:-1], v.shape[-1], dtype=dtype)
    got = run_triton(q, k, v, bias, grad_out=grad)
    check(got, q, k, v, bias, grad_out=grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("name", ["LowerTriangularMask", "BlockDiagonalCausalFromBottomRightMask", "PagedBlockDiagonalCausalWithOffsetGappyKeysMask"])
def test_triton_half_precision(name: str, dtype: torch.dtype) -> None:
    """fp16/bf16 operands with fp32 accumulation (on CPU: the interpreter; bf16 dots upcast there)."""
    case = next(c for c in CASES if c.name == name)
    g = _gen(name + str(dtype))
    q, k, v, bias = _case_inputs(case, dtype, g)
    grad = rnd(g, *q.shape[:-1], v.shape[-1], dtype=dtype)
    check(run_triton(q, k, v, bias, grad_out=grad), q, k, v, bias, grad_out=grad)


@pytest.mark.parametrize("bias_kind", ["full", "broadcast", "causal+tensor", "with -inf rows"])
def test_triton_tensor_bias_gradient(bias_kind: str) -> None:
    """An additive bias loaded tile by tile; its gradient ``dS`` summed back to the bias's own shape."""
    g = _gen(bias_kind)
    b, mq, mk, h, kd = 2, 21, 35, 2, 16
    q, k, v = rnd(g, b, mq, h, kd), rnd(g, b, mk, h, kd), rnd(g, b, mk, h, kd)
    shape = (b, h, mq, mk) if bias_kind != "broadcast" else (1, h, 1, mk)
    t = rnd(g, *shape)
    if bias_kind == "with -inf rows":
        t[:, :, 3] = -math.inf
        t[0, 1, :, 5] = -math.inf
    t.requires_grad_(True)
    bias: Bias = ab.LowerTriangularMask().add_bias(t) if bias_kind == "causal+tensor" else t
    grad = rnd(g, b, mq, h, kd)
    got = run_triton(q, k, v, bias, grad_out=grad)
    assert got.dbias is not None and got.dbias.shape == t.shape
    check(got, q, k, v, bias, grad_out=grad)
    if bias_kind == "with -inf rows":
        assert torch.all(got.out[:, 3] == 0) and torch.all(torch.isneginf(got.lse[:, :, :, 3]))


@pytest.mark.parametrize("config", ["tuned", *([] if ON_GPU else ["split-atomic"])])
def test_triton_bias_shared_over_the_batch_sums_its_gradient_in_pieces(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An [H, Mq, Mk] bias with B=3, one batch entry per launch: dbias comes back [1, 1, H, Mq, Mk]
    (summed as the backward goes, never B copies) and matches the gradient of the reference."""
    monkeypatch.setattr(attncore.inputs, "SHARED_BIAS_PIECE_BYTES", 1)
    g = _gen("shared-bias")
    b, mq, mk, h, kd = 3, 21, 35, 2, 16
    q, k, v = rnd(g, b, mq, h, kd), rnd(g, b, mk, h, kd), rnd(g, b, mk, h, kd)
    t = rnd(g, h, mq, mk).requires_grad_(True)
    inputs = Inputs.create(q, k, v, t)
    assert inputs.bias_shared_over_batch
    res = TritonFlashFwOp.apply(inputs, needs_lse=True, dropout_seed=0)
    assert res.lse is not None
    grads = TritonFlashBwOp.apply(inputs, torch.ones_like(res.out), res.out, res.lse, dropout_seed=0)
    assert grads.dbias is not None and tuple(grads.dbias.shape) == (1, 1, h, mq, mk)
    grad = rnd(g, b, mq, h, kd)
    got = run_triton(q, k, v, t, grad_out=grad, bwd_config=SPLIT_ATOMIC if config == "split-atomic" else None)
    assert got.dbias is not None and got.dbias.shape == t.shape
    check(got, q, k, v, t, grad_out=grad)


@pytest.mark.parametrize("layout", ["3d", "4d", "5d", "4d-mqa", "5d-gqa"])
def test_triton_layouts_and_shared_heads(layout: str) -> None:
    """3-D/4-D/5-D inputs, and keys/values expanded with stride 0 over the heads (read in place)."""
    g = _gen(layout)
    b, mq, mk, kd, kv = 2, 19, 23, 32, 16
    heads: tuple[int, ...] = {"3d": (), "4d": (3,), "5d": (2, 3), "4d-mqa": (3,), "5d-gqa": (2, 3)}[layout]
    shared = layout.endswith(("mqa", "gqa"))
    kv_heads = (*heads[:-1], 1) if shared else heads
    q = rnd(g, b, mq, *heads, kd)
    k0, v0 = rnd(g, b, mk, *kv_heads, kd), rnd(g, b, mk, *kv_heads, kv)
    k, v = (k0.expand(b, mk, *heads, kd), v0.expand(b, mk, *heads, kv)) if shared else (k0, v0)
    if shared:
        assert Inputs.create(q, k, v).features.shared_kv_heads
    bias = ab.LowerTriangularFromBottomRightMask()
    grad = rnd(g, b, mq, *heads, kv)
    got = run_triton(q, k, v, bias, grad_out=grad)
    check(got, q, k, v, bias, grad_out=grad)
    assert got.dk is not None and got.dk.shape == k.shape  # the full H extent, reduced by autograd through the expand


@pytest.mark.parametrize(
    "mask",
    ["none", "causal", "causal-br", "causal-br Mq>Mk", "local", "causal-local", "block-causal"],
)
def test_triton_odd_lengths_many_tiles(mask: str) -> None:
    """Lengths that are no multiple of the tiles, across many tiles: every loop phase and tail."""
    g = _gen(mask)
    mq, mk = (67, 83) if not ON_GPU else (1000, 1537)
    if mask == "causal-br Mq>Mk":
        mq, mk = mk, mq
    kd, kv = (32, 16) if not ON_GPU else (80, 96)
    dtype = torch.float32 if not ON_GPU else torch.bfloat16
    biases: dict[str, Bias] = {
        "none": None,
        "causal": ab.LowerTriangularMask(),
        "causal-br": ab.LowerTriangularFromBottomRightMask(),
        "causal-br Mq>Mk": ab.LowerTriangularFromBottomRightMask(),
        "local": ab.LocalAttentionFromBottomRightMask(17, 9),
        "causal-local": ab.LowerTriangularFromBottomRightMask().make_local_attention(29),
    }
    bias: Bias
    if mask == "block-causal":
        q_lens = [mq // 3, mq // 3, mq - 2 * (mq // 3)]
        bias = ab.BlockDiagonalCausalMask.from_seqlens(q_lens)
        b, mk = 1, mq
    else:
        bias = biases[mask]
        b = 2
    q, k, v = rnd(g, b, mq, 2, kd, dtype=dtype), rnd(g, b, mk, 2, kd, dtype=dtype), rnd(g, b, mk, 2, kv, dtype=dtype)
    grad = rnd(g, b, mq, 2, kv, dtype=dtype)
    check(run_triton(q, k, v, bias, grad_out=grad), q, k, v, bias, grad_out=grad)


@pytest.mark.parametrize("scale", [0.05, 1.7, -0.4])
def test_triton_custom_scale(scale: float) -> None:
    g = _gen(str(scale))
    q, k, v = rnd(g, 1, 33, 2, 16), rnd(g, 1, 40, 2, 16), rnd(g, 1, 40, 2, 16)
    grad = rnd(g, 1, 33, 2, 16)
    for bias in (None, ab.LowerTriangularMask()):
        check(run_triton(q, k, v, bias, scale=scale, grad_out=grad), q, k, v, bias, scale=scale, grad_out=grad)


def test_triton_head_dims_small_and_unpadded() -> None:
    """K below the 16-wide tensor-core minimum and non-powers of two are zero-padded inside the tile."""
    g = _gen("heads")
    for kd, kv in ((8, 8), (24, 40)):
        q, k, v = rnd(g, 1, 20, 1, kd), rnd(g, 1, 29, 1, kd), rnd(g, 1, 29, 1, kv)
        grad = rnd(g, 1, 20, 1, kv)
        check(run_triton(q, k, v, ab.LowerTriangularMask(), grad_out=grad), q, k, v, ab.LowerTriangularMask(), grad_out=grad)


def test_triton_fully_masked_rows() -> None:
    """Queries that may attend no key: output 0, LSE -inf, zero gradients, never NaN."""
    g = _gen("masked")
    q, k, v = rnd(g, 2, 30, 2, 16), rnd(g, 2, 11, 2, 16), rnd(g, 2, 11, 2, 16)
    bias = ab.LowerTriangularFromBottomRightMask()  # rows 0..18 see nothing
    grad = rnd(g, 2, 30, 2, 16)
    got = run_triton(q, k, v, bias, grad_out=grad)
    check(got, q, k, v, bias, grad_out=grad)
    assert torch.all(got.out[:, :19] == 0) and torch.all(torch.isneginf(got.lse[:, :, :, :19]))
    assert got.dq is not None and torch.all(got.dq[:, :19] == 0)
    # keys that no query reaches (top-left causal, Mk > Mq) get zero gradients
    q2, k2, v2 = rnd(g, 1, 9, 1, 16), rnd(g, 1, 40, 1, 16), rnd(g, 1, 40, 1, 16)
    got2 = run_triton(q2, k2, v2, ab.LowerTriangularMask(), grad_out=rnd(g, 1, 9, 1, 16))
    assert got2.dk is not None and got2.dv is not None
    assert torch.all(got2.dk[:, 9:] == 0) and torch.all(got2.dv[:, 9:] == 0)


@pytest.mark.parametrize("path", ["dq-kernel", "atomic", "expanded"])
def test_triton_grad_lse(path: str) -> None:
    """The backward with the LSE itself in the loss (``memory_efficient_attention_partial`` + merging), with
    ``grad_lse`` taken into delta by the dQ kernel (the default) or by the preprocess kernel (atomic dQ), and
    an expanded ``grad_lse`` (stride 0 along the queries, as the gradient of ``lse.sum(-1)``)."""
    g = _gen("glse")
    q, k, v = rnd(g, 2, 25, 2, 16), rnd(g, 2, 31, 2, 16), rnd(g, 2, 31, 2, 16)
    grad, glse = rnd(g, 2, 25, 2, 16), rnd(g, 2, 2, 25)
    if path == "expanded":
        glse = rnd(g, 2, 2, 1).expand(2, 2, 25)
    bias = ab.LowerTriangularFromBottomRightMask()
    got = run_triton(q, k, v, bias, grad_out=grad, grad_lse=glse, bwd_config=SPLIT_ATOMIC if path == "atomic" else SPLIT_DQ_KERNEL)
    check(got, q, k, v, bias, grad_out=grad, grad_lse=glse.unsqueeze(1))


def _keep(shape5: tuple[int, int, int, int, int], seed: int, p: float) -> torch.Tensor:
    return _launch.dropout_keep_mask(seed, shape5, p, DEVICE)


@pytest.mark.parametrize("kind", ["dense-causal", "block-diagonal", "paged"])
def test_triton_dropout_reproducible(kind: str) -> None:
    """Forward and backward draw the same Philox mask; it matches :func:`dropout_keep_mask` exactly."""
    g = _gen(kind)
    p, seed = 0.3, 987654321123
    bias: Bias
    if kind == "dense-causal":
        b, mq, mk, bias = 2, 27, 35, ab.LowerTriangularFromBottomRightMask()
    elif kind == "block-diagonal":
        b, mq, mk, bias = 1, 30, 30, ab.BlockDiagonalCausalMask.from_seqlens([7, 18, 5])
    else:
        tables = torch.tensor([[3, 0, 5], [1, 4, 2]], dtype=torch.int32)
        b, mq, mk = 1, 5, 24
        bias = ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([3, 2], [9, 6], tables, 4)
    q, k, v = rnd(g, b, mq, 2, 16), rnd(g, b, mk, 2, 16), rnd(g, b, mk, 2, 16)
    grad = rnd(g, b, mq, 2, 16)
    got = run_triton(q, k, v, bias, p=p, seed=seed, grad_out=grad)
    if kind == "paged":
        # the mask is drawn over the logical keys (pages gathered); compare in that layout
        assert isinstance(bias, ab.AttentionBias)
        geo, rows = bias.geometry().unpaged()
        assert rows is not None and geo.blocks is not None
        mk_log = geo.blocks.k_total
        keep = _keep((b, 1, 2, mq, mk_log), seed, p)
        kl, vl = k[:, rows.to(DEVICE)], v[:, rows.to(DEVICE)]
        logical = ab.BlockDiagonalPaddedKeysMask.from_seqlens([3, 2], 12, [9, 6])
        ref_keep = keep
        got_l = run_triton(q, kl, vl, logical, p=p, seed=seed, grad_out=grad)
        torch.testing.assert_close(got.out, got_l.out, rtol=0, atol=1e-6)
        check(got_l, q, kl, vl, logical, keep=ref_keep, p=p, grad_out=grad)
        return
    keep = _keep((b, 1, 2, mq, mk), seed, p)
    rate = keep.float().mean().item()
    assert abs(rate - (1 - p)) < 0.06, rate
    check(got, q, k, v, bias, keep=keep, p=p, grad_out=grad)
    again = run_triton(q, k, v, bias, p=p, seed=seed)
    assert torch.equal(again.out, got.out)
    other = run_triton(q, k, v, bias, p=p, seed=seed + 1)
    assert not torch.equal(other.out, got.out)


# dK and dV in separate launches (the K = 256 path on the GPU), with atomic dQ or the dQ kernel, and
# different tiles for the two parts so that their loop phases differ
SPLIT_ATOMIC = _launch.BwdConfig(16, 32, 4, 1, 16, 16, 4, 1, atomic_dq=True, dv_block_m=32, dv_block_n=16)
SPLIT_DQ_KERNEL = _launch.BwdConfig(32, 16, 4, 1, 16, 32, 4, 1, dv_block_m=16, dv_block_n=32)
ONE_LOOP_FUSED = _launch.BwdConfig(16, 32, 4, 1, 32, 16, 4, 1, one_loop=True)


@pytest.mark.skipif(ON_GPU, reason="the GPU runs every autotuning candidate instead (test_triton_every_candidate)")
def test_triton_one_loop_never_reads_a_page_no_table_names() -> None:
    """Paged keys, one loop: keys past a sequence's end read its last key, not page 0 of the pool. Page 0,
    which no table names, holds NaN (a free KV-cache page); outputs and gradients stay finite and equal the
    three loops' (which mask those loads)."""
    g = _gen("paged-nan")
    tables = torch.tensor([[3, 1, 5], [6, 4, 2]], dtype=torch.int32)
    bias = ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([3, 2], [9, 6], tables, 4)
    q, grad = rnd(g, 1, 5, 2, 16), rnd(g, 1, 5, 2, 16)
    k, v = rnd(g, 1, 28, 2, 16), rnd(g, 1, 28, 2, 16)
    k[:, :4], v[:, :4] = float("nan"), float("nan")
    runs = [
        run_triton(q, k, v, bias, grad_out=grad, fwd_config=_launch.FwdConfig(16, 16, 4, 1, one_loop=one), bwd_config=dataclasses.replace(cfg, one_loop=one))
        for cfg in (ONE_LOOP_FUSED, SPLIT_DQ_KERNEL)
        for one in (False, True)
    ]
    for got in runs:
        for t in (got.out, got.lse, got.dq):
            assert t is not None and bool(torch.isfinite(t).all())
        torch.testing.assert_close(got.out, runs[0].out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.dq, runs[0].dq, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(ON_GPU, reason="the GPU runs every autotuning candidate instead (test_triton_every_candidate)")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_triton_split_dkdv_every_bias_kind(case: Case) -> None:
    """The split dK / dV launches on every bias kind of the conformance suite (fp32, interpreter)."""
    g = _gen("split" + case.name)
    q, k, v, bias = _case_inputs(case, torch.float32, g)
    grad = rnd(g, *q.shape[:-1], v.shape[-1], dtype=torch.float32)
    cfg = SPLIT_ATOMIC if zlib.crc32(case.name.encode()) % 2 else SPLIT_DQ_KERNEL
    check(run_triton(q, k, v, bias, grad_out=grad, bwd_config=cfg), q, k, v, bias, grad_out=grad)


@pytest.mark.skipif(ON_GPU, reason="the GPU runs every autotuning candidate instead (test_triton_every_candidate)")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_triton_one_loop_every_bias_kind(case: Case) -> None:
    """The one-loop kernels (edge tiles masked on a branch, rows past the end read clamped) on every bias kind of
    the conformance suite, forward and backward, with the dQ kernel or with split dK / dV launches (fp32, interpreter)."""
    g = _gen("oneloop" + case.name)
    q, k, v, bias = _case_inputs(case, torch.float32, g)
    grad = rnd(g, *q.shape[:-1], v.shape[-1], dtype=torch.float32)
    fwd = _launch.FwdConfig(16, 16, 4, 1, one_loop=True)
    bwd = dataclasses.replace(SPLIT_DQ_KERNEL if zlib.crc32(case.name.encode()) % 2 else ONE_LOOP_FUSED, one_loop=True)
    check(run_triton(q, k, v, bias, grad_out=grad, fwd_config=fwd, bwd_config=bwd), q, k, v, bias, grad_out=grad)


@pytest.mark.skipif(ON_GPU, reason="the GPU runs every autotuning candidate instead (test_triton_every_candidate)")
@pytest.mark.parametrize("what", ["dropout", "tensor-bias-grad"])
def test_triton_split_dkdv_dropout_and_dbias(what: str) -> None:
    """The split launches with dropout (the dV part draws the same mask) and with a bias gradient (from the dK part)."""
    g = _gen("split" + what)
    b, mq, mk, h, kd = 2, 27, 35, 2, 16
    q, k, v = rnd(g, b, mq, h, kd), rnd(g, b, mk, h, kd), rnd(g, b, mk, h, kd)
    grad = rnd(g, b, mq, h, kd)
    for cfg in (SPLIT_ATOMIC, SPLIT_DQ_KERNEL, dataclasses.replace(SPLIT_DQ_KERNEL, one_loop=True)):
        if what == "dropout":
            p, seed = 0.3, 4242
            bias: Bias = ab.LowerTriangularFromBottomRightMask()
            got = run_triton(q, k, v, bias, p=p, seed=seed, grad_out=grad, bwd_config=cfg)
            check(got, q, k, v, bias, keep=_keep((b, 1, h, mq, mk), seed, p), p=p, grad_out=grad)
        else:
            t = rnd(g, b, h, mq, mk).requires_grad_(True)
            bias = ab.LowerTriangularMask().add_bias(t)
            got = run_triton(q, k, v, bias, grad_out=grad, bwd_config=cfg)
            assert got.dbias is not None and got.dbias.shape == t.shape
            check(got, q, k, v, bias, grad_out=grad)


def _explicit_configs() -> list[tuple[_launch.FwdConfig, _launch.BwdConfig]]:
    if not ON_GPU:
        return [
            (_launch.FwdConfig(16, 32, 4, 1, tma=True), _launch.BwdConfig(16, 32, 4, 1, 32, 16, 4, 1, atomic_dq=True)),
            (_launch.FwdConfig(32, 16, 4, 1), _launch.BwdConfig(32, 16, 4, 1, 16, 32, 4, 1)),
            (_launch.FwdConfig(16, 16, 4, 1), SPLIT_ATOMIC),
            (_launch.FwdConfig(16, 16, 4, 1), SPLIT_DQ_KERNEL),
            (_launch.FwdConfig(16, 16, 4, 1, one_loop=True), _launch.BwdConfig(16, 32, 4, 1, 32, 16, 4, 1, one_loop=True)),
            (_launch.FwdConfig(16, 32, 4, 1, tma=True, one_loop=True), dataclasses.replace(SPLIT_ATOMIC, one_loop=True)),
        ]
    return []


@pytest.mark.skipif(ON_GPU, reason="the GPU runs every autotuning candidate instead (test_triton_every_candidate)")
@pytest.mark.parametrize("bias_name", ["none", "causal", "block-causal"])
def test_triton_config_variants(bias_name: str) -> None:
    """Tensor-descriptor (TMA) loads, atomic dQ and rectangular tiles compute the same function."""
    g = _gen(bias_name)
    bias: Bias = {"none": None, "causal": ab.LowerTriangularMask(), "block-causal": ab.BlockDiagonalCausalMask.from_seqlens([20, 29])}[bias_name]
    b = 1 if bias_name == "block-causal" else 2
    q, k, v = rnd(g, b, 49, 2, 32), rnd(g, b, 49, 2, 32), rnd(g, b, 49, 2, 32)
    grad = rnd(g, b, 49, 2, 32)
    for fc, bc in _explicit_configs():
        check(run_triton(q, k, v, bias, grad_out=grad, fwd_config=fc, bwd_config=bc), q, k, v, bias, grad_out=grad)


def _ws_cases(mask: str) -> list[tuple[int, int, int, Bias]]:
    """``(batch, Mq, Mk, bias)`` for the warp-specialized forward: lengths that are and are not whole tiles
    (128 on the GPU, 16 under the interpreter), and a packed batch."""
    if mask == "block-causal":
        lens = [150, 61, 213] if ON_GPU else [15, 4, 18]
        return [(1, sum(lens), sum(lens), ab.BlockDiagonalCausalMask.from_seqlens(lens))]
    bias: Bias = {
        "none": None,
        "causal": ab.LowerTriangularMask(),
        "causal-bottom-right Mq>Mk": ab.LowerTriangularFromBottomRightMask(),
        "local": ab.LocalAttentionFromBottomRightMask(70 if ON_GPU else 9, 9 if ON_GPU else 3),
    }[mask]
    lengths = [(424, 424), (256, 384)] if ON_GPU else [(37, 45), (32, 48)]
    if mask == "causal-bottom-right Mq>Mk":  # rows with no key at all
        lengths = [(mk + 19, mk) for _, mk in lengths]
    return [(2, mq, mk, bias) for mq, mk in lengths]


@pytest.mark.parametrize("mask", ["none", "causal", "causal-bottom-right Mq>Mk", "local", "block-causal"])
@pytest.mark.parametrize("dims", [(16, 16), (32, 32), (64, 64), (128, 128), (64, 128)] if ON_GPU else [(16, 16), (16, 32)], ids=str)
def test_triton_warp_specialized_forward(mask: str, dims: tuple[int, int]) -> None:
    """The one-loop warp-specialized forward (on the GPU every configuration it has at these head dims, under
    the interpreter a small tile) matches the truth, with and without masks."""
    kd, kv = dims
    g = _gen("ws" + mask + str(dims))
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    for b, mq, mk, bias in _ws_cases(mask):
        q, k, v = rnd(g, b, mq, 2, kd, dtype=dtype), rnd(g, b, mk, 2, kd, dtype=dtype), rnd(g, b, mk, 2, kv, dtype=dtype)
        configs = _launch.WS_CONFIGS[max(kd, kv)] if ON_GPU else (_launch.FwdConfig(16, 16, 4, 1, tma=True, ws=True),)
        for cfg in configs:
            check(run_triton(q, k, v, bias, fwd_config=cfg), q, k, v, bias)


@pytest.mark.parametrize("what", ["negative scale", "no LSE"])
def test_triton_warp_specialized_forward_variants(what: str) -> None:
    """The warp-specialized loop with a negative scale (scores scaled before their maximum) and without the
    LSE output (inference), on lengths in whole tiles and not."""
    g = _gen("ws-variant" + what)
    dtype = torch.bfloat16 if ON_GPU else torch.float32
    kd = 128 if ON_GPU else 16
    cfgs = _launch.WS_CONFIGS[kd] if ON_GPU else (_launch.FwdConfig(16, 16, 4, 1, tma=True, ws=True),)
    for mq, mk in ((256, 384), (200, 333)) if ON_GPU else ((32, 48), (37, 45)):
        q, k, v = (rnd(g, 2, m, 2, kd, dtype=dtype) for m in (mq, mk, mk))
        for cfg in cfgs:
            if what == "negative scale":
                check(run_triton(q, k, v, scale=-0.2, fwd_config=cfg), q, k, v, scale=-0.2)
                continue
            _launch.POISON = True
            try:
                out5, lse = _launch.forward(Inputs.create(q, k, v), needs_lse=False, dropout_seed=0, config=cfg)
            finally:
                _launch.POISON = False
            want = reference(q, k, v)
            assert lse is None and not out5.isnan().any()
            err, tol = max_err(out5[:, :, 0], want.out), 2 * max(max_err(reference(q, k, v, dtype=dtype).out, want.out), OUT_FLOOR[dtype])
            assert err <= tol, f"out error {err} > {tol}"


@pytest.mark.skipif(ON_GPU, reason="the interpreter's fallback candidate; on the GPU the tuned candidates run instead")
@pytest.mark.parametrize("case", ["misaligned for tensor descriptors", "longer than the row table", "head dim above the warp-specialized loop's"])
def test_triton_forward_falls_back_from_a_choice_the_call_cannot_take(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The configuration cached for an autotune key (which holds neither the tensors' alignment nor lengths
    past the shape buckets) is replaced by the best guess for the call when the call cannot run it."""
    g = _gen(case)
    asked: list[int] = []
    real = _launch.fwd_candidates

    def fwd_candidates(pb: _launch.Problem) -> list[_launch.FwdConfig]:
        asked.append(1)
        return real(pb)

    monkeypatch.setattr(_launch, "fwd_candidates", fwd_candidates)
    if case.startswith("misaligned"):
        cfg = _launch.FwdConfig(16, 32, 4, 1, tma=True)
        q, k, v = (rnd(g, 2, 37, 2, 17)[..., 1:] for _ in range(3))  # bases 4 bytes off, 68-byte row strides
        qa, ka, va = q.contiguous(), k.contiguous(), v.contiguous()
    elif case.startswith("longer"):
        cfg = _launch.FwdConfig(16, 16, 4, 1, tma=True, ws=True)
        monkeypatch.setattr(_launch, "WS_MAX_ROWS", 40)  # 37 rows in 16-row tiles (48) do not fit
        q, k, v = (rnd(g, 2, 37, 2, 16) for _ in range(3))
        qa, ka, va = q[:, :32], k[:, :32], v[:, :32]  # 32 do
    else:
        cfg = _launch.FwdConfig(16, 16, 4, 1, tma=True, ws=True)
        q, k, v = rnd(g, 1, 20, 1, 16), rnd(g, 1, 24, 1, 16), rnd(g, 1, 24, 1, _launch.WS_MAX_HEAD_DIM + 8)  # Kv pads to twice
        qa, ka, va = q, k, v[..., : _launch.WS_MAX_HEAD_DIM]
    causal = ab.LowerTriangularMask()
    check(run_triton(q, k, v, causal, fwd_config=cfg), q, k, v, causal)
    assert asked, "the call ran a configuration it cannot take"
    asked.clear()
    check(run_triton(qa, ka, va, causal, fwd_config=cfg), qa, ka, va, causal)
    assert not asked, "a call that can take the configuration was given another"


def test_triton_ops_apply() -> None:
    """The operator classes' ``apply`` (autotuned path) return the contract's layouts and dtypes."""
    g = _gen("ops")
    q, k, v = rnd(g, 2, 18, 3, 16), rnd(g, 2, 22, 3, 16), rnd(g, 2, 22, 3, 24)
    inputs = Inputs.create(q, k, v, ab.LowerTriangularMask(), output_dtype=torch.float64 if not ON_GPU else torch.float32)
    res = TritonFlashFwOp.apply(inputs, needs_lse=True, dropout_seed=0)
    assert res.out.shape == (2, 18, 1, 3, 24) and res.out.dtype == inputs.out_dtype
    assert res.lse is not None and res.lse.shape == (2, 1, 3, 18) and res.lse.dtype == torch.float32
    assert TritonFlashFwOp.apply(inputs, needs_lse=False, dropout_seed=0).lse is None
    grads = TritonFlashBwOp.apply(inputs, torch.ones_like(res.out).expand_as(res.out), res.out, res.lse, dropout_seed=0)
    assert grads.dq.shape == inputs.q5.shape and grads.dk.shape == inputs.k5.shape and grads.dv.shape == inputs.v5.shape
    assert grads.dbias is None


def test_triton_empty_inputs() -> None:
    g = _gen("empty")
    q, k, v = rnd(g, 1, 0, 2, 16), rnd(g, 1, 5, 2, 16), rnd(g, 1, 5, 2, 16)
    out, lse = _launch.forward(Inputs.create(q, k, v), needs_lse=True, dropout_seed=0)
    assert out.shape == (1, 0, 1, 2, 16) and lse is not None and lse.shape == (1, 1, 2, 0)
    q = rnd(g, 1, 4, 2, 16)
    k0, v0 = rnd(g, 1, 0, 2, 16), rnd(g, 1, 0, 2, 16)
    res = run_triton(q, k0, v0)
    assert torch.all(res.out == 0) and torch.all(torch.isneginf(res.lse))


# ------------------------------------------------------------------------------------------------
# GPU only: the public API end to end, every tuning candidate at the benchmark's shapes, long sequences
# ------------------------------------------------------------------------------------------------


@gpu
def test_triton_public_api_autograd() -> None:
    g = _gen("api")
    q, k, v = (rnd(g, 2, 300, 4, 64, dtype=torch.bfloat16).requires_grad_(True) for _ in range(3))
    assert attncore.device.device_info(q.device).kind == "cuda"
    bias = ab.LowerTriangularMask()
    sel = attncore.dispatch.explain(q, k, v, bias)
    assert "triton.flash" in str(sel)
    out = attncore.memory_efficient_attention(q, k, v, bias, op="triton.flash")
    grad = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    got = run_triton(q.detach(), k.detach(), v.detach(), bias, grad_out=grad)
    assert torch.equal(out, got.out)
    assert got.dq is not None and got.dk is not None and got.dv is not None
    torch.testing.assert_close(dq, got.dq, rtol=0, atol=1e-2)
    torch.testing.assert_close(dk, got.dk, rtol=0, atol=1e-2)
    torch.testing.assert_close(dv, got.dv, rtol=0, atol=1e-2)


@gpu
@pytest.mark.parametrize("index", range(8))
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("kd", [64, 128, 256])
def test_triton_every_candidate(kd: int, dtype: torch.dtype, direction: str, index: int) -> None:
    """Every configuration the autotuner may pick, at the benchmark's head layout (H*K = 2048), causal and not.

    A configuration the compiler rejects (out of shared memory) is skipped, as the autotuner skips it."""
    g = _gen(f"cand{kd}{dtype}{direction}{index}")
    h, m = 2048 // kd, 700
    q, k, v = (rnd(g, 1, m, h, kd, dtype=dtype) for _ in range(3))
    grad = rnd(g, 1, m, h, kd, dtype=dtype)
    ran, skipped = 0, []
    for bias in (None, ab.LowerTriangularMask()):  # (the lists differ: one-loop candidates for banded calls)
        pb = _launch.problem(Inputs.create(q, k, v, bias))
        cands: list[object] = list(_launch.fwd_candidates(pb) if direction == "fwd" else _launch.bwd_candidates(pb))
        if index >= len(cands):
            continue
        cfg = cands[index]
        ran += 1
        try:
            if isinstance(cfg, _launch.FwdConfig):
                got = run_triton(q, k, v, bias, fwd_config=cfg)
                check(got, q, k, v, bias)
            else:
                assert isinstance(cfg, _launch.BwdConfig)
                got = run_triton(q, k, v, bias, grad_out=grad, bwd_config=cfg)
                check(got, q, k, v, bias, grad_out=grad)
        except Exception as exc:
            if "OutOfResources" not in type(exc).__name__:
                raise
            skipped.append(f"{cfg}: {exc}")
    if not ran or len(skipped) == ran:
        pytest.skip("; ".join(skipped) or "fewer candidates")


@gpu
@pytest.mark.parametrize("causal", [False, True])
def test_triton_long_sequence(causal: bool) -> None:
    """M = 16384 (and an odd M = 16383 for the keys' tail)."""
    g = _gen(f"long{causal}")
    q = rnd(g, 1, 16384, 2, 128, dtype=torch.bfloat16)
    k, v = rnd(g, 1, 16383, 2, 128, dtype=torch.bfloat16), rnd(g, 1, 16383, 2, 128, dtype=torch.bfloat16)
    grad = rnd(g, 1, 16384, 2, 128, dtype=torch.bfloat16)
    bias: Optional[ab.AttentionBias] = ab.LowerTriangularFromBottomRightMask() if causal else None
    check(run_triton(q, k, v, bias, grad_out=grad), q, k, v, bias, grad_out=grad)


@gpu
@pytest.mark.parametrize("causal", [False, True])
def test_triton_long_k256_every_bwd_path(causal: bool) -> None:
    """K = 256 at M = 4096 against the float64 truth: every backward candidate (fused, split dK / dV, dQ kernel)."""
    g = _gen(f"long256{causal}")
    q, k, v, grad = (rnd(g, 1, 4096, 2, 256, dtype=torch.bfloat16) for _ in range(4))
    bias: Optional[ab.AttentionBias] = ab.LowerTriangularMask() if causal else None
    fc = _launch.fwd_candidates(_launch.problem(Inputs.create(q, k, v, bias)))[0]
    for cfg in _launch.bwd_candidates(_launch.problem(Inputs.create(q, k, v, bias))):
        try:
            got = run_triton(q, k, v, bias, grad_out=grad, fwd_config=fc, bwd_config=cfg)
        except Exception as exc:
            if "OutOfResources" in type(exc).__name__:
                continue
            raise
        check(got, q, k, v, bias, grad_out=grad)


@gpu
def test_triton_varlen_long() -> None:
    """A packed batch with lengths drawn from 64..4096 (the benchmark's varlen case), causal."""
    g = _gen("varlen")
    lens = [int(x) for x in torch.randint(64, 4097, (6,), generator=g)]
    bias = ab.BlockDiagonalCausalMask.from_seqlens(lens)
    total = sum(lens)
    q, k, v = (rnd(g, 1, total, 4, 128, dtype=torch.bfloat16) for _ in range(3))
    grad = rnd(g, 1, total, 4, 128, dtype=torch.bfloat16)
    got = run_triton(q, k, v, bias, grad_out=grad)
    assert got.dq is not None and got.dk is not None and got.dv is not None
    # the packed call is checked sequence by sequence: a dense float64 truth of the whole packed batch
    # would need ~20 GB, and block-diagonal causal is exactly per-sequence causal
    for s, e in bias.q_seqinfo.intervals():
        part = Result(got.out[:, s:e], got.lse[..., s:e])
        part.dq, part.dk, part.dv = got.dq[:, s:e], got.dk[:, s:e], got.dv[:, s:e]
        check(part, q[:, s:e], k[:, s:e], v[:, s:e], ab.LowerTriangularMask(), grad_out=grad[:, s:e])


@gpu
@pytest.mark.parametrize("kind", ["causal", "bias+dropout"])
def test_triton_relaunch_reuses_binaries_bit_for_bit(kind: str) -> None:
    """With reuse on (the default; forced on here), the second call of a shape launches the binaries the
    first one compiled (no re-binding of arguments): same bits as the first call, the float64 truth met, and
    a new dropout seed still reuses the binary."""
    names = ("fwd_kernel", "bwd_dq_kernel", "bwd_dkdv_kernel")
    before = {n: _launch._relauncher(n).reuse for n in names}
    try:
        for n in names:
            _launch._relauncher(n).reuse = True
        _relaunch_case(kind, names)
    finally:
        for n, on in before.items():
            _launch._relauncher(n).reuse = on


def _relaunch_case(kind: str, names: tuple[str, ...]) -> None:
    g = _gen(f"relaunch{kind}")
    q, k, v, grad = (rnd(g, 2, 300, 4, 64, dtype=torch.float16) for _ in range(4))
    bias: Bias = ab.LowerTriangularMask()
    p = 0.0
    if kind != "causal":
        bias, p = rnd(g, 2, 4, 300, 300, dtype=torch.float16), 0.2
    # explicit configurations: the dQ kernel must run (an atomic-dQ winner would skip it and add dQ in a
    # nondeterministic order)
    pb = _launch.problem(Inputs.create(q, k, v, bias, p))
    fc = _launch.fwd_candidates(pb)[0]
    bc = next(c for c in _launch.bwd_candidates(pb) if not c.atomic_dq)
    first = run_triton(q, k, v, bias, p=p, grad_out=grad, seed=5, fwd_config=fc, bwd_config=bc)
    hits = {n: _launch._relauncher(n).hits for n in names}
    again = run_triton(q, k, v, bias, p=p, grad_out=grad, seed=5, fwd_config=fc, bwd_config=bc)
    for n in names:
        assert _launch._relauncher(n).hits > hits[n], n
    for a, b in zip((first.out, first.lse, first.dq, first.dk, first.dv), (again.out, again.lse, again.dq, again.dk, again.dv), strict=True):
        assert a is not None and b is not None and torch.equal(a, b)
    if p == 0.0:
        check(again, q, k, v, bias, grad_out=grad)
    else:
        hits = {n: _launch._relauncher(n).hits for n in names}
        other = run_triton(q, k, v, bias, p=p, grad_out=grad, seed=6, fwd_config=fc, bwd_config=bc)
        assert all(_launch._relauncher(n).hits > hits[n] for n in names)
        assert not torch.equal(other.out, first.out)  # another seed, another mask
