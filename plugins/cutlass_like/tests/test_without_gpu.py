"""What needs no GPU: negotiation (faked environments, build records and devices) and the host launcher.

Every outcome the plugin promises (built for another torch, arch not covered, PTX-only coverage,
not built, first-use build, a failed build) is checked here against :func:`locate` /
:func:`binary_reasons`, and end to end through the dispatcher with a faked device; the launcher's
layout cache, empty calls and grid-limit splitting run against stand-in modules.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import pytest
import torch

import attncore
from attncore import dispatch
from attncore.device import DeviceInfo
from attncore.inputs import Inputs
from attncore_cutlass import _launch, build, negotiation
from attncore_cutlass.ops import CutlassBwOp, CutlassFwOp
from attncore_reference import testing

SOURCES = build.source_hash()
NVCC13 = frozenset({"75", "80", "86", "87", "89", "90", "100", "120"})


def facts(tmp_path: Path, *, torch_version: str = "2.11.0+cu130", cuda: Optional[str] = "13.0", nvcc: Optional[str] = "/opt/cuda/bin/nvcc",
          env: Optional[dict[str, str]] = None) -> negotiation.Facts:  # fmt: skip
    env = {"ATTNCORE_CUTLASS_CACHE": str(tmp_path / "cache"), **(env or {})}
    return negotiation.Facts(
        torch_version, cuda, nvcc, NVCC13 if nvcc else frozenset(), SOURCES, env, tmp_path / "prebuilt", "cpython-311", "1", "13.0" if nvcc else None, True
    )


def write_record(directory: Path, **changes: object) -> build.BuildRecord:
    rec = build.BuildRecord(
        torch="2.11.0+cu130",
        cuda="13.0",
        python="cpython-311",
        cxx11_abi="1",
        arch_list="8.0;9.0",
        ptx=False,
        sources=SOURCES,
        nvcc="13.0",
        built="2026-11-25T00:00:00+00:00",
        key="k",
        library="attncore_cutlass_C_0123456789.so",
    )
    rec = dataclasses.replace(rec, **changes)  # type: ignore[arg-type]  # field names and types are the caller's
    directory.mkdir(parents=True, exist_ok=True)
    (directory / build.RECORD_NAME).write_text(rec.to_json())
    return rec


def reasons(f: negotiation.Facts, cap: Optional[tuple[int, int]]) -> list[str]:
    return [str(r) for r in negotiation.binary_reasons(f, negotiation.locate(f, cap), cap)]


def test_cpu_torch_means_not_built_with_the_build_command(tmp_path: Path) -> None:
    f = facts(tmp_path, torch_version="2.13.0+cpu", cuda=None, nvcc=None)
    located = negotiation.locate(f, None)
    assert located.origin == "none" and located.record is None
    (why,) = reasons(f, (9, 0))
    assert "binary: found not built (torch 2.13.0+cpu is a CPU-only build)" in why
    assert "install a CUDA build of torch" in why  # building cannot help there


def test_no_toolkit_means_not_built(tmp_path: Path) -> None:
    (why,) = reasons(facts(tmp_path, nvcc=None), (9, 0))
    assert "no CUDA toolkit (nvcc)" in why


def test_first_use_build_is_accepted_and_keyed(tmp_path: Path) -> None:
    f = facts(tmp_path)
    located = negotiation.locate(f, (9, 0))
    assert located.record is None and located.jit_blocker is None and located.jit_arch_list == "9.0"
    assert located.jit_dir == tmp_path / "cache" / f"torch2.11.0-cu13.0-cpython-311-abi1-sm9_0-{SOURCES}"
    assert reasons(f, (9, 0)) == []


def test_first_use_build_honours_the_arch_list_and_explains_a_miss(tmp_path: Path) -> None:
    f = facts(tmp_path, env={"TORCH_CUDA_ARCH_LIST": "8.0"})
    (why,) = reasons(f, (9, 0))
    assert "compiled archs" in why and 'TORCH_CUDA_ARCH_LIST="8.0;9.0"' in why


def test_an_arch_the_toolkit_cannot_target_is_not_built(tmp_path: Path) -> None:
    (why,) = reasons(facts(tmp_path), (6, 0))
    assert "cannot compile for sm_60" in why


@pytest.mark.parametrize(
    ("arch_list", "cap", "outcome"),
    [
        ("8.0;9.0", (9, 0), "sass"),
        ("8.0", (8, 6), "sass"),  # sm_80 SASS runs on sm_86
        ("8.0+PTX", (9, 0), "ptx"),
        ("7.5;8.0", (9, 0), "rejected"),
        ("9.0a", (9, 0), "sass"),
        ("9.0a", (10, 0), "rejected"),  # arch-specific code runs on sm_90 only
        ("9.0", (8, 0), "rejected"),
    ],
)
def test_record_arch_coverage(tmp_path: Path, arch_list: str, cap: tuple[int, int], outcome: str) -> None:
    f = facts(tmp_path)
    write_record(f.prebuilt, arch_list=arch_list, ptx="+PTX" in arch_list)
    assert negotiation.locate(f, cap).origin == "prebuilt"
    got = reasons(f, cap)
    if outcome == "rejected":
        (why,) = got
        assert f"device is sm_{cap[0]}{cap[1]}" in why and f'TORCH_CUDA_ARCH_LIST="{arch_list};{cap[0]}.{cap[1]}"' in why
    else:
        assert got == []


def test_built_for_another_torch_is_rejected_with_the_fix(tmp_path: Path) -> None:
    f = facts(tmp_path)
    write_record(f.prebuilt, torch="2.4.1+cu121", cuda="12.1")
    got = reasons(f, (9, 0))
    assert any("torch (build): found built for torch 2.4.1+cu121, running torch 2.11.0+cu130" in r for r in got)
    assert any("CUDA (build): found built with CUDA 12.1, torch uses CUDA 13.0" in r for r in got)
    assert all("rebuild: python -m attncore_cutlass build" in r for r in got)  # prebuilt: rebuilt into the package
    assert all("prebuilt: " in r for r in got)  # says which binary


def test_local_version_suffixes_do_not_count(tmp_path: Path) -> None:
    f = facts(tmp_path, torch_version="2.11.0")
    write_record(f.prebuilt, torch="2.11.0+cu130")
    assert reasons(f, (9, 0)) == []


def test_stale_sources_are_rejected(tmp_path: Path) -> None:
    f = facts(tmp_path)
    write_record(f.prebuilt, sources="0123456789ab")
    (why,) = reasons(f, (9, 0))
    assert "binary sources: found built from sources 0123456789ab" in why and SOURCES in why


def test_unreadable_record_is_explained(tmp_path: Path) -> None:
    f = facts(tmp_path)
    f.prebuilt.mkdir()
    (f.prebuilt / build.RECORD_NAME).write_text(json.dumps({"torch": "2.11.0"}))
    (why,) = reasons(f, (9, 0))
    assert "unreadable build record" in why and "lacks" in why


def test_explicit_directory_wins_and_must_hold_a_record(tmp_path: Path) -> None:
    explicit = tmp_path / "matrix"
    f = facts(tmp_path, env={"ATTNCORE_CUTLASS_DIR": str(explicit)})
    write_record(f.prebuilt)
    (why,) = reasons(f, (9, 0))  # not silently replaced by the prebuilt binary
    assert f"ATTNCORE_CUTLASS_DIR={explicit} holds no build.json" in why
    write_record(explicit, arch_list="7.5", torch="2.4.1")
    assert negotiation.locate(f, (9, 0)).origin == "ATTNCORE_CUTLASS_DIR"
    got = reasons(f, (9, 0))
    assert any("compiled archs" in r for r in got)
    assert f"rebuild: python -m attncore_cutlass build --out {explicit}" in got[0]  # rebuilt where it is looked for


def test_cache_is_found_after_a_first_use_build(tmp_path: Path) -> None:
    f = facts(tmp_path)
    located = negotiation.locate(f, (9, 0))
    assert located.jit_dir is not None
    write_record(located.jit_dir, arch_list="9.0")
    again = negotiation.locate(f, (9, 0))
    assert again.origin == "cache" and again.record is not None and reasons(f, (9, 0)) == []


def test_gencode_flags() -> None:
    assert build.gencode_flags("8.0;9.0a 9.0+PTX") == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90a,code=sm_90a",
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]
    with pytest.raises(build.BuildError, match=r"expected entries like 8\.0"):
        build.gencode_flags("8.0;sm_90")
    with pytest.raises(build.BuildError, match="at least one entry"):
        build.gencode_flags(" ; ")


def test_build_refuses_on_a_cpu_torch() -> None:
    if torch.version.cuda is not None:
        pytest.skip("this torch has CUDA")
    with pytest.raises(build.BuildError, match="CPU-only build"):
        build.build("9.0", Path("/nonexistent"))


def test_dispatcher_falls_back_and_explains_on_a_faked_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A binary for 7.5;8.0 on a (faked) sm_90: the operator is rejected with the rebuild hint and the
    dispatcher picks the next operator; with 8.0;9.0 it is chosen."""
    f = facts(tmp_path)
    write_record(f.prebuilt, arch_list="7.5;8.0")
    monkeypatch.setattr(negotiation, "facts", lambda: f)
    negotiation.current.cache_clear()
    dispatch.clear_cache()
    q = torch.randn(1, 32, 2, 64, dtype=torch.float16)
    inputs = Inputs.create(q, q, q)
    gpu = DeviceInfo("cuda", (9, 0), None, "faked H100")
    faked = inputs._replace(features=inputs.features._replace(device=gpu))
    try:
        with dispatch.policy(order=["cutlass", "reference"]):
            sel = dispatch.evaluate(faked, "forward")
        assert sel.chosen is not None and sel.chosen is not CutlassFwOp
        row = next(c for c in sel.candidates if c.op == CutlassFwOp.NAME)
        assert row.status == "rejected"
        assert any('TORCH_CUDA_ARCH_LIST="7.5;8.0;9.0"' in str(r) for r in row.reasons)
        write_record(f.prebuilt, arch_list="8.0;9.0")
        negotiation.current.cache_clear()
        with dispatch.policy(order=["cutlass", "reference"]):
            assert dispatch.evaluate(faked, "forward").chosen is CutlassFwOp
            assert dispatch.evaluate(faked._replace(features=faked.features._replace(requires_grad=True)), "backward").chosen is CutlassBwOp
    finally:
        negotiation.current.cache_clear()
        dispatch.clear_cache()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"ninja": False}, "ninja is not installed"),
        ({"nvcc_version": "12.4"}, "does not match torch's CUDA 13.0"),
    ],
)
def test_first_use_build_blockers(tmp_path: Path, change: dict[str, object], expected: str) -> None:
    f = dataclasses.replace(facts(tmp_path), **change)  # type: ignore[arg-type]  # field names and types are the caller's
    (why,) = reasons(f, (9, 0))
    assert expected in why


