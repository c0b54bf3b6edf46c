"""CPU benchmarks of the reference backend against PyTorch's SDPA, in one run.

    python benchmarks/bench_cpu.py [--quick] [--sizes 1024,4096,16384]

1. Time: ``reference.chunked`` (the dispatcher's choice on the CPU) against
   ``torch.nn.functional.scaled_dot_product_attention`` on the same fp32 inputs (B=1, H=8, K=64),
   no bias and causal; forward medians, TFLOP/s (4*B*H*Mq*Mk*K, half when causal) and the ratio.
2. Peak extra memory of one forward, each measured in a fresh subprocess (peak RSS minus RSS
   before the call): the chunked op grows linearly in M, the exact op (the oracle, scores
   materialized in float64) quadratically.
3. Decoding (Mq=1): ``reference.decode`` (one matrix product) against the tiled path.
4. Host overhead: a cached dispatch decision, and ``memory_efficient_attention`` against calling
   the chosen operator directly, on a tiny input.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

import attncore
from attncore import dispatch
from attncore.inputs import Inputs


def median_time(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def tflops(m: int, causal: bool, seconds: float, b: int = 1, h: int = 8, k: int = 64) -> float:
    flops = 4.0 * b * h * m * m * k * (0.5 if causal else 1.0)
    return flops / seconds / 1e12


def qkv(m: int, b: int = 1, h: int = 8, k: int = 64, mq: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(m)
    q = torch.randn(b, mq or m, h, k, generator=g)
    return q, torch.randn(b, m, h, k, generator=g), torch.randn(b, m, h, k, generator=g)


def bench_time(sizes: list[int], reps: int) -> list[dict[str, Any]]:
    rows = []
    for m in sizes:
        q, k, v = qkv(m)
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        for causal in (False, True):
            bias = attncore.LowerTriangularMask() if causal else None
            op = dispatch.explain(q, k, v, bias).forward.chosen
            ours = median_time(functools.partial(attncore.memory_efficient_attention, q, k, v, bias), reps)
            sdpa = median_time(functools.partial(F.scaled_dot_product_attention, qt, kt, vt, is_causal=causal), reps)
            rows.append(
                {
                    "M": m,
                    "causal": causal,
                    "op": op.NAME if op else None,
                    "attncore_s": ours,
                    "sdpa_s": sdpa,
                    "attncore_tflops": tflops(m, causal, ours),
                    "sdpa_tflops": tflops(m, causal, sdpa),
                    "time_ratio": ours / sdpa,
                }
            )
            print(f"  M={m:>6} causal={causal!s:<5} {rows[-1]['op']}: {ours * 1e3:9.1f} ms  SDPA: {sdpa * 1e3:9.1f} ms  ratio {ours / sdpa:4.2f}", flush=True)
    return rows


_MEM_CHILD = r"""
import json, resource, sys, torch, attncore
from attncore import dispatch
m, which, causal = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, m, 8, 64, generator=g) for _ in range(3))
bias = attncore.LowerTriangularMask() if causal else None
def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
if which == "sdpa":
    run = lambda: torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=causal)
else:
    run = lambda: attncore.memory_efficient_attention(q, k, v, bias, op=which)
small = torch.randn(1, 64, 8, 64)
if which == "sdpa":
    torch.nn.functional.scaled_dot_product_attention(small, small, small)
