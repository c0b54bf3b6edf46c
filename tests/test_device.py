"""Device description: NVIDIA vs AMD is read from the device's own properties."""

from __future__ import annotations

import torch

from attncore.device import DeviceInfo, _describe_gpu, device_info


def test_nvidia_name_in_gcn_arch_is_not_rocm() -> None:
    # torch 2.11+cu130 on an H100 fills gcnArchName with the product name
    info = _describe_gpu(9, 0, "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3")
    assert info == DeviceInfo("cuda", (9, 0), None, "NVIDIA H100 80GB HBM3")
    assert info.describe() == "cuda sm_90 (NVIDIA H100 80GB HBM3)"
    assert _describe_gpu(8, 0, "A100", None).kind == "cuda"


def test_amd_arch_is_rocm_with_features_stripped() -> None:
    info = _describe_gpu(9, 4, "AMD Instinct MI300X", "gfx942:sramecc+:xnack-")
    assert info == DeviceInfo("rocm", (9, 4), "gfx942", "AMD Instinct MI300X")
    assert info.describe() == "rocm gfx942 (AMD Instinct MI300X)"


def test_cpu_and_other_devices() -> None:
    assert device_info(torch.device("cpu")).kind == "cpu"
    assert device_info(torch.device("meta")) == DeviceInfo("meta")
