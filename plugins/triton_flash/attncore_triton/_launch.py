"""Host side of the kernels: describe a call, pick a configuration, allocate outputs and launch.

Nothing here copies keys or values: kernels read the caller's ``[B, M, G, H, K]`` views through their
strides (stride 0 on ``H`` for shared keys/values), the tensor bias through its broadcast strides, and
paged keys through the page table. Block layouts are described to the kernels by small int32 arrays
(cached per layout), so one compiled kernel serves every sequence-length mix.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch

from attncore.geometry import Anchor, BlockLayout, Paging
from attncore.inputs import Inputs

from . import _plans, _warpspec, autotune
from ._relaunch import Relauncher, _triton_release
from ._relaunch import enabled as relaunch_enabled

__all__ = [
    "BwdConfig",
    "FwdConfig",
    "Problem",
    "backward",
    "bwd_candidates",
    "dropout_keep_mask",
    "forward",
    "fwd_candidates",
    "problem",
    "tma_supported",
    "ws_candidates",
]

_BIG = 1 << 30  # a band side that is absent
LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class FwdConfig:
    """Forward tiles: ``block_m`` queries per program, ``block_n`` keys per step; ``tma`` loads through tensor
    descriptors; ``ws`` runs one warp-specialized loop (Hopper; with ``tma``, 128-query tiles, ``num_warps``
    4 per group and 2 stages: a producer warp group and two consumer warp groups of 64 rows; see
    :func:`ws_candidates`)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    tma: bool = False
    ws: bool = False
    #: one loop over every key tile, the edge tiles (band ends, the causal diagonal, the tail) masked on a branch,
    #: instead of three (masked / full / masked): one software pipeline per program (see ``fwd_kernel``)
    one_loop: bool = False

    def __post_init__(self) -> None:
        if self.ws and not (self.tma and self.num_warps == 4 and (self.block_m, self.num_stages) in ((128, 2), (16, 1))):
            raise ValueError(f"FwdConfig: ws needs tma, num_warps=4 and 128-query tiles at 2 stages (16 x 1 under the interpreter); found {self}")
        if self.ws and self.one_loop:
            raise ValueError(f"FwdConfig: ws and one_loop exclude each other (the warp-specialized loop takes no branch); found {self}")


@dataclass(frozen=True)
class BwdConfig:
    """Backward tiles: ``(block_m1 queries per step, block_n1 keys per program)`` for dK/dV,
    ``(block_m2 queries per program, block_n2 keys per step)`` for dQ; ``atomic_dq`` adds dQ in the dK/dV
    kernel with fp32 atomics instead of running the dQ kernel (fewer FLOPs, not bitwise deterministic).
    ``dv_block_n > 0`` splits the dK/dV kernel in two launches: the first computes only dK (and dQ, dS),
    a second only dV with its own tiles ``(dv_block_m queries per step, dv_block_n keys per program)``;
    each holds one accumulator instead of two (for K = 256), at the cost of recomputing ``P`` once more."""

    block_m1: int
    block_n1: int
    warps1: int
    stages1: int
    block_m2: int
    block_n2: int
    warps2: int
    stages2: int
    atomic_dq: bool = False
    dv_block_m: int = 0
    dv_block_n: int = 0
    dv_warps: int = 4
    dv_stages: int = 1
    #: one loop over the query (dK/dV) or key (dQ) tiles, edges masked on a branch (see ``FwdConfig.one_loop``)
    one_loop: bool = False

    @property
    def split_dv(self) -> bool:
        return self.dv_block_n > 0


#: Tests set this to fill every output the kernels must write with NaN first (``torch.empty`` otherwise).
POISON = False


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if POISON and dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def interpreting() -> bool:
    """Whether the kernels run under Triton's CPU interpreter: fixed when the kernel module is imported
    (Triton reads ``TRITON_INTERPRET`` then); before that, what the environment says now."""
    known: Optional[bool] = _STATE.get("interp")
    if known is not None:
        return known
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_STATE: dict[str, Any] = {}  # the kernel module once imported; whether the TMA allocator is set


def kernels() -> Any:
    """The kernel module, imported on first use (so the interpreter switch is read at that time)."""
    mod = _STATE.get("kernels")
    if mod is None:
        _STATE["interp"] = interpreting()  # (not fixed yet: what the environment says, as Triton reads it now)
        from . import _kernels

        mod = _STATE["kernels"] = _kernels
    return mod


_RELAUNCHERS: dict[str, Relauncher] = {}


def _relauncher(name: str) -> Relauncher:
    """The :class:`Relauncher` of kernel ``name`` of the kernel module (one per kernel and process)."""
    r = _RELAUNCHERS.get(name)
    if r is None:
        r = _RELAUNCHERS[name] = Relauncher(getattr(kernels(), name), reuse=relaunch_enabled() and not interpreting())
    return r


# ------------------------------------------------------------------------------------------------
# the call, as the kernels see it
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SeqMeta:
    """Block-layout arrays (int32, on the device) and how dK/dV rows are written back."""

    seq_q: torch.Tensor
    seq_k: torch.Tensor
    seq_klen: torch.Tensor
    seq_klog: torch.Tensor
    seq_kw: torch.Tensor
    num_seqs: int
    max_q: int
    max_k: int
    mk_log: int
    direct: bool  # dK/dV written in place (non-overlapping, unpaged key ranges)
    write_rows: int  # rows of the dK/dV buffer when not direct
    phys_rows: Optional[torch.Tensor]  # physical key row of each buffer row when not direct (unpaged layouts)


_META_CACHE: OrderedDict[tuple[Any, ...], _SeqMeta] = OrderedDict()
_DUMMIES: dict[torch.device, torch.Tensor] = {}


def _dummy(device: torch.device) -> torch.Tensor:
    t = _DUMMIES.get(device)
    if t is None:
        t = _DUMMIES[device] = torch.zeros(16, dtype=torch.int32, device=device)
    return t


