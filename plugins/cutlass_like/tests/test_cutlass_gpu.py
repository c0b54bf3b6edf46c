"""The CUDA kernels against the float64 ground truth on a GPU: both kernel families (tensor cores and
portable), every bias kind, head dims from 8 to 256 with Kv != K, odd and long sequences, GQA views,
unaligned rows, mixed output dtype, determinism. Skipped without a GPU, or (with the reason) where
negotiation rejects the binary on this device (a gpu_matrix entry that omits it)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Optional

import pytest
import torch

import attncore
import attncore.inputs
from attncore.inputs import Inputs
from attncore_cutlass import _launch, matrix, negotiation
from attncore_cutlass.ops import CutlassBwOp, CutlassFwOp
from attncore_cutlass.plugin import (
    BWD_ORDER_ENV,
    KEYS_ENV,
    ORDER_ENV,
    PAIRS_ENV,
    SPLIT_ENV,
    WARP_MASKS_ENV,
    WARPS_ENV,
    WIDE_256_SMEM,
    WIDE_ENV,
    _atoi,
    backward_order,
    forward_order,
    fp32_forward_key_tiles,
    fp32_forward_wide,
    fp32_paired_head_dims,
)
from attncore_reference import testing

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")
HALF = [torch.float16, torch.bfloat16]
CASES = [c for c in testing.CASES if not c.paged]


@pytest.fixture(autouse=True)
def _usable() -> Iterator[None]:
    matrix.ensure_built()  # under gpu_matrix: the entry's binary (a no-op otherwise)
    cap = tuple(int(x) for x in torch.cuda.get_device_capability())
    why = negotiation.binary_reasons(negotiation.facts(), negotiation.current(cap), cap)  # type: ignore[arg-type]  # (major, minor)
    if why:
        pytest.skip("cutlass binary rejected here: " + "; ".join(str(r) for r in why))
    _launch.POISON = True
    try:
        yield
    finally:
        _launch.POISON = False


@contextlib.contextmanager
def family(name: str) -> Iterator[None]:
    if name == "simt":
        with _launch.portable_kernels():
            yield
    else:
        yield


def _tensor_cores() -> bool:
    """Whether the binary's code for this device has tensor-core bodies (not so for a 7.5+PTX build)."""
    cap = tuple(int(x) for x in torch.cuda.get_device_capability())
    return bool(_launch.extension(cap).tc_compiled_for_device())  # type: ignore[arg-type]  # (major, minor)


#: Shared memory per block (bytes, without / with a tensor bias) that the tensor-core backward's largest
#: kernel needs, by (fp32 or not, padded head dim): the figures in bwd_tc.cu's header comment.
BACKWARD_SMEM = {
    (False, 64): (56320, 92160),
    (False, 128): (105472, 141312),
    (False, 256): (135680, 155648),
    (True, 64): (105472, 141312),
    (True, 128): (101632, 113664),
    (True, 256): (199936, 211968),
}
#: The same for the paired 8-warp fp32 kernels (ATTNCORE_CUTLASS_FP32_BWD_PAIRS lists the padded head dims; unset: 256).
PAIRED_BACKWARD_SMEM = {128: (109568, 121856), 256: (207872, 220160)}
#: fp32 dK/dV kernels that add dQ atomically (outside torch's deterministic mode; no dQ kernel), by padded
#: head dim and pairing; the split D = 256 launches have none. Where these do not fit, the kernels above run.
ATOMIC_DQ_SMEM = {(64, False): (79360, 96768), (128, False): (106240, 114944), (128, True): (110336, 119040), (256, True): (208640, 217344)}


def _backward_smem(fp32: bool, padded: int, bias: bool) -> int:
    paired = fp32 and padded in fp32_paired_head_dims(os.environ)
    need = (PAIRED_BACKWARD_SMEM[padded] if paired else BACKWARD_SMEM[(fp32, padded)])[int(bias)]
    atomic = ATOMIC_DQ_SMEM.get((padded, paired)) if fp32 and not torch.are_deterministic_algorithms_enabled() else None
    return need if atomic is None else min(need, atomic[int(bias)])


