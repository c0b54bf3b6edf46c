"""``python -m attncore explain ...`` and ``python -m attncore info``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Union

import torch

from attncore import attn_bias as ab
from attncore.dispatch import explain
from attncore.info import main as info_main

__all__ = ["main"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
_DENSE = {
    "none": None,
    "causal": ab.LowerTriangularMask,
    "LowerTriangularMask": ab.LowerTriangularMask,
    "LowerTriangularFromBottomRightMask": ab.LowerTriangularFromBottomRightMask,
}
_BLOCKS = {name: getattr(ab, name) for name in ("BlockDiagonalMask", "BlockDiagonalCausalMask", "BlockDiagonalCausalFromBottomRightMask")}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _bias(args: argparse.Namespace, b: int, h: int, mq: int, mk: int, device: str, dtype: torch.dtype) -> Union[ab.AttentionBias, torch.Tensor, None]:
    name = args.bias
    if name in _DENSE:
        cls = _DENSE[name]
        return None if cls is None else cls()
    if name == "LocalAttentionFromBottomRightMask":
        left, right = _ints(args.window or "1,1")
        return ab.LocalAttentionFromBottomRightMask(left, right)
    if name in _BLOCKS:
        if not args.seqlens:
            raise SystemExit(f"--bias {name} needs --seqlens (query lengths, comma-separated)")
        return _BLOCKS[name].from_seqlens(_ints(args.seqlens), _ints(args.kv_seqlens) if args.kv_seqlens else None)  # type: ignore[no-any-return]  # classes from the table
    if name == "tensor":
        return torch.empty((b, h, mq, mk), device=device, dtype=dtype)
    choices = sorted([*_DENSE, *_BLOCKS, "LocalAttentionFromBottomRightMask", "tensor"])
    raise SystemExit(f"--bias: expected one of {', '.join(choices)}, found {name!r}")


def _explain(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m attncore explain", description="Explain which operator runs a call, and why (runs no kernel).")
    ap.add_argument("--shape", required=True, help="query shape B,Mq,H,K (or B,Mq,K or B,Mq,G,H,K)")
    ap.add_argument("--kv-len", type=int, help="Mk (default: Mq)")
    ap.add_argument("--kv-dim", type=int, help="Kv, value head dim (default: K)")
    ap.add_argument("--dtype", default="float16", choices=sorted(_DTYPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bias", default="none")
    ap.add_argument("--window", help="window_left,window_right for LocalAttentionFromBottomRightMask")
    ap.add_argument("--seqlens", help="query sequence lengths for block-diagonal masks")
    ap.add_argument("--kv-seqlens", help="key sequence lengths for block-diagonal masks")
    ap.add_argument("-p", type=float, default=0.0, help="dropout probability")
    ap.add_argument("--scale", type=float)
    ap.add_argument("--requires-grad", action="store_true", help="also explain the backward")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        shape = _ints(args.shape)
    except ValueError:
        ap.error(f"--shape: expected comma-separated integers, found {args.shape!r}")
    if len(shape) not in (3, 4, 5):
        ap.error(f"--shape: expected 3 to 5 comma-separated sizes, found {args.shape!r}")
    dtype = _DTYPES[args.dtype]
    mk = args.kv_len or shape[1]
    kv_shape = [shape[0], mk, *shape[2:]]
    try:  # a device this torch lacks, or a call the inputs' checks refuse: a usage error, not a traceback
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device: expected a device this torch can use, found {args.device!r} (torch {torch.__version__} sees no CUDA device)")
        q = torch.empty(shape, dtype=dtype, device=device)
        k = torch.empty(kv_shape, dtype=dtype, device=device)
        v = torch.empty([*kv_shape[:-1], args.kv_dim or shape[-1]], dtype=dtype, device=device)
        h = shape[-2] if len(shape) >= 4 else 1
        bias = _bias(args, shape[0], h, shape[1], mk, args.device, dtype)
        exp = explain(q, k, v, bias, args.p, args.scale, requires_grad=args.requires_grad)
    except (ValueError, RuntimeError) as err:
        ap.error(str(err))
    print(exp.to_json(indent=2) if args.json else str(exp))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m attncore {explain,info} [options]   (python -m attncore explain --help)")
        return 0 if args else 2
    if args[0] == "explain":
        return _explain(args[1:])
    if args[0] == "info":
        return info_main(args[1:])
    print(f"python -m attncore: unknown command {args[0]!r}; expected explain or info", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
