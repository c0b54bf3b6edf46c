"""The registry: plugins found through entry points, and the operators they provide.

Verbs: :func:`register` (a plugin object or an operator class), :func:`unregister`, :func:`plugins`
and :func:`operators` (list), :func:`snapshot` / :func:`restore`. Entry points of the
``attncore.plugins`` group are loaded lazily on first use, one at a time, each in isolation.
"""

from __future__ import annotations

import importlib.metadata
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import pluggy
import torch

from attncore import hookspecs
from attncore.capabilities import Capabilities, Direction
from attncore.ops import AttentionBwOpBase, AttentionFwOpBase, AttentionOpBase
from attncore.plugin_info import PluginInfo
from attncore.reasons import Reason
from attncore.requirements import build_record_reasons, requirement_reasons

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginRecord",
    "Registry",
    "get_registry",
    "operators",
    "plugins",
    "register",
    "restore",
    "snapshot",
    "unregister",
]

ENTRY_POINT_GROUP = "attncore.plugins"


@dataclass(frozen=True)
class PluginRecord:
    """One plugin as the registry sees it. ``reasons`` is empty when it is available."""

    name: str
    source: str
    info: Optional[PluginInfo] = None
    ops: tuple[type[AttentionOpBase], ...] = ()
    reasons: tuple[Reason, ...] = ()

    @property
    def available(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "available": self.available,
            "version": self.info.version if self.info else None,
            "requires": dict(self.info.requires) if self.info else {},
            "build": dict(self.info.build) if self.info and self.info.build is not None else None,
            "ops": [f"{op.NAME} ({op.DIRECTION})" for op in self.ops],
            "reasons": [str(r) for r in self.reasons],
        }


def _validate_op(plugin: str, obj: object) -> Optional[Reason]:
    hook = "attncore_operators"
    if not isinstance(obj, type) or not issubclass(obj, (AttentionFwOpBase, AttentionBwOpBase)):
        return Reason(f"hook {hook}", f"{obj!r}", "subclasses of AttentionFwOpBase or AttentionBwOpBase", f"fix plugin {plugin!r}")
    name = getattr(obj, "NAME", None)
    if not isinstance(name, str) or not name:
        return Reason(f"hook {hook}", f"{obj.__name__} without a NAME", "a non-empty str NAME", f"fix plugin {plugin!r}")
    if not isinstance(getattr(obj, "CAPABILITIES", None), Capabilities):
        return Reason(f"hook {hook}", f"{name} without CAPABILITIES", "a Capabilities instance", f"fix plugin {plugin!r}")
    if getattr(obj, "__abstractmethods__", None):
        missing = ", ".join(sorted(obj.__abstractmethods__))
        return Reason(f"hook {hook}", f"{name} leaves {missing} abstract", "a concrete operator", f"fix plugin {plugin!r}")
    return None


@dataclass
class _State:
    records: dict[str, PluginRecord] = field(default_factory=dict)
    generation: int = 0
    loaded_entry_points: bool = False


