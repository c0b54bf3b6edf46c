"""Compile the CUDA kernels with the local nvcc, no GPU needed: compile errors, registers and spills.

Run before spending GPU time (``nox -s cuda_check``; CI runs it where nvcc exists). For each kernel
source and each arch (default: what nvcc supports among sm_75, sm_80, sm_90; sm_75 checks that the
tensor-core kernels are guarded for pre-Ampere targets) it prints every kernel's registers and spill
bytes from ``ptxas -v``, and fails on a compile error or warning. ``--ptxas-old PATH`` (a CUDA 12.x
``ptxas``) also assembles the kernels' PTX for sm_60 and sm_70, which CUDA 13's nvcc no longer targets.

    python plugins/cutlass_like/tools/cuda_check.py [--archs 80,90] [--ptxas-old /path/to/cuda12/ptxas]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

CSRC = Path(__file__).resolve().parents[1] / "attncore_cutlass" / "csrc"
KERNELS = ("fwd_simt.cu", "bwd_simt.cu", "fwd_tc.cu", "bwd_tc.cu")
_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+a?)'")
_USED = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _short(mangled: str) -> str:
    """A readable kernel name (``fwd_tc_kernel<__nv_bfloat16, 128, 64, 2>``), via c++filt when present."""
    filt = shutil.which("c++filt")
    if filt is None:
        return mangled
    text = subprocess.run([filt, mangled], check=False, capture_output=True, text=True).stdout.strip()
    text = re.sub(r"^void ", "", text).replace("attncore::", "").replace("(anonymous namespace)::", "")
    return re.sub(r"\(.*\)$", "", text).replace("__nv_bfloat16", "bf16").replace("__half", "f16")


def _compile(nvcc: str, src: Path, archs: list[str], out: Path) -> tuple[str, int, str]:
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    cmd = [nvcc, "-std=c++17", "-O3", "-c", str(src), "-o", str(out / (src.stem + ".o")), "-Xptxas", "-v", "--threads", "2", *flags]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)  # failures are reported below
    return src.name, proc.returncode, proc.stdout + proc.stderr


def _table(name: str, text: str) -> list[str]:
    rows: list[str] = []
    current: Optional[tuple[str, str]] = None
    regs = 0
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = (_short(m.group(1)), m.group(2))
            continue
        m = _SPILL.search(line)
        spill = (int(m.group(1)), int(m.group(2))) if m else None
        m = _USED.search(line)
        if m:
            regs = int(m.group(1))
            if current is not None and "probe" not in current[0]:
                rows.append(f"  {current[1]:7s} {current[0]:52s} {regs:4d} regs")
        if spill and spill != (0, 0) and current is not None:
            rows.append(f"  {current[1]:7s} {current[0]:52s} SPILLS {spill[0]} B stores / {spill[1]} B loads")
    return rows


def _old_archs(nvcc: str, ptxas: str, out: Path) -> list[str]:
    """Assemble each kernel's compute_75 PTX for sm_60/sm_70 with an older ptxas (retargeted .target/.version)."""
    problems = []
    for k in KERNELS:
        ptx = out / (Path(k).stem + ".ptx")
        subprocess.run([nvcc, "-std=c++17", "-O3", "-ptx", str(CSRC / k), "-o", str(ptx), "-arch=compute_75"], check=True, capture_output=True)
        text = ptx.read_text()
        for arch in ("sm_60", "sm_70"):
            retargeted = re.sub(r"^\.target sm_\d+", f".target {arch}", text, flags=re.M)
            retargeted = re.sub(r"^\.version \d+\.\d+", ".version 8.8", retargeted, flags=re.M)
            path = out / f"{Path(k).stem}_{arch}.ptx"
            path.write_text(retargeted)
            proc = subprocess.run([ptxas, f"-arch={arch}", str(path), "-o", str(path.with_suffix(".cubin"))], check=False, capture_output=True, text=True)
            status = "ok" if proc.returncode == 0 else "FAILED: " + (proc.stderr.strip().splitlines() or ["?"])[0]
            print(f"  {k:12s} {arch}: {status}")
            if proc.returncode != 0:
                problems.append(f"{k} {arch}")
    return problems


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=None, help="comma-separated XY numbers (default: 75,80,90 where nvcc has them)")
    ap.add_argument("--ptxas-old", default=None, help="a CUDA 12.x ptxas: also assemble for sm_60 and sm_70")
    args = ap.parse_args(argv)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("cuda_check: no nvcc on PATH; nothing to check here")
        return 0
    listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout.split()
    have = {a.removeprefix("compute_") for a in listed}
    archs = [a for a in (args.archs.split(",") if args.archs else ["75", "80", "90"]) if a in have]
    print(f"cuda_check: {nvcc}, archs {', '.join('sm_' + a for a in archs)}")
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda k: _compile(nvcc, CSRC / k, archs, out), KERNELS))
        for name, rc, text in results:
            bad = [ln for ln in text.splitlines() if re.search(r"\b(error|warning)\b", ln) and "ptxas info" not in ln]
            if rc != 0 or bad:
                failed.append(name)
                print(f"{name}: FAILED (exit {rc})")
                print("\n".join(bad[:40]))
                continue
            print(f"{name}: ok")
            print("\n".join(_table(name, text)))
        if args.ptxas_old:
            print("pre-Turing archs through an older ptxas:")
            failed += _old_archs(nvcc, args.ptxas_old, out)
    if failed:
        print(f"cuda_check: FAILED: {', '.join(failed)}")
        return 1
    print("cuda_check: every kernel compiles without warnings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
