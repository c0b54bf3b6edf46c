"""Checking a plugin's declared requirements and build record against what is installed.

Versions are compared with :mod:`packaging` (never as strings), and every mismatch names which
component differs (torch? triton? CUDA?), what the plugin needs, what is installed, and what to run.
"""

from __future__ import annotations

import importlib.metadata
from typing import Callable, Mapping, Optional, Sequence

from packaging.requirements import Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from attncore.reasons import Reason

__all__ = ["build_record_reasons", "declared_requirements", "installed_version", "requirement_reasons"]

VersionLookup = Callable[[str], Optional[str]]


def installed_version(distribution: str) -> Optional[str]:
    """The installed version of ``distribution``, or ``None`` if it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def declared_requirements(distribution: str, names: Sequence[str] = ("torch", "triton")) -> dict[str, str]:
    """The specifiers ``distribution`` declares (in its pyproject dependencies) for ``names``.

    Plugins pass this to :class:`~attncore.plugin_info.PluginInfo` so their ranges are written once,
    in their ``pyproject.toml``, and checked at load time against what is installed.
    """
    try:
        lines = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    out: dict[str, str] = {}
    for line in lines:
        req = Requirement(line)
        if req.name in names and (req.marker is None or req.marker.evaluate()):
            out[req.name] = str(req.specifier)
    return out


#: The requirement name that pins the CUDA toolkit torch was built with (``torch.version.cuda``), not a distribution.
CUDA = "cuda"


def requirement_reasons(
    plugin: str, requires: Mapping[str, str], lookup: VersionLookup = installed_version, cuda: Optional[str] = None
) -> list[Reason]:
    """One reason per unmet requirement, e.g. ``triton: found 2.3.1; supported >=3.0``. The name ``cuda``
    pins the CUDA version of the running torch (``cuda``: ``torch.version.cuda``, None for a CPU-only build)."""
    out = []
    for dist, spec in requires.items():
        try:
            wanted = SpecifierSet(spec)
        except InvalidSpecifier:
            out.append(Reason(f"{dist} requirement", f"invalid specifier {spec!r} declared by {plugin}", "PEP 440 specifiers"))
            continue
        if dist == CUDA:
            have = cuda
            fix = f"a torch built with CUDA {spec} (pip install torch from the PyTorch index for that CUDA)"
            if have is None:
                out.append(Reason(dist, f"no CUDA (torch {lookup('torch')} is a CPU-only or non-CUDA build)", spec, fix))
                continue
        else:
            have = lookup(dist)
            fix = f"pip install '{dist}{spec}'"
        if have is None:
            out.append(Reason(dist, "not installed", spec, fix))
            continue
        try:
            ok = wanted.contains(Version(have), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            out.append(Reason(dist, have, spec, f"{fix}, or a release of {plugin} that supports {dist} {have}"))
    return out


def _release(text: str) -> Optional[tuple[int, ...]]:
    try:
        return Version(text).release
    except InvalidVersion:
        return None


def build_record_reasons(plugin: str, build: Mapping[str, str], lookup: VersionLookup = installed_version, cuda: Optional[str] = None) -> list[Reason]:
    """Compare a compiled plugin's build record with the running environment.

    A binary is tied to the exact torch release it was compiled against (its C++ ABI) and to the
    CUDA major.minor. ``cuda`` is the running torch's CUDA version (``torch.version.cuda``).
    """
    out = []
    rebuild = f"rebuild {plugin} against the installed versions (pip install --no-build-isolation --force-reinstall {plugin})"
    built_torch = build.get("torch")
    if built_torch is not None:
        have = lookup("torch")
        if have is None or _release(have) != _release(built_torch):
            out.append(Reason("torch (build)", f"built for torch {built_torch}, running torch {have}", f"torch {built_torch}", rebuild))
    built_cuda = build.get("cuda")
    if built_cuda is not None and cuda is not None:
        b, r = _release(built_cuda), _release(cuda)
        if b is None or r is None or b[:2] != r[:2]:
            out.append(Reason("CUDA (build)", f"built with CUDA {built_cuda}, torch uses CUDA {cuda}", f"CUDA {built_cuda}", rebuild))
    return out
