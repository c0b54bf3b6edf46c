"""Support for ``nox -s gpu_matrix``: the build for the matrix entry this process checks.

The session runs one pytest process per arch list of ``env_matrix`` with ``ATTNCORE_GPU_MATRIX`` (the
entry's name), ``TORCH_CUDA_ARCH_LIST`` (its value) and ``ATTNCORE_CUTLASS_DIR`` (where its binary goes)
set. :func:`ensure_built` builds there once per process unless the session's own build step already
did, and reports the builder's refusal when the toolkit cannot target the list.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

from . import _launch, build, negotiation

__all__ = ["active", "ensure_built"]


def active() -> Optional[str]:
    """The matrix entry this process checks, or ``None`` outside gpu_matrix."""
    return os.environ.get("ATTNCORE_GPU_MATRIX")


@functools.lru_cache(maxsize=1)
def ensure_built() -> Optional[str]:
    """``None`` once the entry's binary exists (or outside gpu_matrix), else the builder's refusal."""
    if active() is None:
        return None
    out = Path(os.environ["ATTNCORE_CUTLASS_DIR"])
    refusal: Optional[str] = None
    if build.read_record(out) is None:
        try:
            build.build(os.environ["TORCH_CUDA_ARCH_LIST"], out)
        except build.BuildError as exc:
            refusal = str(exc)
    negotiation.refresh()
    _launch.forget_modules()
    return refusal
