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

__all__ = ["DISTRIBUTION", "Facts", "Located", "binary_reasons", "current", "facts", "jit_arch_list", "locate", "refresh"]

DISTRIBUTION = "attncore-cutlass"
BUILD_HINT = "python -m attncore_cutlass build  (uses TORCH_CUDA_ARCH_LIST, else the GPUs it sees)"


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


def locate(facts: Facts, capability: Optional[tuple[int, int]]) -> Located:
    """Find the binary for a device of ``capability`` (``None``: no device known)."""
    arch = jit_arch_list(facts.env, capability)
    blocker: Optional[str] = None
    jit_dir: Optional[Path] = None
    if facts.cuda is None:
        blocker = f"torch {facts.torch_version} is a CPU-only build"
    elif facts.nvcc is None:
        blocker = "no CUDA toolkit (nvcc) to build it on first use"
    elif arch is None:
        blocker = "no GPU to build for"
    else:
        try:
            entries = parse_arch_list(arch)
        except ValueError as exc:
            blocker = str(exc)
        else:
            missing = [f"sm_{e.major}{e.minor}" for e in entries if f"{e.major}{e.minor}" not in facts.nvcc_archs]
            if missing:
                blocker = f"nvcc at {facts.nvcc} cannot compile for {', '.join(missing)}"
        jit_dir = _build.cache_root(facts.env) / _build.build_key(facts.torch_version, facts.cuda, arch, facts.sources)
    explicit = facts.env.get("ATTNCORE_CUTLASS_DIR")
    candidates = [("ATTNCORE_CUTLASS_DIR", Path(explicit))] if explicit else []
    candidates.append(("prebuilt", facts.prebuilt))
    if jit_dir is not None:
        candidates.append(("cache", jit_dir))
    for origin, directory in candidates:
        record, error = _read(directory)
        if record is not None or error is not None:
            return Located(origin, directory, record, error, arch, jit_dir, blocker)
        if origin == "ATTNCORE_CUTLASS_DIR":  # an explicit directory without a record is not silently replaced
            return Located(origin, directory, None, None, arch, None, f"ATTNCORE_CUTLASS_DIR={directory} holds no {_build.RECORD_NAME}")
    return Located("none", None, None, None, arch, jit_dir, blocker)


def binary_reasons(facts: Facts, located: Located, capability: Optional[tuple[int, int]]) -> list[Reason]:
    """Every reason the located binary (or the lack of one) cannot run on a device of ``capability``."""
    rebuild = f"rebuild: {BUILD_HINT}"
    if located.record_error is not None:
        return [Reason("binary", f"unreadable build record ({located.record_error})", f"a {_build.RECORD_NAME} written by the build", rebuild)]
    rec = located.record
    if rec is None:
        if located.jit_blocker is not None:
            return [Reason("binary", f"not built ({located.jit_blocker})", "a binary built for this torch and GPU", BUILD_HINT)]
        assert located.jit_arch_list is not None  # set whenever nothing blocks a first-use build
        return arch_reasons(located.jit_arch_list, capability, DISTRIBUTION) if capability is not None else []
    out = build_record_reasons(DISTRIBUTION, {"torch": rec.torch, "cuda": rec.cuda}, lookup=lambda _dist: facts.torch_version, cuda=facts.cuda)
    out = [Reason(r.topic, f"{r.found} ({located.origin}: {located.directory})", r.supported, rebuild) for r in out]
    if rec.sources != facts.sources:
        where = f"{located.origin}: {located.directory}"
        out.append(Reason("binary sources", f"built from sources {rec.sources} ({where})", f"this package's sources {facts.sources}", rebuild))
    if capability is not None:
        out += arch_reasons(rec.arch_list, capability, DISTRIBUTION)
    return out


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
    return Facts(
        torch_version=torch.__version__,
        cuda=torch.version.cuda,
        nvcc=str(nvcc) if nvcc is not None else None,
        nvcc_archs=archs,
        sources=_build.source_hash(),
        env=dict(os.environ),
        prebuilt=_build.PREBUILT,
    )


@functools.lru_cache(maxsize=16)
def current(capability: Optional[tuple[int, int]]) -> Located:
    """:func:`locate` with the real environment, cached per device capability."""
    return locate(facts(), capability)


def refresh() -> None:
    """Forget what was read about the environment (after a build, or in tests)."""
    facts.cache_clear()
    current.cache_clear()
