"""A typed front for ``triton.jit`` (triton ships no type information).

Kernels are created when :mod:`._kernels` is imported, which happens on the first launch, so
``TRITON_INTERPRET=1`` set by a test module (before any kernel runs) selects the interpreter.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, overload

import triton  # type: ignore[import-untyped]  # triton ships no type information

__all__ = ["jit"]


@overload
def jit(fn: Callable[..., Any]) -> Any: ...


@overload
def jit(fn: None = None, *, do_not_specialize: list[str]) -> Callable[[Callable[..., Any]], Any]: ...


def jit(fn: Optional[Callable[..., Any]] = None, *, do_not_specialize: Optional[list[str]] = None) -> Any:
    """``triton.jit``, usable bare (``@jit``) or with ``do_not_specialize`` (``@jit(do_not_specialize=[...])``)."""
    if fn is not None:
        return triton.jit(fn)

    def wrap(f: Callable[..., Any]) -> Any:
        return triton.jit(f, do_not_specialize=do_not_specialize or [])

    return wrap
