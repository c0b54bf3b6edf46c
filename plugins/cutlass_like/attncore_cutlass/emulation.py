"""The portable kernels on a CPU, for tests: CUDA's execution model emulated with host threads.

``csrc/emulate.h`` maps the kernels' CUDA constructs onto the host (one OS thread per CUDA thread, one
block at a time; ``__shared__`` as function statics, ``__syncthreads`` and ``__shfl_xor_sync`` through
barriers), and the same ``bindings.cpp`` is compiled with ``-DATTNCORE_EMULATE`` into a CPU extension.
The host launcher (:mod:`attncore_cutlass._launch`) then drives the real kernel code on CPU tensors, so
CI checks the kernels' indexing, masking and online-softmax logic without a GPU (as ``TRITON_INTERPRET``
does for the Triton backend). The tensor-core kernels run too: ``mma.cuh`` emulates ``mma.sync``,
``ldmatrix`` and ``cp.async`` from their documented fragment layouts, so their indexing is checked
as well. Slow (thousands of OS threads): small shapes only.

Needs a C++20 compiler and CUDA's headers (``cuda_fp16.h``...): ``$CUDA_HOME/include``,
``/usr/local/cuda/include``, or the ``nvidia-cuda-runtime-cu12`` wheel's ``include``.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from types import ModuleType
from typing import Optional

from . import build

__all__ = ["can_compile", "cuda_headers", "extension"]

SOURCES = ("bindings.cpp", "emulate.cpp", "emulate_bwd.cpp", "emulate_fwd_tc.cpp", "emulate_bwd_tc.cpp")


def cuda_headers() -> Optional[Path]:
    """A directory with CUDA's ``cuda_fp16.h`` and ``cuda_runtime.h``, or ``None``."""
    candidates = [Path(p) / "include" for p in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")) if p]
    candidates.append(Path("/usr/local/cuda/include"))
    try:
        import nvidia.cuda_runtime  # type: ignore[import-not-found]  # optional wheel with the headers

        candidates += [Path(p) / "include" for p in nvidia.cuda_runtime.__path__]
    except ImportError:
        pass
    for c in candidates:
        if (c / "cuda_fp16.h").is_file() and (c / "cuda_runtime.h").is_file():
            return c
    return None


def can_compile() -> bool:
    """Whether torch can build C++ extensions here (it needs ninja)."""
    from torch.utils import cpp_extension

    return bool(cpp_extension.is_ninja_available())


@functools.lru_cache(maxsize=1)
def extension() -> ModuleType:
    """Compile (once, cached on disk by source hash) and import the emulation library."""
    import torch
    from torch.utils import cpp_extension

    headers = cuda_headers()
    if headers is None:
        raise RuntimeError("attncore-cutlass emulation: no CUDA headers (cuda_fp16.h): set CUDA_HOME or pip install nvidia-cuda-runtime-cu12")
    release = torch.__version__.split("+", maxsplit=1)[0]
    digest = hashlib.sha256(build.source_hash().encode())
    for name in SOURCES:
        digest.update((build.CSRC / name).read_bytes())
    out = build.cache_root() / f"emulate-torch{release}-{digest.hexdigest()[:12]}"
    out.mkdir(parents=True, exist_ok=True)
    module: ModuleType = cpp_extension.load(
        name="attncore_cutlass_emu",
        sources=[str(build.CSRC / s) for s in SOURCES],
        extra_cflags=["-O2", "-std=c++20", "-ffp-contract=off", "-DATTNCORE_EMULATE", "-Wno-unknown-pragmas", f"-I{headers}"],
        build_directory=str(out),
        with_cuda=False,
        verbose=False,
    )
    return module
