"""Which binary this process would run, and why it can or cannot serve a device.

:func:`locate` is pure (every fact about the environment is an argument), so the rules are tested on
a CPU machine with faked records and devices; :func:`current` feeds it the real facts once per
device capability. :func:`binary_reasons` turns the result into dispatch reasons:

* a binary built for another torch release or CUDA version: rejected, with the rebuild command;
* a binary with no SASS for the device and no PTX it could JIT from: rejected, with the exact
  ``TORCH_CUDA_ARCH_LIST`` to rebuild with;
* a binary built from other sources than this package's: rejected (the launcher and the kernels
  must agree on their arguments);
* no binary, and no way to build one (CPU-only torch, no nvcc, an arch nvcc cannot target):
  "not built", with the command that builds it;
* no binary but a toolkit: accepted; the first call builds it (with progress) into the cache.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from attncore.cuda_arch import arch_reasons, parse_arch_list
from attncore.reasons import Reason
from attncore.requirements import build_record_reasons

from . import build as _build

__all__ = [
    "DISTRIBUTION",
    "Facts",
    "Located",
    "binary_reasons",
    "current",
    "facts",
    "failure",
    "forget_failures",
    "jit_arch_list",
    "locate",
    "record_failure",
    "refresh",
]

DISTRIBUTION = "attncore-cutlass"
BUILD_HINT = "python -m attncore_cutlass build  (uses TORCH_CUDA_ARCH_LIST, else the GPUs it sees)"
#: The only blocker that is not about the environment: no device (nor arch list) was known to build for.
NO_TARGET = "no GPU to build for"


@dataclass(frozen=True)
class Facts:
    """The environment, as negotiation sees it."""

    torch_version: str
    cuda: Optional[str]  # torch.version.cuda; None for CPU builds of torch
    nvcc: Optional[str]  # path of the toolkit's nvcc, None when absent
    nvcc_archs: frozenset[str]  # "75", "80", ... that nvcc can target
    sources: str  # hash of this package's CUDA sources
    env: Mapping[str, str]
    prebuilt: Path
    python: str = "cpython-311"  # interpreter ABI tag of this process
    cxx11_abi: str = "1"  # torch's C++ ABI flag
    nvcc_version: Optional[str] = None  # "13.0"
    ninja: bool = True  # torch builds extensions with ninja


@dataclass(frozen=True)
class Located:
    """Where the binary comes from (``origin``: ``ATTNCORE_CUTLASS_DIR``, ``prebuilt``, ``cache`` or ``none``)."""

    origin: str
    directory: Optional[Path]
    record: Optional[_build.BuildRecord]
    record_error: Optional[str]
    jit_arch_list: Optional[str]  # what a first-use build would target
    jit_dir: Optional[Path]
    jit_blocker: Optional[str]  # why a first-use build cannot happen
    jit_fix: Optional[str] = None  # what to do about it


def jit_arch_list(env: Mapping[str, str], capability: Optional[tuple[int, int]]) -> Optional[str]:
    """``TORCH_CUDA_ARCH_LIST`` if set, else the device's own ``major.minor``."""
    explicit = env.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if explicit:
        return explicit
    return f"{capability[0]}.{capability[1]}" if capability is not None else None


def _read(directory: Path) -> tuple[Optional[_build.BuildRecord], Optional[str]]:
    try:
        return _build.read_record(directory), None
    except ValueError as exc:
        return None, str(exc)


def _major(version: Optional[str]) -> Optional[str]:
    return version.split(".", maxsplit=1)[0] if version else None


