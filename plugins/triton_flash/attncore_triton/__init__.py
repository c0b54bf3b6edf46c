"""attncore-triton: Triton flash-attention forward and backward operators for attncore.

Importing this package imports neither triton nor the kernels; the plugin hook does, so a missing or
broken triton makes the plugin "unavailable" with the reason instead of breaking ``import attncore``.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