def _smem_optin() -> int:
    """Shared memory per block this GPU grants a kernel that opts in (bytes)."""
    return int(torch.cuda.get_device_properties(CUDA).shared_memory_per_block_optin)  # type: ignore[attr-defined]  # in the CUDA build's properties, not in the stubs


def _expected_family(name: str, dtype: torch.dtype, direction: str = "backward", head_dim: int = 64, bias: bool = False) -> str:
    """Tensor cores run every forward and backward (fp32 as 3xTF32) where the binary has them, except a
    backward whose tiles need more shared memory per block than this GPU has (the portable kernels run)."""
    if name == "simt" or not _tensor_cores():
        return "simt"
    if direction == "backward":
        padded = 64 if head_dim <= 64 else 128 if head_dim <= 128 else 256
        need = _backward_smem(dtype == torch.float32, padded, bias)
        optin = _smem_optin()
        if optin < need:
            return "simt"
    return "tc"


@pytest.mark.parametrize("fam", ["tc", "simt"])
@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
@pytest.mark.parametrize("layout", ["4d", "5d-gqa"])
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_every_bias_kind(case: testing.Case, layout: str, dtype: torch.dtype, fam: str) -> None:
    q, k, v, bias, _ = testing.build(case, layout, dtype, requires_grad=False)
    q, k, v, bias = testing.moved(q, k, v, bias, CUDA)
    tb = testing.bias_tensor(bias)
    if tb is not None:
        tb.requires_grad_(True)
    with family(fam):
        testing.compare_forward(CutlassFwOp, q, k, v, bias)
        assert _launch.last_family("forward") == _expected_family(fam, dtype, "forward")
        testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)
        assert _launch.last_family("backward") == _expected_family(fam, dtype, head_dim=max(q.shape[-1], v.shape[-1]), bias=tb is not None)


def _bias_333x517(kind: str, seed: int) -> testing.Bias:
    """The bias an fp32 forward test names (:func:`testing.named_bias`), a tensor one of 2 x 3 x 333 x 517 on the GPU."""
    bias = testing.named_bias(kind, (2, 3, 333, 517), torch.Generator().manual_seed(seed), torch.float32)
    return bias.to(CUDA) if isinstance(bias, torch.Tensor) else bias


def _qkv(b: int, mq: int, mk: int, h: int, kd: int, kv: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q = testing.randn(b, mq, h, kd, gen=gen, dtype=dtype).to(CUDA)
    k = testing.randn(b, mk, h, kd, gen=gen, dtype=dtype).to(CUDA)
    v = testing.randn(b, mk, h, kv, gen=gen, dtype=dtype).to(CUDA)
    return q, k, v


@pytest.mark.parametrize("fam", ["tc", "simt"])
@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
@pytest.mark.parametrize(("kd", "kv"), [(64, 64), (128, 128), (256, 256), (80, 80), (96, 160), (40, 24), (16, 256), (256, 32)])
@pytest.mark.parametrize("masked", [False, True])
def test_head_dims_and_odd_lengths(kd: int, kv: int, dtype: torch.dtype, fam: str, masked: bool) -> None:
    q, k, v = _qkv(2, 333, 517, 3, kd, kv, dtype, seed=kd * 1000 + kv)
    bias = attncore.LowerTriangularFromBottomRightMask() if masked else None
    with family(fam):
        testing.compare_forward(CutlassFwOp, q, k, v, bias)
        testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)
        assert _launch.last_family("backward") == _expected_family(fam, dtype, head_dim=max(kd, kv))


