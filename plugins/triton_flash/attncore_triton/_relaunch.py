"""Launch a Triton kernel again without re-binding its arguments.

``kernel[grid](*args, **constexprs)`` binds and specializes every argument on every call (dtype and
16-byte alignment of each pointer; ``== 1``, divisibility by 16 and width of each specialized integer; the
width of the others) to find the compiled binary; with the 30-75 arguments of the attention kernels that
costs tens of microseconds of host time per launch, which short sequences feel end to end
(benchmarks/RESULTS.md, "where a call's host time goes"). A :class:`Relauncher` remembers the binary each
specialization got and launches it directly the next time the same specialization comes. Its key holds
what Triton's own cache key holds (Triton 3.6 ``JITFunction.run``: the specialization of every argument,
the constexprs and the options) plus the argument types and the device, so it only reuses a binary Triton
itself would have chosen; a new sequence length changes strides, not their specialization, and reuses.

The first call of each specialization, calls under the CPU interpreter, and calls while Triton's launch or
pre-run hooks, debug mode or instrumentation are on go through ``kernel[grid](...)`` unchanged. Binaries
are kept per CUDA device (a loaded module belongs to one device's context), up to 256 specializations per
kernel (then the table starts over). Two keys lead to a binary: the exact values of the specialized
integers (cheap, the steady state of a training loop) and, when those are new, their specialization.

Reuse is on by default for the Triton releases in :data:`VERIFIED` (``ATTNCORE_TRITON_RELAUNCH=0`` turns it
off, ``=1`` forces it on another release; see :func:`enabled`). The path follows the sources of Triton 3.6
and 3.9 (``CompiledKernel.__getitem__`` returns a launcher that takes a 3-D grid and every bound argument,
constexprs included, in declaration order), an internal interface a later release may change; on the H200
(Triton 3.6) the whole GPU suite passes with it and a reused launch gives bit-for-bit the outputs of
Triton's own path.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple, Optional

import torch

from attncore.requirements import installed_version

from ._gate import ReleaseGate

__all__ = ["ENV", "VERIFIED", "Relauncher", "enabled", "status"]

#: The switch: unset, reuse compiled binaries on a Triton in :data:`VERIFIED`; 0 launch every call through
#: ``kernel[grid](...)``; 1 reuse on any Triton.
ENV = "ATTNCORE_TRITON_RELAUNCH"
#: The Triton releases whose launcher interface the reuse path was checked against (3.6 and 3.9's sources; 3.6 on a GPU).
_GATE = ReleaseGate(ENV, ">=3.6,<3.10", "3.6-3.9")
VERIFIED = _GATE.verified

_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


@functools.lru_cache(maxsize=1)
def _triton_release() -> Optional[str]:
    """The installed Triton's version (``None`` when not installed), read once."""
    return installed_version("triton")


def enabled() -> bool:
    """Whether :class:`Relauncher` objects created now reuse binaries: ``ATTNCORE_TRITON_RELAUNCH`` 0 or 1
    decides; unset (or any other value), the installed Triton must be in :data:`VERIFIED`."""
    return _GATE.enabled(_triton_release())


def status(interpreting: bool = False) -> str:
    """One line for ``info``: whether reuse is on for kernels launched from now on, and why (each kernel's
    setting is fixed when it is first launched; ``interpreting``: under Triton's CPU interpreter, which
    compiles nothing, every launch goes through Triton)."""
    return _GATE.status(
        _triton_release(),
        on="compiled kernels reused without re-binding arguments",
        off="the releases whose launcher this was checked against",
        interpreting="nothing compiled to reuse" if interpreting else None,
    )


def _width(v: int) -> int:
    """Triton's integer types by range: 0 i32, 1 i64, 2 u64 (and wider)."""
    return 0 if _I32_MIN <= v <= _I32_MAX else 1 if _I64_MIN <= v <= _I64_MAX else 2


