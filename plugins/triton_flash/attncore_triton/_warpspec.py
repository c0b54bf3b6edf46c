"""When the warp-specialized forward may run.

On Hopper, ``tl.range(..., warp_specialize=True)`` makes Triton split the forward's key loop across warp
groups: one issues the tensor-descriptor (TMA) loads, two compute, each on half of the query rows, with
their registers rebalanced (``setmaxnreg``). The split is automatic and young, so it runs only where it was
verified: Triton 3.6 took one loop with no branch in its body (with the usual three loops its pass failed
with an LLVM error, which aborts the process: no Python ``except`` catches it), 3 pipeline stages gave NaN,
and 1 stage once left rows unwritten on a loaded GPU, so the candidates use 2. :data:`ENV` forces it off
(``0``) or on any release (``1``).
"""

from __future__ import annotations

from ._gate import ReleaseGate
from ._relaunch import _triton_release

__all__ = ["ENV", "enabled", "status"]

#: The switch: unset, the warp-specialized forward is a tuning candidate on a verified Triton (see the
#: module docstring); 0 never; 1 on any Triton.
ENV = "ATTNCORE_TRITON_WS"
_GATE = ReleaseGate(ENV, ">=3.6,<3.7", "3.6")


def enabled() -> bool:
    """Whether warp-specialized forward candidates are offered to the autotuner (on Hopper, where
    :func:`attncore_triton._launch.ws_candidates` has them)."""
    return _GATE.enabled(_triton_release())


def status(interpreting: bool = False) -> str:
    """One line for ``info`` (``interpreting``: under Triton's CPU interpreter, which runs no warp groups)."""
    return _GATE.status(
        _triton_release(),
        on="a tuning candidate on sm_90 for half precision, head dim 128, no mask, bias or dropout",
        off="its automatic warp specialization can abort a compile",
        interpreting="no warp groups to specialize" if interpreting else None,
    )
