"""Plugin hooks registering the Triton operators with attncore (entry point ``attncore.plugins``)."""

from __future__ import annotations

from collections.abc import Sequence

from attncore.hookspecs import hookimpl
from attncore.ops import AttentionOpBase
from attncore.plugin_info import PluginInfo
from attncore.requirements import declared_requirements, installed_version

__all__ = ["attncore_operators", "attncore_plugin_info"]

DISTRIBUTION = "attncore-triton"


@hookimpl
def attncore_plugin_info() -> PluginInfo:
    from . import _launch, _plans, _relaunch, _warpspec
    from .autotune import KEY_FORMAT, cache_path

    return PluginInfo(
        version=installed_version(DISTRIBUTION) or "0+unknown",
        requires=declared_requirements(DISTRIBUTION, ("torch", "triton")),  # written once, in pyproject.toml
        build={
            "kind": "JIT (triton compiles on first use; nothing prebuilt)",
            "triton": installed_version("triton") or "not installed",
            "autotune_cache": str(cache_path()),
            "autotune_key": KEY_FORMAT,
            "relaunch": _relaunch.status(interpreting=_launch.interpreting()),
            "launch_plans": _plans.status(),
            "warp_specialized_forward": _warpspec.status(interpreting=_launch.interpreting()),
        },
        description="Triton flash attention (forward + backward) for NVIDIA sm_80..sm_90: every mask kind in-kernel, GQA, dropout, LSE",
    )


@hookimpl
def attncore_operators() -> Sequence[type[AttentionOpBase]]:
    import triton  # type: ignore[import-untyped]  # noqa: F401  # untyped; imported so a broken triton is reported against this hook

    from .ops import TritonFlashBwOp, TritonFlashFwOp

    return [TritonFlashFwOp, TritonFlashBwOp]
