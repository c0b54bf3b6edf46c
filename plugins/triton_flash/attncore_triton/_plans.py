"""Launch plans: a repeated call's kernel launches, replayed with the new call's tensors.

A call's full host path (the kernels' view of the call, the tuned configuration, 40-90 arguments per
kernel, the relauncher's keys, one pointer lookup in the driver per tensor argument) costs tens of
microseconds of host time, which at short sequences is as long as the kernels themselves
(benchmarks/RESULTS.md, "where a call's host time goes"). A :class:`Plan` records what that path
launched for one *call signature*: the binaries, their grids and their arguments. A later call with the
same signature allocates its outputs and launches the same binaries with its own addresses and dropout
seed put into the recorded arguments; every other argument (strides, sizes, tile counts, band, scale,
dropout rate, the row table and block-layout arrays) is a function of the signature.

The signature (:func:`call_key`) holds the shape, the strides and the 16-byte alignment of every tensor
the kernels read, their dtype and device, the current CUDA device, the mask's band and block layout,
the additive tensor's geometry, ``p`` and ``scale``; the forward's adds the output dtype and whether the
LSE is wanted, the backward's the gradient's, output's and LSE's layouts. Paged keys (whose page tables
are data) and calls that want a bias gradient are never planned.

A plan is recorded only by the second call of a signature (one that repeats; packed batches whose lengths
change every step never record), when that call ran with its autotune key's settled configuration outside
CUDA-graph capture. It is replayed only while each kernel's relauncher may bypass Triton's launch path
(:meth:`Relauncher.bypass_allowed`: reuse on, no launch hook, debug mode or instrumentation), and holds the
fixed tensors whose addresses it launches with (never the recording call's own tensors). Addresses go to
the compiled launcher as integers, which it takes in place of tensors. ``ATTNCORE_TRITON_PLANS=0`` turns
plans off.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple, Optional

import torch

from attncore.inputs import Inputs

from ._relaunch import Relauncher

__all__ = [
    "BWD_VALUES",
    "ENV",
    "FWD_VALUES",
    "MAX_PLANS",
    "Plan",
    "Recorder",
    "Step",
    "call_key",
    "clear",
    "count",
    "enabled",
    "find",
    "get",
    "put",
    "repeated",
    "status",
    "tensor_key",
]

#: The switch: ``ATTNCORE_TRITON_PLANS=0`` sends every call through the full host path.
ENV = "ATTNCORE_TRITON_PLANS"

#: The values a forward call brings (kernel parameter names): its tensors' addresses and its seed.
FWD_VALUES = ("Q", "K", "V", "OUT", "LSE", "BIAS", "seed")
#: Likewise for a backward call.
BWD_VALUES = ("Q", "K", "V", "DO", "M2", "DELTA", "DQ", "DK", "DV", "BIAS", "OUT", "LSE", "GLSE", "seed")
#: Plans kept per process (then the table starts over; a forgotten plan costs one call through the full path).
MAX_PLANS = 512


class Step(NamedTuple):
    """One recorded launch."""

    relauncher: Relauncher  # whose bypass_allowed() a replay checks
    runner: Callable[..., Any]  # the binary's launcher for the recorded grid
    template: tuple[Any, ...]  # every argument; fixed tensors as their addresses
    slots: tuple[tuple[int, int], ...]  # (argument position, index of the call's value) to fill in
    keep: tuple[torch.Tensor, ...]  # the fixed tensors whose addresses the template holds


class Plan(NamedTuple):
    """The launches of one call signature, in order, and what the call allocates (``shapes``: by the
    caller's convention, e.g. the forward's output and LSE)."""

    steps: tuple[Step, ...]
    shapes: tuple[Any, ...]

    def ready(self) -> bool:
        """Whether every launch may bypass Triton's path now."""
        return all(s.relauncher.bypass_allowed() for s in self.steps)

    def launch(self, values: Sequence[Any]) -> None:
        """Launch every step with ``values`` (addresses and seed, in the order of the recorder's names)."""
        for s in self.steps:
            args = list(s.template)
            for pos, vi in s.slots:
                args[pos] = values[vi]
            s.runner(*args)