else:
    attncore.memory_efficient_attention(small, small, small, op=which)  # load plugins, warm code paths
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS high-water mark (VmHWM) to the current RSS
before = status("VmRSS")
out = run()
peak = status("VmHWM")
print(json.dumps({"extra_bytes": max(peak - before, 0), "output_bytes": out.numel() * out.element_size()}))
"""


def bench_memory(sizes: list[int], exact_max: int) -> list[dict[str, Any]]:
    rows = []
    for which in ("reference.chunked", "sdpa", "reference.exact"):
        for m in sizes:
            if which == "reference.exact" and m > exact_max:
                continue
            res = subprocess.run([sys.executable, "-c", _MEM_CHILD, str(m), which, "0"], capture_output=True, text=True, check=True)
            data = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append({"op": which, "M": m, "extra_MiB": data["extra_bytes"] / 2**20, "output_MiB": data["output_bytes"] / 2**20})
            print(f"  {which:<18} M={m:>6}: peak extra {rows[-1]['extra_MiB']:9.1f} MiB (output itself {rows[-1]['output_MiB']:.1f} MiB)", flush=True)
    return rows


def bench_decode(sizes: list[int], reps: int) -> list[dict[str, Any]]:
    """Mq=1 against Mk keys: per-head keys [1, Mk, 8, 64], and grouped-query keys (8 query heads
    sharing one key/value head, 5-D with a stride-0 expand), each against the tiled path and SDPA."""
    rows = []
    for m in sizes:
        for gqa in (False, True):
            g = torch.Generator().manual_seed(m)
            if gqa:
                q = torch.randn(1, 1, 1, 8, 64, generator=g)
                k, v = (torch.randn(1, m, 1, 1, 64, generator=g).expand(1, m, 1, 8, 64) for _ in range(2))
                qt, kt, vt = (t[:, :, 0].transpose(1, 2) for t in (q, k, v))
            else:
                q, k, v = qkv(m, mq=1)
                qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
            chosen = dispatch.explain(q, k, v).forward.chosen
            direct = median_time(functools.partial(attncore.memory_efficient_attention, q, k, v), reps)
            tiled = median_time(functools.partial(attncore.memory_efficient_attention, q, k, v, op="reference.chunked"), reps)
            sdpa = median_time(functools.partial(F.scaled_dot_product_attention, qt, kt, vt), reps)
            kind = "8 q heads / 1 kv head" if gqa else "8 heads"
            rows.append(
                {"Mk": m, "heads": kind, "chosen": chosen.NAME if chosen else None, "chosen_ms": direct * 1e3, "chunked_ms": tiled * 1e3, "sdpa_ms": sdpa * 1e3}
            )
            print(
                f"  Mq=1 Mk={m:>6} {kind:<22}: {rows[-1]['chosen']} {direct * 1e3:7.3f} ms, reference.chunked {tiled * 1e3:7.3f} ms "
                f"({tiled / direct:3.1f}x), SDPA {sdpa * 1e3:7.3f} ms",
                flush=True,
            )
    return rows


def bench_overhead(reps: int) -> dict[str, Any]:
    """Host cost of the call path itself: the chosen operator's ``apply`` is replaced by a stub that
    returns its real result instantly, so what remains is validation, dispatch and layout work."""
    q = torch.randn(1, 1, 1, 8)
    inputs = Inputs.create(q, q, q)
    sel = dispatch.select(inputs, "forward")
    chosen = sel.chosen
    assert chosen is not None and issubclass(chosen, attncore.AttentionFwOpBase)
    real_time = median_time(lambda: chosen.apply(inputs, needs_lse=False, dropout_seed=0), 200)
    result = chosen.apply(inputs, needs_lse=False, dropout_seed=0)

    def stub(cls: type, inputs: Inputs, *, needs_lse: bool, dropout_seed: int) -> attncore.ForwardResult:
        return result

    original = chosen.__dict__["apply"]
    chosen.apply = classmethod(stub)  # type: ignore[method-assign, assignment]  # timing probe, restored below
    op = chosen

    def per_call(fn: Callable[[], object], n: int = 2000) -> float:
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - t0) / n)
        return best

    try:
        cached = per_call(lambda: dispatch.select(inputs, "forward"))
        create = per_call(lambda: Inputs.create(q, q, q))
        direct = per_call(lambda: op.apply(inputs, needs_lse=False, dropout_seed=0))
        full = per_call(lambda: attncore.memory_efficient_attention(q, q, q))
    finally:
        chosen.apply = original  # type: ignore[method-assign]  # put the real operator back
    res = {
        "op": op.NAME,
        "op_real_us": real_time * 1e6,
        "cached_decision_us": cached * 1e6,
        "inputs_create_us": create * 1e6,
        "overhead_us": (full - direct) * 1e6,
    }
    print(
        f"  chosen op {op.NAME} (its own time here {res['op_real_us']:.0f} us): cached decision {res['cached_decision_us']:.2f} us; "
        f"Inputs.create {res['inputs_create_us']:.2f} us; whole Python overhead of memory_efficient_attention {res['overhead_us']:.2f} us",
        flush=True,
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description="attncore CPU benchmarks")
    ap.add_argument("--sizes", default="1024,4096,16384")
    ap.add_argument("--mem-sizes", default="1024,2048,4096,8192,16384")
    ap.add_argument("--exact-max", type=int, default=4096, help="largest M for the exact op's memory (it is quadratic)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    sizes = [256, 512] if args.quick else [int(s) for s in args.sizes.split(",")]
    mem_sizes = [256, 512] if args.quick else [int(s) for s in args.mem_sizes.split(",")]
    print(f"attncore {attncore.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("1. forward time, fp32, B=1 H=8 K=64 (medians)")
    times = bench_time(sizes, args.reps)
    print("2. peak extra memory of one forward, fp32, B=1 H=8 K=64, no bias")
    mem = bench_memory(mem_sizes, min(args.exact_max, 512) if args.quick else args.exact_max)
    print("3. decoding, Mq=1, fp32, H=8 K=64")
    dec = bench_decode([256, 1024] if args.quick else [256, 1024, 4096, 16384], max(args.reps, 9))
    print("4. host overhead, tiny input [1, 1, 1, 8]")
    over = bench_overhead(5)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"time": times, "memory": mem, "decode": dec, "overhead": over}, f, indent=2)


if __name__ == "__main__":
    main()
