"""The portable CUDA kernels on the CPU, through the emulation (``attncore_cutlass.emulation``).

The host launcher and the real kernel code run on CPU tensors (CUDA's execution model on host threads),
against the float64 ground truth: every bias kind, fp32/fp16/bf16, 4-D and GQA layouts, head dims that
cover one to four 64-column chunks with Kv != K, tiles cut by the sequence ends, deterministic results.
Skipped where no CUDA headers are installed (the emulation includes cuda_fp16.h); this is how CI checks
the kernels' logic without a GPU. The tensor-core kernels run under emulated mma.sync/ldmatrix in the
slow tests (``nox -s emulate``), a few seconds per call.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import ModuleType
from typing import Optional

import pytest
import torch

import attncore
import attncore.inputs
from attncore.inputs import Inputs
from attncore_cutlass import _launch, emulation
from attncore_cutlass.ops import CutlassBwOp, CutlassFwOp
from attncore_reference import testing

pytestmark = [
    pytest.mark.skipif(emulation.cuda_headers() is None, reason="no CUDA headers (cuda_fp16.h) for the CPU emulation"),
    pytest.mark.skipif(not emulation.can_compile(), reason="no ninja to build the CPU emulation with (pip install ninja)"),
]
CASES = [c for c in testing.CASES if not c.paged]


@pytest.fixture(scope="module")
def emulated() -> ModuleType:
    return emulation.extension()


@pytest.fixture(autouse=True)
def _on_the_emulation(emulated: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The operators' launches go to the emulation library; outputs are poisoned first."""
    monkeypatch.setattr(_launch, "extension", lambda capability: emulated)
    monkeypatch.setattr(_launch, "POISON", True)
    yield


@pytest.fixture
def portable() -> Iterator[None]:
    """The portable kernels (fast to emulate); the tensor-core ones are emulated in the slow tests."""
    with _launch.portable_kernels():
        yield


@pytest.mark.parametrize(("layout", "dtype"), [("4d", torch.float32), ("5d-gqa", torch.float32), ("4d", torch.bfloat16), ("5d-gqa", torch.float16)], ids=str)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_every_bias_kind(case: testing.Case, layout: str, dtype: torch.dtype, portable: None) -> None:
    q, k, v, bias, _ = testing.build(case, layout, dtype, requires_grad=False)
    tb = testing.bias_tensor(bias)
    if tb is not None:
        tb.requires_grad_(True)
    testing.compare_forward(CutlassFwOp, q, k, v, bias)
    assert _launch.last_family("forward") == "simt"
    testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)
    assert _launch.last_family("backward") == "simt"


@pytest.mark.parametrize(("kd", "kv"), [(64, 64), (40, 72), (130, 24), (16, 256)])
@pytest.mark.parametrize("masked", [False, True])
def test_head_dim_chunks_and_partial_tiles(kd: int, kv: int, masked: bool, portable: None) -> None:
    gen = torch.Generator().manual_seed(kd * 1000 + kv)
    q = testing.randn(1, 70, 2, kd, gen=gen, dtype=torch.float32)
    k = testing.randn(1, 97, 2, kd, gen=gen, dtype=torch.float32)
    v = testing.randn(1, 97, 2, kv, gen=gen, dtype=torch.float32)
    bias = attncore.LowerTriangularFromBottomRightMask() if masked else None
    testing.compare_forward(CutlassFwOp, q, k, v, bias)
    testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)


@pytest.mark.parametrize("piece_bytes", [1, 1 << 30], ids=["one-entry-pieces", "one-piece"])
def test_a_bias_shared_over_the_batch_gets_its_gradient_summed(piece_bytes: int, portable: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """An [H, Mq, Mk] bias with B=3: dbias comes back [1, 1, H, Mq, Mk], summed piece by piece (one batch
    entry per launch, or all at once), never as B copies; it matches the float64 gradient summed over B."""
    monkeypatch.setattr(attncore.inputs, "SHARED_BIAS_PIECE_BYTES", piece_bytes)
    gen = torch.Generator().manual_seed(21)
    q = testing.randn(3, 37, 2, 16, gen=gen, dtype=torch.float32)
    k = testing.randn(3, 45, 2, 16, gen=gen, dtype=torch.float32)
    v = testing.randn(3, 45, 2, 24, gen=gen, dtype=torch.float32)
    bias = testing.randn(2, 37, 45, gen=gen, dtype=torch.float32).requires_grad_(True)
    inputs = Inputs.create(q, k, v, bias)
    assert inputs.bias_shared_over_batch
    res = CutlassFwOp.apply(inputs, needs_lse=True, dropout_seed=0)
    assert res.lse is not None
    grads = CutlassBwOp.apply(inputs, torch.randn(res.out.shape, generator=gen), res.out, res.lse, dropout_seed=0)
    assert grads.dbias is not None and tuple(grads.dbias.shape) == (1, 1, 2, 37, 45)
    testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)


