"""Plugin hooks registering the reference operators with attncore (entry point ``attncore.plugins``)."""

from __future__ import annotations

from collections.abc import Sequence

from attncore.hookspecs import hookimpl
from attncore.ops import AttentionOpBase
from attncore.plugin_info import PluginInfo
from attncore.requirements import declared_requirements, installed_version

__all__ = ["attncore_operators", "attncore_plugin_info"]

DISTRIBUTION = "attncore-reference"


@hookimpl
def attncore_plugin_info() -> PluginInfo:
    return PluginInfo(
        version=installed_version(DISTRIBUTION) or "0+unknown",
        requires=declared_requirements(DISTRIBUTION, ("torch",)),  # written once, in pyproject.toml
        description="Pure-PyTorch reference operators: float64 exact oracle (CPU/CUDA), tiled O(M)-memory CPU attention, CPU decoding",
    )


@hookimpl
def attncore_operators() -> Sequence[type[AttentionOpBase]]:
    from .chunked import ChunkedBwOp, ChunkedFwOp
    from .decode import DecodeFwOp
    from .exact import ExactBwOp, ExactFwOp

    return [ExactFwOp, ExactBwOp, ChunkedFwOp, ChunkedBwOp, DecodeFwOp]