def _triton_path_required(kernel: Any) -> bool:
    """Whether this launch must go through ``kernel[grid](...)``: a launch or pre-run hook is installed
    (profilers), or debug mode or instrumentation (both part of Triton's cache key) is on."""
    import triton  # type: ignore[import-untyped]  # triton ships no type information

    knobs = getattr(triton, "knobs", None)
    if knobs is None:  # a Triton without knobs keeps its hooks and options elsewhere: never bypass it
        return True
    for name in ("launch_enter_hook", "launch_exit_hook"):
        hook = getattr(knobs.runtime, name, None)
        if hook is None:
            continue
        calls = getattr(hook, "calls", None)  # a chain of hooks, empty when none is set
        if calls is None or len(calls) > 0:
            return True
    if getattr(kernel, "pre_run_hooks", None) or getattr(kernel, "debug", None) or knobs.runtime.debug:
        return True
    return bool(getattr(knobs.compilation, "instrumentation_mode", None))


_Key = tuple[Any, ...]


def _grid3(grid: tuple[int, ...]) -> tuple[int, int, int]:
    """The grid as the compiled kernel's launcher takes it: 3-D (Triton's own path pads it)."""
    return (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)


class _Plan(NamedTuple):
    """Getters that pick the pointers, the width-only integers and the specialized integers out of the arguments."""

    tensors: Callable[[Sequence[Any]], tuple[Any, ...]]
    widths: Callable[[Sequence[Any]], tuple[Any, ...]]
    ints: Callable[[Sequence[Any]], tuple[Any, ...]]
    others: Callable[[Sequence[Any]], tuple[Any, ...]]


