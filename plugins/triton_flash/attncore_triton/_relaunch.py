"""Launch a Triton kernel again without re-binding its arguments.

``kernel[grid](*args, **constexprs)`` binds and specializes every argument on every call (dtype and
16-byte alignment of each pointer, ``== 1`` and divisibility by 16 of each specialized integer, the width of
the others) to find the compiled binary; with the 60-75 arguments of the attention kernels that costs tens
of microseconds of host time per launch, which short sequences feel end to end (benchmarks/RESULTS.md,
"where a call's host time goes"). A :class:`Relauncher` remembers the binary each specialization got and
launches it directly the next time the same specialization comes: its key holds what Triton specializes
on (each pointer's dtype and alignment, each specialized integer's value, the 32/64-bit width of the others,
the constexprs and the launch options), so it can only reuse a binary Triton itself would have chosen.

The first call of each specialization, calls under the CPU interpreter, and calls while a Triton launch
hook is installed (profilers) go through ``kernel[grid](...)`` unchanged. The binaries are kept per CUDA
device (a loaded module belongs to one device's context).

Reuse is opt-in for now (``ATTNCORE_TRITON_RELAUNCH=1``, see :func:`enabled`): the path was written against
the sources of Triton 3.6 and 3.9 (``CompiledKernel.__getitem__`` returns a launcher that takes every bound
argument, constexprs included, in declaration order) and is unit-tested with a fake kernel, but has not yet
run on a GPU; it becomes the default once the GPU suite and ``benchmarks/host_triton.py`` have run with it.
"""

from __future__ import annotations

import operator
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple, Optional

import torch

__all__ = ["Relauncher", "enabled"]

#: The switch: reuse compiled binaries (1) or launch every call through ``kernel[grid](...)`` (0, the default).
ENV = "ATTNCORE_TRITON_RELAUNCH"


def enabled() -> bool:
    """Whether :class:`Relauncher` objects created now reuse binaries (``ATTNCORE_TRITON_RELAUNCH=1``)."""
    return os.environ.get(ENV, "0") in ("1", "true", "yes")

_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class _Plan(NamedTuple):
    """Getters that pick the pointer arguments, the width-only integers and the specialized values out of the arguments."""

    tensors: Callable[[Sequence[Any]], tuple[Any, ...]]
    widths: Callable[[Sequence[Any]], tuple[Any, ...]]
    values: Callable[[Sequence[Any]], tuple[Any, ...]]


def _getter(positions: list[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """A C-speed picker of ``positions`` that always returns a tuple (``itemgetter`` of one position does not)."""
    if not positions:
        return lambda args: ()
    if len(positions) == 1:
        only = positions[0]
        return lambda args: (args[only],)
    return operator.itemgetter(*positions)


def _hooks_installed() -> bool:
    """Whether a Triton launch hook is set (then every launch goes through Triton's own path)."""
    import triton  # type: ignore[import-untyped]  # triton ships no type information

    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if runtime is None:  # a Triton without knobs keeps its hooks elsewhere: never bypass it
        return True
    for name in ("launch_enter_hook", "launch_exit_hook"):
        hook = getattr(runtime, name, None)
        if hook is None:
            continue
        calls = getattr(hook, "calls", None)  # newer Triton: a chain of hooks, empty when none is set
        if calls is None or len(calls) > 0:
            return True
    return False


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
        self._binaries: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._max = max_entries
        self.hits = 0
        self.misses = 0

    def _plan(self, types: tuple[type, ...]) -> _Plan:
        """Where the pointers, the specialized integers and the width-only integers sit, for this pattern of argument types."""
        plan = self._plans.get(types)
        if plan is None:
            tensors = [i for i, t in enumerate(types) if issubclass(t, torch.Tensor)]
            widths = [i for i, t in enumerate(types) if i in self._nospec and issubclass(t, int) and not issubclass(t, bool)]
            values = [i for i, t in enumerate(types) if i not in tensors and i not in widths and not issubclass(t, float)]
            plan = self._plans[types] = _Plan(_getter(tensors), _getter(widths), _getter(values))
        return plan

    def _key(self, args: Sequence[Any], constexprs: dict[str, Any], options: tuple[int, int]) -> tuple[Any, ...]:
        """What Triton specializes this call on (floats: only their type, which the type pattern holds)."""
        types = tuple(map(type, args))
        plan = self._plan(types)
        tensors: tuple[torch.Tensor, ...] = plan.tensors(args)
        widths: tuple[int, ...] = plan.widths(args)
        return (
            self._device(),
            options,
            types,
            tuple([(t.dtype, t.data_ptr() % 16 == 0) for t in tensors]),
            tuple([0 if _I32_MIN <= w <= _I32_MAX else 1 if _I64_MIN <= w <= _I64_MAX else 2 for w in widths]),
            plan.values(args),
            tuple(constexprs.items()),
        )

    def _check(self, args: Sequence[Any], constexprs: dict[str, Any]) -> None:
        name = getattr(self.kernel, "__name__", "kernel")
        if len(args) + len(constexprs) != len(self._names):
            raise ValueError(
                f"Relauncher({name}): {len(self._names)} parameters expected, got {len(args)} arguments and {len(constexprs)} constexprs"
            )
        trailing = self._names[len(args) :]
        if set(trailing) != set(constexprs):
            raise ValueError(f"Relauncher({name}): the keywords must be the trailing parameters {sorted(trailing)}, got {sorted(constexprs)}")

    def launch(self, grid: tuple[int, ...], args: Sequence[Any], constexprs: dict[str, Any], *, num_warps: int, num_stages: int) -> None:
        """``kernel[grid](*args, **constexprs, num_warps=..., num_stages=...)``, through the known binary when there is one."""
        if not self.reuse:
            self._check(args, constexprs)
            self.kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
            return
        key = self._key(args, constexprs, (num_warps, num_stages))
        binary = self._binaries.get(key)
        if binary is not None and not _hooks_installed():
            self.hits += 1
            ordered = [*args, *(constexprs[n] for n in self._names[len(args) :])]
            binary[grid](*ordered)
            return
        self.misses += 1
        self._check(args, constexprs)
        compiled = self.kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
        if compiled is not None and callable(getattr(compiled, "__getitem__", None)):
            self._binaries[key] = compiled
            if len(self._binaries) > self._max:
                self._binaries.popitem(last=False)