def _first_use_blocker(facts: Facts, arch: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """Why a first-use build for ``arch`` cannot happen here, and the fix (``(None, None)`` when it can)."""
    if facts.cuda is None:
        return f"torch {facts.torch_version} is a CPU-only build", "install a CUDA build of torch; a CPU torch cannot use this backend"
    if facts.nvcc is None:
        return "no CUDA toolkit (nvcc) to build it on first use", f"install the CUDA {facts.cuda} toolkit (or set CUDA_HOME), then rerun; or {BUILD_HINT}"
    if _major(facts.nvcc_version) not in (None, _major(facts.cuda)):
        return f"nvcc {facts.nvcc_version} at {facts.nvcc} does not match torch's CUDA {facts.cuda}", f"point CUDA_HOME at a CUDA {facts.cuda} toolkit"
    if not facts.ninja:
        return "ninja is not installed (torch builds extensions with it)", "pip install ninja"
    if arch is None:
        return NO_TARGET, "set TORCH_CUDA_ARCH_LIST or run on a GPU"
    try:
        entries = parse_arch_list(arch)
    except ValueError as exc:
        return str(exc), "fix TORCH_CUDA_ARCH_LIST"
    missing = [f"sm_{e.major}{e.minor}" for e in entries if f"{e.major}{e.minor}" not in facts.nvcc_archs]
    if missing:
        return (
            f"nvcc {facts.nvcc_version or ''} at {facts.nvcc} cannot compile for {', '.join(missing)}",
            "drop those entries from TORCH_CUDA_ARCH_LIST, or build with a toolkit that has them (CUDA 12.x for sm_60/sm_70)",
        )
    return None, None


def locate(facts: Facts, capability: Optional[tuple[int, int]]) -> Located:
    """Find the binary for a device of ``capability`` (``None``: no device known)."""
    arch = jit_arch_list(facts.env, capability)
    blocker, fix = _first_use_blocker(facts, arch)
    jit_dir: Optional[Path] = None
    if facts.cuda is not None and arch is not None:
        key = _build.build_key(facts.torch_version, facts.cuda, arch, facts.sources, facts.python, facts.cxx11_abi)
        jit_dir = _build.cache_root(facts.env) / key
    explicit = facts.env.get("ATTNCORE_CUTLASS_DIR")
    candidates = [("ATTNCORE_CUTLASS_DIR", Path(explicit))] if explicit else []
    candidates.append(("prebuilt", facts.prebuilt))
    if jit_dir is not None:
        candidates.append(("cache", jit_dir))
    for origin, directory in candidates:
        record, error = _read(directory)
        if record is not None or error is not None:
            return Located(origin, directory, record, error, arch, jit_dir, blocker, fix)
        if origin == "ATTNCORE_CUTLASS_DIR":  # an explicit directory without a record is not silently replaced
            why = f"ATTNCORE_CUTLASS_DIR={directory} holds no {_build.RECORD_NAME}"
            return Located(origin, directory, None, None, arch, None, why, f"python -m attncore_cutlass build --out {directory}")
    return Located("none", None, None, None, arch, jit_dir, blocker, fix)


def _rebuild_hint(located: Located) -> str:
    """The command that replaces the located binary (one in ATTNCORE_CUTLASS_DIR must be rebuilt there)."""
    if located.origin == "ATTNCORE_CUTLASS_DIR":
        return f"rebuild: python -m attncore_cutlass build --out {located.directory}"
    if located.origin == "cache":
        return f"delete {located.directory}; it is rebuilt on the next call"
    return f"rebuild: {BUILD_HINT}"


def binary_reasons(facts: Facts, located: Located, capability: Optional[tuple[int, int]]) -> list[Reason]:
    """Every reason the located binary (or the lack of one) cannot run on a device of ``capability``."""
    rebuild = _rebuild_hint(located)
    if located.record_error is not None:
        return [Reason("binary", f"unreadable build record ({located.record_error})", f"a {_build.RECORD_NAME} written by the build", rebuild)]
    rec = located.record
    if rec is None:
        if located.jit_blocker is not None:
            return [Reason("binary", f"not built ({located.jit_blocker})", "a binary built for this torch and GPU", located.jit_fix or BUILD_HINT)]
        assert located.jit_arch_list is not None  # set whenever nothing blocks a first-use build
        return arch_reasons(located.jit_arch_list, capability, DISTRIBUTION) if capability is not None else []
    where = f"{located.origin}: {located.directory}"
    out = build_record_reasons(DISTRIBUTION, {"torch": rec.torch, "cuda": rec.cuda}, lookup=lambda _dist: facts.torch_version, cuda=facts.cuda)
    out = [Reason(r.topic, f"{r.found} ({where})", r.supported, rebuild) for r in out]
    if rec.python != facts.python:
        out.append(Reason("python (build)", f"built for {rec.python} ({where})", f"this interpreter, {facts.python}", rebuild))
    if rec.cxx11_abi != facts.cxx11_abi:
        out.append(Reason("C++ ABI (build)", f"built with _GLIBCXX_USE_CXX11_ABI={rec.cxx11_abi} ({where})", f"torch's {facts.cxx11_abi}", rebuild))
    if rec.sources != facts.sources:
        out.append(Reason("binary sources", f"built from sources {rec.sources} ({where})", f"this package's sources {facts.sources}", rebuild))
    if capability is not None:
        out += arch_reasons(rec.arch_list, capability, DISTRIBUTION)
    return out


_FAILURES: dict[Optional[tuple[int, int]], str] = {}


def record_failure(capability: Optional[tuple[int, int]], why: str) -> None:
    """Remember that building or loading the binary for ``capability`` failed in this process: from now
    on :func:`binary_reasons` rejects the operator with ``why`` (the dispatch cache is cleared)."""
    from attncore import dispatch

    _FAILURES[capability] = why
    dispatch.clear_cache()


def failure(capability: Optional[tuple[int, int]]) -> Optional[str]:
    """Why building or loading failed for ``capability`` in this process, if it did."""
    return _FAILURES.get(capability)


@functools.lru_cache(maxsize=1)
def facts() -> Facts:
    """The real environment (read once per process; :func:`refresh` forgets it)."""
    import torch

    nvcc = _build.toolkit() if torch.version.cuda is not None else None  # a CPU torch cannot use a toolkit
    archs: frozenset[str] = frozenset()
    if nvcc is not None:
        try:
            archs = frozenset(_build.nvcc_archs(nvcc))
        except (OSError, subprocess.SubprocessError):  # a toolkit that does not run counts as none
            nvcc = None
    version: Optional[str] = None
    if nvcc is not None:
        try:
            version = _build.nvcc_version(nvcc)
        except (OSError, subprocess.SubprocessError):
            nvcc = None
    from torch.utils import cpp_extension

    return Facts(
        torch_version=torch.__version__,
        cuda=torch.version.cuda,
        nvcc=str(nvcc) if nvcc is not None else None,
        nvcc_archs=archs,
        sources=_build.source_hash(),
        env=dict(os.environ),
        prebuilt=_build.PREBUILT,
        python=_build.python_tag(),
        cxx11_abi=_build.cxx11_abi(),
        nvcc_version=version,
        ninja=bool(cpp_extension.is_ninja_available()),
    )


@functools.lru_cache(maxsize=16)
def current(capability: Optional[tuple[int, int]]) -> Located:
    """:func:`locate` with the real environment, cached per device capability."""
    return locate(facts(), capability)


def refresh() -> None:
    """Forget what was read about the environment (after a build, or in tests); remembered failures stay."""
    facts.cache_clear()
    current.cache_clear()


def forget_failures() -> None:
    """Forget remembered build/load failures (tests; or after fixing the environment in a long process)."""
    _FAILURES.clear()