#: Warp-specialized forward configurations by padded largest head dim: what the autotuner is offered at 128
#: (:func:`ws_candidates`), and what the loop is compiled with for sm_90 at every head dim it runs
#: (tools/ws_compile_check.py) and run with on the GPU (the GPU tests: 16-128, masks included).
WS_CONFIGS: dict[int, tuple[FwdConfig, ...]] = {
    d: (FwdConfig(128, 128, 4, 2, tma=True, ws=True), FwdConfig(128, 64, 4, 2, tma=True, ws=True)) for d in (16, 32, 64, 128)
}
#: The largest padded head dim the warp-specialized loop runs (:func:`_can_take` refuses it above). At 256 its
#: one configuration that fits shared memory (128 x 32, 2 stages) was never ahead in the autotuner's timings
#: (0.88-1.00x) and left output rows unwritten (NaN) in 3 of 7 whole GPU-suite runs under load (stops 19-21):
#: Triton 3.6's partitioner, benchmarks/RESULTS.md "a warp-specialized forward on Hopper", defect 3.
WS_MAX_HEAD_DIM = max(WS_CONFIGS)
#: The warp-specialized forward's row table covers row indices below this (base-64 digits, 3 of them, the
#: leading one below 256 to stay exact in bf16).
WS_MAX_ROWS = 1 << 20
_ROW_TABLES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
_OLD_ROW_TABLES: list[torch.Tensor] = []  # outgrown tables, kept: kernels on other streams may still read them


def _row_table_held(device: torch.device, dtype: torch.dtype, rows: int) -> Optional[torch.Tensor]:
    """The table of this device and dtype if it covers ``rows`` rows, else ``None``."""
    t = _ROW_TABLES.get((device, dtype))
    return t if t is not None and t.shape[0] >= 16 + rows else None


