"""Plugin hooks registering the CUDA C++ operators with attncore (entry point ``attncore.plugins``)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Optional

from attncore.hookspecs import hookimpl
from attncore.ops import AttentionOpBase
from attncore.plugin_info import PluginInfo
from attncore.requirements import declared_requirements, installed_version

__all__ = ["attncore_operators", "attncore_plugin_info"]

DISTRIBUTION = "attncore-cutlass"


def build_info() -> dict[str, str]:
    """What ``python -m attncore.info`` shows: the binary's record, or why there is none and what happens next.

    Never touches a GPU (the registry loads plugins on the first dispatch, CPU calls included, and
    initializing CUDA there would break fork-based workers); ``python -m attncore_cutlass status`` checks
    each visible device."""
    from . import build, negotiation

    facts = negotiation.facts()
    located = negotiation.locate(facts, None)
    info: dict[str, str] = {"key_format": build.KEY_FORMAT, "cache": str(build.cache_root(facts.env))}
    rec = located.record
    if rec is not None:
        info.update(
            status="built",
            origin=f"{located.origin}: {located.directory}",
            key=rec.key,
            built_for_torch=rec.torch,
            built_for_cuda=rec.cuda,
            python=rec.python,
            arch_list=rec.arch_list,
            ptx="yes" if rec.ptx else "no",
            nvcc=rec.nvcc,
            built=rec.built,
        )
    elif located.record_error is not None:
        info.update(status="unreadable record", error=located.record_error)
    elif located.jit_blocker in (None, negotiation.NO_TARGET):  # the environment can build; the device decides the arch
        target = located.jit_arch_list or "the device's own arch"
        info.update(status="not built (builds on first use)", first_use=f"TORCH_CUDA_ARCH_LIST={target} into the cache")
    else:
        info.update(status=f"not built ({located.jit_blocker})", fix=located.jit_fix or negotiation.BUILD_HINT)
    info["kernel_choices"] = kernel_choices(facts.env)
    return info


PAIRS_ENV = "ATTNCORE_CUTLASS_FP32_BWD_PAIRS"
WARPS_ENV = "ATTNCORE_CUTLASS_FWD_WARPS"
KEYS_ENV = "ATTNCORE_CUTLASS_FP32_FWD_KEYS"
WARP_MASKS_ENV = "ATTNCORE_CUTLASS_FWD_WARP_MASKS"
SPLIT_ENV = "ATTNCORE_CUTLASS_FP32_FWD_SPLIT"
WIDE_ENV = "ATTNCORE_CUTLASS_FP32_FWD_WIDE"
DQ_SPLITS_ENV = "ATTNCORE_CUTLASS_FP32_DQ_SPLITS"
ORDER_ENV = "ATTNCORE_CUTLASS_FWD_ORDER"
BWD_ORDER_ENV = "ATTNCORE_CUTLASS_BWD_ORDER"


def _env_list(env: Mapping[str, str], name: str, unset: str) -> list[str]:
    """A comma-separated switch as csrc/kernels.h's ``env_list_has`` reads it: spaces ignored, ``unset`` when
    the variable is not set."""
    return env.get(name, unset).replace(" ", "").split(",")


def fp32_paired_head_dims(env: Mapping[str, str]) -> tuple[int, ...]:
    """The padded head dims whose fp32 backward runs paired 8-warp CTAs, as csrc/bwd_tc.cu's
    ``fp32_bwd_pairs`` reads ``ATTNCORE_CUTLASS_FP32_BWD_PAIRS``: comma-separated, spaces ignored, exact
    entries 128 and 256 only; unset = "256"."""
    entries = _env_list(env, PAIRS_ENV, "256")
    return tuple(d for d in (128, 256) if str(d) in entries)


#: Keys (the longest sequence's) from which unbanded fp32 calls at head dim 64 take 128-key tiles (csrc/fwd_tc.cu's kWideKeysMin).
WIDE_KEYS_MIN = 512
#: Shared memory per block that the 32-key split tiles at head dim 256 need (8 warps); below it, 16-key tiles run.
WIDE_256_SMEM = 199680


class KeyTiles(NamedTuple):
    """Keys per tile of one padded head dim of the fp32 forward, and why."""

    keys: int
    why: str


def fp32_forward_key_tiles(
    env: Mapping[str, str], banded: bool = False, max_keys: int = WIDE_KEYS_MIN, smem_per_block: Optional[int] = None
) -> dict[int, KeyTiles]:
    """Keys per tile of the fp32 tensor-core forward by padded head dim, as csrc/fwd_tc.cu's ``dispatch``
    chooses them: ``ATTNCORE_CUTLASS_FP32_FWD_KEYS`` holds comma-separated ``head_dim=keys`` entries,
    spaces ignored; ``64=128``, ``128=16`` and ``256=32`` recognized, else 64 at 64, 32 at 128 and 16 at 256;
    unset = "64=128,256=32". 128 keys at 64 only for calls without a causal or local band (``banded``) and
    with at least :data:`WIDE_KEYS_MIN` keys (``max_keys``: the longest sequence's); 32 at 256 only where a
    block's shared memory (``smem_per_block``, opt-in bytes; None: enough) holds them. The forward's warps
    (``ATTNCORE_CUTLASS_FWD_WARPS``) veto a choice: 128 keys at 64 need 4, 32 at 256 need 8."""
    entries = _env_list(env, KEYS_ENV, "64=128,256=32")
    tiles = {
        64: 128 if "64=128" in entries else 64,
        128: 16 if "128=16" in entries else 32,
        256: 32 if "256=32" in entries else 16,
    }
    origin = "default" if KEYS_ENV not in env else f"{KEYS_ENV}={env[KEYS_ENV]!r}"
    chosen = {dim: KeyTiles(keys, origin) for dim, keys in tiles.items()}
    if tiles[64] == 128 and banded:
        chosen[64] = KeyTiles(64, "under a causal or local mask")
    elif tiles[64] == 128 and max_keys < WIDE_KEYS_MIN:
        chosen[64] = KeyTiles(64, f"fewer than {WIDE_KEYS_MIN} keys")
    if tiles[256] == 32 and smem_per_block is not None and smem_per_block < WIDE_256_SMEM:
        chosen[256] = KeyTiles(16, f"{smem_per_block} bytes of shared memory per block, {WIDE_256_SMEM} needed")
    warps = _atoi(env.get(WARPS_ENV, ""))
    for dim, wide, usual, needs in ((64, 128, 64, 4), (256, 32, 16, 8)):
        if tiles[dim] == wide and warps in (4, 8) and warps != needs:
            chosen[dim] = KeyTiles(usual, f"{WARPS_ENV}={warps}: {wide}-key tiles need {needs} warps")
    return chosen


def forward_warp_masks(env: Mapping[str, str]) -> bool:
    """Whether the tensor-core forward classifies key tiles per warp under a band (causal, local), as
    csrc/fwd_tc.cu's ``fwd_tc`` reads ``ATTNCORE_CUTLASS_FWD_WARP_MASKS``: the entry ``1`` (a comma-separated
    list, spaces ignored); unset = off, an opt-in (timed on an H200: fp32 2-11% slower under a causal mask at
    head dims 64 and 128, bf16 within that run's noise; not adopted). It runs on each dtype's default tiles only:
    not with ``ATTNCORE_CUTLASS_FWD_WARPS`` or, in fp32, ``ATTNCORE_CUTLASS_FP32_FWD_KEYS`` set."""
    return "1" in _env_list(env, WARP_MASKS_ENV, "")


def fp32_forward_split(env: Mapping[str, str]) -> tuple[int, ...]:
    """The padded head dims whose fp32 tensor-core forward splits K and V into tf32 parts once per CTA, as
    csrc/fwd_tc.cu's ``fp32_fwd_split`` reads ``ATTNCORE_CUTLASS_FP32_FWD_SPLIT``: comma-separated, spaces
    ignored, entries 64 (64-key tiles) and 128 (32-key tiles); unset = none. An opt-in: 10-30% slower than
    the default kernels on an H200 (benchmarks/RESULTS.md). Before the key-tile choice
    (:func:`fp32_forward_key_tiles`) where it applies; not with ``ATTNCORE_CUTLASS_FWD_WARPS=8``, nor where a
    block's shared memory is under :data:`SPLIT_SMEM` (then the key-tile choice runs)."""
    if _atoi(env.get(WARPS_ENV, "")) == 8:
        return ()
    entries = _env_list(env, SPLIT_ENV, "")
    return tuple(d for d in (64, 128) if str(d) in entries)


#: Shared memory per block of the split kernels by padded head dim (csrc/fwd_tc.cu's fwd_f32_split_smem_bytes).
SPLIT_SMEM = {64: 87552, 128: 101632}


class WideWarps(NamedTuple):
    """The fp32 forward's wide warps at one padded head dim: ``groups`` row groups of 32 queries times
    ``slices`` slices of the head dim (one warp each), ``keys`` per tile, and the shared memory per block."""

    groups: int
    slices: int
    keys: int
    smem: int


#: ATTNCORE_CUTLASS_FP32_FWD_WIDE's entries, in the order csrc/fwd_tc.cu's ``launch_wide_256`` and
#: ``launch_wide_128`` try them (``fwd_f32_wide_kernel``; shared memory from its ``fwd_wide_smem_bytes``).
WIDE_ENTRIES = {
    "256=4x2": (256, WideWarps(4, 2, 32, 232448)),
    "256=2x2/16": (256, WideWarps(2, 2, 16, 108032)),
    "128=4x1": (128, WideWarps(4, 1, 32, 101376)),
    "128=2x2": (128, WideWarps(2, 2, 32, 83968)),
}


def fp32_forward_wide(env: Mapping[str, str], banded: bool = False) -> dict[int, WideWarps]:
    """The padded head dims whose fp32 tensor-core forward runs wide warps, and their shape, as csrc/fwd_tc.cu's
    ``fwd_tc`` and ``dispatch`` decide: ``ATTNCORE_CUTLASS_FP32_FWD_WIDE`` holds comma-separated entries of
    :data:`WIDE_ENTRIES`, spaces ignored; the launcher tries its entries in that fixed order and the first one the
    list names runs (where a block's shared memory holds it; else the next, then the key tiles of
    :func:`fp32_forward_key_tiles`); "" = none. Unset: at 128, 4 row groups x 1 slice for calls without a causal
    or local band and 2 x 2 for calls with one (``banded``), unless ``ATTNCORE_CUTLASS_FP32_FWD_KEYS`` is set;
    none at 256. The opt-ins that name their kernels come first: per-warp classification for banded calls
    (:func:`forward_warp_masks`, where it runs) and the split once per CTA (:func:`fp32_forward_split`); and
    ``ATTNCORE_CUTLASS_FWD_WARPS`` set to 4 or 8 vetoes wide warps."""
    if _atoi(env.get(WARPS_ENV, "")) in (4, 8):
        return {}
    if banded and forward_warp_masks(env) and KEYS_ENV not in env:  # fwd_tc's dispatch_warp_masks runs first
        return {}
    chosen: dict[int, WideWarps] = {}
    if WIDE_ENV not in env:
        if KEYS_ENV not in env:
            chosen[128] = WIDE_ENTRIES["128=2x2" if banded else "128=4x1"][1]
    else:
        entries = _env_list(env, WIDE_ENV, "")
        for name, (dim, shape) in WIDE_ENTRIES.items():
            if name in entries and dim not in chosen:
                chosen[dim] = shape
    return {d: w for d, w in chosen.items() if d not in fp32_forward_split(env)}


def forward_order(env: Mapping[str, str], fp32: bool, banded: bool) -> str:
    """The order in which the tensor-core forward's CTAs are handed out, as csrc/fwd_tc.cu's
    ``fwd_rows_first`` reads ``ATTNCORE_CUTLASS_FWD_ORDER`` (at every forward): ``"rows"``, row-block major
    (every (sequence, head)'s longest row block first, then the next: the longest work first over the whole
    call), or ``"heads"``, head-major (a (sequence, head)'s row blocks together, sharing keys and values in
    L2). Only the fp32 kernels take an order (fp16/bf16 run head-major); there, unset or any other value:
    ``"rows"`` for calls with a causal or local band (``banded``; only a band makes row blocks differ in work,
    and fp32's products are slow enough that L2 traffic is cheap), ``"heads"`` without."""
    if not fp32:
        return "heads"
    value = env.get(ORDER_ENV)
    if value in ("rows", "heads"):
        return value
    return "rows" if banded else "heads"


def backward_order(env: Mapping[str, str], fp32: bool, banded: bool, deterministic: bool) -> str:
    """The order in which the tensor-core backward's dK/dV CTAs are handed out where they add dQ atomically, as
    csrc/bwd_tc.cu's ``bwd_rows_first`` reads ``ATTNCORE_CUTLASS_BWD_ORDER`` (at every backward): ``"rows"``,
    key-block major (every (sequence, head)'s first key block, under a causal band the longest, then the next),
    or ``"heads"``. Only the fp32 kernels that add dQ atomically take an order (outside torch's deterministic
    mode, where their shared memory fits and, at padded head dim 256, with the paired CTAs: what
    ``_launch.last_backward_dq()`` reports as ``"atomic"``); every other backward runs head-major, which this
    function does not predict. There, unset or any other value: ``"rows"`` for calls with a causal or local
    band, ``"heads"`` without."""
    if not fp32 or deterministic:
        return "heads"
    value = env.get(BWD_ORDER_ENV)
    if value in ("rows", "heads"):
        return value
    return "rows" if banded else "heads"


def kernel_choices(env: Mapping[str, str]) -> str:
    """The kernel variants the environment selects, as the launchers read it (:func:`fp32_paired_head_dims`;
    csrc/fwd_tc.cu's ``forced_warps``: 4 or 8, anything else ignored; :func:`fp32_forward_key_tiles`;
    :func:`forward_warp_masks`), and how the fp32 backward computes dQ under torch's deterministic setting
    now (read per call by the launcher)."""
    raw = env.get(PAIRS_ENV)
    dims = fp32_paired_head_dims(env)
    pairs = f"paired 8-warp CTAs at padded head dim {' and '.join(map(str, dims))}" if dims else "4-warp CTAs only"
    origin = "default" if raw is None else f"{PAIRS_ENV}={raw!r}"
    warps = _atoi(env.get(WARPS_ENV, ""))
    fwd = f"{warps} warps ({WARPS_ENV})" if warps in (4, 8) else "4 warps, 8 for fp32 at head dim 256 (default)"
    in_band = fp32_forward_key_tiles(env, banded=True)
    described = []
    for dim, (n, why) in fp32_forward_key_tiles(env).items():
        note = ""
        if in_band[dim].keys != n:  # only 128 keys at 64 depend on the call
            note = f"; {in_band[dim].keys} under a causal or local mask or below {WIDE_KEYS_MIN} keys"
        elif dim == 256 and n == 32:
            note = f"; 16 where a block's shared memory is under {WIDE_256_SMEM} bytes (sm_80/87; smaller GPUs: the portable kernels)"
        described.append(f"{dim}: {n} ({why}{note})")
    keys = ", ".join(described)
    import torch  # the plugin module itself loads without torch (info on a broken install)

    splits = env.get(DQ_SPLITS_ENV, "")  # as csrc/bwd_tc.cu's bwd_tc_dq_splits reads it: "" is unset
    serial = "as many CTAs per head as fill the GPU once, at most 8, else its own kernel (default)"
    if splits:
        forced = _atoi(splits)
        serial = f"{forced} CTAs per head ({DQ_SPLITS_ENV})" if forced > 0 else f"never: its own kernel ({DQ_SPLITS_ENV}={splits!r})"
    dq = (
        "added serially by the tensor-core dK/dV CTAs, each taking every n-th key block in order and adding into "
        f"its own zeroed slice, the slices summed in order (torch.use_deterministic_algorithms is on: bitwise reproducible; {serial})"
        if torch.are_deterministic_algorithms_enabled()
        else (
            "added atomically by the tensor-core dK/dV CTAs (last bits vary run to run; not in the split D = 256 launches "
            "or the portable kernels; torch.use_deterministic_algorithms(True) for its own kernel)"
        )
    )
    return (
        f"fp32 backward: {pairs} ({origin}; where the shared memory allows, sm_90, else the portable kernels); "
        f"fp32 backward dQ: {dq}; "
        f"tensor-core backward dK/dV CTA order: {_bwd_order(env)} (read at every backward); "
        f"tensor-core forward: {fwd} (the process keeps the value its first forward saw), "
        f"fp32 key tiles by padded head dim, {keys} (read at every forward), "
        f"fp32 wide warps (before the key tiles) {_wide(env)}, "
        f"fp32 K and V split once per CTA {_split(env)}, "
        f"key tiles classified {_classified(env, warps)}, "
        f"CTA order {_order(env)} (read at every forward)"
    )


def _wide(env: Mapping[str, str]) -> str:
    """Where the fp32 forward runs wide warps (:func:`fp32_forward_wide`), with and without a band."""
    if _atoi(env.get(WARPS_ENV, "")) in (4, 8):
        return f"nowhere ({WARPS_ENV} is set)"
    origin = "default" if WIDE_ENV not in env else f"{WIDE_ENV}={env[WIDE_ENV]!r}"
    described = []
    for banded in (False, True):
        shapes = sorted(fp32_forward_wide(env, banded).items())
        where = ", ".join(
            f"head dim {d}: {w.groups} row groups x {w.slices} slice{'s' if w.slices > 1 else ''}, {w.keys}-key tiles, {w.smem} bytes of shared memory"
            for d, w in shapes
        )
        described.append(f"{'with' if banded else 'without'} a causal or local band {where or 'none'}")
    return f"{'; '.join(described)} ({origin})"


def _order(env: Mapping[str, str]) -> str:
    """The forward's CTA order (:func:`forward_order`): fp32 only, with and without a band."""
    if env.get(ORDER_ENV) in ("rows", "heads"):
        which = "row-block major" if env[ORDER_ENV] == "rows" else "head-major"
        return f"fp32: {which} ({ORDER_ENV}={env[ORDER_ENV]!r}); fp16/bf16: head-major"
    return "fp32: row-block major (longest first over every head) under a causal or local band, else head-major (default); fp16/bf16: head-major"


def _bwd_order(env: Mapping[str, str]) -> str:
    """The backward's dK/dV CTA order (:func:`backward_order`), as :func:`_order` says the forward's."""
    where = "fp32 with dQ added atomically"
    if env.get(BWD_ORDER_ENV) in ("rows", "heads"):
        which = "key-block major" if env[BWD_ORDER_ENV] == "rows" else "head-major"
        return f"{where}: {which} ({BWD_ORDER_ENV}={env[BWD_ORDER_ENV]!r}); the other kernels head-major"
    return f"{where}: key-block major (longest first over every head) under a causal or local band, else head-major (default)"


def _split(env: Mapping[str, str]) -> str:
    """Where the fp32 forward splits K and V once per CTA (:func:`fp32_forward_split`), and what vetoes it."""
    dims = fp32_forward_split(env)
    if dims:
        where = " and ".join(f"{d} ({SPLIT_SMEM[d]} bytes of shared memory per block)" for d in dims)
        return f"at padded head dim {where} ({SPLIT_ENV}; an opt-in, 10-30% slower on the H200)"
    named = [e for e in _env_list(env, SPLIT_ENV, "") if e]
    if not named:
        return "nowhere (default; each warp splits its own fragments)"
    if any(e in ("64", "128") for e in named):
        return f"nowhere ({SPLIT_ENV}={env[SPLIT_ENV]!r}, but {WARPS_ENV}=8: 4-warp CTAs only)"
    return f"nowhere ({SPLIT_ENV}={env[SPLIT_ENV]!r} names neither 64 nor 128)"


def _classified(env: Mapping[str, str], warps: int) -> str:
    """How the tensor-core forward classifies key tiles (:func:`forward_warp_masks`), and what vetoes it."""
    if not forward_warp_masks(env):
        return "per CTA (default)"
    if warps in (4, 8):
        return f"per CTA ({WARP_MASKS_ENV} is set, but {WARPS_ENV} leaves the default tiles)"
    fp32 = f"; fp32 per CTA: {KEYS_ENV} is set" if KEYS_ENV in env else ""
    return f"per warp under a causal or local band ({WARP_MASKS_ENV}{fp32})"


_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def _atoi(text: str) -> int:
    """``std::atoi`` as glibc computes it: C whitespace, a sign, ASCII digits; strtol's clamp to 64 bits,
    then the conversion to a 32-bit int."""
    m = _ATOI.match(text)
    if m is None:
        return 0
    n = max(-(2**63), min(2**63 - 1, int(m.group(1))))
    n &= 0xFFFFFFFF
    return n - 2**32 if n >= 2**31 else n


@hookimpl
def attncore_plugin_info() -> PluginInfo:
    return PluginInfo(
        version=installed_version(DISTRIBUTION) or "0+unknown",
        requires=declared_requirements(DISTRIBUTION, ("torch",)),  # written once, in pyproject.toml
        build=build_info(),
        description="CUDA C++ memory-efficient attention (forward + backward) for NVIDIA sm_60+: f32 everywhere, f16/bf16 tensor cores on sm_80+",
    )


@hookimpl
def attncore_operators() -> Sequence[type[AttentionOpBase]]:
    from .ops import CutlassBwOp, CutlassFwOp

    return [CutlassFwOp, CutlassBwOp]