def test_backward_is_deterministic(portable: None) -> None:
    gen = torch.Generator().manual_seed(4)
    q, k, v = (testing.randn(1, 80, 2, 32, gen=gen, dtype=torch.float32) for _ in range(3))
    inputs = Inputs.create(q, k, v, attncore.LowerTriangularMask())
    res = CutlassFwOp.apply(inputs, needs_lse=True, dropout_seed=0)
    assert res.lse is not None
    go = torch.randn(res.out.shape, generator=gen)
    first = CutlassBwOp.apply(inputs, go, res.out, res.lse, dropout_seed=0)
    second = CutlassBwOp.apply(inputs, go, res.out, res.lse, dropout_seed=0)
    for a, b in zip(first[:3], second[:3], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kv", [24, 72])
@pytest.mark.parametrize("with_grad_lse", [False, True])
def test_backward_row_statistics(dtype: torch.dtype, kv: int, with_grad_lse: bool, emulated: ModuleType) -> None:
    """The prep kernel's delta = rowsum(dO * O) - grad_lse and base-2 LSE against the eager formula: head
    dims below and above one warp's width, out as a strided view, rows that saw no key (LSE -inf)."""
    gen = torch.Generator().manual_seed(kv + 7 * with_grad_lse)
    b, mq, g, h = 2, 5, 1, 3
    wide = testing.randn(b, mq, g, h + 1, kv, gen=gen, dtype=dtype)
    out = wide[:, :, :, 1:]  # strided: a view into a wider tensor
    do = testing.randn(b, mq, g, h, kv, gen=gen, dtype=dtype)
    lse = torch.randn(b, g, h, mq, generator=gen)
    lse[0, 0, 1, 2] = float("-inf")
    grad_lse = torch.randn(b, g, h, mq, generator=gen) if with_grad_lse else None
    delta = torch.full((b, g, h, mq), float("nan"))
    lse2 = torch.full_like(delta, float("nan"))
    emulated.prepare(do, out, lse, grad_lse, delta, lse2)
    want = (do.double() * out.double()).sum(-1).permute(0, 2, 3, 1)
    if grad_lse is not None:
        want = want - grad_lse.double()
    torch.testing.assert_close(delta.double(), want, rtol=1e-5, atol=1e-5)
    want2 = lse.double() * 1.4426950408889634
    want2[0, 0, 1, 2] = float("inf")
    torch.testing.assert_close(lse2.double(), want2, rtol=1e-6, atol=0.0)


TC_CASES = [c for c in CASES if c.name in ("none", "LowerTriangularFromBottomRightMask", "BlockDiagonalCausalMask", "tensor")]


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "layout"), [(torch.bfloat16, "4d"), (torch.float16, "4d"), (torch.float32, "4d"), (torch.float32, "5d-gqa")], ids=str)
@pytest.mark.parametrize("case", TC_CASES, ids=repr)
def test_tensor_core_kernels(case: testing.Case, dtype: torch.dtype, layout: str) -> None:
    """mma.sync, ldmatrix and cp.async emulated from their fragment layouts: the tensor-core forward and
    backward (K=8 and Kv=12, padded to 64) against the float64 reference; fp32 as 3xTF32 (mma.m16n8k8,
    each operand split into two tf32 parts), under fp32's own tolerance."""
    q, k, v, bias, _ = testing.build(case, layout, dtype, requires_grad=False)
    tb = testing.bias_tensor(bias)
    if tb is not None:
        tb.requires_grad_(True)
    testing.compare_forward(CutlassFwOp, q, k, v, bias)
    assert _launch.last_family("forward") == "tc"
    testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)
    assert _launch.last_family("backward") == "tc"


