"""Which GPUs a compiled binary can run on, from the ``TORCH_CUDA_ARCH_LIST`` it was built with.

Compiled plugins record their arch list next to the binary; negotiation turns "CUDA error: no kernel
image is available" into a dispatch-time reason with the exact list to rebuild with. Rules (NVIDIA's
binary compatibility): machine code (SASS) for ``sm_XY`` runs on devices of the same major version and
minor ``>= Y``; arch-specific ``sm_XYa`` code only on ``sm_XY``; PTX for ``compute_XY`` is compiled by
the driver for any device ``>= X.Y``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Optional

from attncore.reasons import Reason

__all__ = ["ArchEntry", "arch_reasons", "coverage", "parse_arch_list"]

_ENTRY = re.compile(r"^(\d+)\.(\d+)(a)?(\+PTX)?$")
Coverage = Literal["sass", "ptx"]


@dataclass(frozen=True)
class ArchEntry:
    """One entry of an arch list: ``9.0``, ``9.0a`` (arch-specific) or ``8.0+PTX``."""

    major: int
    minor: int
    specific: bool = False
    ptx: bool = False

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}{'a' if self.specific else ''}{'+PTX' if self.ptx else ''}"


def parse_arch_list(text: str) -> tuple[ArchEntry, ...]:
    """Parse ``"6.0;7.0;8.0;9.0+PTX"`` (``;`` or spaces between entries)."""
    entries = []
    for raw in re.split(r"[;\s]+", text.strip()):
        if not raw:
            continue
        m = _ENTRY.match(raw)
        if m is None:
            raise ValueError(f"arch list: expected entries like 8.0, 9.0a or 9.0+PTX, found {raw!r} in {text!r}")
        entries.append(ArchEntry(int(m.group(1)), int(m.group(2)), m.group(3) is not None, m.group(4) is not None))
    if not entries:
        raise ValueError(f"arch list: expected at least one entry, found {text!r}")
    return tuple(entries)


def coverage(entries: tuple[ArchEntry, ...], capability: tuple[int, int]) -> Optional[Coverage]:
    """``"sass"`` if some machine code runs on ``capability``, else ``"ptx"`` if PTX can be compiled
    for it, else ``None`` (the binary has no kernel image for this device)."""
    major, minor = capability
    for e in entries:
        if e.specific and (e.major, e.minor) == capability:
            return "sass"
        if not e.specific and e.major == major and e.minor <= minor:
            return "sass"
    if any(e.ptx and (e.major, e.minor) <= capability for e in entries):
        return "ptx"
    return None


def arch_reasons(arch_list: str, capability: tuple[int, int], plugin: str) -> list[Reason]:
    """Why a binary built for ``arch_list`` cannot run on ``capability`` (empty when it can)."""
    entries = parse_arch_list(arch_list)
    if coverage(entries, capability) is not None:
        return []
    wanted = f"{capability[0]}.{capability[1]}"
    rebuild = ";".join([*(str(e) for e in entries), wanted])
    return [
        Reason(
            "compiled archs",
            f"binary built for TORCH_CUDA_ARCH_LIST={arch_list!r}, device is sm_{capability[0]}{capability[1]}",
            f"SASS for {capability[0]}.x up to {wanted}, or PTX at or below {wanted}",
            f'rebuild {plugin} with TORCH_CUDA_ARCH_LIST="{rebuild}"',
        )
    ]