class Registry:
    """Plugins and operators. Thread-safe; every change bumps :attr:`generation` (the dispatch
    cache keys on it, so no stale decision survives a change)."""

    def __init__(self, entry_point_group: str = ENTRY_POINT_GROUP, discover: Optional[Callable[[], Iterable[importlib.metadata.EntryPoint]]] = None) -> None:
        self._group = entry_point_group
        self._discover = discover if discover is not None else self._entry_points
        self._lock = threading.RLock()
        self._state = _State()
        self._sorted: dict[Direction, tuple[type[AttentionOpBase], ...]] = {}
        self._thresholds: tuple[int, ...] = ()
        self._dispatch_state: Optional[tuple[int, tuple[int, ...]]] = None

    # --- loading --------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._state.loaded_entry_points:
            return
        with self._lock:
            if self._state.loaded_entry_points:
                return
            for ep in sorted(self._discover(), key=lambda e: e.name):
                if ep.name in self._state.records:
                    continue  # the same plugin reached through two distributions
                self._add(self._load_entry_point(ep))
            self._state.loaded_entry_points = True
            self._changed()

    def _entry_points(self) -> Iterable[importlib.metadata.EntryPoint]:
        return importlib.metadata.entry_points(group=self._group)

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint) -> PluginRecord:
        source = f"entry point {ep.name} = {ep.value}"
        try:
            obj = ep.load()
            dist = getattr(ep, "dist", None)
            distribution = dist.name if dist is not None else ep.name
        except (Exception, SystemExit) as exc:  # noqa: BLE001  # a broken plugin must become a reason, whatever it raised (sys.exit too)
            return PluginRecord(
                ep.name,
                source,
                reasons=(Reason("import", f"{type(exc).__name__}: {exc}", "an importable plugin", f"reinstall the distribution providing {ep.value!r}"),),
            )
        return self._inspect(ep.name, obj, source, distribution)

    def _inspect(self, name: str, plugin: object, source: str, distribution: Optional[str] = None) -> PluginRecord:
        """Validate ``plugin``'s hooks, check its declared requirements (messages name ``distribution``)."""
        pm = pluggy.PluginManager("attncore")
        pm.add_hookspecs(hookspecs)
        try:
            pm.register(plugin, name=name)
            pm.check_pending()
        except Exception as exc:  # noqa: BLE001  # pluggy validation errors become reasons
            return PluginRecord(name, source, reasons=(Reason("hooks", f"{type(exc).__name__}: {exc}", "hooks matching attncore.hookspecs"),))
        info: Optional[PluginInfo] = None
        try:
            info = pm.hook.attncore_plugin_info()
        except Exception as exc:  # noqa: BLE001  # a hook that raises is reported, not propagated
            return PluginRecord(name, source, reasons=(Reason("hook attncore_plugin_info", f"raised {type(exc).__name__}: {exc}", "a PluginInfo"),))
        if info is not None and not isinstance(info, PluginInfo):
            return PluginRecord(name, source, reasons=(Reason("hook attncore_plugin_info", f"returned {type(info).__name__}", "a PluginInfo"),))
        if info is not None:
            who = distribution or name
            unmet = requirement_reasons(who, info.requires, cuda=torch.version.cuda)
            if info.build is not None:
                unmet += build_record_reasons(who, info.build, cuda=torch.version.cuda)
            if unmet:
                return PluginRecord(name, source, info, reasons=tuple(unmet))
        try:
            results = pm.hook.attncore_operators()
        except Exception as exc:  # noqa: BLE001  # importing kernels may fail in any way
            return PluginRecord(
                name, source, info, reasons=(Reason("hook attncore_operators", f"raised {type(exc).__name__}: {exc}", "a list of operator classes"),)
            )
        ops: list[type[AttentionOpBase]] = []
        for result in results:
            if not isinstance(result, (list, tuple)):
                return PluginRecord(
                    name, source, info, reasons=(Reason("hook attncore_operators", f"returned {type(result).__name__}", "a list of operator classes"),)
                )
            for obj in result:
                bad = _validate_op(name, obj)
                if bad is not None:
                    return PluginRecord(name, source, info, reasons=(bad,))
                ops.append(obj)
        return PluginRecord(name, source, info, tuple(ops))

    # --- mutation -------------------------------------------------------------------------------
    def _add(self, record: PluginRecord) -> None:
        taken = {(op.NAME, op.DIRECTION): r.name for r in self._state.records.values() for op in r.ops}
        for op in record.ops:
            owner = taken.get((op.NAME, op.DIRECTION))
            if owner is not None and owner != record.name:
                record = PluginRecord(
                    record.name,
                    record.source,
                    record.info,
                    reasons=(Reason("operator name", f"{op.NAME} ({op.DIRECTION}) already provided by plugin {owner!r}", "unique operator names"),),
                )
                break
        self._state.records[record.name] = record
        self._changed()

    def _changed(self) -> None:
        self._state.generation += 1
        self._sorted.clear()
        thresholds = {op.CAPABILITIES.max_query_len for r in self._state.records.values() for op in r.ops}
        self._thresholds = tuple(sorted(t for t in thresholds if t is not None))
        self._dispatch_state = (self._state.generation, self._thresholds) if self._state.loaded_entry_points else None

    def register(self, plugin: object, name: Optional[str] = None) -> PluginRecord:
        """Register a plugin object (implementing the hooks) or a single operator class."""
        self._ensure_loaded()
        with self._lock:
            if isinstance(plugin, type) and issubclass(plugin, AttentionOpBase):
                bad = _validate_op(name or "user", plugin)
                rec = PluginRecord(
                    name or f"user:{getattr(plugin, 'NAME', plugin.__name__)}",
                    "attncore.registry.register",
                    reasons=(bad,) if bad else (),
                    ops=() if bad else (plugin,),
                )
            else:
                rec = self._inspect(name or type(plugin).__name__, plugin, "attncore.registry.register")
            self._add(rec)
            return self._state.records[rec.name]

    def unregister(self, name: str) -> None:
        self._ensure_loaded()
        with self._lock:
            if name not in self._state.records:
                raise ValueError(f"name: expected a registered plugin ({', '.join(self._state.records)}), found {name!r}")
            del self._state.records[name]
            self._changed()

    def snapshot(self) -> dict[str, PluginRecord]:
        self._ensure_loaded()
        with self._lock:
            return dict(self._state.records)

    def restore(self, snap: dict[str, PluginRecord]) -> None:
        with self._lock:
            self._state.records = dict(snap)
            self._state.loaded_entry_points = True
            self._changed()

    def reload(self) -> None:
        """Forget everything and load the entry points again (after installing a plugin)."""
        with self._lock:
            # generations only grow: cached decisions of the old content must never match again
            self._state = _State(generation=self._state.generation)
            self._changed()

    # --- queries --------------------------------------------------------------------------------
    def dispatch_state(self) -> tuple[int, tuple[int, ...]]:
        """``(generation, query-length thresholds)``: what the dispatch key needs, in one read."""
        st = self._dispatch_state
        if st is None:
            self._ensure_loaded()
            with self._lock:
                self._changed()
                st = self._dispatch_state
            assert st is not None  # set by _changed once entry points are loaded
        return st

    @property
    def generation(self) -> int:
        self._ensure_loaded()
        return self._state.generation

    @property
    def query_len_thresholds(self) -> tuple[int, ...]:
        """Every ``max_query_len`` any operator declares: the dispatch key buckets Mq by them."""
        self._ensure_loaded()
        return self._thresholds

    def plugins(self) -> list[PluginRecord]:
        self._ensure_loaded()
        with self._lock:
            return list(self._state.records.values())

    def operators(self, direction: Direction) -> tuple[type[AttentionOpBase], ...]:
        """Available operators of one direction, highest ``PRIORITY`` first (ties: by name)."""
        self._ensure_loaded()
        ops = self._sorted.get(direction)
        if ops is None:
            with self._lock:
                found = [op for r in self._state.records.values() if r.available for op in r.ops if op.DIRECTION == direction]
                ops = tuple(sorted(found, key=lambda op: (-op.PRIORITY, op.NAME)))
                self._sorted[direction] = ops
        return ops

    def find(self, name: str, direction: Direction) -> Optional[type[AttentionOpBase]]:
        for op in self.operators(direction):
            if op.NAME == name:
                return op
        return None

    def unavailable(self) -> list[PluginRecord]:
        return [r for r in self.plugins() if not r.available]


_REGISTRY = Registry()


def get_registry() -> Registry:
    """The process-wide registry fed by the ``attncore.plugins`` entry points."""
    return _REGISTRY


def register(plugin: object, name: Optional[str] = None) -> PluginRecord:
    """Register a plugin object or one operator class; returns its record (check ``.available``)."""
    return _REGISTRY.register(plugin, name)


def unregister(name: str) -> None:
    """Remove a plugin (by the name it was registered under)."""
    _REGISTRY.unregister(name)


def plugins() -> list[PluginRecord]:
    """Every plugin, available or not, with its reasons."""
    return _REGISTRY.plugins()


def operators(direction: Direction = "forward") -> Sequence[type[AttentionOpBase]]:
    """Available operators of ``direction``, in dispatch order."""
    return _REGISTRY.operators(direction)


def snapshot() -> dict[str, PluginRecord]:
    """The registry's current content, to :func:`restore` later (tests, temporary plugins)."""
    return _REGISTRY.snapshot()


def restore(snap: dict[str, PluginRecord]) -> None:
    """Put back a :func:`snapshot`."""
    _REGISTRY.restore(snap)