@pytest.mark.slow
@pytest.mark.parametrize(
    "bias",
    [None, attncore.LowerTriangularMask(), attncore.LocalAttentionFromBottomRightMask(window_left=250, window_right=40)],
    ids=lambda b: type(b).__name__,
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_tensor_core_forward_fast_tiles(bias: attncore.AttentionBias | None, dtype: torch.dtype) -> None:
    """Sequences long enough for whole query x key tiles inside the band (64 x 64 in bf16 at this head dim,
    128 x 64 in fp32): the forward's unmasked path (raw row maximum, the scale inside the exponent) next
    to masked tiles and a partial last query tile."""
    gen = torch.Generator().manual_seed(11)
    q = testing.randn(1, 300, 1, 24, gen=gen, dtype=dtype)
    k = testing.randn(1, 320, 1, 24, gen=gen, dtype=dtype)
    v = testing.randn(1, 320, 1, 40, gen=gen, dtype=dtype)
    testing.compare_forward(CutlassFwOp, q, k, v, bias)
    assert _launch.last_family("forward") == "tc"


def _order_call(
    monkeypatch: pytest.MonkeyPatch, name: str, order: Optional[str], packed: bool, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, testing.Bias]:
    """A CTA-order test's environment (``name`` set to ``order``, or unset) and call: packed sequences of 150, 40
    and 90 rows under a block-diagonal causal mask, or 2 batch entries of 150 under a causal one; 2 heads."""
    if order is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, order)
    gen = torch.Generator().manual_seed(seed)
    b, m = (1, 280) if packed else (2, 150)
    q, k, v = (testing.randn(b, m, 2, d, gen=gen, dtype=dtype) for d in (24, 24, 40))
    bias = attncore.BlockDiagonalCausalMask.from_seqlens([150, 40, 90]) if packed else attncore.LowerTriangularMask()
    return q, k, v, bias


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dtype", "order", "packed", "expected"),
    [
        (torch.float32, "rows", True, "rows"),
        (torch.float32, None, False, "rows"),
        (torch.float32, "heads", True, "heads"),
        (torch.bfloat16, "rows", True, "heads"),
    ],
    ids=str,
)
def test_forward_cta_order(dtype: torch.dtype, order: Optional[str], packed: bool, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ATTNCORE_CUTLASS_FWD_ORDER: the fp32 CTAs' linear index renumbered row-block major ("rows"; by default
    under a band) or taken as launched ("heads"; fp16/bf16, whatever the variable says). A grid of 3 row blocks
    x 3 packed sequences of 150, 40 and 90 rows (row blocks past the short ones' ends) or x 2 batch entries, x 2
    heads, under a causal mask: every (row block, sequence, head) computed once into a poisoned output."""
    q, k, v, bias = _order_call(monkeypatch, "ATTNCORE_CUTLASS_FWD_ORDER", order, packed, dtype, seed=23)
    testing.compare_forward(CutlassFwOp, q, k, v, bias)
    assert (_launch.last_family("forward"), _launch.last_forward_order()) == ("tc", expected)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dtype", "order", "packed", "expected"),
    [(torch.float32, None, True, "rows"), (torch.float32, "rows", False, "rows"), (torch.bfloat16, "rows", False, "heads")],
    ids=str,
)
def test_backward_cta_order(dtype: torch.dtype, order: Optional[str], packed: bool, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ATTNCORE_CUTLASS_BWD_ORDER: the fp32 atomic-dQ dK/dV CTAs' linear index renumbered key-block major
    ("rows"; by default under a band) or taken as launched ("heads"; every bf16 kernel, whatever the variable
    says). A grid of 3 key blocks x 3 packed sequences of 150, 40 and 90 rows or x 2 batch entries, x 2 heads,
    under a causal mask: every (key block, sequence, head) computed once (dK and dV poisoned first in a batch,
    zeroed for packed sequences; a CTA run twice would add its dQ twice)."""
    q, k, v, bias = _order_call(monkeypatch, "ATTNCORE_CUTLASS_BWD_ORDER", order, packed, dtype, seed=29)
    testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)
    assert (_launch.last_family("backward"), _launch.last_backward_order()) == ("tc", expected)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kd", "mk", "keys", "variant", "other"),
    [
        (100, 200, None, "D=128 keys=32 stages=2 warps=4", None),
        (100, 200, "128=16", "D=128 keys=16 stages=2 warps=4", None),
        (40, 520, None, "D=64 keys=128 stages=split-kv warps=4", "D=64 keys=64 stages=2 warps=4"),
        (40, 200, None, "D=64 keys=64 stages=2 warps=4", None),
        (40, 520, "", "D=64 keys=64 stages=2 warps=4", None),
        (198, 200, None, "D=256 keys=32 stages=split-kv warps=8", None),
        (198, 200, "", "D=256 keys=16 stages=2 warps=8", None),
    ],
)
def test_fp32_forward_key_tiles(kd: int, mk: int, keys: Optional[str], variant: str, other: Optional[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The fp32 forward's key tiles (ATTNCORE_CUTLASS_FP32_FWD_KEYS): at padded head dim 64, 128 keys with K
    and V loaded into a buffer each, interleaved with the products (split K/V), for calls without a band
    mask and with at least 512 keys (default; ``other``: the configuration of the causal call and of the
    20-key call), else 64; at 128, 32 keys (default) or 16; at 256, 32 split (default) or 16.
    Whole tiles inside a causal band next to cut ones, a partial last query tile, Kv != K (at 256, rows not
    16-byte aligned: element loads), then with a tensor bias, then keys that fit one tile; the launcher
    reports the configuration that ran. (The emulation runs cp.async synchronously: a missing barrier of
    the split pipeline shows on the GPU tests, not here.)"""
    if keys is None:
        monkeypatch.delenv("ATTNCORE_CUTLASS_FP32_FWD_KEYS", raising=False)
    else:
        monkeypatch.setenv("ATTNCORE_CUTLASS_FP32_FWD_KEYS", keys)
    monkeypatch.delenv("ATTNCORE_CUTLASS_FWD_WARP_MASKS", raising=False)  # the default kernels' names
    monkeypatch.setenv("ATTNCORE_CUTLASS_FP32_FWD_WIDE", "")  # the key tiles, not the wide warps (their own test)
    gen = torch.Generator().manual_seed(37)
    q = testing.randn(1, 150, 1, kd, gen=gen, dtype=torch.float32)
    k = testing.randn(1, mk, 1, kd, gen=gen, dtype=torch.float32)
    v = testing.randn(1, mk, 1, kd - 28, gen=gen, dtype=torch.float32)
    testing.compare_forward(CutlassFwOp, q, k, v, attncore.LowerTriangularFromBottomRightMask())
    assert (_launch.last_family("forward"), _launch.last_forward_variant()) == ("tc", other or variant)
    testing.compare_forward(CutlassFwOp, q, k, v, testing.randn(1, 1, 150, mk, gen=gen, dtype=torch.float32))
    assert (_launch.last_family("forward"), _launch.last_forward_variant()) == ("tc", variant)
    testing.compare_forward(CutlassFwOp, q, k, v, None)
    assert (_launch.last_family("forward"), _launch.last_forward_variant()) == ("tc", variant)
    testing.compare_forward(CutlassFwOp, q, k[:, :20], v[:, :20], None)
    assert (_launch.last_family("forward"), _launch.last_forward_variant()) == ("tc", other or variant)


def _bias(kind: str, mq: int, mk: int, gen: torch.Generator, dtype: torch.dtype) -> testing.Bias:
    """The bias a test case names (:func:`testing.named_bias`), a tensor one of 1 x 2 heads x mq x mk."""
    return testing.named_bias(kind, (1, 2, mq, mk), gen, dtype)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kd", "kv", "mk", "kind", "split", "tiles"),
    [
        (128, 128, 200, "causal", "128", "D=128 keys=32 stages=2 warps=4"),
        (98, 72, 90, "tensor", "128", "D=128 keys=32 stages=2 warps=4"),
        (72, 128, 200, "local 30 20", "64,128", "D=128 keys=32 stages=2 warps=4"),
        (42, 24, 200, "none", "64", "D=64 keys=64 stages=2 warps=4"),
        (64, 64, 150, "causal", "64", "D=64 keys=64 stages=2 warps=4"),
    ],
    ids=str,
)
def test_fp32_forward_tf32_split(kd: int, kv: int, mk: int, kind: str, split: str, tiles: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ATTNCORE_CUTLASS_FP32_FWD_SPLIT: K and V split into tf32 parts once per CTA, on their way from global
    memory through registers (tf32_tiles.cuh). Matches the float64 truth, and gives the same bits as the
    kernel with the same tiles that splits them in every warp (the products sum in the same order): 16-byte
    loads (128, 72 and 64 columns) and element loads (98 and 42 columns: not a multiple of 4), Kv != K both
    ways, a partial last key tile, causal and local bands from the bottom right, a tensor bias; 32-key tiles
    at 128 and 64-key tiles at 64."""
    monkeypatch.delenv("ATTNCORE_CUTLASS_FWD_WARP_MASKS", raising=False)
    monkeypatch.delenv("ATTNCORE_CUTLASS_FWD_WARPS", raising=False)
    monkeypatch.setenv("ATTNCORE_CUTLASS_FP32_FWD_WIDE", "")  # the kernel to compare with: one warp per 16 rows
    gen = torch.Generator().manual_seed(kd + mk)
    q = testing.randn(1, 150, 2, kd, gen=gen, dtype=torch.float32)
    k = testing.randn(1, mk, 2, kd, gen=gen, dtype=torch.float32)
    v = testing.randn(1, mk, 2, kv, gen=gen, dtype=torch.float32)
    b = _bias(kind, 150, mk, gen, torch.float32)
    monkeypatch.setenv("ATTNCORE_CUTLASS_FP32_FWD_SPLIT", split)
    testing.compare_forward(CutlassFwOp, q, k, v, b)
    variant = _launch.last_forward_variant()
    assert variant is not None and variant.startswith(tiles.partition(" stages")[0] + " stages=tf32-split warps=4"), variant
    inp = testing.inputs(q, k, v, b)
    split_out = CutlassFwOp.apply(inp, needs_lse=True, dropout_seed=0)
    monkeypatch.delenv("ATTNCORE_CUTLASS_FP32_FWD_SPLIT")
    monkeypatch.setenv("ATTNCORE_CUTLASS_FP32_FWD_KEYS", "")  # the 64-key tiles at 64, 32 at 128
    plain = CutlassFwOp.apply(inp, needs_lse=True, dropout_seed=0)
    assert _launch.last_forward_variant() == tiles
    assert split_out.lse is not None and plain.lse is not None
    assert torch.equal(split_out.out, plain.out) and torch.equal(split_out.lse, plain.lse)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("entry", "kd", "kv", "mq", "kind", "variant"),
    [
        ("256=4x2", 198, 170, 150, "causal", "D=256 keys=32 stages=split-kv warps=8 wide=4x2"),
        ("256=4x2", 256, 100, 200, "tensor", "D=256 keys=32 stages=split-kv warps=8 wide=4x2"),
        ("256=4x2", 160, 256, 150, "local 40 10", "D=256 keys=32 stages=split-kv warps=8 wide=4x2"),
        ("256=2x2/16", 256, 256, 70, "tensor", "D=256 keys=16 stages=split-kv warps=4 wide=2x2"),
        ("256=2x2/16", 200, 180, 150, "local 40 10", "D=256 keys=16 stages=split-kv warps=4 wide=2x2"),
        ("128=2x2", 100, 72, 150, "causal", "D=128 keys=32 stages=split-kv warps=4 wide=2x2"),
        ("128=2x2", 128, 128, 70, "none", "D=128 keys=32 stages=split-kv warps=4 wide=2x2"),
        ("128=2x2", 100, 48, 150, "tensor", "D=128 keys=32 stages=split-kv warps=4 wide=2x2"),
        ("128=2x2, 128=4x1", 100, 72, 150, "none", "D=128 keys=32 stages=split-kv warps=4 wide=4x1"),
        ("128=4x1", 98, 128, 150, "local 30 0", "D=128 keys=32 stages=split-kv warps=4 wide=4x1"),
        ("128=4x1", 128, 120, 150, "tensor", "D=128 keys=32 stages=split-kv warps=4 wide=4x1"),
        (None, 100, 72, 150, "causal", "D=128 keys=32 stages=split-kv warps=4 wide=2x2"),
        (None, 128, 100, 150, "tensor", "D=128 keys=32 stages=split-kv warps=4 wide=4x1"),
        (None, 198, 136, 150, "causal", "D=256 keys=32 stages=split-kv warps=8"),
    ],
    ids=str,
)
def test_fp32_forward_wide_warps(entry: Optional[str], kd: int, kv: int, mq: int, kind: str, variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ATTNCORE_CUTLASS_FP32_FWD_WIDE: warps of 32 query rows and a slice of the head dim (entries "dim=GxS": G
    row groups, S slices whose partial scores meet in shared memory; "/16": 16-key tiles), and the default
    (None: unset), which runs 2 x 2 at head dim 128 under a band, 4 x 1 without, and nothing new at 256.
    An explicit ATTNCORE_CUTLASS_FP32_FWD_KEYS turns the default off; a list of two entries runs the launcher's
    first. Matches the float64 truth with the output's columns split between warps where the slice past Kv
    is padding or partial (Kv = 100, 170, 72, 48, 120, 180), element loads (198, 98, 170 columns: rows not 16-byte
    aligned), a partial last query tile and key tile, causal and local bands from the bottom right (rows that
    see no key of a tile skip it), a tensor bias, and a call of 70 queries (a row group past the sequence's
    end); the log-sum-exp written by slice 0."""
    if os.environ.get("ATTNCORE_CUTLASS_FWD_WARPS", "").strip() in ("4", "8"):
        pytest.skip("ATTNCORE_CUTLASS_FWD_WARPS is set: it vetoes the wide warps (read once per process)")
    monkeypatch.delenv("ATTNCORE_CUTLASS_FWD_WARP_MASKS", raising=False)
    monkeypatch.delenv("ATTNCORE_CUTLASS_FP32_FWD_KEYS", raising=False)
    monkeypatch.delenv("ATTNCORE_CUTLASS_FP32_FWD_SPLIT", raising=False)
    if entry is None:
        monkeypatch.delenv("ATTNCORE_CUTLASS_FP32_FWD_WIDE", raising=False)
    else:
        monkeypatch.setenv("ATTNCORE_CUTLASS_FP32_FWD_WIDE", entry)
    gen = torch.Generator().manual_seed(kd + kv + mq)
    mk = 90 if kind == "local 40 10" else 200
    q = testing.randn(1, mq, 2, kd, gen=gen, dtype=torch.float32)
    k = testing.randn(1, mk, 2, kd, gen=gen, dtype=torch.float32)
    v = testing.randn(1, mk, 2, kv, gen=gen, dtype=torch.float32)
    testing.compare_forward(CutlassFwOp, q, k, v, _bias(kind, mq, mk, gen, torch.float32))
    assert (_launch.last_family("forward"), _launch.last_forward_variant()) == ("tc", variant)
    if entry is None and kd <= 128:  # key tiles named: the default steps aside for them
        monkeypatch.setenv("ATTNCORE_CUTLASS_FP32_FWD_KEYS", "128=16")
        testing.compare_forward(CutlassFwOp, q, k, v, _bias(kind, mq, mk, gen, torch.float32))
        assert _launch.last_forward_variant() == "D=128 keys=16 stages=2 warps=4"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dtype", "kd", "mq", "mk", "kind"),
    [
        (torch.bfloat16, 24, 150, 200, "causal"),
        (torch.float16, 100, 300, 260, "local 20 5"),
        (torch.float32, 24, 150, 200, "local 30 0"),
        (torch.float32, 198, 150, 200, "causal"),
        (torch.float32, 100, 150, 200, "causal"),
        (torch.bfloat16, 198, 150, 200, "local 40 0"),
        (torch.bfloat16, 24, 150, 200, "tensor"),
        (torch.float32, 24, 150, 200, "none"),
    ],
    ids=str,
)
def test_tensor_core_forward_warp_masks(dtype: torch.dtype, kd: int, mq: int, mk: int, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ATTNCORE_CUTLASS_FWD_WARP_MASKS=1: under a band, each warp classifies a key tile for its own 16 rows
    (skips the products where none of them sees a key, the plain path where all see every key). Causal
    and local bands (from the bottom right, Mq != Mk) whose edges cross a CTA's rows (windows narrower
    than a key tile: some warps of a CTA see a tile and others none), a partial last query tile (rows past
    the end skip every tile); a tensor bias and no mask run the default kernels. 64-key tiles (bf16 at 24
    and fp16 at 100 columns, fp32 at 24) and 32-key tiles (fp32 at 100, bf16 at 198) of 4-warp CTAs, fp32's
    split 32-key tiles of 8-warp CTAs at 198 columns."""
    if os.environ.get("ATTNCORE_CUTLASS_FWD_WARPS", "").strip() in ("4", "8"):
        pytest.skip("ATTNCORE_CUTLASS_FWD_WARPS is set: the warp-mask kernels run on the default tiles only")
    monkeypatch.setenv("ATTNCORE_CUTLASS_FWD_WARP_MASKS", "1")
    monkeypatch.delenv("ATTNCORE_CUTLASS_FP32_FWD_KEYS", raising=False)
    gen = torch.Generator().manual_seed(kd + mq)
    q = testing.randn(1, mq, 2, kd, gen=gen, dtype=dtype)
    k = testing.randn(1, mk, 2, kd, gen=gen, dtype=dtype)
    v = testing.randn(1, mk, 2, kd - 16, gen=gen, dtype=dtype)
    b = _bias(kind, mq, mk, gen, dtype)
    testing.compare_forward(CutlassFwOp, q, k, v, b)
    variant = _launch.last_forward_variant()
    banded = kind == "causal" or kind.startswith("local")  # nothing to classify without a band: the default kernels
    assert _launch.last_family("forward") == "tc" and variant is not None and variant.endswith(" warp-masks") == banded, variant


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kd", "pairs", "determ", "variant", "dq"),
    [
        (16, "", False, "one", "atomic"),
        (16, "", True, "one", "serial"),
        (16, "", True, "one", "kernel"),
        (80, "", False, "one", "atomic"),
        (80, "", True, "one", "serial"),
        (80, "", True, "one", "kernel"),
        (200, "", False, "split", "kernel"),
        (80, "128", False, "paired", "atomic"),
        (200, "128,256", True, "paired", "serial"),
        (200, "128,256", True, "paired", "kernel"),
        (200, None, False, "paired", "atomic"),
    ],
)
def test_fp32_backward_on_tensor_cores_at_every_tile_width(
    kd: int, pairs: Optional[str], determ: bool, variant: str, dq: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fp32 backward configurations (head dims padded to 64, 128 and 256: 64-query / 64-key steps
    in one dK/dV launch; 16 / 16 in one launch; 16 / 16 with dK and dV in two launches; and where
    ``ATTNCORE_CUTLASS_FP32_BWD_PAIRS`` lists the padded head dim, paired 8-warp CTAs: one dK/dV launch whose
    dV warps hand P^T to their dK partners, dQ CTAs whose warp pairs swap P and dP and split dQ's columns),
    with Kv != K, under a causal mask that cuts tiles, then with a tensor bias and its gradient (staged per
    tile pair next to the operand tiles). Except for the split launches, the dK/dV CTAs add dQ atomically
    (at padded 64 with 32-query steps) unless torch's deterministic mode is on; then each adds the dQ of its
    key blocks in order (the emulated device's occupancy: two per head here, each into its own slice), or,
    with ATTNCORE_CUTLASS_FP32_DQ_SPLITS=0, the dQ kernel runs."""
    if pairs is None:  # the default: paired at D = 256
        monkeypatch.delenv("ATTNCORE_CUTLASS_FP32_BWD_PAIRS", raising=False)
    else:
        monkeypatch.setenv("ATTNCORE_CUTLASS_FP32_BWD_PAIRS", pairs)
    if determ and dq == "kernel":  # the two-kernel order, asked for by name
        monkeypatch.setenv("ATTNCORE_CUTLASS_FP32_DQ_SPLITS", "0")
    else:
        monkeypatch.delenv("ATTNCORE_CUTLASS_FP32_DQ_SPLITS", raising=False)
    with testing.deterministic_algorithms(determ):
        gen = torch.Generator().manual_seed(kd)
        q = testing.randn(1, 70, 1, kd, gen=gen, dtype=torch.float32)
        k = testing.randn(1, 90, 1, kd, gen=gen, dtype=torch.float32)
        v = testing.randn(1, 90, 1, kd // 2 + 8, gen=gen, dtype=torch.float32)
        testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, attncore.LowerTriangularFromBottomRightMask())
        assert (_launch.last_family("backward"), _launch.last_backward_variant(), _launch.last_backward_dq()) == ("tc", variant, dq)
        bias = testing.randn(1, 1, 70, 90, gen=gen, dtype=torch.float32).requires_grad_(True)
        testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)
        assert (_launch.last_family("backward"), _launch.last_backward_variant(), _launch.last_backward_dq()) == ("tc", variant, dq)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kd", "splits", "kind", "dq"),
    [
        (40, None, "causal", "serial"),
        (100, "1", "local 30 10", "serial"),
        (100, "3", "none", "serial"),
        (200, None, "tensor", "serial"),
        (40, "9", "local 0 0", "serial"),
    ],
    ids=str,
)
def test_fp32_deterministic_backward_adds_dq_serially(kd: int, splits: Optional[str], kind: str, dq: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torch's deterministic mode the fp32 dK/dV CTAs still add dQ, serially: ``splits`` CTAs per (sequence,
    head) each take every splits-th key block in order and add its dQ into their own zeroed slice (one slice:
    dq itself), and the slices are summed in order. ATTNCORE_CUTLASS_FP32_DQ_SPLITS forces the count (more than
    the key blocks: one each; 0: the dQ kernel); unset, the emulated device's occupancy gives 2 per head here.
    Against the float64 truth (bias gradient included); causal and local bands (a window's key blocks start at
    query rows that are not step-aligned), a tensor bias. (Bitwise reproducibility is the GPU test's: the
    emulation runs one block at a time; the two-kernel order, =0, is the every-tile-width test's.)"""
    if splits is None:
        monkeypatch.delenv("ATTNCORE_CUTLASS_FP32_DQ_SPLITS", raising=False)
    else:
        monkeypatch.setenv("ATTNCORE_CUTLASS_FP32_DQ_SPLITS", splits)
    gen = torch.Generator().manual_seed(kd + 5)
    q = testing.randn(1, 100, 2, kd, gen=gen, dtype=torch.float32)
    k = testing.randn(1, 200, 2, kd, gen=gen, dtype=torch.float32)
    v = testing.randn(1, 200, 2, kd - 8, gen=gen, dtype=torch.float32)
    bias = _bias(kind, 100, 200, gen, torch.float32)
    if isinstance(bias, torch.Tensor):
        bias.requires_grad_(True)
    with testing.deterministic_algorithms(True):
        testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)
        assert (_launch.last_family("backward"), _launch.last_backward_dq()) == ("tc", dq)


@pytest.mark.slow
def test_fp32_serial_dq_over_packed_sequences_and_shared_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serial dQ (torch's deterministic mode, 2 CTAs per (sequence, head)) over packed sequences of 100, 30 and 70
    rows (2, 1 and 2 key blocks of 64: the second CTA of the short sequence has no key block, each CTA's blocks
    are bounded by its own sequence) and GQA keys and values (5-D, stride-0 head views, their gradients summed
    over the heads that share them), under a block-diagonal causal mask, against the float64 truth."""
    monkeypatch.setenv("ATTNCORE_CUTLASS_FP32_DQ_SPLITS", "2")
    gen = torch.Generator().manual_seed(31)
    q, k, v, _ = testing.make_qkv("5d-gqa", 1, 200, 200, torch.float32, gen)
    bias = attncore.BlockDiagonalCausalMask.from_seqlens([100, 30, 70])
    with testing.deterministic_algorithms(True):
        testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)
        assert (_launch.last_family("backward"), _launch.last_backward_dq()) == ("tc", "serial")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_tensor_core_forward_with_a_negative_scale(dtype: torch.dtype) -> None:
    """A negative scale turns the largest raw score into the smallest: such calls must not take the
    unmasked path, whose row maximum is taken before scaling. With scores of a few hundred, that
    maximum would be off by hundreds and exp2 would overflow to inf (NaN out), on tiles that qualify."""
    gen = torch.Generator().manual_seed(17)
    q = 5 * testing.randn(1, 200, 1, 24, gen=gen, dtype=torch.float32)
    k = 5 * testing.randn(1, 192, 1, 24, gen=gen, dtype=torch.float32)
    v = testing.randn(1, 192, 1, 24, gen=gen, dtype=torch.float32)
    testing.compare_forward(CutlassFwOp, q.to(dtype), k.to(dtype), v.to(dtype), None, scale=-1.0)
    assert _launch.last_family("forward") == "tc"


@pytest.mark.slow
def test_fp32_forward_over_many_keys_does_not_drift() -> None:
    """2048 keys: 768 tensor-core accumulations per output element. The emulated mma truncates its sum
    like the tensor cores do, so products chained into one accumulator would drift past fp32's
    tolerance here; each step's big product is summed apart and added in round-to-nearest (Tf32::mma_big_rn)."""
    gen = torch.Generator().manual_seed(23)
    q = testing.randn(1, 64, 1, 16, gen=gen, dtype=torch.float32)
    k = testing.randn(1, 2048, 1, 16, gen=gen, dtype=torch.float32)
    v = testing.randn(1, 2048, 1, 16, gen=gen, dtype=torch.float32) + 3.0  # one sign: truncation errors add up
    testing.compare_forward(CutlassFwOp, q, k, v, None)
    assert _launch.last_family("forward") == "tc"


@pytest.mark.slow
def test_fp32_backward_over_many_queries_does_not_drift() -> None:
    """dK and dV of each key sum over 2048 queries: 256 tensor-core steps per element, each truncated by the
    emulated mma as by the hardware, which only the round-to-nearest sums of Tf32::mma_big_rn keep from drifting."""
    gen = torch.Generator().manual_seed(29)
    q = testing.randn(1, 2048, 1, 16, gen=gen, dtype=torch.float32)
    k = testing.randn(1, 64, 1, 16, gen=gen, dtype=torch.float32)
    v = testing.randn(1, 64, 1, 16, gen=gen, dtype=torch.float32) + 3.0
    testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, None)
    assert _launch.last_family("backward") == "tc"


@pytest.mark.slow
def test_fp32_tensor_cores_carry_a_nan_to_its_row() -> None:
    """A NaN in one query, with the bits CUDA's arithmetic produces (0x7fffffff), makes that query's output
    and dQ row NaN and leaves every other row finite (fp32 on the tensor cores, both directions). The split's
    integer rounding of the big part carries those bits into the sign (-0): the NaN must reach the result
    through the small part (an earlier split that also rounded the small part in integers lost it)."""
    gen = torch.Generator().manual_seed(31)
    q = testing.randn(1, 40, 1, 32, gen=gen, dtype=torch.float32)
    k = testing.randn(1, 48, 1, 32, gen=gen, dtype=torch.float32)
    v = testing.randn(1, 48, 1, 32, gen=gen, dtype=torch.float32)
    q.view(torch.int32)[0, 5, 0, 3] = 0x7FFFFFFF
    inp = testing.inputs(q, k, v, None)
    res = CutlassFwOp.apply(inp, needs_lse=True, dropout_seed=0)
    assert _launch.last_family("forward") == "tc" and res.lse is not None
    out = Inputs._to5(res.out)[0, :, 0, 0]  # [M, K]
    rows = torch.arange(40) != 5
    assert bool(out[5].isnan().all()) and bool(out[rows].isfinite().all())
    go = testing.randn(*res.out.shape, gen=gen, dtype=torch.float32)
    got = CutlassBwOp.apply(inp, go, res.out, res.lse, dropout_seed=0, grad_lse=None)
    assert _launch.last_family("backward") == "tc"
    dq = Inputs._to5(got.dq)[0, :, 0, 0]
    assert bool(dq[5].isnan().all()) and bool(dq[rows].isfinite().all())
