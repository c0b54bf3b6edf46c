"""A small autotuner with an on-disk cache, keyed per shape bucket.

Each kernel family has a short, pruned list of candidate configurations per architecture (at most
seven on Hopper, two on Ampere, so a first call compiles little). The first call of a new *key* times
every candidate with ``triton.testing.do_bench`` and remembers the fastest; the choice is written to a
JSON file and reused by later processes. The key is::

    <kernel>|<gpu name>|sm<cc>|triton<version>|<dtype>|k<K>|v<Kv>|<mask signature>|m<bucket>

where the bucket is the longest sequence rounded up to a power of two (clamped to 64..16384) and the
mask signature names the pieces that change the kernel (``dense``/``varlen``/``paged``, ``band``,
``bias``, ``dbias``, ``drop``). ``ATTNCORE_TRITON_AUTOTUNE=0`` turns timing off (the first candidate
that compiles is used); ``ATTNCORE_TRITON_CACHE`` moves the cache file.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Optional, TypeVar

__all__ = ["KEY_FORMAT", "AutotuneCache", "Choice", "cache", "cache_path", "shape_bucket", "tune"]

KEY_FORMAT = "<kernel>|<gpu>|sm<cc>|triton<ver>|<dtype>|k<K>|v<Kv>|<mask>|m<bucket>"
_VERSION = 1

C = TypeVar("C")


def cache_path() -> Path:
    """Where tuning results live: ``$ATTNCORE_TRITON_CACHE`` (a file) or ``~/.cache/attncore/triton-autotune.json``."""
    env = os.environ.get("ATTNCORE_TRITON_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "attncore" / "triton-autotune.json"


def shape_bucket(length: int) -> int:
    """The power of two at or above ``length``, clamped to ``[64, 16384]``."""
    b = 64
    while b < length and b < 16384:
        b *= 2
    return b


def enabled() -> bool:
    return os.environ.get("ATTNCORE_TRITON_AUTOTUNE", "1") not in ("0", "false", "no")


@dataclass
class AutotuneCache:
    """Tuning results by key, loaded lazily from (and merged back into) a JSON file."""

    path: Path
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    loaded: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self) -> None:
        if self.loaded:
            return
        self.loaded = True
        self.entries.update(self._read())

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("entries"), dict):
            return {}
        return {str(k): v for k, v in data["entries"].items() if isinstance(v, dict)}

    def get(self, key: str) -> Optional[dict[str, Any]]:
        with self.lock:
            self.load()
            return self.entries.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        with self.lock:
            self.load()
            self.entries[key] = entry
            merged = self._read()
            merged.update(self.entries)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".autotune-", suffix=".json")
                with os.fdopen(fd, "w") as fh:
                    json.dump({"version": _VERSION, "key_format": KEY_FORMAT, "entries": merged}, fh, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            except OSError:  # a read-only home must not break attention; the choice stays in memory
                pass

    def __len__(self) -> int:
        with self.lock:
            self.load()
            return len(self.entries)


_CACHES: dict[Path, AutotuneCache] = {}


def cache() -> AutotuneCache:
    """The process-wide cache of the current ``cache_path()``."""
    path = cache_path()
    found = _CACHES.get(path)
    if found is None:
        found = _CACHES[path] = AutotuneCache(path)
    return found


@dataclass(frozen=True)
class Choice(Generic[C]):
    config: C
    source: str  # "cache", "tuned", "default"


def _bench(fn: Callable[[], None]) -> float:
    import triton.testing  # type: ignore[import-untyped]  # triton ships no type information

    return float(triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median"))


def tune(
    key: str,
    candidates: Sequence[C],
    launch: Callable[[C], None],
    to_dict: Callable[[C], Mapping[str, Any]],
    *,
    timing: bool = True,
    bench: Callable[[Callable[[], None]], float] = _bench,
) -> Choice[C]:
    """Run ``launch`` with the best known candidate for ``key`` (timing them the first time, and again
    when the candidate list differs from the one the cached choice was timed over).

    The last ``launch`` call is always with the returned configuration, so its outputs are valid.
    Candidates that fail to compile or launch (out of shared memory, registers...) are skipped.
    """
    store = cache()
    by_dict = {json.dumps(dict(to_dict(c)), sort_keys=True): c for c in candidates}
    tried = sorted(by_dict)  # what an entry was tuned over: a changed candidate list is tuned again
    hit = store.get(key)
    if hit is not None:
        cfg = by_dict.get(json.dumps(hit.get("config"), sort_keys=True))
        # entries written before the list was recorded: the candidates their times cover
        if cfg is not None and hit.get("candidates", sorted(hit.get("ms", {}))) == tried:
            launch(cfg)
            return Choice(cfg, "cache")
    errors: list[str] = []
    if timing and enabled() and len(candidates) > 1:
        times: dict[str, float] = {}
        for text, c in by_dict.items():
            try:
                times[text] = bench(functools.partial(launch, c))
            except Exception as exc:  # noqa: BLE001  # a candidate the compiler rejects is skipped, never fatal
                errors.append(f"{text}: {type(exc).__name__}: {exc}"[:300])
        if times:
            best = min(times, key=times.__getitem__)
            store.put(key, {"config": json.loads(best), "ms": {k: round(v, 5) for k, v in times.items()}, "candidates": tried})
            cfg = by_dict[best]
            launch(cfg)
            return Choice(cfg, "tuned")
    for c in candidates:
        try:
            launch(c)
            return Choice(c, "default")
        except Exception as exc:  # noqa: BLE001  # fall through to the next (smaller) candidate
            errors.append(f"{to_dict(c)}: {type(exc).__name__}: {exc}"[:300])
    raise RuntimeError(f"attncore-triton: no configuration could run {key}: " + " | ".join(errors))


def as_dict(cfg: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` for configuration dataclasses."""
    return asdict(cfg)
