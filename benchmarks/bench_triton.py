"""attncore-triton against PyTorch SDPA's flash, cuDNN and efficient backends, on one GPU, side by side.

The FlashAttention grid: bf16 and fp16, ``B * M = 16384`` tokens, ``H * K = 2048``, ``K`` in {64, 128,
256}, ``M`` in {512 ... 16384}, causal and not, forward and backward. Throughput is
``4 B H M^2 K`` FLOPs for the forward (half when causal) and 2.5 times that for the backward, over the
median of ``triton.testing.do_bench``. SDPA runs on ``[B, H, M, K]`` transposed views of the same
``[B, M, H, K]`` tensors, with ``torch.nn.attention.sdpa_kernel`` selecting one backend at a time.
Then a packed variable-length batch (``BlockDiagonalCausalMask``, lengths drawn from 64..4096):
tokens/s against SDPA on the same sequences padded to the longest.

    python benchmarks/bench_triton.py --out results.md            # the whole grid
    python benchmarks/bench_triton.py --dtypes bf16 --heads 128   # a part of it

Kernels compile in parallel worker processes first (``--jobs``), so the timed process finds them in
Triton's cache; the autotuner's choices (with every candidate's time) land in ``ATTNCORE_TRITON_CACHE``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

TOKENS, WIDTH = 16384, 2048
SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
BACKENDS = ("triton", "flash", "cudnn", "efficient")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
#: attncore operators a benchmark can force, by name: (module, forward op, backward op)
ATTNCORE_OPS = {"triton": ("attncore_triton.ops", "TritonFlashFwOp", "TritonFlashBwOp"), "cutlass": ("attncore_cutlass.ops", "CutlassFwOp", "CutlassBwOp")}
LABELS = {
    "triton": "attncore-triton",
    "cutlass": "attncore-cutlass",
    "flash": "SDPA flash",
    "cudnn": "SDPA cuDNN",
    "efficient": "SDPA efficient",
    "math": "SDPA math",
}


@dataclass(frozen=True)
class Cell:
    dtype: str
    head_dim: int
    seqlen: int
    causal: bool

    @property
    def batch(self) -> int:
        return TOKENS // self.seqlen

    @property
    def heads(self) -> int:
        return WIDTH // self.head_dim

    def flops(self, direction: str) -> float:
        f = 4.0 * self.batch * self.heads * self.seqlen * self.seqlen * self.head_dim
        if self.causal:
            f /= 2
        return f * (2.5 if direction == "bwd" else 1.0)


def _bench(fn: Callable[[], Any]) -> float:
    import triton.testing  # type: ignore[import-untyped]  # triton ships no type information

    return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))


def _sdpa_backend(name: str) -> Any:
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[
        name
    ]


def _ops(backend: str) -> tuple[Any, Any]:
    import importlib

    module, fw, bw = ATTNCORE_OPS[backend]
    mod = importlib.import_module(module)
    return getattr(mod, fw), getattr(mod, bw)


def _inputs(cell: Cell, requires_grad: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    shape = (cell.batch, cell.seqlen, cell.heads, cell.head_dim)
    return tuple(  # type: ignore[return-value]  # three tensors
        torch.randn(shape, generator=g, device="cuda", dtype=DTYPES[cell.dtype]).requires_grad_(requires_grad) for _ in range(3)
    )


def _run_fn(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> Callable[[], torch.Tensor]:
    """A zero-argument forward of ``backend`` on ``[B, M, H, K]`` tensors."""
    if backend in ATTNCORE_OPS:
        import attncore

        bias = attncore.LowerTriangularMask() if causal else None
        ops = _ops(backend)
        return lambda: attncore.memory_efficient_attention(q, k, v, bias, op=ops)
    from torch.nn.attention import sdpa_kernel

    be = _sdpa_backend(backend)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def run() -> torch.Tensor:
        with sdpa_kernel(be):
            return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)

    return run


def measure(cell: Cell, backend: str, direction: str) -> Optional[float]:
    """Milliseconds (median), or ``None`` when the backend refuses the cell."""
    try:
        q, k, v = _inputs(cell, requires_grad=direction == "bwd")
        fn = _run_fn(backend, q, k, v, cell.causal)
        if direction == "fwd":
            with torch.no_grad():
                fn()
                return _bench(fn)
        out = fn()
        grad = torch.randn_like(out)

        def bwd() -> None:
            torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)

        bwd()
        return _bench(bwd)
    except Exception as exc:  # noqa: BLE001  # an unsupported backend/cell is a table entry, not a crash
        print(f"  {backend} {direction} {cell}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}", file=sys.stderr)
        return None
    finally:
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# parallel compilation
# ------------------------------------------------------------------------------------------------


def _compile_job(job: tuple[str, int, str, dict[str, Any]]) -> str:
    """Compile (by running once at a small size) one configuration, into Triton's on-disk cache."""
    dtype, head_dim, kind, cfg = job
    try:
        from attncore.inputs import Inputs
        from attncore_triton import _launch

        cell = Cell(dtype, head_dim, 256, False)
        q, k, v = _inputs(cell, requires_grad=False)
        inputs = Inputs.create(q, k, v)
        if kind == "fwd":  # both variants: without LSE (inference) and with it (training)
            _launch.forward(inputs, needs_lse=False, dropout_seed=0, config=_launch.FwdConfig(**cfg))
            _launch.forward(inputs, needs_lse=True, dropout_seed=0, config=_launch.FwdConfig(**cfg))
        else:
            pb = _launch.problem(inputs)
            out, lse = _launch.forward(inputs, needs_lse=True, dropout_seed=0, config=_launch.fwd_candidates(pb)[0])
            assert lse is not None
            _launch.backward(inputs, torch.randn_like(out), out, lse, dropout_seed=0, config=_launch.BwdConfig(**cfg))
        torch.cuda.synchronize()
        return f"ok {job}"
    except Exception as exc:  # noqa: BLE001  # reported, the autotuner will skip it too
        return f"FAILED {job}: {type(exc).__name__}: {str(exc)[:200]}"


