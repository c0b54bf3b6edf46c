"""Plugin hooks registering the CUDA C++ operators with attncore (entry point ``attncore.plugins``)."""

from __future__ import annotations

from collections.abc import Sequence

from attncore.hookspecs import hookimpl
from attncore.ops import AttentionOpBase
from attncore.plugin_info import PluginInfo
from attncore.requirements import declared_requirements, installed_version

__all__ = ["attncore_operators", "attncore_plugin_info"]

DISTRIBUTION = "attncore-cutlass"


def build_info() -> dict[str, str]:
    """What ``python -m attncore.info`` shows: the binary's record, or why there is none and what happens next.

    Never touches a GPU (the registry loads plugins on the first dispatch, CPU calls included, and
    initializing CUDA there would break fork-based workers); ``python -m attncore_cutlass status`` checks
    each visible device."""
    from . import build, negotiation

    facts = negotiation.facts()
    located = negotiation.locate(facts, None)
    info: dict[str, str] = {"key_format": build.KEY_FORMAT, "cache": str(build.cache_root(facts.env))}
    rec = located.record
    if rec is not None:
        info.update(
            status="built",
            origin=f"{located.origin}: {located.directory}",
            key=rec.key,
            built_for_torch=rec.torch,
            built_for_cuda=rec.cuda,
            python=rec.python,
            arch_list=rec.arch_list,
            ptx="yes" if rec.ptx else "no",
            nvcc=rec.nvcc,
            built=rec.built,
        )
    elif located.record_error is not None:
        info.update(status="unreadable record", error=located.record_error)
    elif located.jit_blocker in (None, negotiation.NO_TARGET):  # the environment can build; the device decides the arch
        target = located.jit_arch_list or "the device's own arch"
        info.update(status="not built (builds on first use)", first_use=f"TORCH_CUDA_ARCH_LIST={target} into the cache")
    else:
        info.update(status=f"not built ({located.jit_blocker})", fix=located.jit_fix or negotiation.BUILD_HINT)
    return info


@hookimpl
def attncore_plugin_info() -> PluginInfo:
    return PluginInfo(
        version=installed_version(DISTRIBUTION) or "0+unknown",
        requires=declared_requirements(DISTRIBUTION, ("torch",)),  # written once, in pyproject.toml
        build=build_info(),
        description="CUDA C++ memory-efficient attention (forward + backward) for NVIDIA sm_60+: f32 everywhere, f16/bf16 tensor cores on sm_80+",
    )


@hookimpl
def attncore_operators() -> Sequence[type[AttentionOpBase]]:
    from .ops import CutlassBwOp, CutlassFwOp

    return [CutlassFwOp, CutlassBwOp]
