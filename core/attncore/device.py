"""What the dispatcher knows about the device a call runs on (read from the tensor, never from the build)."""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch

__all__ = ["DeviceInfo", "device_info"]


class DeviceInfo(NamedTuple):
    """``kind`` is ``cpu``, ``cuda`` (NVIDIA), ``rocm`` (AMD) or another torch device type."""

    kind: str
    capability: Optional[tuple[int, int]] = None
    arch: Optional[str] = None
    name: Optional[str] = None

    def describe(self) -> str:
        if self.kind == "cuda" and self.capability is not None:
            return f"cuda sm_{self.capability[0]}{self.capability[1]} ({self.name})"
        if self.kind == "rocm":
            return f"rocm {self.arch} ({self.name})"
        return self.kind


@functools.lru_cache(maxsize=64)
def _gpu_info(index: int) -> DeviceInfo:
    props = torch.cuda.get_device_properties(index)
    return _describe_gpu(props.major, props.minor, props.name, getattr(props, "gcnArchName", None))


def _describe_gpu(major: int, minor: int, name: str, gcn_arch: Optional[str]) -> DeviceInfo:
    """AMD GPUs report a ``gfx...`` arch (``gfx90a:sramecc+:xnack-``); NVIDIA builds of torch fill the
    same property with the marketing name, so only a ``gfx`` prefix means ROCm."""
    if gcn_arch and gcn_arch.startswith("gfx"):
        return DeviceInfo("rocm", (major, minor), gcn_arch.split(":")[0], name)
    return DeviceInfo("cuda", (major, minor), None, name)


_SEEN: dict[torch.device, DeviceInfo] = {torch.device("cpu"): DeviceInfo("cpu")}


def device_info(device: torch.device) -> DeviceInfo:
    """Describe ``device``: for GPUs, its compute capability (NVIDIA) or gfx arch (AMD)."""
    info = _SEEN.get(device)  # once per device: reading .type and properties costs microseconds
    if info is None:
        if device.type == "cuda":
            info = _gpu_info(device.index if device.index is not None else torch.cuda.current_device())
        else:
            info = DeviceInfo(device.type)
        _SEEN[device] = info
    return info
