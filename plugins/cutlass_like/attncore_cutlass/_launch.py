"""Host side of the kernels: describe a call, load (or build on first use) the extension, launch.

Nothing here copies keys or values: the kernels read the caller's ``[B, M, G, H, K]`` views through
their strides (stride 0 on ``H`` for shared keys/values) and the bias through its broadcast strides.
Block layouts become three small int32 arrays (cached per layout).
"""

from __future__ import annotations

import contextlib
import contextvars
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

import torch

from attncore.geometry import Anchor, BlockLayout
from attncore.inputs import Inputs

from . import build, negotiation

__all__ = [
    "backward",
    "extension",
    "forget_modules",
    "forward",
    "last_backward_dq",
    "last_backward_order",
    "last_backward_variant",
    "last_family",
    "last_forward_order",
    "last_forward_variant",
    "portable_kernels",
]

LOG2E = 1.4426950408889634
_BIG = 1 << 30

#: Tests set this to fill every output the kernels must write with NaN first (``torch.empty`` otherwise).
POISON = False

_TENSOR_CORES: contextvars.ContextVar[bool] = contextvars.ContextVar("attncore_cutlass_tensor_cores", default=True)
_LAST: dict[str, str] = {}
_LOCK = threading.Lock()
_MODULES: dict[Optional[tuple[int, int]], ModuleType] = {}


@contextlib.contextmanager
def portable_kernels() -> Iterator[None]:
    """Run the portable (CUDA-core) kernels even where tensor-core ones exist (tests compare both)."""
    token = _TENSOR_CORES.set(False)
    try:
        yield
    finally:
        _TENSOR_CORES.reset(token)


def last_family(direction: str) -> Optional[str]:
    """Which kernel family (``"tc"`` or ``"simt"``) ran the last ``"forward"`` or ``"backward"`` call."""
    return _LAST.get(direction)


def last_backward_variant() -> Optional[str]:
    """How the last tensor-core backward computed dK and dV: ``"one"`` launch of 4-warp CTAs, ``"split"``
    (dV, then dK), ``"paired"`` 8-warp CTAs; ``None`` when the last backward ran no tensor-core kernel (or
    the binary predates the report)."""
    return _LAST.get("backward_variant")


def last_forward_variant() -> Optional[str]:
    """The tile configuration of the last tensor-core forward, e.g. ``"D=128 keys=32 stages=2 warps=4"``
    (padded head dim, keys per tile, pipeline stages, warps per CTA); ``None`` when it ran no tensor-core
    kernel."""
    return _LAST.get("forward_variant")


def last_backward_order() -> Optional[str]:
    """The dK/dV CTAs' order in the last tensor-core backward: ``"rows"`` (key-block major: every (sequence,
    head)'s first key block, under a causal band the longest, then the next; only the kernels that add dQ
    atomically, :func:`last_backward_dq` ``"atomic"``) or ``"heads"``; ``None`` when it ran no tensor-core
    kernel (see :func:`attncore_cutlass.plugin.backward_order`)."""
    return _LAST.get("backward_order")


def last_forward_order() -> Optional[str]:
    """The CTA order of the last tensor-core forward: ``"rows"`` (row-block major: every (sequence, head)'s
    longest row block first, then the next) or ``"heads"`` (a (sequence, head)'s row blocks together);
    ``None`` when it ran no tensor-core kernel (see :func:`attncore_cutlass.plugin.forward_order`)."""
    return _LAST.get("forward_order")


def last_backward_dq() -> Optional[str]:
    """How the last tensor-core backward computed dQ: ``"kernel"`` (its own launch, a fixed summation order:
    bitwise reproducible) or ``"atomic"`` (the fp32 dK/dV CTAs add their shares into dQ: one product and one
    launch fewer, last bits vary from run to run; not taken while ``torch.use_deterministic_algorithms``
    is on); ``None`` when the last backward ran no tensor-core kernel."""
    return _LAST.get("backward_dq")


