"""Shared fixtures: an isolated registry for tests that register operators."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from attncore import dispatch, registry


@pytest.fixture
def isolated_registry() -> Iterator[None]:
    """Registry content and decision cache restored after the test, whatever it registered."""
    snap = registry.snapshot()
    dispatch.clear_cache()
    try:
        yield
    finally:
        registry.restore(snap)
        dispatch.clear_cache()