class Recorder:
    """Collects the launches of one full-path call, to be stored as the plan of ``key``. ``names``: the call's
    values (:data:`FWD_VALUES` or :data:`BWD_VALUES`), by the kernel parameter names they are passed as."""

    def __init__(self, names: Sequence[str], key: tuple[Any, ...]) -> None:
        self._index = {n: i for i, n in enumerate(names)}
        self._key = key
        self._steps: list[Step] = []
        self._expected = 0

    def hook(self, relauncher: Relauncher, live: Sequence[str]) -> Callable[[Any, tuple[int, int, int], list[Any]], None]:
        """The ``record`` callback of one launch through ``relauncher``: the parameters in ``live`` take the
        call's values on a replay; every other argument is kept as it was."""
        self._expected += 1
        params = relauncher.kernel.arg_names
        slots = tuple((params.index(n), self._index[n]) for n in live)
        live_pos = {p for p, _ in slots}

        def record(binary: Any, grid3: tuple[int, int, int], ordered: list[Any]) -> None:
            # the call's own values are not kept (a plan must not hold this call's tensors alive)
            keep = tuple(a for i, a in enumerate(ordered) if i not in live_pos and isinstance(a, torch.Tensor))
            template = tuple(0 if i in live_pos else a.data_ptr() if isinstance(a, torch.Tensor) else a for i, a in enumerate(ordered))
            self._steps.append(Step(relauncher, binary[grid3], template, slots, keep))

        return record

    def store(self, shapes: tuple[Any, ...]) -> None:
        """Keep the plan (with what the call allocates, ``shapes``) when every launch was recorded (none is
        when reuse is off)."""
        if self._steps and len(self._steps) == self._expected:
            put(self._key, Plan(tuple(self._steps), shapes))


def tensor_key(t: torch.Tensor) -> tuple[Any, ...]:
    """What a plan depends on in a tensor the kernels read: shape, strides, 16-byte alignment, dtype."""
    return (t.shape, t.stride(), t.data_ptr() % 16 == 0, t.dtype)


def call_key(inputs: Inputs) -> Optional[tuple[Any, ...]]:
    """The part of a call's signature forward and backward share (``None``: paged keys, never planned)."""
    geo = inputs.geometry
    mask: Optional[tuple[Any, ...]] = None
    if geo is not None:
        if geo.paging is not None:
            return None
        tb = geo.tensor
        mask = (geo.band, geo.blocks, None if tb is None else tensor_key(tb))
    q, k, v = inputs.query, inputs.key, inputs.value
    dev = q.device
    index = torch.cuda.current_device() if dev.type == "cuda" else -1
    return (dev, index, tensor_key(q), tensor_key(k), tensor_key(v), inputs.p, inputs.scale, mask)


_PLANS: dict[tuple[Any, ...], Plan] = {}
_SEEN: set[tuple[Any, ...]] = set()  # signatures called once, without a plan
_LOCK = threading.Lock()


def enabled() -> bool:
    """``ATTNCORE_TRITON_PLANS``: unset or anything but 0, plans are recorded and replayed (where reuse is on)."""
    return os.environ.get(ENV, "1") != "0"


def repeated(key: tuple[Any, ...]) -> bool:
    """Whether ``key``'s signature was called before (then a plan is worth recording); remembers it otherwise.
    A signature that never repeats (packed batches whose lengths change every step) never records."""
    if key in _SEEN:
        return True
    with _LOCK:
        if len(_SEEN) >= 8 * MAX_PLANS:
            _SEEN.clear()
        _SEEN.add(key)
    return False


def get(key: tuple[Any, ...]) -> Optional[Plan]:
    return _PLANS.get(key)


def find(key: tuple[Any, ...]) -> tuple[Optional[Plan], bool]:
    """``(plan, record)``: the plan of ``key`` when it can be replayed now (:meth:`Plan.ready`); else whether
    this call records one: the signature's second call (:func:`repeated`), outside CUDA-graph capture (where
    a configuration may have fallen back for want of a row table)."""
    plan = get(key)
    if plan is not None and plan.ready():
        return plan, False
    if not repeated(key):
        return None, False
    return None, not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def put(key: tuple[Any, ...], plan: Plan) -> None:
    with _LOCK:
        if len(_PLANS) >= MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = plan


def clear() -> None:
    """Forget every plan and signature (each signature's next two calls take the full path; the second records)."""
    with _LOCK:
        _PLANS.clear()
        _SEEN.clear()


def count() -> int:
    """Plans held now."""
    return len(_PLANS)


def status() -> str:
    """One line for ``info``: whether plans are used, and how many this process holds."""
    if not enabled():
        return f"off ({ENV}=0: every call takes the full host path)"
    return (
        f"on (a call signature's third call on replays the launches its second recorded, while compiled binaries are "
        f"reused; {ENV}=0 turns it off); {count()} held in this process (at most {MAX_PLANS}, in memory)"
    )
