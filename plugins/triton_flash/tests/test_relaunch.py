"""The relauncher's cache key: a compiled binary is reused only for calls Triton would specialize the same way.

A fake JIT kernel records which path each launch took (Triton's own ``kernel[grid](...)`` or the reused
binary) and with which arguments; the real kernels run through the same class in every other test of
this plugin (on the GPU the second call of a shape takes the reused binary: test_triton_kernels.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch

from attncore_triton import _relaunch
from attncore_triton._relaunch import Relauncher


class _Binary:
    def __init__(self, log: list[tuple[str, tuple[int, ...], tuple[Any, ...], dict[str, Any]]], tag: int) -> None:
        self.log, self.tag = log, tag

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        if len(grid) != 3:  # as Triton's CompiledKernel, which reads grid[0], grid[1] and grid[2]
            raise IndexError(f"a compiled kernel's launcher takes a 3-D grid, got {grid}")

        def runner(*args: Any) -> None:
            self.log.append(("reused", grid, args, {"binary": self.tag}))

        return runner


class _FakeKernel:
    """Parameters ``P, n, m, seed, x`` then constexprs ``A, B``; ``m`` and ``seed`` are not specialized."""

    __name__ = "fake_kernel"
    arg_names: ClassVar[list[str]] = ["P", "n", "m", "seed", "x", "A", "B"]
    do_not_specialize: ClassVar[list[str]] = ["m", "seed"]

    def __init__(self) -> None:
        self.log: list[tuple[str, tuple[int, ...], tuple[Any, ...], dict[str, Any]]] = []
        self.compiled = 0

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        def run(*args: Any, **kwargs: Any) -> _Binary:
            self.compiled += 1
            self.log.append(("jit", grid, args, kwargs))
            return _Binary(self.log, self.compiled)

        return run


def _launch(r: Relauncher, t: torch.Tensor, n: int = 64, m: int = 100, seed: int = 7, x: float = 0.5, a: int = 16, warps: int = 4) -> str:
    r.launch((3,), (t, n, m, seed, x), {"A": a, "B": True}, num_warps=warps, num_stages=2)
    kern: _FakeKernel = r.kernel
    return kern.log[-1][0]


def test_second_call_reuses_the_binary_with_every_argument_in_order() -> None:
    kern = _FakeKernel()
    r = Relauncher(kern, device=lambda: 0)
    t = torch.randn(64)
    assert _launch(r, t) == "jit"
    assert kern.log[-1][3] == {"A": 16, "B": True, "num_warps": 4, "num_stages": 2}
    assert _launch(r, t, x=0.25, seed=123456) == "reused"  # floats and unspecialized ints do not count
    _, grid, args, _ = kern.log[-1]
    assert grid == (3, 1, 1) and args[0] is t and args[1:] == (64, 100, 123456, 0.25, 16, True)  # the grid padded to 3-D
    assert (r.hits, r.misses) == (1, 1)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"n": 65}, id="specialized int no longer a multiple of 16"),
        pytest.param({"n": 1}, id="int equal to one"),
        pytest.param({"n": 2**33}, id="specialized int wider than 32 bits"),
        pytest.param({"m": 2**40}, id="unspecialized int wider than 32 bits"),
        pytest.param({"a": 32}, id="constexpr"),
        pytest.param({"warps": 8}, id="num_warps"),
    ],
)
def test_a_different_specialization_compiles(change: dict[str, int]) -> None:
    kern = _FakeKernel()
    r = Relauncher(kern, device=lambda: 0)
    t = torch.randn(64)
    _launch(r, t)
    assert _launch(r, t, **change) == "jit"
    assert _launch(r, t, **change) == "reused"


def test_values_with_the_same_specialization_reuse() -> None:
    """A new sequence length changes strides, not what Triton specializes them on."""
    kern = _FakeKernel()
    r = Relauncher(kern, device=lambda: 0)
    t = torch.randn(64)
    _launch(r, t, n=64)
    assert [_launch(r, t, n=n) for n in (128, 4096, 2**20)] == ["reused"] * 3
    _launch(r, t, n=7)
    assert _launch(r, t, n=9) == "reused"  # neither one nor a multiple of 16, both


def test_pointer_alignment_and_dtype_are_part_of_the_key() -> None:
    kern = _FakeKernel()
    r = Relauncher(kern, device=lambda: 0)
    base = torch.randn(64)
    _launch(r, base)
    misaligned = base[1:]  # 4 bytes past a 16-byte boundary
    assert misaligned.data_ptr() % 16 != 0
    assert _launch(r, misaligned) == "jit"
    assert _launch(r, base.double()) == "jit"
    assert _launch(r, base.clone()) == "reused"  # a fresh allocation is aligned


def test_a_type_change_at_a_position_is_a_new_key() -> None:
    kern = _FakeKernel()
    r = Relauncher(kern, device=lambda: 0)
    t = torch.randn(64)
    r.launch((1,), (t, 64, 100, 7, 0.5), {"A": 16, "B": True}, num_warps=4, num_stages=2)
    r.launch((1,), (t, 64, 100, 7, 1), {"A": 16, "B": True}, num_warps=4, num_stages=2)  # int where a float was
    assert [e[0] for e in kern.log] == ["jit", "jit"]


def test_launch_hooks_send_every_call_through_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    kern = _FakeKernel()
    r = Relauncher(kern, device=lambda: 0)
    t = torch.randn(64)
    _launch(r, t)
    monkeypatch.setattr(_relaunch, "_triton_path_required", lambda kernel: True)
    assert _launch(r, t) == "jit"


def test_without_reuse_every_call_goes_through_triton() -> None:
    kern = _FakeKernel()
    r = Relauncher(kern, reuse=False, device=lambda: 0)
    t = torch.randn(64)
    assert [_launch(r, t), _launch(r, t)] == ["jit", "jit"]


def test_the_tables_are_bounded() -> None:
    kern = _FakeKernel()
    r = Relauncher(kern, device=lambda: 0, max_entries=2)
    t = torch.randn(64)
    _launch(r, t, n=1)
    _launch(r, t, n=16)
    assert [_launch(r, t, n=1), _launch(r, t, n=16)] == ["reused", "reused"]
    _launch(r, t, n=7)  # a third specialization: the tables start over with it
    assert [_launch(r, t, n=7), _launch(r, t, n=1), _launch(r, t, n=1)] == ["reused", "jit", "reused"]


@pytest.mark.parametrize("reuse", [True, False])
def test_arguments_that_do_not_match_the_parameters_are_refused(reuse: bool) -> None:
    r = Relauncher(_FakeKernel(), reuse=reuse, device=lambda: 0)
    t = torch.randn(4)
    with pytest.raises(ValueError, match=r"fake_kernel.*7 parameters expected, got 4 arguments and 2 constexprs"):
        r.launch((1,), (t, 1, 2, 3), {"A": 1, "B": 2}, num_warps=4, num_stages=1)
    with pytest.raises(ValueError, match=r"fake_kernel.*trailing parameters \['A', 'B'\], got \['A', 'C'\]"):
        r.launch((1,), (t, 1, 2, 3, 0.5), {"A": 1, "C": 2}, num_warps=4, num_stages=1)


def test_binaries_are_kept_per_device() -> None:
    kern = _FakeKernel()
    current = [0]
    r = Relauncher(kern, device=lambda: current[0])
    t = torch.randn(64)
    _launch(r, t)
    current[0] = 1
    assert _launch(r, t) == "jit"  # a module loaded on device 0 is not launched on device 1
    assert _launch(r, t) == "reused"
    current[0] = 0
    assert _launch(r, t) == "reused"


def test_reuse_is_the_default_on_verified_tritons_and_can_be_switched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_relaunch.ENV, raising=False)
    releases = (
        ("3.6.0", True),
        ("3.9.1", True),
        ("3.7.0rc1", True),
        ("3.9.0.dev0", True),
        ("3.6.0+git1234", True),
        ("3.6.0rc1", False),
        ("3.10.0.dev0", False),
        ("3.10.0rc1", False),
        ("4.0.0", False),
        ("3.5.0", False),
        ("nonsense", False),
        (None, False),
    )
    for release, on in releases:
        monkeypatch.setattr(_relaunch, "_triton_release", lambda release=release: release)
        assert _relaunch.enabled() is on, release
        assert _relaunch.status().startswith("on" if on else "off"), release
        assert (release or "not installed") in _relaunch.status()
        assert _relaunch.status(interpreting=True).startswith("off (Triton's CPU interpreter"), release
    monkeypatch.setattr(_relaunch, "_triton_release", lambda: "3.6.0")
    for off in ("0", "false", "No", " off "):
        monkeypatch.setenv(_relaunch.ENV, off)
        assert not _relaunch.enabled(), off
        assert _relaunch.status().startswith("off"), off
    monkeypatch.setenv(_relaunch.ENV, "2")  # not a switch value: the version decides
    assert _relaunch.enabled()
    monkeypatch.setattr(_relaunch, "_triton_release", lambda: "4.0.0")
    assert not _relaunch.enabled()
    for value in ("1", "true", "On"):
        monkeypatch.setenv(_relaunch.ENV, value)
        assert _relaunch.enabled(), value  # forced on an unverified release, and info says so
        assert "not within the verified" in _relaunch.status(), value