def test_other_interpreter_or_cxx_abi_is_rejected(tmp_path: Path) -> None:
    f = facts(tmp_path)
    write_record(f.prebuilt, python="cpython-310", cxx11_abi="0")
    got = reasons(f, (9, 0))
    assert any("python (build): found built for cpython-310" in r for r in got)
    assert any("C++ ABI (build)" in r for r in got)


def test_a_failed_build_or_load_becomes_a_reason_and_the_dispatcher_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = facts(tmp_path)
    write_record(f.prebuilt, arch_list="9.0")
    monkeypatch.setattr(negotiation, "facts", lambda: f)
    monkeypatch.setattr(_launch, "_MODULES", {})  # on a GPU host an earlier test may have loaded the real library
    negotiation.current.cache_clear()
    q = torch.randn(1, 32, 2, 64, dtype=torch.float16)
    inputs = Inputs.create(q, q, q)
    faked = inputs._replace(features=inputs.features._replace(device=DeviceInfo("cuda", (9, 0), None, "faked H100")))
    try:
        with dispatch.policy(order=["cutlass", "reference"]):
            assert dispatch.evaluate(faked, "forward").chosen is CutlassFwOp
        # the library cannot be loaded (no .so beside the record): the call reports it, later calls fall back
        with pytest.raises(RuntimeError, match="later calls fall back"):
            _launch.extension((9, 0))
        with dispatch.policy(order=["cutlass", "reference"]):
            sel = dispatch.evaluate(faked, "forward")
        assert sel.chosen is not CutlassFwOp
        row = next(c for c in sel.candidates if c.op == CutlassFwOp.NAME)
        assert any("build or load failed in this process" in str(r) for r in row.reasons)
    finally:
        negotiation.forget_failures()
        negotiation.current.cache_clear()
        dispatch.clear_cache()


