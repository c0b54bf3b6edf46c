"""Run the kernels through Triton's interpreter where there is no GPU.

``TRITON_INTERPRET`` is read when the kernels are first created (on the first launch, never at
import), so setting it here, before any test runs, is early enough.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Where this plugin cannot load (an older triton beside an older torch, say), its tests are
    skipped with the registry's own reason; that the reason is right is tested in the core."""
    from attncore import registry

    record = next((r for r in registry.plugins() if r.name == "triton"), None)
    if record is not None and record.available:
        return
    why = "; ".join(str(r) for r in record.reasons) if record is not None else "attncore-triton is not installed"
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.skip(reason=f"attncore-triton unavailable here: {why}"))
