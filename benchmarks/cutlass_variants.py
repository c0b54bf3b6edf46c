"""Which attncore-cutlass forward kernel runs a few calls under the current environment switches (one
line per call: the kernel family and ``_launch.last_forward_variant()``), so that an A/B run of
``gpu_cutlass.sh`` shows what each setting actually ran. Needs a CUDA GPU.

    python benchmarks/cutlass_variants.py LABEL [--dtypes fp32] [--masks none,causal]
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch

from attncore import LowerTriangularMask
from attncore.inputs import Inputs
from attncore_cutlass import _launch
from attncore_cutlass.ops import CutlassFwOp

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MASKS = {"none": None, "causal": LowerTriangularMask()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("label", help="printed first on every line (the setting under test)")
    ap.add_argument("--dtypes", default="fp32", help=f"comma-separated, among {sorted(DTYPES)}")
    ap.add_argument("--masks", default="none,causal", help=f"comma-separated, among {sorted(MASKS)}")
    ap.add_argument("--heads", default="64,128,256", help="head dims K")
    args = ap.parse_args(argv)
    for dtype_name in args.dtypes.split(","):
        for kd in (int(x) for x in args.heads.split(",")):
            q = torch.randn(1, 1024, 2, kd, device="cuda", dtype=DTYPES[dtype_name])
            for mask_name in args.masks.split(","):
                CutlassFwOp.apply(Inputs.create(q, q, q, MASKS[mask_name]), needs_lse=False, dropout_seed=0)
                print(args.label, dtype_name, "K =", kd, mask_name, ":", _launch.last_family("forward"), _launch.last_forward_variant())
    return 0


if __name__ == "__main__":
    sys.exit(main())