def test_layout_cache_tells_key_paddings_apart() -> None:
    """Same blocks, different key padding: the dK/dV buffers must have each layout's own row count."""
    a = attncore.BlockDiagonalPaddedKeysMask.from_seqlens([2], kv_padding=8, kv_seqlen=[3]).geometry().blocks
    b = attncore.BlockDiagonalPaddedKeysMask.from_seqlens([2], kv_padding=16, kv_seqlen=[3]).geometry().blocks
    assert a is not None and b is not None
    cpu = torch.device("cpu")
    assert (_launch._seqs(a, cpu).write_rows, _launch._seqs(b, cpu).write_rows) == (8, 16)


def test_backward_with_no_visible_pair_launches_nothing() -> None:
    """All key lengths 0 (a first decoding step): zero gradients, and no kernel launch (a 0-block grid is an error)."""

    class NoLaunch:
        def backward(self, *args: object) -> str:
            raise AssertionError("launched")

    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 8, 1, 8)
    bias = attncore.BlockDiagonalPaddedKeysMask.from_seqlens([1, 1], kv_padding=4, kv_seqlen=[0, 0])
    inputs = Inputs.create(q, k, k, bias)
    out, lse = torch.zeros(1, 2, 1, 1, 8), torch.full((1, 1, 1, 2), float("-inf"))
    _launch._LAST.update(backward="tc", backward_variant="one", backward_dq="atomic", backward_order="rows")  # a previous call's
    dq, dk, dv, dbias = _launch.backward(inputs, torch.randn_like(out), out, lse, None, ext=NoLaunch())  # type: ignore[arg-type]  # a stand-in module
    assert not dq.any() and not dk.any() and not dv.any() and dbias is None
    reports = (_launch.last_backward_variant(), _launch.last_backward_dq(), _launch.last_backward_order())
    assert (_launch.last_family("backward"), reports) == ("none", (None, None, None))  # no stale report of the previous call


