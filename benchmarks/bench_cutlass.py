"""attncore-cutlass against PyTorch SDPA's backends on one GPU, side by side (same grid as bench_triton).

The FlashAttention grid in bf16 and fp16 (``B * M = 16384`` tokens, ``H * K = 2048``, ``K`` in {64, 128,
256}, ``M`` in {512 ... 16384}, causal and not, forward and backward) against SDPA's efficient backend
(PyTorch's port of the CUTLASS memory-efficient kernel, the bar this backend must clear), flash and
cuDNN; then fp32 against SDPA's efficient and math backends (math materializes the scores, so its
large cells may run out of memory: "n/a"). Which kernel family ran (tensor cores or portable) is
printed for every cell. The extension is built (or found) before timing starts.

    python benchmarks/bench_cutlass.py --out results.md
    python benchmarks/bench_cutlass.py --dtypes fp32 --seqlens 512,1024
    python benchmarks/bench_cutlass.py --dtypes fp32 --dirs bwd --deterministic

``--deterministic`` times everything under ``torch.use_deterministic_algorithms(True)`` (cuBLAS given the
workspace setting that mode requires): the fp32 backward then computes dQ in its own kernel instead of
adding it atomically, and SDPA's efficient backward takes its reproducible path too (with warn-only it
would only warn and stay non-deterministic).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_triton import SEQLENS, TOKENS, WIDTH, grid, render, varlen  # the shared grid lives beside this file

HALF_BACKENDS = ("cutlass", "efficient", "flash", "cudnn")
FP32_BACKENDS = ("cutlass", "efficient", "math")
FP32_SEQLENS = (512, 1024, 2048, 4096)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="bf16,fp16,fp32")
    ap.add_argument("--heads", default="64,128,256", help="head dims K")
    ap.add_argument("--seqlens", default=None, help=f"default {SEQLENS} (fp32: {FP32_SEQLENS})")
    ap.add_argument("--dirs", default="fwd,bwd")
    ap.add_argument("--no-varlen", action="store_true")
    ap.add_argument("--out", default=None, help="write the markdown tables here")
    ap.add_argument("--json", default=None, help="write raw numbers here")
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    ap.add_argument("--deterministic", action="store_true", help="torch's deterministic mode on, for both sides")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_cutlass needs a CUDA GPU", file=sys.stderr)
        return 2
    from attncore_cutlass import _launch, build

    major, minor = torch.cuda.get_device_capability()
    _launch.extension((int(major), int(minor)))  # build or load before anything is timed
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # the math backend's matmuls, reproducibly
        torch.use_deterministic_algorithms(True)
    dtypes = [d for d in args.dtypes.split(",") if d]
    heads = [int(x) for x in args.heads.split(",") if x]
    dirs = [d for d in args.dirs.split(",") if d]
    chosen = [int(x) for x in args.seqlens.split(",")] if args.seqlens else None
    dev = torch.cuda.get_device_name()
    header = (
        f"## attncore-cutlass vs SDPA, {dev}, {args.date}\n\n"
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, sources {build.source_hash()}; B*M = {TOKENS}, H*K = {WIDTH}; "
        f"do_bench medians (warmup 10 ms, rep 40 ms)." + (" torch.use_deterministic_algorithms(True) for both sides." if args.deterministic else "")
    )
    print(header, flush=True)
    texts: list[str] = []
    raw: dict[str, Any] = {}
    half = [d for d in dtypes if d != "fp32"]
    if half:
        rows = grid(half, heads, chosen or list(SEQLENS), dirs, HALF_BACKENDS, ours="cutlass", vs="efficient")
        var = [] if args.no_varlen else varlen(ours="cutlass")
        texts.append(render(rows, var, header, ours="cutlass", backends=HALF_BACKENDS, vs=("efficient", "flash")))
        raw["half"], raw["varlen"] = rows, var
    if "fp32" in dtypes:
        rows = grid(["fp32"], heads, chosen or list(FP32_SEQLENS), dirs, FP32_BACKENDS, ours="cutlass", vs="efficient")
        texts.append(render(rows, [], "### fp32", ours="cutlass", backends=FP32_BACKENDS, vs=("efficient", "math")))
        raw["fp32"] = rows
    text = "\n".join(texts)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(raw, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
