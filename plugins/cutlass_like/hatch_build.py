"""Wheel build hook: with ``ATTNCORE_CUTLASS_BUILD=1`` compile the CUDA kernels ahead of time into the wheel.

Uses the same builder as the first-use build (``attncore_cutlass.build``), so the wheel carries the
same ``build.json`` record that negotiation checks. Needs ``--no-build-isolation`` (torch must be the
one the wheel will run with).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CudaBuildHook(BuildHookInterface[Any]):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if os.environ.get("ATTNCORE_CUTLASS_BUILD") != "1" or version == "editable":
            return
        root = Path(self.root)
        spec = importlib.util.spec_from_file_location("_attncore_cutlass_build", root / "attncore_cutlass" / "build.py")
        assert spec is not None and spec.loader is not None  # the file ships with this project
        builder = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = builder
        spec.loader.exec_module(builder)
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
        if not arch:
            raise RuntimeError("ATTNCORE_CUTLASS_BUILD=1 needs TORCH_CUDA_ARCH_LIST (e.g. '8.0;9.0+PTX'): a wheel must say which GPUs it serves")
        builder.build(arch, root / "attncore_cutlass" / "_prebuilt")
        build_data["artifacts"].append("attncore_cutlass/_prebuilt/*.so")
        build_data["artifacts"].append("attncore_cutlass/_prebuilt/build.json")
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
