"""Plugin hooks registering the Triton operators with attncore (entry point ``attncore.plugins``)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

from attncore.hookspecs import hookimpl
from attncore.ops import AttentionOpBase
from attncore.plugin_info import PluginInfo

__all__ = ["attncore_operators", "attncore_plugin_info"]

DISTRIBUTION = "attncore-triton"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "0+unknown"


@hookimpl
def attncore_plugin_info() -> PluginInfo:
    from .autotune import KEY_FORMAT, cache_path

    return PluginInfo(
        version=_version(DISTRIBUTION),
        requires={"torch": ">=2.1", "triton": ">=3.0"},
        build={
            "kind": "JIT (triton compiles on first use; nothing prebuilt)",
            "triton": _version("triton"),
            "autotune_cache": str(cache_path()),
            "autotune_key": KEY_FORMAT,
        },
        description="Triton flash attention (forward + backward) for NVIDIA sm_80..sm_90: every mask kind in-kernel, GQA, dropout, LSE",
    )


@hookimpl
def attncore_operators() -> Sequence[type[AttentionOpBase]]:
    import triton  # type: ignore[import-untyped]  # noqa: F401  # untyped; imported so a broken triton is reported against this hook

    from .ops import TritonFlashBwOp, TritonFlashFwOp

    return [TritonFlashFwOp, TritonFlashBwOp]