class _Recorder:
    """Stands in for the compiled module: records each launch's sequence count and batch size."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, Optional[int]]] = []

    def forward(self, q: torch.Tensor, *args: object) -> str:
        seq_q, count = args[5], args[8]  # positional layout of the binding: ..., seq_q, seq_k, seq_klen, num_seqs, ...
        assert isinstance(count, int) and (seq_q is None or isinstance(seq_q, torch.Tensor))
        self.calls.append((count, q.shape[0], None if seq_q is None else seq_q.numel()))
        return "simt"


@pytest.mark.parametrize("packed", [False, True])
def test_launches_are_split_at_the_grid_limit(packed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """More sequences than gridDim.y allows (65535) go in several launches (the limit is lowered here)."""
    monkeypatch.setattr(_launch, "MAX_SEQS_PER_LAUNCH", 2)
    if packed:
        q = torch.randn(1, 10, 1, 8)
        bias: object = attncore.BlockDiagonalMask.from_seqlens([2, 2, 2, 2, 2])
    else:
        q = torch.randn(5, 4, 1, 8)
        bias = None
    rec = _Recorder()
    _launch.forward(Inputs.create(q, q, q, bias), needs_lse=True, ext=rec)  # type: ignore[arg-type]  # a stand-in module
    if packed:
        assert rec.calls == [(2, 1, 3), (2, 1, 3), (1, 1, 2)]  # block arrays sliced; tensors whole
    else:
        assert rec.calls == [(2, 2, None), (2, 2, None), (1, 1, None)]  # batch sliced


def test_a_broadcast_bias_of_another_dtype_is_converted_without_its_copies() -> None:
    """A float64 [H, Mq, Mk] bias with B=3: the float32 bias the kernels read is still a broadcast view
    (stride 0 over the batch), with the same values."""
    q, k, v = torch.randn(3, 10, 2, 8), torch.randn(3, 12, 2, 8), torch.randn(3, 12, 2, 8)
    inputs = Inputs.create(q, k, v, torch.randn(2, 10, 12, dtype=torch.float64))
    got = _launch._bias(inputs)
    assert inputs.bias5 is not None and got is not None
    assert got.dtype == torch.float32 and got.stride(0) == 0 and got.shape == inputs.bias5.shape
    assert torch.equal(got, inputs.bias5.float())


KEYS = "ATTNCORE_CUTLASS_FP32_FWD_KEYS"
WIDE = "ATTNCORE_CUTLASS_FP32_FWD_WIDE"
ORDER = "ATTNCORE_CUTLASS_FWD_ORDER"
BWD_ORDER = "ATTNCORE_CUTLASS_BWD_ORDER"


@pytest.mark.parametrize(
    ("env", "banded", "max_keys", "smem", "expected"),
    [
        ({}, False, 512, None, {64: 128, 128: 32, 256: 32}),
        ({}, False, 511, None, {64: 64, 128: 32, 256: 32}),  # fewer keys than WIDE_KEYS_MIN
        ({}, True, 4096, None, {64: 64, 128: 32, 256: 32}),
        ({}, False, 4096, 166912, {64: 128, 128: 32, 256: 16}),  # sm_80's shared memory per block
        ({}, False, 4096, 199680, {64: 128, 128: 32, 256: 32}),
        ({KEYS: "64=128,128=16"}, False, 4096, 166912, {64: 128, 128: 16, 256: 16}),
        ({"ATTNCORE_CUTLASS_FWD_WARPS": "8"}, False, 4096, None, {64: 64, 128: 32, 256: 32}),
    ],
)
def test_fp32_forward_key_tiles_follow_the_call_and_the_device(
    env: dict[str, str], banded: bool, max_keys: int, smem: int | None, expected: dict[int, int]
) -> None:
    """The key tiles :func:`fp32_forward_key_tiles` predicts (the GPU tests assert them against the launcher):
    128 at 64 only without a band and from 512 keys, 32 at 256 only where the shared memory holds them."""
    from attncore_cutlass.plugin import fp32_forward_key_tiles

    tiles = fp32_forward_key_tiles(env, banded=banded, max_keys=max_keys, smem_per_block=smem)
    assert {dim: t.keys for dim, t in tiles.items()} == expected
    assert all(t.why for t in tiles.values())


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("padded head dim 256 (default;", "4 warps, 8 for fp32 at head dim 256 (default)")),
        ({"ATTNCORE_CUTLASS_FP32_BWD_PAIRS": ""}, ("4-warp CTAs only (ATTNCORE_CUTLASS_FP32_BWD_PAIRS=''", "(default)")),
        ({"ATTNCORE_CUTLASS_FP32_BWD_PAIRS": " 128, 256", "ATTNCORE_CUTLASS_FWD_WARPS": "8"}, ("head dim 128 and 256", "8 warps (ATTNCORE_CUTLASS_FWD_WARPS)")),
        ({"ATTNCORE_CUTLASS_FP32_BWD_PAIRS": "64,1280", "ATTNCORE_CUTLASS_FWD_WARPS": "6"}, ("4-warp CTAs only", "(default)")),
        ({"ATTNCORE_CUTLASS_FWD_WARPS": " 4x"}, ("(default;", "4 warps (ATTNCORE_CUTLASS_FWD_WARPS)")),  # atoi reads "4"
        ({"ATTNCORE_CUTLASS_FWD_WARPS": "4294967304"}, ("(default;", "8 warps (ATTNCORE_CUTLASS_FWD_WARPS)")),  # wraps to 8
        ({"ATTNCORE_CUTLASS_FWD_WARPS": "\u0968"}, ("(default;", "4 warps, 8 for fp32")),  # not an ASCII digit
        ({"ATTNCORE_CUTLASS_FWD_WARPS": "\x1c8"}, ("(default;", "4 warps, 8 for fp32")),  # not C whitespace
        ({KEYS: ""}, ("(default;", f"64: 64 ({KEYS}=''), 128: 32 ({KEYS}=''), 256: 16 ({KEYS}='')")),
        ({"ATTNCORE_CUTLASS_FP32_FWD_KEYS": " 128 = 16"}, ("(default;", "128: 16 (ATTNCORE_CUTLASS_FP32_FWD_KEYS=' 128 = 16'), 256: 16 (ATTNCORE")),
        ({"ATTNCORE_CUTLASS_FP32_FWD_KEYS": "256=32,128=16"}, ("(default;", "128: 16 (ATTNCORE_CUTLASS_FP32_FWD_KEYS='256=32,128=16'), 256: 32 (ATTNCORE")),
        ({"ATTNCORE_CUTLASS_FP32_FWD_KEYS": "16,128=8,256=16"}, ("(default;", "128: 32 (ATTNCORE_CUTLASS_FP32_FWD_KEYS='16,128=8,256=16'), 256: 16 (")),
        ({"ATTNCORE_CUTLASS_FWD_WARPS": "4"}, ("(default;", "128: 32 (default), 256: 16 (ATTNCORE_CUTLASS_FWD_WARPS=4: 32-key tiles need 8 warps)")),
        ({KEYS: "256=32", "ATTNCORE_CUTLASS_FWD_WARPS": "8"}, ("(default;", f"256: 32 ({KEYS}='256=32'; 16 where a block's shared memory is under 199680")),
        ({}, ("(default;", "64: 128 (default; 64 under a causal or local mask or below 512 keys), 128: 32 (default), 256: 32 (default; 16 where")),
        ({KEYS: "64=128"}, ("(default;", f"64: 128 ({KEYS}='64=128'; 64 under a causal or local mask or below 512 keys), 128: 32 (")),
        ({"ATTNCORE_CUTLASS_FP32_FWD_KEYS": "128=64,256=32"}, ("(default;", "64: 64 (ATTNCORE_CUTLASS_FP32_FWD_KEYS='128=64,256=32'), 128: 32 (")),
        ({}, ("(default;", "each warp splits its own fragments), key tiles classified per CTA (default)")),
        ({"ATTNCORE_CUTLASS_FWD_WARP_MASKS": " 1"}, ("(default;", "classified per warp under a causal or local band (ATTNCORE_CUTLASS_FWD_WARP_MASKS)")),
        ({"ATTNCORE_CUTLASS_FWD_WARP_MASKS": "1", KEYS: ""}, ("(default;", f"band (ATTNCORE_CUTLASS_FWD_WARP_MASKS; fp32 per CTA: {KEYS} is set)")),
        ({"ATTNCORE_CUTLASS_FWD_WARP_MASKS": "1", "ATTNCORE_CUTLASS_FWD_WARPS": "8"}, ("(default;", "per CTA (ATTNCORE_CUTLASS_FWD_WARP_MASKS is set, but")),
        ({"ATTNCORE_CUTLASS_FWD_WARP_MASKS": "yes"}, ("(default;", "key tiles classified per CTA (default)")),  # the entry is "1"
        (
            {"ATTNCORE_CUTLASS_FP32_FWD_KEYS": "64=128,256=32", "ATTNCORE_CUTLASS_FWD_WARPS": "8"},
            ("(default;", f"64: 64 (ATTNCORE_CUTLASS_FWD_WARPS=8: 128-key tiles need 4 warps), 128: 32 ({KEYS}='64=128,256=32'), 256: 32 ("),
        ),
        ({}, ("(default;", "fp32 K and V split once per CTA nowhere (default; each warp splits its own fragments)")),
        ({"ATTNCORE_CUTLASS_FP32_FWD_SPLIT": ""}, ("(default;", "split once per CTA nowhere (default;")),
        ({"ATTNCORE_CUTLASS_FP32_FWD_SPLIT": " 128"}, ("(default;", "once per CTA at padded head dim 128 (101632 bytes of shared memory per block) (ATTNCORE")),
        ({"ATTNCORE_CUTLASS_FP32_FWD_SPLIT": "128,64"}, ("(default;", "at padded head dim 64 (87552 bytes of shared memory per block) and 128 (101632")),
        ({"ATTNCORE_CUTLASS_FP32_FWD_SPLIT": "1280,256"}, ("(default;", "nowhere (ATTNCORE_CUTLASS_FP32_FWD_SPLIT='1280,256' names neither 64 nor 128)")),
        ({}, ("(default;", "(before the key tiles) without a causal or local band head dim 128: 4 row groups x 1 slice, 32-key tiles, 101376 bytes")),
        ({}, ("(default;", "with a causal or local band head dim 128: 2 row groups x 2 slices, 32-key tiles, 83968 bytes of shared memory (default)")),
        ({WIDE: ""}, ("(default;", "(before the key tiles) without a causal or local band none; with a causal or local band none (ATTNCORE")),
        ({WIDE: " 256=2x2/16"}, ("(default;", "band head dim 256: 2 row groups x 2 slices, 16-key tiles, 108032 bytes of shared memory; with")),
        ({WIDE: "256=4x2", "ATTNCORE_CUTLASS_FWD_WARPS": "4"}, ("(default;", "wide warps (before the key tiles) nowhere (ATTNCORE_CUTLASS_FWD_WARPS is set)")),
        (
            {"ATTNCORE_CUTLASS_FP32_FWD_SPLIT": "64", "ATTNCORE_CUTLASS_FWD_WARPS": "8"},
            ("(default;", "split once per CTA nowhere (ATTNCORE_CUTLASS_FP32_FWD_SPLIT='64', but ATTNCORE_CUTLASS_FWD_WARPS=8: 4-warp CTAs only)"),
        ),
        (
            {},
            (
                "CTA order: fp32 with dQ added atomically: key-block major (longest first over every head) under a causal",
                "CTA order fp32: row-block major (longest first over every head) under a causal or local band, else head-major (default); fp16/bf16:",
            ),
        ),
        (
            {ORDER: "rows", BWD_ORDER: "heads"},
            ("atomically: head-major (ATTNCORE_CUTLASS_BWD_ORDER='heads'); the other", "CTA order fp32: row-block major (ATTNCORE_CUTLASS_FWD_ORDER='rows')"),
        ),
        (
            {ORDER: "Rows", BWD_ORDER: ""},  # exact values only
            ("major (longest first over every head) under a causal or local band, else head-major (default)", "head-major (default); fp16/bf16: head-major"),
        ),
    ],
)
def test_info_names_the_kernel_variants_the_environment_selects(env: dict[str, str], expected: tuple[str, str]) -> None:
    """``info`` reads the selection switches as the launchers do: pairs by padded head dim (unset: 256; the
    list holds exact entries, so 1280 is not 128), forward warps 4 or 8 only, fp32 key tiles by padded head
    dim (unset: 128 at 64 without a band mask, else 64; 32 at 128; 32 at 256 with 8 warps only), the fp32
    split once per CTA at the listed head dims 64 and 128 (unset: none; not with 8 forced warps)."""
    from attncore_cutlass.plugin import kernel_choices

    text = kernel_choices(env)
    backward, forward = text.split("; tensor-core forward: ")
    assert expected[0] in backward and expected[1] in forward, text


@pytest.mark.parametrize(
    ("value", "banded", "expected"),
    [
        (None, False, {128: (4, 1, 32)}),
        (None, True, {128: (2, 2, 32)}),
        ("", False, {}),
        ("256=2x2/16, 128=2x2", False, {256: (2, 2, 16), 128: (2, 2, 32)}),
        ("128=2x2,128=4x1,256=2x2/16,256=4x2", True, {256: (4, 2, 32), 128: (4, 1, 32)}),  # the launcher's order, not the list's
        ("256,128x2,128=2x2/16,256=2x4", False, {}),  # no such entries
    ],
)
def test_fp32_forward_wide_warps_by_head_dim(value: Optional[str], banded: bool, expected: dict[int, tuple[int, int, int]]) -> None:
    """ATTNCORE_CUTLASS_FP32_FWD_WIDE as csrc/fwd_tc.cu's launchers read it: unset, by the call's band at head
    dim 128; set, the first entry of the launcher's order that the list names, per head dim."""
    from attncore_cutlass.plugin import WIDE_ENV, fp32_forward_wide

    env = {} if value is None else {WIDE_ENV: value}
    got = {d: (w.groups, w.slices, w.keys) for d, w in fp32_forward_wide(env, banded).items()}
    assert got == expected