def prewarm(dtypes: Sequence[str], head_dims: Sequence[int], jobs: int) -> None:
    from dataclasses import asdict

    from attncore.attn_bias import LowerTriangularMask
    from attncore.inputs import Inputs
    from attncore_triton import _launch

    work: list[tuple[str, int, str, dict[str, Any]]] = []
    for dt in dtypes:
        for kd in head_dims:
            q, k, v = _inputs(Cell(dt, kd, 256, False), requires_grad=False)
            for bias in (None, LowerTriangularMask()):  # (banded calls have candidates of their own: one_loop)
                pb = _launch.problem(Inputs.create(q, k, v, bias))
                work += [(dt, kd, "fwd", asdict(c)) for c in _launch.fwd_candidates(pb)]
                work += [(dt, kd, "bwd", asdict(c)) for c in _launch.bwd_candidates(pb)]
    work = list({json.dumps(job, sort_keys=True): job for job in work}.values())  # each configuration once
    t0 = time.time()
    ctx = __import__("multiprocessing").get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=ctx) as pool:
        for line in pool.map(_compile_job, work):
            if not line.startswith("ok"):
                print(line, file=sys.stderr)
    print(f"prewarm: {len(work)} configurations compiled in {time.time() - t0:.1f}s", flush=True)


# ------------------------------------------------------------------------------------------------
# the grid and the varlen batch
# ------------------------------------------------------------------------------------------------


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def grid(
    dtypes: Sequence[str],
    head_dims: Sequence[int],
    seqlens: Sequence[int],
    directions: Sequence[str],
    backends: Sequence[str],
    ours: str = "triton",
    vs: str = "flash",
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for dt in dtypes:
        for kd in head_dims:
            for causal in (False, True):
                for m in seqlens:
                    cell = Cell(dt, kd, m, causal)
                    for d in directions:
                        row: dict[str, Any] = {"dtype": dt, "K": kd, "M": m, "B": cell.batch, "H": cell.heads, "causal": causal, "dir": d}
                        for be in backends:
                            ms = measure(cell, be, d)
                            row[be] = None if ms is None else cell.flops(d) / (ms * 1e-3) / 1e12
                            row[be + "_ms"] = ms
                        rows.append(row)
                        print(
                            f"{dt} K={kd:3d} M={m:5d} causal={causal!s:5} {d}: "
                            + "  ".join(f"{be}={_fmt(row[be])}" for be in backends)
                            + f"  {ours}/{vs}={_ratio(row.get(ours), row.get(vs))}",
                            flush=True,
                        )
    return rows


def varlen(seed: int = 0, count: int = 8, head_dim: int = 128, ours: str = "triton") -> list[dict[str, Any]]:
    """Packed causal batch of ``count`` sequences (64..4096) vs SDPA on the batch padded to the longest."""
    import attncore

    ops = _ops(ours)
    g = torch.Generator().manual_seed(seed)
    lens = [int(x) for x in torch.randint(64, 4097, (count,), generator=g)]
    total, longest, heads = sum(lens), max(lens), WIDTH // head_dim
    dt = torch.bfloat16
    out: list[dict[str, Any]] = []
    packed = [torch.randn(1, total, heads, head_dim, device="cuda", dtype=dt, requires_grad=True) for _ in range(3)]
    bias = attncore.BlockDiagonalCausalMask.from_seqlens(lens)
    padded = [torch.zeros(count, longest, heads, head_dim, device="cuda", dtype=dt) for _ in range(3)]
    for p, t in zip(padded, packed, strict=True):
        start = 0
        for i, n in enumerate(lens):
            p[i, :n] = t[0, start : start + n].detach()
            start += n
    padded = [p.requires_grad_(True) for p in padded]
    for d in ("fwd", "bwd"):
        row: dict[str, Any] = {"dir": d, "lengths": lens, "tokens": total, "padded_tokens": count * longest}

        def packed_call() -> torch.Tensor:
            return attncore.memory_efficient_attention(packed[0], packed[1], packed[2], bias, op=ops)

        fns: dict[str, Callable[[], torch.Tensor]] = {ours: packed_call}
        for be in ("flash", "cudnn", "efficient"):
            fns[be] = _run_fn(be, padded[0], padded[1], padded[2], True)
        for name, fn in fns.items():
            leaves = packed if name == ours else padded
            try:
                if d == "fwd":
                    with torch.no_grad():
                        fn()
                        ms = _bench(fn)
                else:
                    o = fn()
                    gr = torch.randn_like(o)
                    ms = _bench(lambda o=o, gr=gr, leaves=leaves: torch.autograd.grad(o, leaves, gr, retain_graph=True))  # type: ignore[misc]
                row[name] = total / (ms * 1e-3)
                row[name + "_ms"] = ms
            except Exception as exc:  # noqa: BLE001  # an unsupported backend is reported in the table
                print(f"  varlen {name} {d}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}", file=sys.stderr)
                row[name] = None
        out.append(row)
        print(f"varlen {d}: " + "  ".join(f"{k}={v / 1e6:.1f}M tok/s" for k, v in row.items() if k in fns and v is not None), flush=True)
    return out


def render(
    rows: list[dict[str, Any]],
    var: list[dict[str, Any]],
    header: str,
    ours: str = "triton",
    backends: Sequence[str] = BACKENDS,
    vs: Sequence[str] = ("flash", "cudnn"),
) -> str:
    others = [b for b in backends if b != ours]
    lines = [header, ""]
    lines.append(f"TFLOP/s (higher is better); ratios are {LABELS[ours]} over the SDPA backend.")
    lines.append("")
    lines.append(
        "| dtype | K | M | B | H | causal | dir | " + " | ".join(LABELS[b] for b in [ours, *others]) + " | " + " | ".join(f"{ours}/{b}" for b in vs) + " |"
    )
    lines.append("|---|---|---|---|---|---|---|" + "---|" * (1 + len(others) + len(vs)))
    for r in rows:
        lines.append(
            f"| {r['dtype']} | {r['K']} | {r['M']} | {r['B']} | {r['H']} | {'yes' if r['causal'] else 'no'} | {r['dir']} | "
            + " | ".join(_fmt(r.get(b)) for b in [ours, *others])
            + " | "
            + " | ".join(_ratio(r.get(ours), r.get(b)) for b in vs)
            + " |"
        )
    if var:
        lines += ["", f"Packed variable-length batch (BlockDiagonalCausalMask, bf16, K=128, H=16), lengths {var[0]['lengths']}:", ""]
        lines.append(f"{var[0]['tokens']} real tokens; SDPA runs {var[0]['padded_tokens']} padded tokens. Million real tokens/s:")
        lines.append("")
        pads = ("flash", "cudnn", "efficient")
        lines.append(f"| dir | {LABELS[ours]} (packed) | " + " | ".join(f"{LABELS[b]} (padded)" for b in pads) + f" | {ours}/{vs[0]} |")
        lines.append("|---|---|---|---|---|---|")
        for r in var:

            def mt(x: Optional[float]) -> str:
                return "n/a" if x is None else f"{x / 1e6:.1f}"

            cols = [mt(r.get(b)) for b in (ours, *pads)]
            lines.append(f"| {r['dir']} | {' | '.join(cols)} | {_ratio(r.get(ours), r.get(vs[0]))} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="bf16,fp16")
    ap.add_argument("--heads", default="64,128,256", help="head dims K")
    ap.add_argument("--seqlens", default=",".join(map(str, SEQLENS)))
    ap.add_argument("--dirs", default="fwd,bwd")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--jobs", type=int, default=min(14, os.cpu_count() or 1), help="parallel compile processes (0: none)")
    ap.add_argument("--no-varlen", action="store_true")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--json", default=None, help="write raw numbers here")
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_triton needs a CUDA GPU", file=sys.stderr)
        return 2
    dtypes = [d for d in args.dtypes.split(",") if d]
    heads = [int(x) for x in args.heads.split(",") if x]
    seqlens = [int(x) for x in args.seqlens.split(",") if x]
    dirs = [d for d in args.dirs.split(",") if d]
    backends = [b for b in args.backends.split(",") if b]
    import triton

    dev = torch.cuda.get_device_name()
    header = (
        f"## attncore-triton vs SDPA, {dev}, {args.date}\n\n"
        f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}; B*M = {TOKENS}, H*K = {WIDTH}; "
        f"do_bench medians (warmup 10 ms, rep 40 ms)."
    )
    print(header, flush=True)
    if args.jobs > 0 and "triton" in backends:
        prewarm(dtypes, heads, args.jobs)
    rows = grid(dtypes, heads, seqlens, dirs, backends)
    var = [] if args.no_varlen else varlen()
    text = render(rows, var, header)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": rows, "varlen": var}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
