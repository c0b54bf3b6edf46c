"""Which backends the dispatcher may use, in which order, and which capability caps to relax.

A :class:`Policy` is immutable. The current one lives in a :class:`contextvars.ContextVar` (so
threads and async tasks never see each other's), set by :func:`policy` for the duration of a ``with``
block and restored in ``finally``. Outside any block, the policy comes from the environment:

* ``ATTNCORE_BACKENDS="reference.chunked,reference"``: restrict to these operators or plugins, in
  this order (an entry names an operator, or a plugin as the prefix of its operators' names);
* ``ATTNCORE_RELAX="max_compute_capability"``: caps to ignore.

The environment is read on first use; call :func:`reload_environment` after changing it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

__all__ = ["ENV_BACKENDS", "ENV_RELAX", "Policy", "current_policy", "from_token", "policy", "reload_environment", "token_of", "using"]

ENV_BACKENDS = "ATTNCORE_BACKENDS"
ENV_RELAX = "ATTNCORE_RELAX"
RELAXABLE = frozenset({"max_compute_capability"})


@dataclass(frozen=True)
class Policy:
    """``order``: ``None`` for every backend by priority, else the allowed operators/plugins in order."""

    order: Optional[tuple[str, ...]] = None
    relax: frozenset[str] = frozenset()
    source: str = "default"

    def __hash__(self) -> int:
        # Part of every dispatch key: hash once per policy, not once per call.
        cached: Optional[int] = self.__dict__.get("_hash")
        if cached is None:
            cached = hash((self.order, self.relax, self.source))
            self.__dict__["_hash"] = cached
        return cached

    def rank(self, op_name: str) -> Optional[int]:
        """Position of ``op_name`` in :attr:`order` (``None``: excluded); 0 when there is no order."""
        if self.order is None:
            return 0
        for i, entry in enumerate(self.order):
            if op_name == entry or op_name.startswith(entry + "."):
                return i
        return None


_CURRENT: contextvars.ContextVar[Optional[Policy]] = contextvars.ContextVar("attncore_policy", default=None)


def _split(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


@functools.lru_cache(maxsize=1)
def _environment_policy() -> Policy:
    backends = os.environ.get(ENV_BACKENDS, "")
    relax_text = os.environ.get(ENV_RELAX, "")
    relax = frozenset(_split(relax_text))
    unknown = relax - RELAXABLE
    if unknown:
        warnings.warn(f"{ENV_RELAX}: ignoring unknown caps {sorted(unknown)}; known: {sorted(RELAXABLE)}", stacklevel=2)
        relax = relax & RELAXABLE
    order = _split(backends) or None
    if order is not None:
        known = _known_names()
        unknown_names = _unknown_names(order, known)
        if unknown_names:
            warnings.warn(
                f"{ENV_BACKENDS}: no operator or plugin is named {', '.join(map(repr, unknown_names))} (known: {', '.join(known)}); "
                "calls the other names do not cover are rejected as excluded",
                stacklevel=2,
            )
    if order is None and not relax:
        return Policy()
    parts = [f"{ENV_BACKENDS}={backends!r}" if order else "", f"{ENV_RELAX}={relax_text!r}" if relax else ""]
    return Policy(order, relax, " ".join(p for p in parts if p))


def reload_environment() -> None:
    """Re-read ``ATTNCORE_BACKENDS`` and ``ATTNCORE_RELAX``."""
    _environment_policy.cache_clear()


def current_policy() -> Policy:
    """The policy in force here: the innermost :func:`policy` block, else the environment's."""
    pol = _CURRENT.get()
    return pol if pol is not None else _environment_policy()


@contextlib.contextmanager
def policy(order: Optional[Sequence[str]] = None, relax: Sequence[str] = ()) -> Iterator[Policy]:
    """Restrict/reorder backends and relax caps inside a ``with`` block; restored on exit.

    >>> with attncore.dispatch.policy(order=["reference.exact"]):
    ...     out = attncore.memory_efficient_attention(q, k, v)
    """
    if isinstance(order, str):
        raise ValueError(f"order: expected a sequence of operator or plugin names, found the string {order!r}")
    if order is not None and len(order) == 0:
        raise ValueError("order: expected at least one operator or plugin name (an empty order excludes every operator), found []")
    if isinstance(relax, str):
        raise ValueError(f"relax: expected a sequence of cap names among {sorted(RELAXABLE)}, found the string {relax!r}")
    bad = sorted(set(relax) - RELAXABLE)
    if bad:
        raise ValueError(f"relax: expected names among {sorted(RELAXABLE)}, found {bad}")
    if order is not None:
        _check_names(tuple(order))
    pol = Policy(tuple(order) if order is not None else None, frozenset(relax), f"attncore.dispatch.policy(order={order!r}, relax={list(relax)!r})")
    with using(pol):
        yield pol


@contextlib.contextmanager
def using(pol: Policy) -> Iterator[Policy]:
    """Make an existing :class:`Policy` current for a ``with`` block (restored on exit): how a backward
    pass that runs elsewhere (another thread, a compiled graph) applies the policy of its forward."""
    token = _CURRENT.set(pol)
    try:
        yield pol
    finally:
        _CURRENT.reset(token)


# Policies by small integer, for carriers that take only tensors and numbers (the compiled path's
# custom ops). Append-only: a process sees few distinct policies, each kept once (equal policies share
# a token). Tokens mean nothing outside the process that made them: a graph exported or cached to disk
# carries stale ones, and a replayed CUDA graph replays the token of its capture, as it does the seed.
_TOKENS: dict[Policy, int] = {}
_BY_TOKEN: list[Policy] = []
_TOKENS_LOCK = threading.Lock()


def token_of(pol: Policy) -> int:
    """A process-local integer that :func:`from_token` turns back into ``pol``."""
    with _TOKENS_LOCK:
        found = _TOKENS.get(pol)
        if found is None:
            found = _TOKENS[pol] = len(_BY_TOKEN)
            _BY_TOKEN.append(pol)
        return found


def from_token(token: int) -> Policy:
    """The policy :func:`token_of` numbered ``token`` (in this process)."""
    if not 0 <= token < len(_BY_TOKEN):
        raise ValueError(f"token: expected a policy token of this process (0..{len(_BY_TOKEN) - 1}), found {token}")
    return _BY_TOKEN[token]


def _known_names() -> list[str]:
    """The plugin and operator names a policy's order can use."""
    from attncore.registry import get_registry  # registry imports ops; keep this module import-light

    reg = get_registry()
    return sorted({r.name for r in reg.plugins()} | {op.NAME for op in (*reg.operators("forward"), *reg.operators("backward"))})


def _unknown_names(order: Sequence[str], known: Sequence[str]) -> list[str]:
    """The entries of ``order`` that name no plugin or operator of ``known`` (a plugin name covers its operators)."""
    return [entry for entry in order if not any(k == entry or k.startswith(entry + ".") for k in known)]


def _check_names(order: tuple[str, ...]) -> None:
    known = _known_names()
    unknown = _unknown_names(order, known)
    if unknown:
        raise ValueError(f"order: expected operator or plugin names among {known}, found unknown {unknown[0]!r}")