@pytest.mark.parametrize(
    ("env", "banded", "expected"),
    [
        ({KEYS: "128=16"}, False, {}),  # key tiles named: the default steps aside
        ({KEYS: "128=16", WIDE: "128=2x2"}, False, {128: (2, 2, 32)}),  # ... not a named entry
        ({"ATTNCORE_CUTLASS_FWD_WARP_MASKS": "1"}, True, {}),  # per-warp classification runs first under a band
        ({"ATTNCORE_CUTLASS_FWD_WARP_MASKS": "1"}, False, {128: (4, 1, 32)}),  # nothing to classify without one
        ({"ATTNCORE_CUTLASS_FWD_WARP_MASKS": "1", KEYS: "", WIDE: "128=2x2"}, True, {128: (2, 2, 32)}),  # masks defer to named key tiles
        ({"ATTNCORE_CUTLASS_FP32_FWD_SPLIT": "128"}, False, {}),  # the split kernel runs first at 128
        ({"ATTNCORE_CUTLASS_FP32_FWD_SPLIT": "128", WIDE: "256=4x2"}, False, {256: (4, 2, 32)}),
        ({"ATTNCORE_CUTLASS_FWD_WARPS": "8", WIDE: "256=4x2"}, False, {}),  # forced warps veto them
    ],
)
def test_fp32_forward_wide_warps_after_the_switches_that_name_kernels(env: dict[str, str], banded: bool, expected: dict[int, tuple[int, int, int]]) -> None:
    """The switches csrc/fwd_tc.cu consults before the wide warps, or that veto them: named key tiles (only the
    unset default steps aside), per-warp classification under a band, the split kernel at 128, forced warps."""
    from attncore_cutlass.plugin import fp32_forward_wide

    got = {d: (w.groups, w.slices, w.keys) for d, w in fp32_forward_wide(env, banded).items()}
    assert got == expected