def extension(capability: Optional[tuple[int, int]]) -> ModuleType:
    """The compiled module for a device of ``capability``, building it first if this is its first use."""
    mod = _MODULES.get(capability)
    if mod is not None:
        return mod
    with _LOCK:
        located = negotiation.current(capability)
        try:
            if located.record is not None and located.directory is not None:
                directory = located.directory
            elif located.jit_blocker is None and located.jit_arch_list is not None and located.jit_dir is not None:
                build.build(located.jit_arch_list, located.jit_dir)
                negotiation.refresh()
                directory = located.jit_dir
            else:  # the dispatcher rejects the op first; reached only by calling this module directly
                raise RuntimeError(f"attncore-cutlass: not built ({located.jit_blocker}); {negotiation.BUILD_HINT}")
            mod = _MODULES[capability] = build.load_extension(directory)
        except (ImportError, OSError, RuntimeError, subprocess.SubprocessError) as exc:  # BuildError is a RuntimeError
            # remembered: from the next call on, negotiation rejects the op with this reason and the
            # dispatcher falls back (this call has already been dispatched, so it reports the failure)
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            negotiation.record_failure(capability, f"{type(exc).__name__}: {last}")
            raise RuntimeError(
                f"attncore-cutlass: the CUDA extension could not be built or loaded ({exc}); later calls fall back to other operators "
                "(python -m attncore.info and attncore.dispatch.explain show why)"
            ) from exc
    return mod


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _last_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


@dataclass(frozen=True)
class _Seqs:
    """A block layout as the kernels read it, and where each block's dK/dV rows are written."""

    seq_q: torch.Tensor
    seq_k: torch.Tensor
    seq_klen: torch.Tensor
    seq_kw: torch.Tensor
    num_seqs: int
    max_q: int
    max_k: int
    direct: bool  # blocks' key spans do not overlap: dK/dV rows are written in place
    write_rows: int
    spans: tuple[tuple[int, int, int], ...]  # (buffer row, key row, length) per block, when not direct


_SEQ_CACHE: OrderedDict[tuple[object, ...], _Seqs] = OrderedDict()


def _i32(values: tuple[int, ...] | list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int32).to(device)


def _seqs(blocks: BlockLayout, device: torch.device) -> _Seqs:
    key = (blocks.q_seqstart, blocks.k_start, blocks.k_len, blocks.k_total, device)
    hit = _SEQ_CACHE.get(key)
    if hit is not None:
        _SEQ_CACHE.move_to_end(key)
        return hit
    n = blocks.num_blocks
    direct = blocks.keys_disjoint
    offsets = blocks.key_offsets
    kw = blocks.k_start if direct else offsets[:-1]
    out = _Seqs(
        _i32(blocks.q_seqstart, device), _i32(blocks.k_start, device), _i32(blocks.k_len, device), _i32(kw, device), n,
        max((blocks.q_len(b) for b in range(n)), default=0), max(blocks.k_len, default=0), direct,
        blocks.k_total if direct else offsets[-1],
        () if direct else tuple((offsets[b], blocks.k_start[b], blocks.k_len[b]) for b in range(n)),
    )  # fmt: skip
    _SEQ_CACHE[key] = out
    if len(_SEQ_CACHE) > 64:
        _SEQ_CACHE.popitem(last=False)
    return out


@dataclass(frozen=True)
class _Call:
    seqs: Optional[_Seqs]
    num_seqs: int
    max_q: int
    max_k: int
    band_lo: int
    band_hi: int
    bottom_right: bool


def _describe(inputs: Inputs) -> _Call:
    geo = inputs.geometry
    q = inputs.q5
    seqs = _seqs(geo.blocks, q.device) if geo is not None and geo.blocks is not None else None
    lo, hi, br = -_BIG, _BIG, False
    if geo is not None and geo.band is not None:
        lo = -_BIG if geo.band.lo is None else max(geo.band.lo, -_BIG)
        hi = _BIG if geo.band.hi is None else min(geo.band.hi, _BIG)
        br = geo.band.anchor is Anchor.BOTTOM_RIGHT
    if seqs is not None:
        return _Call(seqs, seqs.num_seqs, seqs.max_q, seqs.max_k, lo, hi, br)
    return _Call(None, q.shape[0], q.shape[1], inputs.num_keys, lo, hi, br)


