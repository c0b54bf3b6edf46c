"""Compile every warp-specialized forward configuration for sm_90 with the installed Triton, no GPU needed.

Triton's automatic warp specialization for Hopper is young: on a loop shape its partitioner cannot handle,
Triton 3.6 fails the compile, at times with an LLVM error that aborts the process. This check compiles, in
this process, each configuration of :data:`attncore_triton._launch.WS_CONFIGS` (what the autotuner may
offer, and what the GPU tests run) at every head dim the loop runs (16-128, ``WS_MAX_HEAD_DIM``, and
Kv != K), in the variants a call can reach (see :data:`VARIANTS`), and requires of each:

* the compile succeeds (run it in a subprocess: an abort is a failure too, not a crash of the caller);
* the loop was partitioned: one ``ttg.warp_specialize`` with two consumer partitions;
* its shared memory fits sm_90's 227 KiB per block with 16 KiB to spare: on the H200, 256-dim tiles of 64
  keys at 2 stages (never a configuration, for that reason; 256 is not run at all now) asked 234440 B at run time against 218056 B
  compiled here.

It compiles without the run time's specialization of integer arguments (divisibility by 16, ``== 1``).
Usage: ``python plugins/triton_flash/tools/ws_compile_check.py`` (exit 0: every configuration passed).
The ``ws_check`` nox session runs it with the Triton release :mod:`attncore_triton._warpspec` verified.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter

import triton  # type: ignore[import-untyped]  # triton ships no type information
from triton.backends.compiler import GPUTarget  # type: ignore[import-untyped]  # (same)
from triton.compiler import ASTSource  # type: ignore[import-untyped]  # (same)

from attncore_triton import _kernels, _launch

SM90_SMEM = 232448  # bytes of shared memory a block may opt into on sm_90
HEADROOM = 16384  # what the run time asked beyond this compile's figure, once (see the docstring)
POINTERS = ("Q", "K", "V", "OUT", "BIAS", "ROWS")  # in the inputs' dtype
INT_POINTERS = ("SEQ_Q", "SEQ_K", "SEQ_KLEN", "SEQ_KLOG", "TABLES")
FLOATS = ("qk_scale", "drop_p", "drop_scale")
INT64S = ("seed",)
HEAD_DIMS = ((16, 16), (32, 32), (64, 64), (128, 128), (64, 128), (128, 64))  # (not above WS_MAX_HEAD_DIM)
#: (name, dtype, constexprs): keys in whole tiles or not (every tile masked), packed blocks, inference (no
#: LSE), a negative scale.
VARIANTS: tuple[tuple[str, str, dict[str, bool]], ...] = (
    ("dense", "bf16", {}),
    ("dense, masked tiles", "bf16", {"WS_MASKED": True}),
    ("blocks", "bf16", {"VARLEN": True, "WS_MASKED": True}),
    ("dense, no LSE", "fp16", {"WRITE_LSE": False}),
    ("dense, negative scale", "bf16", {"SCALE_POS": False}),
)


def signature(arg_names: list[str], const: dict[str, Any], dtype: str) -> dict[str, str]:
    """Triton's type of each argument of ``fwd_kernel``; an argument this tool does not know fails it (a new
    pointer must not be compiled as an integer)."""
    sig: dict[str, str] = {}
    for name in arg_names:
        if name in const:
            sig[name] = "constexpr"
        elif name in POINTERS:
            sig[name] = "*" + dtype
        elif name == "LSE":
            sig[name] = "*fp32"
        elif name in INT_POINTERS:
            sig[name] = "*i32"
        elif name in FLOATS:
            sig[name] = "fp32"
        elif name in INT64S:
            sig[name] = "i64"
        elif re.fullmatch(r"s[a-z]{1,3}|[GH]|Mq|Mk|MK_LOG|num_m_blocks|band_(lo|hi|br)|page_size|num_rows", name):
            sig[name] = "i32"  # strides, sizes, band bounds
        else:
            raise KeyError(f"fwd_kernel argument {name!r}: unknown to ws_compile_check.py, give it a type there")
    return sig


def compile_one(cfg: _launch.FwdConfig, kd: int, kv: int, dtype: str, variant: dict[str, bool]) -> dict[str, Any]:
    """Compile ``fwd_kernel`` for ``cfg`` with the constexprs of ``variant`` over the dense defaults."""
    fn = _kernels.fwd_kernel
    const: dict[str, Any] = dict(
        K_DIM=kd, V_DIM=kv, BLOCK_K=kd, BLOCK_V=kv, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, VARLEN=False, PAGED=False,
        HAS_BIAS=False, DROPOUT=False, WRITE_LSE=True, USE_TMA=True, DOT=0, SCALE_POS=True, WS=True, WS_MASKED=False, ONE_LOOP=False,
    )  # fmt: skip
    const.update(variant)
    sig = signature(fn.arg_names, const, dtype)
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in (*POINTERS, "LSE")}
    t0 = time.perf_counter()
    kernel = triton.compile(
        ASTSource(fn, sig, constexprs=const, attrs=attrs),
        target=GPUTarget("cuda", 90, 32),
        options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
    )
    ttgir = kernel.asm["ttgir"]
    return {
        "seconds": time.perf_counter() - t0,
        "ws_ops": ttgir.count("ttg.warp_specialize("),
        "partitions": len(re.findall(r"^\s*partition\d+\(", ttgir, re.M)),
        "smem": int(kernel.metadata.shared),
    }


def main() -> int:
    print(f"triton {triton.__version__}: the warp-specialized forward configurations, compiled for sm_90", flush=True)
    failures = 0
    for kd, kv in HEAD_DIMS:
        for cfg in _launch.WS_CONFIGS[max(kd, kv)]:
            for name, dtype, variant in VARIANTS:
                what = f"K={kd} Kv={kv} {dtype} {name}, {cfg.block_m}x{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages}"
                try:
                    r = compile_one(cfg, kd, kv, dtype, variant)
                except Exception as exc:  # noqa: BLE001  # every compile error is reported, then the check fails
                    print(f"FAIL {what}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)
                    failures += 1
                    continue
                ok = r["ws_ops"] == 1 and r["partitions"] == 2 and r["smem"] + HEADROOM <= SM90_SMEM
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {what}: {r['ws_ops']} warp_specialize, {r['partitions']} partitions, "
                      f"{r['smem']} B shared, {r['seconds']:.1f} s", flush=True)  # fmt: skip
    print("every configuration compiled and was partitioned" if not failures else f"{failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
