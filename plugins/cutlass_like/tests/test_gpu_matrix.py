"""``nox -s gpu_matrix``: for one arch list of env_matrix, the negotiation outcome on this GPU.

The session builds the extension for the entry's ``TORCH_CUDA_ARCH_LIST`` (conftest) and this module
asserts what the matrix promises: a list that covers the device is chosen by the dispatcher and runs
(through SASS or by JIT from PTX); one that does not is rejected with the rebuild hint, the dispatcher
falls back, and, to prove the rejection is not overcautious, the raw library fails on the device
exactly as negotiation predicted. Skipped outside gpu_matrix.
"""

from __future__ import annotations

import os

import pytest
import torch

import attncore
import env_matrix
from attncore import dispatch
from attncore.cuda_arch import coverage, parse_arch_list
from attncore.errors import NotSupportedError
from attncore.inputs import Inputs
from attncore_cutlass import _launch, build, matrix, negotiation
from attncore_cutlass.ops import CutlassBwOp, CutlassFwOp
from attncore_reference.exact import ExactFwOp

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif("ATTNCORE_GPU_MATRIX" not in os.environ, reason="only under nox -s gpu_matrix"),
]


def _entry() -> env_matrix.ArchList:
    return next(a for a in env_matrix.load().cuda_arch_lists if a.name == os.environ["ATTNCORE_GPU_MATRIX"])


def _expected(value: str, on_sm90: str) -> str:
    major, minor = torch.cuda.get_device_capability()
    got = coverage(parse_arch_list(value), (major, minor)) or "rejected"
    if (major, minor) == (9, 0):
        assert got == on_sm90, f"env_matrix says {on_sm90} on sm_90, the coverage rules say {got}"
    return got


def test_negotiation_outcome_on_this_device() -> None:
    matrix_build = matrix.ensure_built()
    entry = _entry()
    value, on_sm90 = entry.value, entry.on_sm90
    major, minor = torch.cuda.get_device_capability()
    cap = (int(major), int(minor))
    if matrix_build is not None:  # the toolkit cannot target an entry: the builder refused before compiling
        assert "cannot compile for" in matrix_build
        print(f"\n[gpu_matrix] {value!r}: build refused: {matrix_build}")
        located = negotiation.current(cap)
        assert located.record is None
        return
    expected = _expected(value, on_sm90)
    located = negotiation.current(cap)
    assert located.origin == "ATTNCORE_CUTLASS_DIR" and located.record is not None and located.record.arch_list == value
    q = torch.randn(2, 200, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    bias = attncore.LowerTriangularMask()
    with dispatch.policy(order=["cutlass", "reference"]):
        exp = dispatch.explain(q, q, q, bias)
        row = next(c for c in exp.forward.candidates if c.op == CutlassFwOp.NAME)
        if expected == "rejected":
            rebuild = f'TORCH_CUDA_ARCH_LIST="{value};{cap[0]}.{cap[1]}"'
            assert row.status == "rejected" and any(rebuild in str(r) for r in row.reasons), str(exp)
            assert exp.forward.chosen is not CutlassFwOp and exp.backward is not None and exp.backward.chosen is not CutlassBwOp
            out = attncore.memory_efficient_attention(q, q, q, bias)  # falls back
            assert out.shape == q.shape
            with pytest.raises(NotSupportedError, match="compiled archs"):
                attncore.memory_efficient_attention(q, q, q, bias, op=(CutlassFwOp, CutlassBwOp))
            # what negotiation prevented: the library really has no kernel for this device
            lib = build.load_extension(located.directory)  # type: ignore[arg-type]  # set with the record
            with pytest.raises(RuntimeError, match=r"no kernel image|invalid device function"):
                _launch.forward(Inputs.create(q.detach(), q.detach(), q.detach()), needs_lse=False, ext=lib)
            print(f"\n[gpu_matrix] {value!r} on sm_{cap[0]}{cap[1]}: rejected as expected; reason: {next(iter(row.reasons))}")
            return
        assert row.status == "chosen" and exp.forward.chosen is CutlassFwOp, str(exp)
        assert exp.backward is not None and exp.backward.chosen is CutlassBwOp
        out = attncore.memory_efficient_attention(q, q, q, bias)
        torch.autograd.backward(out.float().square().sum())
    # tensor cores only when the code the device runs was compiled for sm_80+ (a 7.5+PTX build runs the portable kernels)
    entries = parse_arch_list(value)
    sass = [e for e in entries if e.major == cap[0] and (e.minor <= cap[1]) and (not e.specific or (e.major, e.minor) == cap)]
    running = max((e.major, e.minor) for e in sass) if sass else max((e.major, e.minor) for e in entries if e.ptx and (e.major, e.minor) <= cap)
    family = "tc" if running >= (8, 0) else "simt"
    assert _launch.last_family("forward") == family and _launch.last_family("backward") == family
    ref = ExactFwOp.apply(Inputs.create(q.detach().double(), q.detach().double(), q.detach().double(), bias), needs_lse=False, dropout_seed=0)
    assert (out.detach().double() - ref.out.reshape(out.shape)).abs().max().item() < 3e-2
    fams = f"fwd {_launch.last_family('forward')}, bwd {_launch.last_family('backward')}"
    print(f"\n[gpu_matrix] {value!r} on sm_{cap[0]}{cap[1]}: {expected}; cutlass.mem_eff chosen ({fams})")