#: CUDA's limit on gridDim.y, which the kernels use for sequences (batch entries or packed blocks)
MAX_SEQS_PER_LAUNCH = 65535

Cut = Callable[[Optional[torch.Tensor]], Optional[torch.Tensor]]


def _seq_chunks(call: _Call, with_kw: bool = False, batch_step: int = MAX_SEQS_PER_LAUNCH) -> Iterator[tuple[Cut, tuple[Optional[torch.Tensor], ...], int]]:
    """Launch pieces of at most MAX_SEQS_PER_LAUNCH sequences: ``(cut, sequence arrays, count)``.

    Dense layouts cut every ``[B, ...]`` tensor along the batch (``cut`` slices it), at most
    ``batch_step`` entries a piece; packed layouts pass slices of the block arrays (blocks index global
    rows, so tensors stay whole)."""
    seqs = call.seqs
    step = max(1, min(batch_step, MAX_SEQS_PER_LAUNCH)) if seqs is None else MAX_SEQS_PER_LAUNCH
    if seqs is None:
        for b0 in range(0, max(call.num_seqs, 1), step):
            b1 = min(b0 + step, call.num_seqs)
            whole = b0 == 0 and b1 == call.num_seqs

            def cut(t: Optional[torch.Tensor], b0: int = b0, b1: int = b1, whole: bool = whole) -> Optional[torch.Tensor]:
                return t if t is None or whole else t[b0:b1]

            yield cut, ((None, None, None, None) if with_kw else (None, None, None)), b1 - b0
        return
    for s0 in range(0, max(seqs.num_seqs, 1), step):
        s1 = min(s0 + step, seqs.num_seqs)
        arrays: tuple[Optional[torch.Tensor], ...] = (seqs.seq_q[s0 : s1 + 1], seqs.seq_k[s0:s1], seqs.seq_klen[s0:s1])
        if with_kw:
            arrays = (*arrays, seqs.seq_kw[s0:s1])
        yield (lambda t: t), arrays, s1 - s0


def _vec_ok(*tensors: torch.Tensor) -> bool:
    """16-byte loads are safe: head dims a whole number of 16-byte chunks, aligned bases and row strides."""
    for t in tensors:
        e = t.element_size()
        if (t.shape[-1] * e) % 16 or t.data_ptr() % 16 or any((s * e) % 16 for s in t.stride()[:4]):
            return False
    return True


def _bias(inputs: Inputs) -> Optional[torch.Tensor]:
    b = inputs.bias5
    if b is None or b.dtype in (inputs.q5.dtype, torch.float32):
        return b
    # other dtypes (float64, or a half bias with float32 inputs) go through float32: convert the distinct
    # values only, then broadcast again (b.float() would materialize every broadcast copy)
    compact = b[tuple(slice(0, 1) if st == 0 else slice(None) for st in b.stride())]
    return compact.float().expand(b.shape)


