"""Registry: entry-point discovery, isolation of broken plugins, requirement and build checks."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from attncore import registry
from attncore.hookspecs import hookimpl
from attncore.plugin_info import PluginInfo
from attncore.registry import Registry
from attncore.requirements import build_record_reasons, requirement_reasons
from fakeops import fake_bw, fake_fw

GROUP = "attncore.test-plugins"


def _module(name: str, **attrs: Any) -> str:
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod
    return name


@pytest.fixture
def fake_modules() -> Iterator[None]:
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("fakeplug_"):
            del sys.modules[name]


def plugin(info: PluginInfo | None = None, ops: Any = (), info_raises: bool = False, ops_raises: bool = False) -> dict[str, Any]:
    @hookimpl
    def attncore_plugin_info() -> PluginInfo | None:
        if info_raises:
            raise RuntimeError("info exploded")
        return info

    @hookimpl
    def attncore_operators() -> Any:
        if ops_raises:
            raise ImportError("libcudart.so.13: cannot open shared object file")
        return list(ops) if isinstance(ops, (list, tuple)) else ops

    return {"attncore_plugin_info": attncore_plugin_info, "attncore_operators": attncore_operators}


def make_registry(eps: list[tuple[str, str]]) -> Registry:
    points = [importlib.metadata.EntryPoint(name, value, GROUP) for name, value in eps]
    return Registry(GROUP, discover=lambda: points)


def installed(versions: dict[str, str]) -> Any:
    return versions.get


def test_good_and_broken_plugins_are_all_listed(fake_modules: None) -> None:
    good = _module("fakeplug_good", **plugin(PluginInfo("1.0", {"torch": ">=2.1"}), [fake_fw("good.fw", 1), fake_bw("good.bw", 1)]))
    old = _module("fakeplug_old", **plugin(PluginInfo("0.1", {"torch": ">=99"}), [fake_fw("old.fw", 1)]))
    raises = _module("fakeplug_raises", **plugin(PluginInfo("1.0"), ops_raises=True))
    info_raises = _module("fakeplug_inforaises", **plugin(info_raises=True))
    junk = _module("fakeplug_junk", **plugin(PluginInfo("1.0"), ["not an op"]))
    nohooks = _module("fakeplug_nohooks", attncore_operatorz=hookimpl(lambda: []))
    reg = make_registry(
        [
            ("good", good),
            ("old", old),
            ("raises", raises),
            ("inforaises", info_raises),
            ("junk", junk),
            ("missing", "fakeplug_does_not_exist.sub"),
            ("nohooks", nohooks),
        ]
    )
    recs = {r.name: r for r in reg.plugins()}
    assert recs["good"].available and [op.NAME for op in reg.operators("forward")] == ["good.fw"]
    assert str(recs["old"].reasons[0]).startswith("torch: found ") and ">=99" in str(recs["old"].reasons[0])
    assert "pip install 'torch>=99'" in str(recs["old"].reasons[0])
    assert str(recs["raises"].reasons[0]) == (
        "hook attncore_operators: found raised ImportError: libcudart.so.13: cannot open shared object file; supported: a list of operator classes"
    )
    assert "hook attncore_plugin_info: found raised RuntimeError: info exploded" in str(recs["inforaises"].reasons[0])
    assert "hook attncore_operators: found 'not an op'" in str(recs["junk"].reasons[0]) and "fix plugin 'junk'" in str(recs["junk"].reasons[0])
    assert str(recs["missing"].reasons[0]).startswith("import: found ModuleNotFoundError: No module named 'fakeplug_does_not_exist'")
    assert "hooks: found PluginValidationError" in str(recs["nohooks"].reasons[0])
    assert sorted(r.name for r in reg.unavailable()) == ["inforaises", "junk", "missing", "nohooks", "old", "raises"]


def test_duplicate_operator_names_make_the_later_plugin_unavailable(fake_modules: None) -> None:
    a = _module("fakeplug_a", **plugin(PluginInfo("1"), [fake_fw("same.fw", 1)]))
    b = _module("fakeplug_b", **plugin(PluginInfo("1"), [fake_fw("same.fw", 2)]))
    reg = make_registry([("a", a), ("b", b)])
    recs = {r.name: r for r in reg.plugins()}
    assert recs["a"].available
    assert "same.fw (forward) already provided by plugin 'a'" in str(recs["b"].reasons[0])


def test_build_record_mismatch_keeps_the_binary_out(fake_modules: None) -> None:
    record = {"torch": "1.13.0", "cuda": "11.7", "arch_list": "8.0"}
    mod = _module("fakeplug_built", **plugin(PluginInfo("1", build=record), [fake_fw("built.fw", 1)]))
    reg = make_registry([("built", mod)])
    rec = reg.plugins()[0]
    assert not rec.available and reg.operators("forward") == ()
    assert str(rec.reasons[0]).startswith("torch (build): found built for torch 1.13.0, running torch ")


def test_requirement_reasons_name_the_component() -> None:
    have = installed({"torch": "2.4.1+cu121", "triton": "2.3.1"})
    assert requirement_reasons("x", {"torch": ">=2.1"}, have) == []
    reasons = requirement_reasons("attncore-triton", {"torch": ">=2.1", "triton": ">=3.0", "numpy": ">=1"}, have)
    assert [r.topic for r in reasons] == ["triton", "numpy"]
    assert str(reasons[0]) == (
        "triton: found 2.3.1; supported: >=3.0; fix: pip install 'triton>=3.0', or a release of attncore-triton that supports triton 2.3.1"
    )
    assert str(reasons[1]) == "numpy: found not installed; supported: >=1; fix: pip install 'numpy>=1'"
    # versions compare numerically, not as strings ("2.10" > "2.9")
    assert requirement_reasons("x", {"torch": ">=2.9"}, installed({"torch": "2.10.0"})) == []
    # pre-releases (nightlies) are judged by their version
    assert requirement_reasons("x", {"torch": ">=2.1"}, installed({"torch": "2.14.0.dev20261101"})) == []
    bad = requirement_reasons("x", {"torch": "=>2.1"}, have)
    assert bad[0].topic == "torch requirement" and "invalid specifier" in bad[0].found


def test_build_record_reasons_say_which_differs() -> None:
    have = installed({"torch": "2.11.0+cu130"})
    assert build_record_reasons("p", {"torch": "2.11.0", "cuda": "13.0"}, have, cuda="13.0") == []
    only_cuda = build_record_reasons("p", {"torch": "2.11.0", "cuda": "12.8"}, have, cuda="13.0")
    assert [r.topic for r in only_cuda] == ["CUDA (build)"]
    assert only_cuda[0].found == "built with CUDA 12.8, torch uses CUDA 13.0"
    only_torch = build_record_reasons("p", {"torch": "2.10.0", "cuda": "13.0"}, have, cuda="13.0")
    assert [r.topic for r in only_torch] == ["torch (build)"]
    assert "rebuild p against the installed versions" in str(only_torch[0])


def test_register_unregister_snapshot_restore(isolated_registry: None) -> None:
    snap = registry.snapshot()
    gen = registry.get_registry().generation
    rec = registry.register(fake_fw("temp.fw", 77))
    assert rec.available and registry.get_registry().generation > gen
    assert "temp.fw" in [op.NAME for op in registry.operators("forward")]
    registry.unregister(rec.name)
    assert "temp.fw" not in [op.NAME for op in registry.operators("forward")]
    with pytest.raises(ValueError, match=r"^name: expected a registered plugin"):
        registry.unregister("never-registered")
    registry.restore(snap)
    assert registry.snapshot() == snap


def test_abstract_op_is_refused(isolated_registry: None) -> None:
    from attncore.ops import AttentionFwOpBase

    class Half(AttentionFwOpBase):
        NAME = "half.fw"
        CAPABILITIES = fake_fw("x", 0).CAPABILITIES

    rec = registry.register(Half)
    assert not rec.available and "leaves apply abstract" in str(rec.reasons[0])


def test_import_attncore_loads_no_plugin() -> None:
    code = "import sys, attncore; print(any(m.startswith('attncore_') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_declared_requirements_come_from_distribution_metadata() -> None:
    from attncore.requirements import declared_requirements

    assert declared_requirements("attncore-reference") == {"torch": ">=2.1"}
    assert declared_requirements("attncore", ("torch", "pluggy")) == {"torch": ">=2.1", "pluggy": ">=1.3"}
    assert declared_requirements("no-such-distribution") == {}
