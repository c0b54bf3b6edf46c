"""The plugin's registration, declared capabilities and the autotune cache (no kernel runs here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attncore import attn_bias as ab
from attncore import registry
from attncore.capabilities import ALL_BANDS
from attncore.geometry import BiasFeatures, Layout
from attncore.inputs import Inputs
from attncore_triton import autotune, plugin
from attncore_triton.ops import CAPABILITIES, DROPOUT_RNG, TritonFlashBwOp, TritonFlashFwOp


def test_triton_plugin_info_declares_requirements_and_cache_key() -> None:
    info = plugin.attncore_plugin_info()
    assert info.requires == {"torch": ">=2.1", "triton": ">=3.6"}  # as declared in its pyproject.toml
    assert info.build is not None
    assert info.build["autotune_key"] == autotune.KEY_FORMAT
    assert "torch" not in info.build and "cuda" not in info.build  # nothing compiled ahead: no ABI to compare
    assert info.build["autotune_cache"] == str(autotune.cache_path())


def test_triton_plugin_registers_through_the_entry_point() -> None:
    ops = plugin.attncore_operators()
    assert list(ops) == [TritonFlashFwOp, TritonFlashBwOp]
    names = {(op.NAME, op.DIRECTION) for op in registry.operators("forward")} | {(op.NAME, op.DIRECTION) for op in registry.operators("backward")}
    assert {("triton.flash", "forward"), ("triton.flash", "backward")} <= names
    assert TritonFlashFwOp.PRIORITY == TritonFlashBwOp.PRIORITY == 100


def test_triton_capabilities_are_declared_honestly() -> None:
    c = CAPABILITIES
    assert c.devices == frozenset({"cuda"})
    assert c.dtypes == frozenset({torch.float16, torch.bfloat16, torch.float32})
    assert (c.min_head_dim, c.max_head_dim) == (1, 256)
    assert c.bias.layouts == frozenset(Layout) and c.bias.bands == ALL_BANDS and c.bias.paged and c.bias.tensor
    assert c.dropout and c.dropout_rng == DROPOUT_RNG and c.lse and c.tensor_bias_grad
    assert c.min_compute_capability == (8, 0) and c.max_compute_capability == (9, 0)
    assert "max_compute_capability" in c.relaxable


def test_triton_refuses_with_reasons() -> None:
    q = torch.randn(1, 8, 2, 16)
    reasons = [str(r) for r in TritonFlashFwOp.not_supported_reasons(Inputs.create(q, q, q))]
    assert any("device: found cpu" in r for r in reasons)
    big = torch.randn(1, 8, 2, 512)
    assert any("head dim K" in str(r) for r in TritonFlashFwOp.not_supported_reasons(Inputs.create(big, big, big)))
    dbl = q.double()
    assert any("dtype" in str(r) for r in TritonFlashBwOp.not_supported_reasons(Inputs.create(dbl, dbl, dbl)))


def test_triton_refuses_paged_keys_with_a_tensor() -> None:
    """No public bias combines both; such features are refused with a reason, never a runtime error."""
    q, k = torch.randn(1, 3, 1, 16), torch.randn(1, 8, 1, 16)
    tables = torch.tensor([[0, 1]], dtype=torch.int32)
    inputs = Inputs.create(q, k, k, ab.PagedBlockDiagonalPaddedKeysMask.from_seqlens([3], [5], tables, 4))
    assert TritonFlashFwOp.extra_reasons(inputs) == []
    both = inputs._replace(features=inputs.features._replace(bias=BiasFeatures(Layout.PADDED_KEYS, paged=True, tensor=True)))
    reasons = TritonFlashFwOp.extra_reasons(both) + TritonFlashBwOp.extra_reasons(both)
    assert len(reasons) == 2 and "not both" in str(reasons[0])


def test_triton_autotune_times_once_then_reuses_the_disk_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tune.json"
    monkeypatch.setenv("ATTNCORE_TRITON_CACHE", str(path))
    monkeypatch.delenv("ATTNCORE_TRITON_AUTOTUNE", raising=False)
    launched: list[int] = []

    def launch(c: int) -> None:
        if c == 3:
            raise RuntimeError("out of resources")
        launched.append(c)

    def bench(fn: object) -> float:
        fn()  # type: ignore[operator]  # a zero-argument launch
        return float(10 - launched[-1])  # larger config numbers are faster

    choice = autotune.tune("k1", [1, 2, 3], launch, lambda c: {"c": c}, bench=bench)
    assert (choice.config, choice.source) == (2, "tuned") and launched[-1] == 2
    data = json.loads(path.read_text())
    assert data["entries"]["k1"]["config"] == {"c": 2} and data["key_format"] == autotune.KEY_FORMAT
    autotune._CACHES.clear()  # a new process: read back from disk
    launched.clear()
    choice = autotune.tune("k1", [1, 2, 3], launch, lambda c: {"c": c}, bench=bench)
    assert (choice.config, choice.source) == (2, "cache") and launched == [2]
    choice = autotune.tune("k1", [1, 2, 3, 4], launch, lambda c: {"c": c}, bench=bench)  # a new candidate: timed again
    assert (choice.config, choice.source) == (4, "tuned")
    choice = autotune.tune("k1", [1, 2, 3, 4], launch, lambda c: {"c": c}, bench=bench)
    assert (choice.config, choice.source) == (4, "cache")
    store = autotune.cache()  # an entry from before the list was recorded: valid while its times cover the list
    store.put("old", {"config": {"c": 2}, "ms": {'{"c": 1}': 2.0, '{"c": 2}': 1.0}})
    assert autotune.tune("old", [1, 2], launch, lambda c: {"c": c}, bench=bench).source == "cache"
    assert autotune.tune("old", [1, 2, 4], launch, lambda c: {"c": c}, bench=bench).source == "tuned"
    monkeypatch.setenv("ATTNCORE_TRITON_AUTOTUNE", "0")
    choice = autotune.tune("k2", [3, 1], launch, lambda c: {"c": c}, bench=bench)
    assert (choice.config, choice.source) == (1, "default")
    with pytest.raises(RuntimeError, match="no configuration"):
        autotune.tune("k3", [3], launch, lambda c: {"c": c}, bench=bench)


def test_triton_shape_buckets() -> None:
    assert [autotune.shape_bucket(n) for n in (1, 64, 65, 1000, 16384, 10**6)] == [64, 64, 128, 1024, 16384, 16384]