@pytest.mark.parametrize(
    ("kd", "kv", "pairs"),
    [(80, 80, "128"), (128, 96, "128, 256"), (256, 256, "256"), (200, 108, "256"), (32, 128, "128"), (16, 256, "256"), (200, 108, "")],
)
@pytest.mark.parametrize("bias_kind", ["causal", "tensor"])
@pytest.mark.parametrize("determ", [False, True], ids=["atomic-dq", "deterministic"])
def test_fp32_paired_backward(kd: int, kv: int, pairs: str, bias_kind: str, determ: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paired 8-warp fp32 backward kernels (dK/dV with a P^T hand-off, dQ with P and dP swapped and the
    columns split), chosen per call by ATTNCORE_CUTLASS_FP32_BWD_PAIRS ("" runs the 4-warp D = 256 kernels
    instead): odd lengths, Kv != K (K below half the padded width: the second dQ half writes nothing), a
    causal mask that cuts tiles or a tensor bias with its gradient. Outside torch's deterministic mode the
    one and paired dK/dV launches add dQ atomically (a column slice per warp, 32 or 16 wide, some past K)
    instead of the dQ kernel."""
    monkeypatch.setenv(PAIRS_ENV, pairs)
    monkeypatch.setenv("ATTNCORE_CUTLASS_FP32_DQ_SPLITS", "0")  # deterministic: the dQ kernel (serial dQ has its own test)
    with testing.deterministic_algorithms(determ):
        q, k, v = _qkv(2, 333, 517, 3, kd, kv, torch.float32, seed=kd * 7 + kv)
        bias: testing.Bias = attncore.LowerTriangularFromBottomRightMask()
        if bias_kind == "tensor":
            gen = torch.Generator().manual_seed(kd)
            bias = testing.randn(2, 3, 333, 517, gen=gen, dtype=torch.float32).to(CUDA).requires_grad_(True)
        testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)
        assert _launch.last_family("backward") == _expected_family("tc", torch.float32, head_dim=max(kd, kv), bias=bias_kind == "tensor")
        padded = 128 if max(kd, kv) <= 128 else 256
        if _launch.last_family("backward") == "tc":  # which dK/dV kernels ran: the switch is honoured
            paired = padded in fp32_paired_head_dims({PAIRS_ENV: pairs})
            variant = "paired" if paired else "one" if padded == 128 else "split"
            assert _launch.last_backward_variant() == variant
            assert _launch.last_backward_dq() == ("kernel" if determ or variant == "split" else "atomic")


@pytest.mark.parametrize("splits", ["1", "3", "8", None])
@pytest.mark.parametrize(("kd", "kv", "pairs"), [(64, 64, "256"), (100, 72, "256"), (128, 128, "128,256"), (198, 136, "256")])
def test_fp32_deterministic_backward_adds_dq_serially(splits: Optional[str], kd: int, kv: int, pairs: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Serial dQ under torch's deterministic mode (ATTNCORE_CUTLASS_FP32_DQ_SPLITS CTAs per head, None: by the
    device's occupancy): 18 heads and 9 key blocks, so CTAs of many heads run at once and slices are summed;
    against the float64 truth (causal, odd lengths, Kv != K), then three calls bitwise equal (what the
    emulation, which runs one block at a time, cannot show)."""
    monkeypatch.setenv(PAIRS_ENV, pairs)
    if splits is None:
        monkeypatch.delenv("ATTNCORE_CUTLASS_FP32_DQ_SPLITS", raising=False)
    else:
        monkeypatch.setenv("ATTNCORE_CUTLASS_FP32_DQ_SPLITS", splits)
    q, k, v = _qkv(2, 333, 517, 9, kd, kv, torch.float32, seed=kd + 11)
    bias = attncore.LowerTriangularFromBottomRightMask()
    with testing.deterministic_algorithms(True):
        testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)
        if _launch.last_family("backward") != "tc":
            pytest.skip("the portable kernels ran (no tensor-core backward here)")
        if splits is not None:
            assert _launch.last_backward_dq() == "serial"
        inputs = Inputs.create(q, k, v, bias)
        res = CutlassFwOp.apply(inputs, needs_lse=True, dropout_seed=0)
        assert res.lse is not None
        go = torch.randn_like(res.out)
        runs = [CutlassBwOp.apply(inputs, go, res.out, res.lse, dropout_seed=0) for _ in range(3)]
    for later in runs[1:]:
        for a, b in zip(runs[0][:3], later[:3], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(("kd", "kv"), [(64, 64), (40, 56), (128, 128), (100, 72), (72, 128), (256, 256), (198, 136), (136, 256)])
@pytest.mark.parametrize("keys", [None, "", "128=16"])
@pytest.mark.parametrize("bias_kind", ["causal", "tensor", "none"])
def test_fp32_forward_key_tiles(kd: int, kv: int, keys: Optional[str], bias_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fp32 forward's key tiles (ATTNCORE_CUTLASS_FP32_FWD_KEYS): at padded head dim 64, 128 with split
    K/V loads (default) for calls without a band mask and with at least 512 keys, else 64; 32 (default) or
    16 at 128; 32 split (default, where the shared memory holds them) or 16 at 256. Odd lengths, Kv != K, a
    causal mask, a tensor bias (198 columns: rows not 16-byte aligned, the element loads) or none; then
    keys that fit one tile and keys that no query sees; the launcher reports the tile configuration that
    ran, as :func:`fp32_forward_key_tiles` predicts it."""
    if keys is None:
        monkeypatch.delenv(KEYS_ENV, raising=False)
    else:
        monkeypatch.setenv(KEYS_ENV, keys)
    monkeypatch.setenv(WIDE_ENV, "")  # the key tiles, not the wide warps (their own test)
    env = {KEYS_ENV: keys} if keys is not None else {}
    if WARPS_ENV in os.environ:  # the process's warps
        env[WARPS_ENV] = os.environ[WARPS_ENV]
    smem = _smem_optin()
    padded = next(d for d in (64, 128, 256) if max(kd, kv) <= d)

    def check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: testing.Bias, banded: bool) -> None:
        testing.compare_forward(CutlassFwOp, q, k, v, bias)
        want = fp32_forward_key_tiles(env, banded=banded, max_keys=k.shape[1], smem_per_block=smem)[padded].keys
        if _launch.last_family("forward") == "tc":
            variant = _launch.last_forward_variant()
            assert variant is not None and variant.startswith(f"D={padded} keys={want} "), variant

    q, k, v = _qkv(2, 333, 517, 3, kd, kv, torch.float32, seed=kd + kv)
    bias: testing.Bias = None
    if bias_kind == "causal":
        bias = attncore.LowerTriangularFromBottomRightMask()
    elif bias_kind == "tensor":
        bias = testing.randn(2, 3, 333, 517, gen=torch.Generator().manual_seed(kv), dtype=torch.float32).to(CUDA)
    check(q, k, v, bias, banded=bias_kind == "causal")
    check(q, k[:, :20], v[:, :20], None if bias_kind == "none" else attncore.LowerTriangularFromBottomRightMask(), banded=bias_kind != "none")  # one key tile
    window = attncore.LocalAttentionFromBottomRightMask(window_left=0, window_right=0)  # one key per query
    check(q[:, :40], k[:, :300], v[:, :300], window, banded=True)


@pytest.mark.parametrize(("kd", "kv"), [(128, 128), (98, 72), (72, 128), (64, 64), (42, 56)])
@pytest.mark.parametrize("kind", ["causal", "local 20 5", "tensor", "none"])
def test_fp32_forward_tf32_split(kd: int, kv: int, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ATTNCORE_CUTLASS_FP32_FWD_SPLIT: K and V split into tf32 parts once per CTA (their loads through
    registers, two barriers a tile). Against the float64 truth and bit for bit against the kernel with the
    same tiles that splits them in every warp; 17 key tiles of 32 (head dim 128) or 9 of 64 (head dim 64):
    the only check of the staging order's barriers, as the emulation runs the threads of a block in step
    at each barrier. 16-byte loads (128, 72, 64 and 56 columns) and element loads (98 and 42 columns: not
    a multiple of 4), Kv != K."""
    padded = 64 if max(kd, kv) <= 64 else 128
    monkeypatch.delenv(WARP_MASKS_ENV, raising=False)
    monkeypatch.delenv(KEYS_ENV, raising=False)
    monkeypatch.setenv(WIDE_ENV, "")  # the kernel to compare with: one warp per 16 rows
    if _atoi(os.environ.get(WARPS_ENV, "")) in (4, 8):
        pytest.skip("ATTNCORE_CUTLASS_FWD_WARPS is set: the plain kernel to compare with would differ")
    q, k, v = _qkv(2, 333, 517, 3, kd, kv, torch.float32, seed=kd + kv + 1)
    bias = _bias_333x517(kind, seed=kv)
    monkeypatch.setenv(SPLIT_ENV, "64,128")
    testing.compare_forward(CutlassFwOp, q, k, v, bias)
    keys = 64 if padded == 64 else 32
    variant = _launch.last_forward_variant()
    assert variant is not None and variant.startswith(f"D={padded} keys={keys} stages=tf32-split warps=4"), variant
    inp = testing.inputs(q, k, v, bias)
    got = CutlassFwOp.apply(inp, needs_lse=True, dropout_seed=0)
    monkeypatch.delenv(SPLIT_ENV)
    monkeypatch.setenv(KEYS_ENV, "")
    want = CutlassFwOp.apply(inp, needs_lse=True, dropout_seed=0)
    assert _launch.last_forward_variant() == f"D={padded} keys={keys} stages=2 warps=4"
    assert got.lse is not None and want.lse is not None
    assert torch.equal(got.out, want.out) and torch.equal(got.lse, want.lse)


@pytest.mark.parametrize(
    ("entry", "kd", "kv"),
    [
        ("256=4x2", 256, 256),
        ("256=4x2", 198, 136),
        ("256=4x2", 136, 256),
        ("256=2x2/16", 256, 256),
        ("256=2x2/16", 198, 136),
        ("128=2x2", 128, 128),
        ("128=2x2", 100, 72),
        ("128=4x1", 128, 128),
        ("128=4x1", 72, 128),
        (None, 128, 128),
        (None, 100, 72),
    ],
)
@pytest.mark.parametrize("kind", ["causal", "local 20 5", "tensor", "none"])
def test_fp32_forward_wide_warps(entry: Optional[str], kd: int, kv: int, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ATTNCORE_CUTLASS_FP32_FWD_WIDE: warps of 32 query rows and a slice of the head dim (partial scores of
    two slices added through shared memory, or one slice), and the default (None: unset; by the band). Against the float64 truth over 17 key
    tiles of 32 (the split K/V pipeline's barriers, which the emulation cannot check, and the partial scores'
    buffer reused every tile), odd lengths, Kv != K (a slice of the output past Kv), element loads (198, 100,
    72 and 136 columns), causal and local bands, a tensor bias; the launcher reports the wide kernel where the
    block's shared memory holds it."""
    if _atoi(os.environ.get(WARPS_ENV, "")) in (4, 8):
        pytest.skip("ATTNCORE_CUTLASS_FWD_WARPS is set: it vetoes the wide warps")
    monkeypatch.delenv(WARP_MASKS_ENV, raising=False)
    monkeypatch.delenv(KEYS_ENV, raising=False)
    monkeypatch.delenv(SPLIT_ENV, raising=False)
    if entry is None:
        monkeypatch.delenv(WIDE_ENV, raising=False)
    else:
        monkeypatch.setenv(WIDE_ENV, entry)
    q, k, v = _qkv(2, 333, 517, 3, kd, kv, torch.float32, seed=kd + kv + 2)
    bias = _bias_333x517(kind, seed=kv)
    testing.compare_forward(CutlassFwOp, q, k, v, bias)
    smem = _smem_optin()
    banded = kind == "causal" or kind.startswith("local")
    shape = fp32_forward_wide({} if entry is None else {WIDE_ENV: entry}, banded).get(256 if kd > 128 or kv > 128 else 128)
    assert shape is not None
    if smem >= shape.smem:
        variant = _launch.last_forward_variant()
        assert variant is not None and variant.endswith(f" wide={shape.groups}x{shape.slices}"), variant


def _set_or_unset(monkeypatch: pytest.MonkeyPatch, name: str, value: Optional[str]) -> None:
    if value is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, value)


def _order_call(kind: str, kd: int, kv: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, testing.Bias]:
    """A CTA-order test's call: packed sequences of 333, 70 and 517 rows under a block-diagonal causal mask
    ("packed causal"), else 3 batch entries of 333 queries and 517 keys under :func:`testing.named_bias`; 5 heads."""
    if kind == "packed causal":
        q, k, v = _qkv(1, 920, 920, 5, kd, kv, dtype, seed=seed)
        return q, k, v, attncore.BlockDiagonalCausalMask.from_seqlens([333, 70, 517])
    q, k, v = _qkv(3, 333, 517, 5, kd, kv, dtype, seed=seed)
    return q, k, v, testing.named_bias(kind, (3, 5, 333, 517), torch.Generator().manual_seed(seed), dtype)


@pytest.mark.parametrize("order", ["rows", "heads", None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("kd", "kv"), [(64, 64), (100, 72), (256, 256)])
@pytest.mark.parametrize("kind", ["causal", "packed causal", "local 20 5", "none"])
def test_forward_cta_order(order: Optional[str], dtype: torch.dtype, kd: int, kv: int, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ATTNCORE_CUTLASS_FWD_ORDER (rows: the CTAs' linear index renumbered row-block major; heads: as launched;
    None: unset, by dtype and band): every (row block, sequence, head) computed once under either numbering, its
    output poisoned first; 3 x 5 heads of a batch, or packed sequences of 333, 70 and 517 rows (the grid's
    row blocks run past the short ones' ends); the launcher reports the order it used."""
    _set_or_unset(monkeypatch, ORDER_ENV, order)
    q, k, v, bias = _order_call(kind, kd, kv, dtype, seed=kd + 7)
    testing.compare_forward(CutlassFwOp, q, k, v, bias)
    if _launch.last_family("forward") == "tc":  # else (a smaller GPU's shared memory) the portable kernels ran
        expected = forward_order({} if order is None else {ORDER_ENV: order}, dtype == torch.float32, kind != "none")
        assert _launch.last_forward_order() == expected


@pytest.mark.parametrize("order", ["rows", "heads", None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("kd", "kv"), [(64, 64), (128, 100), (256, 256)])
@pytest.mark.parametrize("kind", ["causal", "packed causal", "none"])
def test_backward_cta_order(order: Optional[str], dtype: torch.dtype, kd: int, kv: int, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ATTNCORE_CUTLASS_BWD_ORDER (rows: the atomic-dQ dK/dV CTAs' linear index renumbered key-block major; heads:
    as launched; None: unset, rows under a band): every (key block, sequence, head) computed once under either
    numbering (dK and dV poisoned first in a batch, zeroed for packed sequences; dQ's atomic additions would
    count a CTA run twice), from CTAs of many heads at once; 3 x 5 heads of a batch or packed sequences of 333,
    70 and 517 rows; the launcher reports the order it used."""
    monkeypatch.delenv(PAIRS_ENV, raising=False)
    _set_or_unset(monkeypatch, BWD_ORDER_ENV, order)
    q, k, v, bias = _order_call(kind, kd, kv, dtype, seed=kd + 13)
    testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)
    if _launch.last_family("backward") == "tc":  # else (a smaller GPU's shared memory) the portable kernels ran
        env = {} if order is None else {BWD_ORDER_ENV: order}
        atomic = _launch.last_backward_dq() == "atomic"  # the only kernels that take an order
        expected = backward_order(env, dtype == torch.float32, kind != "none", False) if atomic else "heads"
        assert _launch.last_backward_order() == expected
        smem = _smem_optin()
        if dtype == torch.float32 and smem >= 232448:  # sm_90: every fp32 call here adds dQ atomically, so the order is tested
            assert atomic


@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
@pytest.mark.parametrize(("kd", "kv"), [(64, 64), (100, 72), (256, 256), (198, 136)])
@pytest.mark.parametrize("kind", ["causal", "local 20 5", "local 300 0"])
def test_forward_warp_masks(kd: int, kv: int, dtype: torch.dtype, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ATTNCORE_CUTLASS_FWD_WARP_MASKS=1 (per-warp key-tile classification under a band): bands from the
    bottom right (Mq != Mk, odd lengths) whose edges cross a CTA's rows, a window narrower than a key tile
    (some warps of a CTA see a tile, others none), each dtype's default tiles at padded head dims 64, 128
    and 256 (Kv != K); the launcher reports the classification that ran. The next test runs every bias kind
    of the conformance cases with it on."""
    monkeypatch.setenv(WARP_MASKS_ENV, "1")
    q, k, v = _qkv(2, 333, 517, 3, kd, kv, dtype, seed=kd + kv)
    if kind == "causal":
        bias: testing.Bias = attncore.LowerTriangularFromBottomRightMask()
    else:
        left, right = map(int, kind.split()[1:])
        bias = attncore.LocalAttentionFromBottomRightMask(window_left=left, window_right=right)
    testing.compare_forward(CutlassFwOp, q, k, v, bias)
    _assert_warp_masks(dtype, max(kd, kv), banded=True)


def _assert_warp_masks(dtype: torch.dtype, head_dim: int, banded: bool) -> None:
    """The last forward ran the warp-mask kernels where ATTNCORE_CUTLASS_FWD_WARP_MASKS=1 applies: a banded
    call on tensor cores with the default tiles (no forced warps; in fp32 no key-tile setting) where they
    fit (fp32 at padded head dim 256: the split 32-key tiles' shared memory)."""
    variant = _launch.last_forward_variant()
    smem = _smem_optin()
    fp32 = dtype == torch.float32
    defaults = _atoi(os.environ.get(WARPS_ENV, "")) not in (4, 8) and not (fp32 and KEYS_ENV in os.environ)
    fits = not (fp32 and head_dim > 128 and smem < WIDE_256_SMEM)
    if _launch.last_family("forward") == "tc":
        assert variant is not None and variant.endswith(" warp-masks") == (banded and defaults and fits), variant


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_forward_warp_masks_every_bias_kind(case: testing.Case, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """ATTNCORE_CUTLASS_FWD_WARP_MASKS=1 on every bias kind of the conformance cases (short sequences: one
    query tile, rows past its end): the warp-mask kernels where the call has a band, else the default ones."""
    monkeypatch.setenv(WARP_MASKS_ENV, "1")
    q, k, v, bias, _ = testing.build(case, "4d", dtype, requires_grad=False)
    q, k, v, bias = testing.moved(q, k, v, bias, CUDA)
    testing.compare_forward(CutlassFwOp, q, k, v, bias)
    assert _launch.last_family("forward") == _expected_family("tc", dtype, "forward")
    call = _launch._describe(Inputs.create(q, k, v, bias))
    _assert_warp_masks(dtype, max(q.shape[-1], v.shape[-1]), banded=call.band_lo > -_launch._BIG or call.band_hi < _launch._BIG)


@pytest.mark.parametrize("dtype", [*HALF, torch.float32], ids=str)
@pytest.mark.parametrize("m", [4096, 16384])
def test_long_sequences(m: int, dtype: torch.dtype) -> None:
    q, k, v = _qkv(1, m, m, 1, 64, 64, dtype, seed=m)
    bias = attncore.LowerTriangularMask()
    testing.compare_forward(CutlassFwOp, q, k, v, bias)
    assert _launch.last_family("forward") == _expected_family("tc", dtype, "forward")
    if m <= 4096:
        testing.compare_forward(CutlassFwOp, q, k, v, None)
        if dtype == torch.float32 and _launch.last_family("forward") == "tc":  # no band, many keys: 128-key tiles
            want = fp32_forward_key_tiles({n: os.environ[n] for n in (KEYS_ENV, WARPS_ENV) if n in os.environ}, max_keys=m)[64].keys
            variant = _launch.last_forward_variant()
            assert variant is not None and variant.startswith(f"D=64 keys={want} "), variant
        testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)


def test_unaligned_rows_take_the_element_loads() -> None:
    """Rows 65 elements apart are not 16-byte aligned: the tensor-core kernels load element by element."""
    gen = torch.Generator().manual_seed(3)
    wide = testing.randn(2, 130, 4, 65, gen=gen, dtype=torch.bfloat16).to(CUDA)
    q, k, v = wide[:, :100, :, :64], wide[:, :, :, 1:], wide[:, :, :, :64]
    assert not _launch._vec_ok(q, k, v)
    testing.compare_forward(CutlassFwOp, q, k, v, attncore.LowerTriangularMask())
    testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, None)
    assert _launch.last_family("backward") == _expected_family("tc", torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_a_bias_shared_over_the_batch_gets_its_gradient_summed(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """[H, Mq, Mk] bias, B=4, pieces of one batch entry: dbias is summed as the backward goes."""
    monkeypatch.setattr(attncore.inputs, "SHARED_BIAS_PIECE_BYTES", 1)
    q, k, v = _qkv(4, 200, 260, 3, 64, 64, dtype, seed=12)
    bias = testing.randn(3, 200, 260, gen=torch.Generator().manual_seed(13), dtype=dtype).to(CUDA).requires_grad_(True)
    testing.compare_backward(CutlassFwOp, CutlassBwOp, q, k, v, bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("scale", [-1.0, 0.0, 0.05])
def test_custom_scales_on_whole_tiles(dtype: torch.dtype, scale: float) -> None:
    """Scores of a few hundred: a negative scale must not take the unmasked path (its row maximum,
    taken before scaling, would overflow exp2); zero and positive scales agree with the reference."""
    q, k, v = _qkv(2, 512, 640, 2, 64, 64, dtype, seed=14)
    testing.compare_forward(CutlassFwOp, 3 * q, 3 * k, v, None, scale=scale)


def test_float32_output_from_half_inputs() -> None:
    q, k, v = _qkv(2, 100, 120, 2, 64, 64, torch.bfloat16, seed=5)
    out = attncore.memory_efficient_attention(q, k, v, output_dtype=torch.float32, op=(CutlassFwOp, None))
    assert out.dtype == torch.float32
    want = testing.reference(q, k, v)[0]
    assert (out.double() - want).abs().max().item() < 1e-2


@pytest.mark.parametrize(
    ("fam", "dtype", "kd"),
    [("tc", torch.bfloat16, 64), ("simt", torch.bfloat16, 64), ("tc", torch.float32, 64), ("tc", torch.float32, 128), ("tc", torch.float32, 256)],
)
def test_backward_is_deterministic(fam: str, dtype: torch.dtype, kd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bitwise-equal gradients from two calls; fp32 (whose dQ is added atomically otherwise) under torch's
    deterministic mode, here with the dQ kernel (ATTNCORE_CUTLASS_FP32_DQ_SPLITS=0; serial dQ has its own test)."""
    monkeypatch.setenv("ATTNCORE_CUTLASS_FP32_DQ_SPLITS", "0")
    q, k, v = _qkv(2, 300, 300, 4, kd, kd, dtype, seed=9)
    inputs = Inputs.create(q, k, v, attncore.LowerTriangularMask())
    with family(fam), testing.deterministic_algorithms(dtype == torch.float32):
        res = CutlassFwOp.apply(inputs, needs_lse=True, dropout_seed=0)
        assert res.lse is not None
        go = torch.randn_like(res.out)
        first = CutlassBwOp.apply(inputs, go, res.out, res.lse, dropout_seed=0)
        second = CutlassBwOp.apply(inputs, go, res.out, res.lse, dropout_seed=0)
    if fam == "tc" and _launch.last_family("backward") == "tc":
        assert _launch.last_backward_dq() == "kernel"
    for a, b in zip(first[:3], second[:3], strict=True):
        assert torch.equal(a, b)


def test_dispatcher_prefers_it_over_the_reference_ops() -> None:
    q, k, v = _qkv(1, 64, 64, 2, 64, 64, torch.float32, seed=1)
    exp = attncore.dispatch.explain(q, k, v)
    names = [c.op for c in exp.forward.candidates if c.status == "accepted"]
    assert CutlassFwOp.NAME in names
    assert names.index(CutlassFwOp.NAME) < names.index("reference.exact")