@pytest.mark.parametrize("determ", [False, True])
def test_info_says_how_the_fp32_backward_computes_dq(determ: bool) -> None:
    """kernel_choices follows torch's deterministic setting, which the launcher reads at every backward:
    atomic dQ by default, added serially (or by its own kernel) when deterministic."""
    from attncore_cutlass.plugin import kernel_choices

    with testing.deterministic_algorithms(determ):
        dq = kernel_choices({}).split("fp32 backward dQ: ")[1].split(";")[0]
    assert dq.startswith("added serially" if determ else "added atomically"), dq


def test_the_backward_passes_torchs_deterministic_setting_and_zeroes_fp32_dq(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher hands the kernels torch's deterministic setting (last argument) and, when the fp32
    kernels may add dQ atomically, a zero-filled dq; in deterministic mode or for half inputs dq is poisoned."""

    class Capture:
        def __init__(self) -> None:
            self.seen: list[tuple[bool, bool]] = []

        def prepare(self, *args: object) -> None:
            pass

        def backward(self, *args: object) -> str:
            dq, deterministic = args[7], args[-1]
            assert isinstance(dq, torch.Tensor) and isinstance(deterministic, bool)
            self.seen.append((deterministic, bool((dq == 0).all())))
            return "tc"

    monkeypatch.setattr(_launch, "POISON", True)
    seen = []
    for dtype, determ in ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False)):
        q = torch.randn(1, 20, 2, 16, dtype=dtype)
        inputs = Inputs.create(q, q, q, None)
        out, lse = torch.randn(1, 20, 1, 2, 16, dtype=dtype), torch.randn(1, 1, 2, 20)
        cap = Capture()
        with testing.deterministic_algorithms(determ):
            _launch.backward(inputs, torch.randn_like(out), out, lse, None, ext=cap)  # type: ignore[arg-type]  # a stand-in module
        seen += cap.seen
    assert seen == [(False, True), (True, False), (False, False)]


@pytest.mark.parametrize(
    ("value", "fp32", "banded", "expected"),
    [
        (None, True, True, "rows"),
        (None, True, False, "heads"),
        (None, False, True, "heads"),
        ("rows", True, False, "rows"),
        ("rows", False, True, "heads"),  # fp16/bf16: head-major, whatever the variable says
        ("heads", True, True, "heads"),
        (" rows", False, True, "heads"),  # exact values only, as fwd_rows_first compares them
        ("", True, True, "rows"),
    ],
)
def test_forward_cta_order_by_dtype_and_band(value: str | None, fp32: bool, banded: bool, expected: str) -> None:
    """The forward's CTA order :func:`forward_order` predicts (the GPU and emulated tests assert it against the
    launcher): fp32 only, row-block major under a band unless ATTNCORE_CUTLASS_FWD_ORDER names one exactly."""
    from attncore_cutlass.plugin import forward_order

    assert forward_order({} if value is None else {ORDER: value}, fp32, banded) == expected


@pytest.mark.parametrize(
    ("value", "fp32", "banded", "deterministic", "expected"),
    [
        (None, True, True, False, "rows"),
        (None, True, True, True, "heads"),  # serial or kernel dQ: as launched
        (None, True, False, False, "heads"),
        (None, False, True, False, "heads"),
        ("rows", True, False, False, "rows"),
        ("rows", False, True, False, "heads"),  # fp16/bf16: as launched, whatever the variable says
        ("rows", True, True, True, "heads"),  # deterministic (serial or kernel dQ): as launched
        ("heads", True, True, False, "heads"),
        ("ROWS", True, False, False, "heads"),
    ],
)
def test_backward_cta_order_by_dtype_band_and_mode(value: str | None, fp32: bool, banded: bool, deterministic: bool, expected: str) -> None:
    """:func:`backward_order`: only the fp32 atomic-dQ kernels take an order, key-block major under a band
    unless ATTNCORE_CUTLASS_BWD_ORDER names one exactly."""
    from attncore_cutlass.plugin import backward_order

    assert backward_order({} if value is None else {BWD_ORDER: value}, fp32, banded, deterministic) == expected