def _getter(positions: list[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """A C-speed picker of ``positions`` that always returns a tuple (``itemgetter`` of one position does not)."""
    if not positions:
        return lambda args: ()
    if len(positions) == 1:
        only = positions[0]
        return lambda args: (args[only],)
    return operator.itemgetter(*positions)


class Relauncher:
    """Launches of one ``@triton.jit`` kernel, reusing the compiled binary of a known specialization.

    ``kernel``: the JIT function. Its parameters must come as ``args`` (every runtime parameter, in
    declaration order) followed by the constexprs as keywords; ``do_not_specialize`` names the integer
    parameters Triton does not specialize on (only their width counts). ``reuse=False`` (the CPU
    interpreter, which compiles nothing) launches through ``kernel[grid](...)`` every time. ``device``:
    the index of the device Triton launches on now (the current CUDA device).
    """

    def __init__(self, kernel: Any, *, reuse: bool = True, device: Optional[Callable[[], int]] = None, max_entries: int = 256) -> None:
        self.kernel = kernel
        self.reuse = reuse
        self._device = device if device is not None else torch.cuda.current_device
        names: Sequence[str] = kernel.arg_names
        self._names = tuple(names)
        nospec = getattr(kernel, "do_not_specialize", None) or ()
        self._nospec = frozenset(names.index(n) if isinstance(n, str) else int(n) for n in nospec)
        self._plans: dict[tuple[type, ...], _Plan] = {}
        self._binaries: dict[_Key, Any] = {}  # by specialization
        self._exact: dict[_Key, Any] = {}  # by exact integer values (the cheaper key)
        self._max = max_entries
        self.hits = 0
        self.misses = 0

    def _plan(self, types: tuple[type, ...]) -> _Plan:
        """Where the pointers, the width-only integers, the specialized integers and any other values sit,
        for this pattern of argument types (floats: their type, in the pattern, is all that counts)."""
        plan = self._plans.get(types)
        if plan is None:
            tensors: list[int] = []
            widths: list[int] = []
            ints: list[int] = []
            others: list[int] = []
            for i, t in enumerate(types):
                if issubclass(t, torch.Tensor):
                    tensors.append(i)
                elif issubclass(t, bool):
                    others.append(i)
                elif issubclass(t, int):
                    (widths if i in self._nospec else ints).append(i)
                elif not issubclass(t, float):
                    others.append(i)  # never reached by attncore's kernels: keyed by value
            plan = self._plans[types] = _Plan(_getter(tensors), _getter(widths), _getter(ints), _getter(others))
        return plan

    def _keys(self, args: Sequence[Any], constexprs: dict[str, Any], options: tuple[int, int]) -> tuple[_Key, tuple[int, ...]]:
        """``(common, exact ints)``: the key parts every call computes (pointers' dtypes and alignment,
        unspecialized integers' widths, types, device, options, constexprs) and the specialized integers'
        values (see :meth:`_specialization` for the key Triton itself would use for them)."""
        types = tuple(map(type, args))
        plan = self._plan(types)
        tensors: tuple[torch.Tensor, ...] = plan.tensors(args)
        widths: tuple[int, ...] = plan.widths(args)
        ints: tuple[int, ...] = plan.ints(args)
        common = (
            self._device(),
            options,
            types,
            tuple([(t.dtype, t.data_ptr() % 16 == 0) for t in tensors]),
            tuple([_width(w) for w in widths]),
            plan.others(args),
            tuple(constexprs.items()),
        )
        return common, ints

    @staticmethod
    def _specialization(common: _Key, ints: tuple[int, ...]) -> _Key:
        """The key with the specialized integers as Triton keys them (width, ``== 1``, divisibility by 16):
        computed only when their exact values are new."""
        return (common, tuple([(_width(v), v == 1, v % 16 == 0) for v in ints]))

    def _check(self, args: Sequence[Any], constexprs: dict[str, Any]) -> None:
        name = getattr(self.kernel, "__name__", "kernel")
        if len(args) + len(constexprs) != len(self._names):
            raise ValueError(f"Relauncher({name}): {len(self._names)} parameters expected, got {len(args)} arguments and {len(constexprs)} constexprs")
        trailing = self._names[len(args) :]
        if set(trailing) != set(constexprs):
            raise ValueError(f"Relauncher({name}): the keywords must be the trailing parameters {sorted(trailing)}, got {sorted(constexprs)}")

    def bypass_allowed(self) -> bool:
        """Whether a launch may skip ``kernel[grid](...)`` now (no hook, debug mode or instrumentation
        requires Triton's path; see :mod:`attncore_triton._plans`, which replays binaries)."""
        return self.reuse and not _triton_path_required(self.kernel)

    def launch(
        self,
        grid: tuple[int, ...],
        args: Sequence[Any],
        constexprs: dict[str, Any],
        *,
        num_warps: int,
        num_stages: int,
        record: Optional[Callable[[Any, tuple[int, int, int], list[Any]], None]] = None,
    ) -> None:
        """``kernel[grid](*args, **constexprs, num_warps=..., num_stages=...)``, through the known binary when
        there is one. ``record``, when given, is called with the binary, the 3-D grid and every argument in
        declaration order (constexprs included) when the launch went through a binary that can be launched
        again that way (not when reuse is off or Triton's path returned none)."""
        if not self.reuse:
            self._check(args, constexprs)
            self.kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
            return
        common, ints = self._keys(args, constexprs, (num_warps, num_stages))
        exact = (common, ints)
        binary = self._exact.get(exact)  # the steady state: the same shapes again
        spec: Optional[_Key] = None
        if binary is None:
            spec = self._specialization(common, ints)
            binary = self._binaries.get(spec)
            if binary is not None:
                self._remember(exact, spec, binary)
        if binary is not None and not _triton_path_required(self.kernel):
            self.hits += 1
            ordered = self._ordered(args, constexprs)
            grid3 = _grid3(grid)
            binary[grid3](*ordered)
            if record is not None:
                record(binary, grid3, ordered)
            return
        self.misses += 1
        self._check(args, constexprs)
        compiled = self.kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
        if compiled is not None and callable(getattr(compiled, "__getitem__", None)):
            self._remember(exact, spec if spec is not None else self._specialization(common, ints), compiled)
            if record is not None:
                record(compiled, _grid3(grid), self._ordered(args, constexprs))

    def _ordered(self, args: Sequence[Any], constexprs: dict[str, Any]) -> list[Any]:
        """Every argument in declaration order, constexprs included (how a compiled binary's launcher takes them)."""
        return [*args, *(constexprs[n] for n in self._names[len(args) :])]

    def _remember(self, exact: _Key, spec: _Key, binary: Any) -> None:
        """Keep ``binary`` under both keys; when either table is full, both start over (Triton's own cache
        still holds every binary, so forgetting costs one call through its path)."""
        if len(self._binaries) >= self._max or len(self._exact) >= 8 * self._max:
            self._binaries.clear()
            self._exact.clear()
        self._binaries[spec] = binary
        self._exact[exact] = binary
