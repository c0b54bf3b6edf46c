"""Host time of attncore-triton calls at short sequences, and what it does to the end-to-end time.

For each cell: microseconds of host time per call while the GPU is kept busy (a ``torch.cuda._sleep``
first, then 50 calls queued without a sync; the best of 3 rounds that alternate the two modes below),
layer by layer: ``_launch.forward`` / ``_launch.backward`` alone, the public forward (no grad, with grad) and ``torch.autograd.grad``; then the
``triton.testing.do_bench`` median of the forward and the backward as ``bench_triton.py`` times them,
in three modes: repeated calls replaying their launch plans ("plans", the default: attncore_triton._plans),
the full host path with the relauncher reusing compiled binaries (plans off: "reuse"), and every launch through
``kernel[grid](...)`` ("triton": the relauncher with reuse off, which adds only an argument-count check to
Triton's path); SDPA flash beside them.

    python benchmarks/host_triton.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Optional, Sequence

import torch

CELLS = [  # (dtype, K, M, causal); B * M = 16384, H * K = 2048 as in the grid
    ("bf16", 64, 512, True),
    ("fp16", 64, 512, True),
    ("bf16", 64, 512, False),
    ("bf16", 128, 512, True),
    ("bf16", 256, 512, True),
]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
KERNELS = ("fwd_kernel", "bwd_dq_kernel", "bwd_dkdv_kernel", "bwd_preprocess_kernel")


def host_us(fn: Callable[[], Any], n: int = 50, repeats: int = 3) -> float:
    """Host microseconds per call of ``fn`` with the GPU busy (so that no call waits for the GPU), the best of ``repeats``."""
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        torch.cuda._sleep(400_000_000)  # type: ignore[no-untyped-call]  # torch's helper is untyped; about 0.2 s of GPU time, longer than the n calls' host time
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        best = min(best, (t1 - t0) / n * 1e6)
    return best


def bench_ms(fn: Callable[[], Any]) -> float:
    import triton  # type: ignore[import-untyped]  # triton ships no type information

    fn()
    return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))


def kernel_ms(fn: Callable[[], Any], n: int = 10) -> float:
    """Device milliseconds per call of ``fn``: the profiler's sum over the kernels it ran."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    return float(sum(e.self_device_time_total for e in kernels)) / n / 1000


MODES = ("plans", "reuse", "triton")


def set_mode(mode: str) -> None:
    """``plans``: the defaults; ``reuse``: plans off (``ATTNCORE_TRITON_PLANS=0``: the full path as before
    plans); ``triton``: plans and reuse off."""
    import os

    from attncore_triton import _launch, _plans

    for name in KERNELS:
        _launch._relauncher(name).reuse = mode != "triton"
    os.environ[_plans.ENV] = "1" if mode == "plans" else "0"


