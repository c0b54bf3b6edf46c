"""attncore-cutlass under several values of one environment switch, interleaved in one process: each grid
cell is timed under every value in turn, ``--rounds`` times over (A B A B ...), and the median of each
value's rounds is reported with its change against the first value. Clock drift and a neighbour's load
then hit every value alike, which separate runs of bench_cutlass.py do not promise (two bf16 runs of one
call have differed by 5-8% on SDPA's own, unchanged kernels). Only for switches the launcher reads at
every call (ATTNCORE_CUTLASS_FWD_ORDER, ATTNCORE_CUTLASS_FP32_FWD_WIDE, ...). Needs a CUDA GPU.

    python benchmarks/ab_env.py ATTNCORE_CUTLASS_FWD_ORDER heads,rows --dtypes fp32 --heads 128 --masks causal
    (a value "unset" removes the variable, "none" sets it empty)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any, Callable, Optional, Sequence

import torch
from bench_triton import Cell, _bench, _inputs, _run_fn  # the shared grid and timing live beside this file


def _apply(var: str, value: str) -> None:
    if value == "unset":
        os.environ.pop(var, None)
    else:
        os.environ[var] = "" if value == "none" else value


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("var", help="the environment variable")
    ap.add_argument("values", help="comma-separated values; the first is the baseline")
    ap.add_argument("--dtypes", default="fp32")
    ap.add_argument("--heads", default="128,256", help="head dims K")
    ap.add_argument("--seqlens", default="512,1024,2048,4096")
    ap.add_argument("--masks", default="none,causal", help="among none, causal")
    ap.add_argument("--dirs", default="fwd", help="among fwd, bwd")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the markdown table here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("ab_env needs a CUDA GPU", file=sys.stderr)
        return 2
    values = args.values.split(",")
    saved = os.environ.get(args.var)
    lines = [
        f"{args.var}: {', '.join(values)} interleaved, {args.rounds} rounds, medians; {torch.cuda.get_device_name()}, torch {torch.__version__}",
        "",
        "| dtype | K | M | causal | dir | " + " | ".join(f"{v} TFLOP/s" for v in values) + " | " + " | ".join(f"{v} vs {values[0]}" for v in values[1:]) + " |",
        "|---|---:|---:|---|---|" + "---:|" * (2 * len(values) - 1),
    ]
    print("\n".join(lines), flush=True)
    try:
        for dt in args.dtypes.split(","):
            for kd in (int(x) for x in args.heads.split(",")):
                for mask in args.masks.split(","):
                    for m in (int(x) for x in args.seqlens.split(",")):
                        cell = Cell(dt, kd, m, mask == "causal")
                        for d in args.dirs.split(","):
                            lines.append(_row(cell, d, args.var, values, args.rounds))
                            print(lines[-1], flush=True)
    finally:  # the caller's value as it was (not through _apply, which reads "unset" and "none" as names)
        if saved is None:
            os.environ.pop(args.var, None)
        else:
            os.environ[args.var] = saved
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


def _row(cell: Cell, direction: str, var: str, values: Sequence[str], rounds: int) -> str:
    q, k, v = _inputs(cell, requires_grad=direction == "bwd")
    fn = _run_fn("cutlass", q, k, v, cell.causal)
    times: dict[str, list[float]] = {x: [] for x in values}
    out = None if direction == "fwd" else fn()
    grad = None if out is None else torch.randn_like(out)

    def backward() -> None:
        assert out is not None  # only run for "bwd", where out is the forward's result
        torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)

    run: Callable[[], Any] = fn if direction == "fwd" else backward
    with torch.no_grad() if direction == "fwd" else torch.enable_grad():
        for _ in range(rounds):
            for x in values:
                _apply(var, x)
                run()
                times[x].append(_bench(run))
    tflops = {x: cell.flops(direction) / (statistics.median(t) * 1e-3) / 1e12 for x, t in times.items()}
    base = tflops[values[0]]
    return (
        f"| {cell.dtype} | {cell.head_dim} | {cell.seqlen} | {'yes' if cell.causal else 'no'} | {direction} | "
        + " | ".join(f"{tflops[x]:.1f}" for x in values)
        + " | "
        + " | ".join(f"{100 * (tflops[x] / base - 1):+.1f}%" for x in values[1:])
        + " |"
    )


if __name__ == "__main__":
    sys.exit(main())