def _row_table(device: torch.device, dtype: torch.dtype, rows: int) -> torch.Tensor:
    """``[16 + n, 16]`` in ``dtype`` (``rows <= n <= WS_MAX_ROWS``, a power of two): the digit weights, then
    the digits of each row index (see ``fwd_kernel``); one per device and dtype, regrown (doubling) when a
    longer sequence comes."""
    if rows > WS_MAX_ROWS:
        raise ValueError(f"rows: the warp-specialized forward's row table holds at most {WS_MAX_ROWS} rows; found {rows}")
    t = _row_table_held(device, dtype, rows)
    if t is None:
        outgrown = _ROW_TABLES.get((device, dtype))
        if outgrown is not None:
            _OLD_ROW_TABLES.append(outgrown)
        n = max(1024, 1 << (max(rows, 1) - 1).bit_length())
        r = torch.arange(n, dtype=torch.int64)
        host = torch.zeros(16 + n, 16, dtype=torch.float32)
        host[0, :], host[1, :], host[2, :] = 4096.0, 64.0, 1.0
        host[16:, 0], host[16:, 1], host[16:, 2] = (r // 4096).float(), (r // 64 % 64).float(), (r % 64).float()
        t = _ROW_TABLES[(device, dtype)] = host.to(device=device, dtype=dtype)
    return t


def _row_table_ready(device: torch.device, dtype: torch.dtype, rows: int) -> bool:
    """Whether a launch over ``rows`` rows can have its table now: one that is long enough exists, or it can
    be built (not while a CUDA graph is being captured, where the copy to the device is not allowed)."""
    if rows > WS_MAX_ROWS:
        return False
    return _row_table_held(device, dtype, rows) is not None or device.type != "cuda" or not torch.cuda.is_current_stream_capturing()


def _i32(values: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int32).to(device)


def _seq_meta(blocks: BlockLayout, paging: Optional[Paging], num_keys: int, device: torch.device) -> _SeqMeta:
    n = blocks.num_blocks
    q_lens = [blocks.q_len(b) for b in range(n)]
    max_q = max(q_lens, default=0)
    max_k = max(blocks.k_len, default=0)
    offsets = blocks.key_offsets
    if paging is not None:
        row_len = paging.row_len
        klog = [b * row_len + s for b, s in enumerate(blocks.k_start)]
        return _SeqMeta(
            _i32(blocks.q_seqstart, device), _i32(blocks.k_start, device), _i32(blocks.k_len, device), _i32(klog, device),
            _i32(offsets[:-1], device), n, max_q, max_k, n * row_len, False, offsets[-1], None,
        )  # fmt: skip
    key = (blocks.q_seqstart, blocks.k_start, blocks.k_len, num_keys, device)
    meta = _META_CACHE.get(key)
    if meta is not None:
        _META_CACHE.move_to_end(key)
        return meta
    direct = blocks.keys_disjoint
    phys: Optional[torch.Tensor] = None
    if not direct:
        pieces = [torch.arange(s, s + kl, dtype=torch.int64) for s, kl in zip(blocks.k_start, blocks.k_len, strict=True)]
        phys = torch.cat(pieces or [torch.zeros(0, dtype=torch.int64)])
        phys = phys.to(device)
    kw = blocks.k_start if direct else offsets[:-1]
    meta = _SeqMeta(
        _i32(blocks.q_seqstart, device), _i32(blocks.k_start, device), _i32(blocks.k_len, device), _i32(blocks.k_start, device),
        _i32(kw, device), n, max_q, max_k, num_keys, direct, num_keys if direct else offsets[-1], phys,
    )  # fmt: skip
    _META_CACHE[key] = meta
    if len(_META_CACHE) > 64:
        _META_CACHE.popitem(last=False)
    return meta


@dataclass(frozen=True)
class Problem:
    """One call in the kernels' terms (5-D views, sequence description, band, paging)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    bias: Optional[torch.Tensor]
    batch: int
    groups: int
    heads: int
    num_queries: int
    num_keys: int
    head_dim: int
    value_dim: int
    meta: Optional[_SeqMeta]
    paging: Optional[Paging]
    band_lo: int
    band_hi: int
    band_br: int
    has_band: bool
    scale: float
    p: float

    @property
    def varlen(self) -> bool:
        return self.meta is not None

    @property
    def paged(self) -> bool:
        return self.paging is not None

    @property
    def num_seqs(self) -> int:
        return self.meta.num_seqs if self.meta is not None else self.batch

    @property
    def max_q(self) -> int:
        return self.meta.max_q if self.meta is not None else self.num_queries

    @property
    def max_k(self) -> int:
        return self.meta.max_k if self.meta is not None else self.num_keys

    @property
    def mk_log(self) -> int:
        return self.meta.mk_log if self.meta is not None else self.num_keys

    @property
    def device(self) -> torch.device:
        return self.q.device

    def signature(self, *, dbias: bool = False) -> str:
        """The mask part of the autotune key."""
        parts = ["paged" if self.paged else "varlen" if self.varlen else "dense"]
        if self.has_band:
            parts.append("band")
        if self.bias is not None:
            parts.append("bias")
        if dbias:
            parts.append("dbias")
        if self.p > 0.0:
            parts.append("drop")
        return "+".join(parts)


def problem(inputs: Inputs) -> Problem:
    """Describe ``inputs`` for the kernels (no copies of q, k, v or the bias)."""
    q, k, v = inputs.q5, inputs.k5, inputs.v5
    b, mq, g, h, kd = q.shape
    geo = inputs.geometry
    meta: Optional[_SeqMeta] = None
    paging: Optional[Paging] = None
    lo, hi, br, has_band = -_BIG, _BIG, 0, False
    if geo is not None:
        if geo.blocks is not None:
            meta = _seq_meta(geo.blocks, geo.paging, inputs.num_keys, q.device)
            paging = geo.paging
        if geo.band is not None:
            has_band = True
            lo = -_BIG if geo.band.lo is None else max(geo.band.lo, -_BIG)
            hi = _BIG if geo.band.hi is None else min(geo.band.hi, _BIG)
            br = 1 if geo.band.anchor is Anchor.BOTTOM_RIGHT else 0
    return Problem(
        q, k, v, inputs.bias5, b, g, h, mq, inputs.num_keys, kd, v.shape[-1], meta, paging, lo, hi, br, has_band, inputs.scale, inputs.p
    )


def _dot_mode(dtype: torch.dtype) -> int:
    """0: tensor cores; 1: exact fp32 dots; 2: fp32 dots on upcast bf16 (the CPU interpreter's bf16 dot is wrong)."""
    if dtype == torch.float32:
        return 1
    if dtype == torch.bfloat16 and interpreting():
        return 2
    return 0


def _pow2(n: int) -> int:
    return max(16, 1 << (max(n, 1) - 1).bit_length())


@functools.lru_cache(maxsize=16)
def _cuda_facts(index: int) -> tuple[tuple[int, int], str]:
    cap = torch.cuda.get_device_capability(index)
    return (int(cap[0]), int(cap[1])), torch.cuda.get_device_name(index).replace(" ", "_")


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _capability(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda" or interpreting():
        return (0, 0)
    return _cuda_facts(_device_index(device))[0]


def _triton_version() -> str:
    return _triton_release() or "?"  # (never "?" in practice: triton is imported by now)


def tma_supported() -> bool:
    """Whether this triton has device-side tensor descriptors (``tl.make_tensor_descriptor``, triton >= 3.4)."""
    import triton.language as tl  # type: ignore[import-untyped]  # triton ships no type information

    return hasattr(tl, "make_tensor_descriptor")


def _ensure_allocator() -> None:
    """Device-side tensor descriptors need a global scratch allocator (128 bytes per program)."""
    if _STATE.get("allocator") or interpreting():
        return
    import triton

    def alloc(size: int, alignment: int, stream: Optional[int]) -> torch.Tensor:
        del alignment, stream
        return torch.empty(size, dtype=torch.int8, device="cuda")

    triton.set_allocator(alloc)
    _STATE["allocator"] = True


def _tma_aligned(pb: Problem) -> bool:
    """Whether Q, K and V have the 16-byte aligned bases and strides tensor descriptors need."""
    es = pb.q.element_size()
    for t in (pb.q, pb.k, pb.v):
        if t.data_ptr() % 16 or any((s * es) % 16 for s in t.stride()[:-1]):
            return False
    return True


def _tma_eligible(pb: Problem) -> bool:
    """Descriptors need 16-byte aligned bases and strides, and head dims that are their own block (and
    are offered for half precision only)."""
    if pb.paged or pb.q.dtype == torch.float32 or not tma_supported():
        return False
    if _pow2(pb.head_dim) != pb.head_dim or _pow2(pb.value_dim) != pb.value_dim:
        return False
    return _tma_aligned(pb)


# ------------------------------------------------------------------------------------------------
# configurations
# ------------------------------------------------------------------------------------------------


def ws_candidates(pb: Problem) -> list[FwdConfig]:
    """The warp-specialized forward configurations for this call: on sm_90, half precision through tensor
    descriptors, largest head dim 128 (the other a power of two), keys in whole 128-key tiles, no mask, no
    tensor bias, no dropout, a non-negative scale (empty otherwise; :func:`fwd_candidates` adds them, last,
    when :func:`_warpspec.enabled`): 128-query tiles, two 64-row consumer warp groups, 2 stages (3 gave NaN
    on Triton 3.6). Against the best other candidate, the H200's autotuner timed it at 0.91-1.02x below
    M = 4096 and 1.03-1.11x from there; where it is not offered, at 0.53-0.85x at K = 64, 0.74-0.85x with a
    causal band (every tile masked), 0.88-1.00x at K = 256 (2 stages of 32 keys; 1 stage of 64 keys was
    0.89-1.26x but once left rows unwritten under a loaded GPU); benchmarks/RESULTS.md, "a warp-specialized
    forward on Hopper"."""
    if interpreting() or _capability(pb.device)[0] != 9 or pb.q.dtype == torch.float32:
        return []
    if pb.bias is not None or pb.p > 0.0 or pb.has_band or pb.varlen or pb.scale < 0.0 or pb.num_keys % 128:
        return []
    if max(pb.head_dim, pb.value_dim) != 128 or pb.max_q + 128 > WS_MAX_ROWS or not _tma_eligible(pb):
        return []
    return list(WS_CONFIGS[128])


def _can_take(pb: Problem, cfg: FwdConfig) -> bool:
    """Whether this call can run ``cfg``, which may have been tuned for another call of its autotune key
    (the key holds neither the tensors' alignment nor lengths past the shape buckets): tensor descriptors
    need 16-byte aligned tensors, and the warp-specialized loop a head dim up to :data:`WS_MAX_HEAD_DIM` and
    a row table for every row."""
    if cfg.tma and not _tma_aligned(pb):
        return False
    if cfg.ws and max(_pow2(pb.head_dim), _pow2(pb.value_dim)) > WS_MAX_HEAD_DIM:
        return False
    return not cfg.ws or _row_table_ready(pb.device, pb.q.dtype, -(-pb.max_q // cfg.block_m) * cfg.block_m)


def fwd_candidates(pb: Problem) -> list[FwdConfig]:
    """Pruned forward configurations for this call's architecture, dtype and head dims (best guess first)."""
    if interpreting():
        return [FwdConfig(16, 16, 4, 1, tma=False)]
    cc = _capability(pb.device)
    d = max(pb.head_dim, pb.value_dim)
    if pb.q.dtype == torch.float32:  # exact fp32 dots run on FMA units: small tiles
        return [FwdConfig(64, 32, 4, 2), FwdConfig(32, 32, 4, 1), FwdConfig(16, 16, 4, 1)] if d <= 64 else [FwdConfig(32, 32, 4, 1), FwdConfig(16, 16, 4, 1)]
    tma = cc >= (9, 0) and _tma_eligible(pb)
    if cc >= (9, 0):  # measured on an H100 and an H200 (see the README): TMA helps BN=64/4-warp tiles most;
        # the 64 x 32 tile (K <= 128) won short causal sequences on the H200, 128 x 32 / 8 warps short dense ones;
        # one loop (one_loop) won where programs are short: K = 256 everywhere, K = 128 up to M = 1024, K = 64
        # causal up to M = 1024 (the H200, benchmarks/RESULTS.md "one software pipeline per program")
        band = pb.has_band
        if d <= 64:
            out = [FwdConfig(128, 64, 4, 3), FwdConfig(128, 64, 4, 3, tma=True), FwdConfig(128, 128, 8, 3), FwdConfig(64, 64, 4, 3, tma=True)]
            out += [FwdConfig(128, 64, 4, 3, one_loop=True)] if band else []
        elif d <= 128:
            out = [  # (128 x 128 tiles through plain loads, never ahead of the TMA ones, come from the line below when TMA is out)
                FwdConfig(128, 128, 8, 3, tma=True),
                FwdConfig(64, 32, 4, 3, tma=True),
                FwdConfig(128, 32, 8, 3, tma=True),
                FwdConfig(64, 64, 4, 3, tma=True),
            ]
            out += [FwdConfig(64, 32, 4, 3, tma=True, one_loop=True)] if band else [FwdConfig(128, 32, 8, 3, tma=True, one_loop=True)]
        else:
            out = [FwdConfig(128, 64, 8, 2, one_loop=True), FwdConfig(128, 64, 8, 2, tma=True), FwdConfig(128, 64, 8, 2), FwdConfig(64, 64, 4, 2, tma=True)]
        if not tma:  # same tiles through plain loads
            out = list(dict.fromkeys(replace(c, tma=False) for c in out))
        return out + (ws_candidates(pb) if _warpspec.enabled() else [])
    if d <= 64:
        return [FwdConfig(128, 64, 4, 3), FwdConfig(64, 64, 4, 3)]
    if d <= 128:
        return [FwdConfig(128, 32, 4, 3), FwdConfig(64, 64, 4, 3)]
    return [FwdConfig(64, 32, 4, 2), FwdConfig(32, 32, 4, 2)]


def bwd_candidates(pb: Problem) -> list[BwdConfig]:
    """Pruned backward configurations (best guess first)."""
    if interpreting():
        return [BwdConfig(16, 16, 4, 1, 16, 16, 4, 1, atomic_dq=False)]
    cc = _capability(pb.device)
    d = max(pb.head_dim, pb.value_dim)
    if pb.q.dtype == torch.float32:
        return [BwdConfig(32, 32, 4, 1, 32, 32, 4, 1), BwdConfig(16, 16, 4, 1, 16, 16, 4, 1)]
    if cc >= (9, 0):  # measured on an H100 (see the README); the first of each list won the first sweep
        # one loop (one_loop) won the short programs: causal up to M = 1024 at K = 64, M = 512 (causal 1024) at K = 128,
        # causal M <= 1024 at K = 256 (the H200; benchmarks/RESULTS.md "one software pipeline per program")
        if d <= 64:
            return [
                BwdConfig(32, 128, 4, 3, 128, 32, 4, 3),
                BwdConfig(32, 128, 4, 3, 64, 64, 4, 3),
                BwdConfig(32, 64, 4, 3, 128, 32, 4, 3),
                BwdConfig(32, 128, 4, 3, 128, 32, 4, 3, atomic_dq=True),
            ] + ([BwdConfig(32, 128, 4, 3, 64, 64, 4, 3, one_loop=True)] if pb.has_band else [])
        if d <= 128:
            return [
                BwdConfig(32, 64, 8, 2, 64, 64, 4, 2),
                BwdConfig(32, 128, 8, 2, 64, 64, 4, 2),
                BwdConfig(32, 64, 4, 3, 64, 64, 4, 2),
                BwdConfig(64, 64, 8, 2, 64, 64, 4, 2),
                BwdConfig(32, 128, 8, 2, 64, 64, 4, 2, one_loop=True),
            ]
        # K > 128: two [BLOCK_N, K] fp32 accumulators fill the registers, so dK and dV run as two launches
        # (one accumulator each) and dQ comes from its own kernel (no atomics: deterministic). What decides
        # the speed is that no launch spills and that the dK and dQ launches pipeline their loads (3 stages,
        # 224-224.5 KiB of shared memory, of 227): on an H200 the dK launch at 1 stage spilled 52 B and the dQ kernel
        # over 64 x 64 tiles 44 B; 3-stage dK over 128-key tiles and 3-stage dQ over 128 x 32 tiles were
        # 1.5-1.8x faster than both (bf16, 185 -> 325 TFLOP/s at M = 16384; README, version 6). The second
        # candidate takes 64-key dK tiles (more programs for short causal sequences), the third 32-query dV
        # steps, the fourth the fused kernel with atomic dQ.
        return [
            BwdConfig(32, 128, 8, 3, 128, 32, 8, 3, dv_block_m=64, dv_block_n=128, dv_warps=8, dv_stages=2),
            BwdConfig(32, 64, 8, 3, 128, 32, 8, 3, dv_block_m=64, dv_block_n=128, dv_warps=8, dv_stages=2),
            BwdConfig(32, 128, 8, 3, 128, 32, 8, 3, dv_block_m=32, dv_block_n=128, dv_warps=8, dv_stages=3),
            BwdConfig(32, 64, 8, 2, 64, 32, 8, 2, atomic_dq=True),
        ] + ([BwdConfig(32, 128, 8, 3, 128, 32, 8, 3, dv_block_m=64, dv_block_n=128, dv_warps=8, dv_stages=2, one_loop=True)] if pb.has_band else [])
    if d <= 64:
        return [BwdConfig(32, 128, 4, 3, 128, 32, 4, 3), BwdConfig(64, 64, 4, 2, 64, 64, 4, 2)]
    if d <= 128:
        return [BwdConfig(32, 64, 4, 2, 64, 32, 4, 2), BwdConfig(16, 64, 4, 2, 64, 16, 4, 2)]
    return [BwdConfig(16, 32, 4, 1, 32, 16, 4, 1), BwdConfig(16, 16, 4, 1, 16, 16, 4, 1)]


def _key(kind: str, pb: Problem, sig: str) -> str:
    """The autotune key (see :data:`autotune.KEY_FORMAT`); built from cached device facts (this runs per call)."""
    dev = pb.device
    interp = interpreting() or dev.type != "cuda"
    index = -1 if interp else _device_index(dev)
    parts = (kind, index, pb.q.dtype, pb.head_dim, pb.value_dim, sig, autotune.shape_bucket(max(pb.max_q, pb.max_k)))
    key = _KEYS.get(parts)
    if key is None:
        name, cc = "interp", (0, 0)
        if not interp:
            cc, name = _cuda_facts(index)
        dt = str(pb.q.dtype).replace("torch.", "")
        key = f"{kind}|{name}|sm{cc[0]}{cc[1]}|triton{_triton_version()}|{dt}|k{pb.head_dim}|v{pb.value_dim}|{sig}|m{parts[-1]}"
        if len(_KEYS) > 4096:
            _KEYS.clear()
        _KEYS[parts] = key
    return key


_KEYS: dict[tuple[Any, ...], str] = {}  # the key strings already built (the steady state is one lookup)


def _cfg_dict(cfg: Any) -> dict[str, Any]:
    return autotune.as_dict(cfg)


#: The configuration chosen per autotune key in this process (the steady state is one dict lookup).
_CHOSEN: dict[str, Any] = {}


def _run_tuned(key: str, candidates: Callable[[], list[Any]], launch: Callable[[Any], None]) -> bool:
    """Launch with the key's configuration (tuning it first when this process has none): ``True`` when it
    was settled before this call (only then do the launches form a :class:`_plans.Plan`)."""
    cfg = _CHOSEN.get(key)
    if cfg is not None:
        launch(cfg)
        return True
    choice = autotune.tune(key, candidates(), launch, _cfg_dict)
    _CHOSEN[key] = choice.config
    return False


# ------------------------------------------------------------------------------------------------
# launches
# ------------------------------------------------------------------------------------------------


def _strides4(t: torch.Tensor) -> tuple[int, int, int, int]:
    s = t.stride()
    return (s[0], s[1], s[2], s[3])


def _seq_args(pb: Problem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """``SEQ_Q, SEQ_K, SEQ_KLEN, SEQ_KLOG, TABLES, table stride, page size``."""
    dummy = _dummy(pb.device)
    if pb.meta is None:
        return dummy, dummy, dummy, dummy, dummy, 0, 1
    m = pb.meta
    if pb.paging is not None:
        tables = pb.paging.block_tables.to(device=pb.device, dtype=torch.int32)
        return m.seq_q, m.seq_k, m.seq_klen, m.seq_klog, tables, int(tables.stride(0)), pb.paging.page_size
    return m.seq_q, m.seq_k, m.seq_klen, m.seq_klog, dummy, 0, 1


def _bias_args(pb: Problem) -> tuple[torch.Tensor, tuple[int, int, int, int, int]]:
    if pb.bias is None:
        return _dummy(pb.device), (0, 0, 0, 0, 0)
    s = pb.bias.stride()
    return pb.bias, (s[0], s[1], s[2], s[3], s[4])


def forward(
    inputs: Inputs, *, needs_lse: bool, dropout_seed: int, config: Optional[FwdConfig] = None, pb: Optional[Problem] = None
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(out [B, Mq, G, H, Kv], lse [B, G, H, Mq] float32 or None)``. A call with neither ``config`` nor
    ``pb`` replays the launch plan of its signature when there is one (:mod:`._plans`), and records it
    otherwise."""
    rec: Optional[_plans.Recorder] = None  # set when this call records a plan
    if config is None and pb is None and _plans.enabled():
        base = _plans.call_key(inputs)
        if base is not None:
            key = ("fwd", base, inputs.out_dtype, needs_lse)
            plan, record = _plans.find(key)
            if plan is not None:
                return _replay_forward(inputs, plan, dropout_seed)
            rec = _plans.Recorder(_plans.FWD_VALUES, key) if record else None
    pb = pb if pb is not None else problem(inputs)
    b, g, h, mq, kv = pb.batch, pb.groups, pb.heads, pb.num_queries, pb.value_dim
    dev = pb.device
    out = _empty((b, mq, g, h, kv), inputs.out_dtype, dev)
    lse = _empty((b, g, h, mq), torch.float32, dev) if needs_lse else None
    if out.numel() == 0 and (lse is None or lse.numel() == 0):
        return out, lse
    live = ("Q", "K", "V", "OUT", "seed") + (("LSE",) if needs_lse else ()) + (("BIAS",) if pb.bias is not None else ())
    seq_q, seq_k, seq_klen, seq_klog, tables, stab, page_size = _seq_args(pb)
    bias, bst = _bias_args(pb)
    lse_arg = lse if lse is not None else _dummy(dev)
    lst = (g * h * mq, h * mq, mq) if lse is not None else (0, 0, 0)
    bk, bv = _pow2(pb.head_dim), _pow2(pb.value_dim)
    drop = pb.p > 0.0
    dot = _dot_mode(pb.q.dtype)
    kern = _relauncher("fwd_kernel")

    def launch(cfg: FwdConfig) -> None:
        if not _can_take(pb, cfg):  # the key's tuned choice, or an explicit one: the best guess this call can run
            cfg = next(c for c in fwd_candidates(pb) if _can_take(pb, c))
        nblk = -(-pb.max_q // cfg.block_m)
        grid = (nblk * pb.num_seqs * g * h,)
        if grid[0] == 0:
            return
        if cfg.tma:
            _ensure_allocator()
        rows = _row_table(dev, pb.q.dtype, nblk * cfg.block_m) if cfg.ws else _dummy(dev)
        kern.launch(
            grid,
            (
                pb.q, pb.k, pb.v, out, lse_arg, bias, seq_q, seq_k, seq_klen, seq_klog, tables, rows,
                *_strides4(pb.q), *_strides4(pb.k), *_strides4(pb.v), *_strides4(out), *lst, *bst, stab,
                g, h, mq, pb.num_keys, pb.mk_log, nblk, pb.band_lo, pb.band_hi, pb.band_br, pb.scale * LOG2E,
                pb.p, 1.0 / (1.0 - pb.p), dropout_seed, page_size, rows.shape[0],
            ),
            dict(
                K_DIM=pb.head_dim, V_DIM=kv, BLOCK_K=bk, BLOCK_V=bv, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                VARLEN=pb.varlen, PAGED=pb.paged, HAS_BIAS=pb.bias is not None, DROPOUT=drop, WRITE_LSE=lse is not None,
                USE_TMA=cfg.tma, DOT=dot, SCALE_POS=pb.scale >= 0.0,
                WS=cfg.ws, WS_MASKED=cfg.ws and (pb.has_band or pb.varlen or pb.num_keys % cfg.block_n != 0),
                ONE_LOOP=cfg.one_loop,
            ),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, record=rec.hook(kern, live) if rec is not None else None,
        )  # fmt: skip

    if config is not None:
        launch(config)
    else:
        # keys in whole 128-key tiles or not: a separate key, as only whole tiles get warp-specialized candidates
        sig = pb.signature() if pb.varlen or pb.num_keys % 128 == 0 else pb.signature() + "+ragged"
        if _run_tuned(_key("fwd", pb, sig), lambda: fwd_candidates(pb), launch) and rec is not None:
            rec.store((out.shape, lse.shape if lse is not None else None))
    return out, lse


def _replay_forward(inputs: Inputs, plan: _plans.Plan, dropout_seed: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The forward through a recorded plan: outputs allocated, the call's addresses and seed launched."""
    q = inputs.query
    out_shape, lse_shape = plan.shapes
    out = _empty(out_shape, inputs.out_dtype, q.device)
    lse = _empty(lse_shape, torch.float32, q.device) if lse_shape is not None else None
    geo = inputs.geometry
    tb = geo.tensor if geo is not None else None
    plan.launch(
        (
            q.data_ptr(), inputs.key.data_ptr(), inputs.value.data_ptr(), out.data_ptr(), lse.data_ptr() if lse is not None else 0,
            tb.data_ptr() if tb is not None else 0, dropout_seed,
        )
    )  # fmt: skip
    return out, lse


def _last_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def backward(
    inputs: Inputs,
    grad_out: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    dropout_seed: int,
    grad_lse: Optional[torch.Tensor] = None,
    config: Optional[BwdConfig] = None,
    pb: Optional[Problem] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(dq, dk, dv, dbias)`` in the canonical layouts. dbias (when the bias needs a gradient) is
    ``[B, G, H, Mq, Mk]``, or ``[1, G, H, Mq, Mk]`` summed over the batch when the bias tensor is shared by
    every batch entry (``inputs.bias_shared_over_batch``; dense layouts without dropout): the batch then
    runs in pieces (``inputs.shared_bias_batch_step``). A call with neither ``config`` nor ``pb`` (and no
    bias gradient) replays the launch plan of its signature when there is one (:mod:`._plans`)."""
    qdt = inputs.query.dtype
    do = _last_contiguous(grad_out if grad_out.dtype == qdt else grad_out.to(qdt))  # the dots take dO in the inputs' dtype
    o = _last_contiguous(out)
    lse_c = lse.to(torch.float32).contiguous()  # the kernels index rows with stride 1
    glse = grad_lse.to(torch.float32).contiguous() if grad_lse is not None else None  # (an expanded gradient has stride 0)
    rec: Optional[_plans.Recorder] = None  # set when this call records a plan
    if config is None and pb is None and not inputs.features.bias_requires_grad and _plans.enabled():
        base = _plans.call_key(inputs)
        if base is not None:
            tk = _plans.tensor_key
            key = ("bwd", base, tk(do), tk(o), tk(lse_c), tk(glse) if glse is not None else None)
            plan, record = _plans.find(key)
            if plan is not None:
                return _replay_backward(inputs, plan, (do, o, lse_c, glse), dropout_seed)
            rec = _plans.Recorder(_plans.BWD_VALUES, key) if record else None
    pb = pb if pb is not None else problem(inputs)
    b, g, h, mq, mk = pb.batch, pb.groups, pb.heads, pb.num_queries, pb.num_keys
    kd, kv = pb.head_dim, pb.value_dim
    dev = pb.device
    q, k, v = pb.q, pb.k, pb.v
    dummy = _dummy(dev)
    bk, bv = _pow2(kd), _pow2(kv)
    dot = _dot_mode(q.dtype)
    drop = pb.p > 0.0
    want_dbias = pb.bias is not None and inputs.features.bias_requires_grad
    # dropout numbers its random stream by batch entry, so only dropout-free calls run in batch pieces
    summed = want_dbias and pb.meta is None and not drop and inputs.bias_shared_over_batch
    step = b
    if summed and pb.bias is not None:
        step = inputs.shared_bias_batch_step(pb.bias.element_size())
    pieces = [(b0, min(b, b0 + step)) for b0 in range(0, b, step)] or [(0, b)]
    dense = pb.meta is None and not pb.has_band  # every dS element is written

    def dbias_buffer(n: int) -> torch.Tensor:
        assert pb.bias is not None
        shape5 = (n, g, h, mq, mk)
        return _empty(shape5, pb.bias.dtype, dev) if dense else torch.zeros(shape5, dtype=pb.bias.dtype, device=dev)

    dbias: Optional[torch.Tensor] = None
    if want_dbias:
        dbias = torch.zeros((1, g, h, mq, mk), dtype=torch.float32, device=dev) if summed else dbias_buffer(b)
    # delta = rowsum(dO * O) - grad_lse and the base-2 LSE, [B, G, H, Mq] float32: written by the dQ kernel
    # (which then runs first), or by the preprocess kernel when dQ comes from atomic adds in the dK/dV kernel
    # (one allocation for both: each costs several microseconds of host time before the first launch; the
    # second starts on a 16-byte boundary, as a buffer of its own would, so the kernels' pointer
    # specialization is the same)
    rows = b * g * h * mq
    stats = _empty((2, -(-rows // 4) * 4), torch.float32, dev)
    m2, delta = stats[0, :rows].view(b, g, h, mq), stats[1, :rows].view(b, g, h, mq)
    lst = lse_c.stride()
    gst = glse.stride() if glse is not None else (0, 0, 0, 0)
    glse_arg = glse if glse is not None else dummy

    def preprocess() -> None:
        pre_bm = 16 if interpreting() else 64
        pre_blocks = -(-mq // pre_bm)
        if pre_blocks * b * g * h > 0:
            _relauncher("bwd_preprocess_kernel").launch(
                (pre_blocks * b * g * h,),
                (
                    o, do, lse_c, glse_arg, m2, delta,
                    *_strides4(o), *_strides4(do), lst[0], lst[1], lst[2], gst[0], gst[1], gst[2], g, h, mq, pre_blocks,
                ),
                dict(V_DIM=kv, BLOCK_V=bv, BLOCK_M=pre_bm, HAS_GLSE=glse is not None),
                num_warps=4, num_stages=3,
                record=hook("bwd_preprocess_kernel", "OUT", "DO", "LSE", "M2", "DELTA", *has_glse),
            )  # fmt: skip

    direct = pb.meta is None or pb.meta.direct
    write_rows = mk if direct else (pb.meta.write_rows if pb.meta is not None else mk)
    if not direct:  # (dK/dV summed back onto the key rows afterwards: never planned)
        rec = None
    # the call's own tensors each kernel takes besides Q, K, V, dO, the row statistics and the gradients
    has_bias, has_glse = (("BIAS",) if pb.bias is not None else ()), (("GLSE",) if glse is not None else ())

    def hook(kernel: str, *live: str) -> Optional[Callable[[Any, tuple[int, int, int], list[Any]], None]]:
        """The recorder's callback for a launch of ``kernel`` whose parameters ``live`` take the call's values."""
        return rec.hook(_relauncher(kernel), live) if rec is not None else None

    grads: list[torch.Tensor] = []  # dK, dV

    def dkdv_buffers() -> tuple[torch.Tensor, torch.Tensor]:
        """dK and dV, allocated once, after the first kernel is on its way (host time there is GPU idle time)."""
        if not grads:
            if pb.meta is None:
                grads.append(_empty((b, write_rows, g, h, kd), k.dtype, dev))
                grads.append(_empty((b, write_rows, g, h, kv), v.dtype, dev))
            else:  # keys outside every block get no gradient
                grads.append(torch.zeros((b, write_rows, g, h, kd), dtype=k.dtype, device=dev))
                grads.append(torch.zeros((b, write_rows, g, h, kv), dtype=v.dtype, device=dev))
        return grads[0], grads[1]

    seq_q, seq_k, seq_klen, seq_klog, tables, stab, page_size = _seq_args(pb)
    seq_kw = pb.meta.seq_kw if pb.meta is not None else dummy
    bias, bst = _bias_args(pb)
    # a contiguous [n, G, H, Mq, Mk] buffer has these strides for any n
    dbst = (g * h * mq * mk, h * mq * mk, mq * mk, mk, 1) if want_dbias else (0, 0, 0, 0, 0)
    dq_holder: list[torch.Tensor] = []
    launched: list[BwdConfig] = []  # the configuration of the last launch

    def launch(cfg: BwdConfig) -> None:
        dq_holder.clear()
        if cfg.atomic_dq:
            dq = torch.zeros((b, mq, g, h, kd), dtype=torch.float32, device=dev)
        else:
            dq = _empty((b, mq, g, h, kd), q.dtype, dev)
        dq_holder.append(dq)
        launched[:] = [cfg]
        if summed and dbias is not None:
            dbias.zero_()  # the tuner may launch several configurations
        if cfg.atomic_dq:
            preprocess()
        for b0, b1 in pieces:
            whole = b0 == 0 and b1 == b

            def cut(t: torch.Tensor, b0: int = b0, b1: int = b1, whole: bool = whole) -> torch.Tensor:
                return t if whole else t[b0:b1]

            piece = dbias_buffer(b1 - b0) if summed else dbias
            launch_piece(cfg, cut, pb.num_seqs if whole else b1 - b0, dq, piece)  # pieces only in dense layouts
            if summed and dbias is not None and piece is not None:
                dbias.add_(piece.sum(0, keepdim=True, dtype=torch.float32))

    def launch_piece(cfg: BwdConfig, cut: Callable[[torch.Tensor], torch.Tensor], num_seqs: int, dq: torch.Tensor, dbias: Optional[torch.Tensor]) -> None:
        """The kernels on the batch entries ``cut`` selects (all of them unless summed in pieces), for
        ``num_seqs`` sequences (batch entries, or packed blocks when whole)."""
        q_, k_, v_, do_, m2_, delta_, dq_ = (cut(t) for t in (q, k, v, do, m2, delta, dq))
        bias_ = cut(bias) if pb.bias is not None else bias
        if not cfg.atomic_dq:  # dQ first: it writes the rows' delta and m2 that the dK/dV launches read
            mblk = -(-pb.max_q // cfg.block_m2)
            grid = (mblk * num_seqs * g * h,)
            if grid[0] > 0:
                _relauncher("bwd_dq_kernel").launch(
                    grid,
                    (
                        q_, k_, v_, do_, m2_, delta_, dq_, bias_, cut(o), cut(lse_c), cut(glse) if glse is not None else dummy,
                        seq_q, seq_k, seq_klen, seq_klog, tables,
                        *_strides4(q_), *_strides4(k_), *_strides4(v_), *_strides4(do_), *_strides4(dq_), *bst, stab,
                        *_strides4(o), lst[0], lst[1], lst[2], gst[0], gst[1], gst[2],
                        g, h, mq, mk, pb.mk_log, mblk, pb.band_lo, pb.band_hi, pb.band_br, pb.scale * LOG2E, pb.scale,
                        pb.p, 1.0 / (1.0 - pb.p), dropout_seed, page_size,
                    ),
                    dict(
                        K_DIM=kd, V_DIM=kv, BLOCK_K=bk, BLOCK_V=bv, BLOCK_M=cfg.block_m2, BLOCK_N=cfg.block_n2,
                        VARLEN=pb.varlen, PAGED=pb.paged, HAS_BIAS=pb.bias is not None, DROPOUT=drop, DOT=dot,
                        HAS_GLSE=glse is not None, ONE_LOOP=cfg.one_loop,
                    ),
                    num_warps=cfg.warps2, num_stages=cfg.stages2,
                    record=hook("bwd_dq_kernel", "Q", "K", "V", "DO", "M2", "DELTA", "DQ", "OUT", "LSE", "seed", *has_bias, *has_glse),
                )  # fmt: skip
        dk, dv = dkdv_buffers()
        dk_, dv_ = cut(dk), cut(dv)
        # (part, query step, keys per program, warps, stages): 0 = dK and dV; split: 1 = dK (dQ, dS), 2 = dV
        parts = [(0, cfg.block_m1, cfg.block_n1, cfg.warps1, cfg.stages1)]
        if cfg.split_dv:
            parts = [(1, cfg.block_m1, cfg.block_n1, cfg.warps1, cfg.stages1), (2, cfg.dv_block_m, cfg.dv_block_n, cfg.dv_warps, cfg.dv_stages)]
        for part, bm, bn, warps, stages in parts:
            nblk = -(-pb.max_k // bn)
            grid = (nblk * num_seqs * g * h,)
            if grid[0] == 0:
                continue
            _relauncher("bwd_dkdv_kernel").launch(
                grid,
                (
                    q_, k_, v_, do_, m2_, delta_, dk_, dv_, dq_, bias_, dbias if dbias is not None and part != 2 else dummy,
                    seq_q, seq_k, seq_klen, seq_klog, seq_kw, tables,
                    *_strides4(q_), *_strides4(k_), *_strides4(v_), *_strides4(do_), *_strides4(dk_), *_strides4(dv_), *_strides4(dq_),
                    *bst, *dbst, stab,
                    g, h, mq, mk, pb.mk_log, nblk, pb.band_lo, pb.band_hi, pb.band_br, pb.scale * LOG2E, pb.scale,
                    pb.p, 1.0 / (1.0 - pb.p), dropout_seed, page_size,
                ),
                dict(
                    K_DIM=kd, V_DIM=kv, BLOCK_K=bk, BLOCK_V=bv, BLOCK_M=bm, BLOCK_N=bn,
                    VARLEN=pb.varlen, PAGED=pb.paged, HAS_BIAS=pb.bias is not None, HAS_DBIAS=dbias is not None and part != 2, DROPOUT=drop,
                    ATOMIC_DQ=cfg.atomic_dq and part != 2, DOT=dot, PART=part, ONE_LOOP=cfg.one_loop,
                ),
                num_warps=warps, num_stages=stages,
                record=hook("bwd_dkdv_kernel", "Q", "K", "V", "DO", "M2", "DELTA", "DK", "DV", "DQ", "seed", *has_bias),
            )  # fmt: skip

    if config is not None:
        launch(config)
    elif _run_tuned(_key("bwd", pb, pb.signature(dbias=want_dbias)), lambda: bwd_candidates(pb), launch) and rec is not None:
        dq0, (dk0, dv0) = dq_holder[0], dkdv_buffers()
        rec.store((stats.shape, dq0.shape, dq0.dtype, launched[0].atomic_dq, dk0.shape, dv0.shape, pb.meta is not None))
    dq = dq_holder[0]
    if dq.dtype != q.dtype:
        dq = dq.to(q.dtype)
    dk, dv = dkdv_buffers()
    if not direct:
        dk, dv = _scatter_back(pb, dk, dv)
    if summed and dbias is not None and pb.bias is not None:
        dbias = dbias.to(pb.bias.dtype)
    return dq, dk, dv, dbias


def _replay_backward(
    inputs: Inputs, plan: _plans.Plan, tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], dropout_seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The backward through a recorded plan (``tensors``: dO, O, the LSE and its gradient as the kernels
    take them): row statistics, dQ, dK and dV allocated as the full path does, the call's addresses and
    seed launched."""
    do, o, lse_c, glse = tensors
    q = inputs.query
    dev = q.device
    stats_shape, dq_shape, dq_dtype, atomic_dq, dk_shape, dv_shape, zeroed = plan.shapes
    stats = _empty(stats_shape, torch.float32, dev)
    dq = torch.zeros(dq_shape, dtype=dq_dtype, device=dev) if atomic_dq else _empty(dq_shape, dq_dtype, dev)
    if zeroed:  # keys outside every block get no gradient
        dk, dv = torch.zeros(dk_shape, dtype=q.dtype, device=dev), torch.zeros(dv_shape, dtype=q.dtype, device=dev)
    else:
        dk, dv = _empty(dk_shape, q.dtype, dev), _empty(dv_shape, q.dtype, dev)
    geo = inputs.geometry
    tb = geo.tensor if geo is not None else None
    m2 = stats.data_ptr()
    plan.launch(
        (
            q.data_ptr(), inputs.key.data_ptr(), inputs.value.data_ptr(), do.data_ptr(), m2, m2 + 4 * stats_shape[1], dq.data_ptr(),
            dk.data_ptr(), dv.data_ptr(), tb.data_ptr() if tb is not None else 0, o.data_ptr(), lse_c.data_ptr(),
            glse.data_ptr() if glse is not None else 0, dropout_seed,
        )
    )  # fmt: skip
    return (dq.to(q.dtype) if dq.dtype != q.dtype else dq), dk, dv, None


def _scatter_back(pb: Problem, dk: torch.Tensor, dv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum per-sequence dK/dV rows onto the physical key rows they came from (paged or overlapping keys)."""
    assert pb.meta is not None
    if pb.paging is not None:
        rows = _paged_rows(pb.meta, pb.paging, pb.device)
    else:
        assert pb.meta.phys_rows is not None
        rows = pb.meta.phys_rows
    shape_k = (dk.shape[0], pb.num_keys, *dk.shape[2:])
    shape_v = (dv.shape[0], pb.num_keys, *dv.shape[2:])
    out_k = torch.zeros(shape_k, dtype=torch.float32, device=dk.device).index_add_(1, rows, dk.float())
    out_v = torch.zeros(shape_v, dtype=torch.float32, device=dv.device).index_add_(1, rows, dv.float())
    return out_k.to(dk.dtype), out_v.to(dv.dtype)


def _paged_rows(meta: _SeqMeta, paging: Paging, device: torch.device) -> torch.Tensor:
    """Physical key row of each row of the per-sequence dK/dV buffer (sequence-major, ``k_len`` rows each)."""
    starts = meta.seq_k.to(device="cpu", dtype=torch.int64)
    lens = meta.seq_klen.to(device="cpu", dtype=torch.int64)
    seq = torch.repeat_interleave(torch.arange(len(lens), dtype=torch.int64), lens)
    first = torch.cumsum(lens, 0) - lens
    t = torch.arange(int(lens.sum()), dtype=torch.int64) - torch.repeat_interleave(first, lens) + torch.repeat_interleave(starts, lens)
    tables = paging.block_tables.to(device="cpu", dtype=torch.int64)
    ps = paging.page_size
    return (tables[seq, t // ps] * ps + t % ps).to(device)


# ------------------------------------------------------------------------------------------------
# dropout mask, for tests and debugging
# ------------------------------------------------------------------------------------------------


def dropout_keep_mask(seed: int, shape5: tuple[int, int, int, int, int], p: float, device: torch.device | str) -> torch.Tensor:
    """The boolean keep-mask ``[B, G, H, Mq, Mk]`` the kernels draw for ``seed`` and ``p`` (``Mk``: logical keys).

    Multiply the kept probabilities by ``1 / (1 - p)`` to reproduce the kernels' dropout.
    """
    total = 1
    for s in shape5:
        total *= int(s)
    out = torch.empty(total, dtype=torch.int8, device=device)
    if total:
        block = 1024
        kernels().dropout_mask_kernel[(-(-total // block),)](out, seed, p, total, BLOCK=block)
    return out.view(shape5).bool()


LaunchFn = Callable[[Any], None]