def measure(dtype: str, head_dim: int, seqlen: int, causal: bool) -> dict[str, Any]:
    import attncore
    from attncore.inputs import Inputs
    from attncore_triton import _launch
    from attncore_triton.ops import TritonFlashBwOp, TritonFlashFwOp

    b, h = 16384 // seqlen, 2048 // head_dim
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, seqlen, h, head_dim, device="cuda", dtype=DTYPES[dtype], generator=g).requires_grad_(True) for _ in range(3))
    bias = attncore.LowerTriangularMask() if causal else None
    ops = (TritonFlashFwOp, TritonFlashBwOp)
    inputs = Inputs.create(q.detach(), k.detach(), v.detach(), bias)
    out5, lse = _launch.forward(inputs, needs_lse=True, dropout_seed=0)
    assert lse is not None
    grad = torch.randn(b, seqlen, h, head_dim, device="cuda", dtype=DTYPES[dtype], generator=g)
    g5 = Inputs._to5(grad)

    def api_fwd() -> torch.Tensor:
        return attncore.memory_efficient_attention(q, k, v, bias, op=ops)

    out = api_fwd()

    def nograd_fwd() -> None:
        with torch.no_grad():
            api_fwd()

    def bwd() -> None:
        torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)

    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

    def sdpa_nograd() -> None:
        with torch.no_grad():
            sdpa()

    sout = sdpa()

    def sdpa_bwd() -> None:
        torch.autograd.grad(sout, (q, k, v), grad.transpose(1, 2), retain_graph=True)

    row: dict[str, Any] = {"dtype": dtype, "K": head_dim, "M": seqlen, "B": b, "H": h, "causal": causal}
    layers: dict[str, Callable[[], Any]] = {
        "host_launch_fwd": lambda: _launch.forward(inputs, needs_lse=True, dropout_seed=0),
        "host_launch_bwd": lambda: _launch.backward(inputs, g5, out5, lse, dropout_seed=0),
        "host_api_fwd_nograd": nograd_fwd,
        "host_api_fwd_grad": api_fwd,
        "host_autograd_bwd": bwd,
    }
    # the modes alternate, three rounds, the best of each kept: a drift of the host's speed during the
    # run (seen on the H200's host) then favours none
    before = {name: _launch._relauncher(name).reuse for name in KERNELS}
    for _ in range(3):
        for mode in MODES:
            set_mode(mode)
            for name, fn in layers.items():
                key = f"{name}_{mode}"
                row[key] = min(row.get(key, float("inf")), host_us(fn, repeats=1))
            for name, fn in (("fwd_ms", nograd_fwd), ("bwd_ms", bwd)):
                key = f"{name}_{mode}"
                row[key] = min(row.get(key, float("inf")), bench_ms(fn))
    set_mode("plans")
    for name, on in before.items():  # back to what this process had (SDPA's figures below do not depend on it)
        _launch._relauncher(name).reuse = on
    row["host_sdpa_fwd_nograd"] = host_us(sdpa_nograd)
    row["host_sdpa_bwd"] = host_us(sdpa_bwd)
    row["fwd_ms_flash"] = bench_ms(sdpa_nograd)
    row["bwd_ms_flash"] = bench_ms(sdpa_bwd)
    row["bwd_kernel_ms"] = kernel_ms(bwd)  # the kernels alone
    row["flash_bwd_kernel_ms"] = kernel_ms(sdpa_bwd)
    return row


def render(rows: Sequence[dict[str, Any]]) -> str:
    cols = [
        ("host_launch_fwd", "launch fwd"),
        ("host_api_fwd_nograd", "API fwd"),
        ("host_api_fwd_grad", "API fwd+grad"),
        ("host_launch_bwd", "launch bwd"),
        ("host_autograd_bwd", "autograd bwd"),
    ]
    out = ["Host microseconds per call (" + " / ".join(MODES) + "):", ""]
    out.append("| dtype | K | M | causal | " + " | ".join(c[1] for c in cols) + " | SDPA fwd | SDPA bwd |")
    out.append("|---|---:|---:|---|" + "---:|" * (len(cols) + 2))
    for r in rows:
        cells = [" / ".join(f"{r[f'{c}_{m}']:.0f}" for m in MODES) for c, _ in cols]
        sdpa = f"{r['host_sdpa_fwd_nograd']:.0f} | {r['host_sdpa_bwd']:.0f}"
        out.append(f"| {r['dtype']} | {r['K']} | {r['M']} | {'yes' if r['causal'] else 'no'} | " + " | ".join(cells) + f" | {sdpa} |")
    out += ["", "End to end (do_bench median, ms) and the backward's kernel time (profiler):", ""]
    out.append(
        "| dtype | K | M | causal | fwd " + " / ".join(MODES) + " | fwd flash | plans/flash "
        "| bwd " + " / ".join(MODES) + " | bwd flash | plans/flash | bwd kernels | flash kernels |"
    )
    out.append("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        fwd = " / ".join(f"{r[f'fwd_ms_{m}']:.3f}" for m in MODES)
        bwd = " / ".join(f"{r[f'bwd_ms_{m}']:.3f}" for m in MODES)
        out.append(
            f"| {r['dtype']} | {r['K']} | {r['M']} | {'yes' if r['causal'] else 'no'} | {fwd} | "
            f"{r['fwd_ms_flash']:.3f} | {r['fwd_ms_flash'] / r['fwd_ms_plans']:.2f} | {bwd} | "
            f"{r['bwd_ms_flash']:.3f} | {r['bwd_ms_flash'] / r['bwd_ms_plans']:.2f} | {r['bwd_kernel_ms']:.3f} | {r['flash_bwd_kernel_ms']:.3f} |"
        )
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("host_triton needs a CUDA GPU", file=sys.stderr)
        return 2
    rows = []
    for cell in CELLS:
        rows.append(measure(*cell))
        print(json.dumps(rows[-1]), flush=True)
    print(render(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
