"""``python -m attncore_cutlass build [--arch-list L] [--out DIR]`` and ``python -m attncore_cutlass status``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional


def _default_arch_list() -> str:
    explicit = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if explicit:
        return explicit
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("attncore-cutlass: no GPU visible and TORCH_CUDA_ARCH_LIST unset: pass --arch-list (e.g. '8.0;9.0+PTX')")
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{a}.{b}" for a, b in caps)


def main(argv: Optional[list[str]] = None) -> int:
    from . import build, negotiation
    from .plugin import build_info

    parser = argparse.ArgumentParser(prog="python -m attncore_cutlass", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the CUDA extension ahead of time and record what it was built for")
    b.add_argument("--arch-list", default=None, help="TORCH_CUDA_ARCH_LIST syntax, e.g. '8.0;9.0+PTX' (default: $TORCH_CUDA_ARCH_LIST, else the visible GPUs)")
    b.add_argument("--out", type=Path, default=None, help=f"directory for the library and its record (default: {build.PREBUILT})")
    b.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (MAX_JOBS)")
    sub.add_parser("status", help="print the located binary and the negotiation outcome for each visible GPU (JSON)")
    args = parser.parse_args(argv)
    if args.command == "build":
        arch = args.arch_list or _default_arch_list()
        try:
            record = build.build(arch, args.out or build.PREBUILT, jobs=args.jobs)
        except build.BuildError as exc:
            print(f"attncore-cutlass: build failed: {exc}", file=sys.stderr)
            return 2
        print(record.to_json())
        return 0
    import torch

    report: dict[str, object] = {"build": build_info(), "devices": {}}
    devices: dict[str, object] = {}
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        major, minor = torch.cuda.get_device_capability(i)
        cap = (int(major), int(minor))
        reasons = negotiation.binary_reasons(negotiation.facts(), negotiation.current(cap), cap)
        devices[f"cuda:{i} sm_{major}{minor}"] = [str(r) for r in reasons] or "usable"
    report["devices"] = devices
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