def forward(inputs: Inputs, *, needs_lse: bool, ext: Optional[ModuleType] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(out [B, Mq, G, H, Kv] in inputs.out_dtype, lse [B, G, H, Mq] float32 or None)``; ``ext``: a given
    compiled module instead of the negotiated one (gpu_matrix uses it to show what negotiation prevents)."""
    q, k, v = (_last_contiguous(t) for t in (inputs.q5, inputs.k5, inputs.v5))
    b, mq, g, h, _ = q.shape
    kv = v.shape[-1]
    dev = q.device
    out_dtype = inputs.out_dtype
    kernel_dtype = out_dtype if out_dtype in (q.dtype, torch.float32) else torch.float32
    out = _empty((b, mq, g, h, kv), kernel_dtype, dev)
    lse = _empty((b, g, h, mq), torch.float32, dev) if needs_lse else None
    call = _describe(inputs)
    ext = ext if ext is not None else extension(inputs.features.device.capability)
    bias = _bias(inputs)
    vec, tc = _vec_ok(q, k, v), _TENSOR_CORES.get()
    family = "none"
    for cut, seq_args, n in _seq_chunks(call):
        family = ext.forward(
            cut(q), cut(k), cut(v), cut(bias), cut(out), cut(lse), *seq_args, n, call.max_q, call.max_k, call.band_lo, call.band_hi,
            call.bottom_right, inputs.scale, vec, tc,
        )  # fmt: skip
    _LAST["forward"] = family
    _record_variants(ext, family, ("forward_variant", "last_forward_variant"), ("forward_order", "last_forward_order"))
    return (out if out.dtype == out_dtype else out.to(out_dtype)), lse


def backward(
    inputs: Inputs, grad_out: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, grad_lse: Optional[torch.Tensor], ext: Optional[ModuleType] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(dq, dk, dv, dbias)`` in the canonical layouts; ``ext`` as for :func:`forward`.

    dbias (when the bias needs a gradient) is ``[B, G, H, Mq, Mk]``, or ``[1, G, H, Mq, Mk]`` already
    summed over the batch when the bias tensor is shared by every batch entry (``bias_shared_over_batch``)."""
    q, k, v = (_last_contiguous(t) for t in (inputs.q5, inputs.k5, inputs.v5))
    b, mq, g, h, kd = q.shape
    mk, kv = k.shape[1], v.shape[-1]
    dev = q.device
    do = _last_contiguous(grad_out if grad_out.dtype == q.dtype else grad_out.to(q.dtype))
    call = _describe(inputs)
    seqs = call.seqs
    rows = mk if seqs is None else seqs.write_rows
    # unless torch asks for reproducible results, the fp32 tensor-core kernels add dQ atomically into zeros
    deterministic = torch.are_deterministic_algorithms_enabled()
    zero_dq = q.dtype == torch.float32 and not deterministic
    dq = torch.zeros((b, mq, g, h, kd), dtype=q.dtype, device=dev) if zero_dq else _empty((b, mq, g, h, kd), q.dtype, dev)
    if seqs is None:
        dk = _empty((b, rows, g, h, kd), q.dtype, dev)
        dv = _empty((b, rows, g, h, kv), q.dtype, dev)
    else:  # keys outside every block get no gradient
        dk = torch.zeros((b, rows, g, h, kd), dtype=q.dtype, device=dev)
        dv = torch.zeros((b, rows, g, h, kv), dtype=q.dtype, device=dev)
    bias = _bias(inputs)
    dbias: Optional[torch.Tensor] = None
    # a bias broadcast over the batch (ALiBi-like [H, Mq, Mk]) has a gradient of one batch entry's size:
    # sum it piece by piece (deterministic order, fp32) rather than materialize B copies of it
    summed = bias is not None and inputs.features.bias_requires_grad and seqs is None and inputs.bias_shared_over_batch
    if bias is not None and inputs.features.bias_requires_grad:
        shape = (1, g, h, mq, mk) if summed else (b, g, h, mq, mk)
        dbias = torch.zeros(shape, dtype=torch.float32 if summed else bias.dtype, device=dev)  # masked pairs stay 0
    if call.max_q == 0 or call.max_k == 0 or call.num_seqs == 0:  # nothing to launch: no pair is visible
        for t in (dq, dk, dv):
            t.zero_()
        _LAST["backward"] = "none"
        for key in ("backward_variant", "backward_dq", "backward_order"):
            _LAST.pop(key, None)
        return dq, dk, dv, _in_bias_dtype(dbias, inputs)
    ext = ext if ext is not None else extension(inputs.features.device.capability)
    delta, lse2 = _row_stats(ext, grad_out, out, lse, grad_lse, do)
    vec, tc = _vec_ok(q, k, v, do), _TENSOR_CORES.get()
    family = "none"
    step = inputs.shared_bias_batch_step(bias.element_size()) if summed and bias is not None else MAX_SEQS_PER_LAUNCH
    for cut, seq_args, n in _seq_chunks(call, with_kw=True, batch_step=step):
        piece = torch.zeros((n, g, h, mq, mk), dtype=bias.dtype, device=dev) if summed and bias is not None else cut(dbias)
        family = ext.backward(
            cut(q), cut(k), cut(v), cut(bias), cut(do), cut(lse2), cut(delta), cut(dq), cut(dk), cut(dv), piece, *seq_args,
            n, call.max_q, call.max_k, call.band_lo, call.band_hi, call.bottom_right, inputs.scale, vec, tc, deterministic,
        )  # fmt: skip
        if summed and dbias is not None and piece is not None:
            dbias += piece.sum(0, keepdim=True, dtype=torch.float32)  # no fp32 copy of the piece
    _LAST["backward"] = family
    _record_variants(ext, family, ("backward_variant", "last_backward_variant"), ("backward_dq", "last_backward_dq"), ("backward_order", "last_backward_order"))
    if seqs is not None and not seqs.direct:
        dk, dv = _sum_overlaps(seqs, dk, dv, mk)
    return dq, dk, dv, _in_bias_dtype(dbias, inputs)


def _record_variants(ext: ModuleType, family: str, *reports: tuple[str, str]) -> None:
    """After a call: each ``(key, binding)`` report of the tensor-core kernels into ``_LAST`` (cleared when
    they did not run, or the binary predates the report)."""
    for key, name in reports:
        report = getattr(ext, name, None)
        if family == "tc" and report is not None:
            _LAST[key] = str(report())
        else:
            _LAST.pop(key, None)


def _row_stats(
    ext: ModuleType, grad_out: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, grad_lse: Optional[torch.Tensor], do: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(delta, lse2)``, ``[B, G, H, Mq]`` float32: delta = rowsum(dO * O) - grad_lse and the base-2 LSE, +inf
    for rows that saw no key (so that exp2(s - lse2) is 0 there whatever s is). One kernel pass over dO and
    O in the inputs' dtype (fp32 products); an output kept in another dtype takes the eager path."""
    b, mq, g, h, _ = out.shape
    if out.dtype == do.dtype:
        delta = torch.empty((b, g, h, mq), dtype=torch.float32, device=out.device)
        lse2 = torch.empty_like(delta)
        glse = None if grad_lse is None else grad_lse.float().contiguous()
        ext.prepare(do, _last_contiguous(out), lse.float().contiguous(), glse, delta, lse2)
        return delta, lse2
    delta = (grad_out.float() * out.float()).sum(-1).permute(0, 2, 3, 1)
    if grad_lse is not None:
        delta = delta - grad_lse.float()
    lse2 = lse.float() * LOG2E
    lse2 = torch.where(lse2 == float("-inf"), torch.full_like(lse2, float("inf")), lse2)
    return delta.contiguous(), lse2.contiguous()


def _in_bias_dtype(dbias: Optional[torch.Tensor], inputs: Inputs) -> Optional[torch.Tensor]:
    """The bias gradient in the bias's own dtype (it is computed in float32 or the inputs' dtype)."""
    if dbias is not None and inputs.bias5 is not None and dbias.dtype != inputs.bias5.dtype:
        return dbias.to(inputs.bias5.dtype)
    return dbias


def _sum_overlaps(seqs: _Seqs, dk: torch.Tensor, dv: torch.Tensor, num_keys: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks whose key spans overlap wrote their own rows; add them onto the key rows, block by block (deterministic)."""
    out_k = torch.zeros((dk.shape[0], num_keys, *dk.shape[2:]), dtype=torch.float32, device=dk.device)
    out_v = torch.zeros((dv.shape[0], num_keys, *dv.shape[2:]), dtype=torch.float32, device=dv.device)
    for row, start, length in seqs.spans:
        out_k[:, start : start + length] += dk[:, row : row + length].float()
        out_v[:, start : start + length] += dv[:, row : row + length].float()
    return out_k.to(dk.dtype), out_v.to(dv.dtype)


def forget_modules() -> None:
    """Drop the loaded-module cache (a new binary was built for this process's tests)."""
    with _LOCK:
        _MODULES.clear()
