"""What a plugin declares about itself: requirements (packaging specifiers) and its build record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["PluginInfo"]


@dataclass(frozen=True)
class PluginInfo:
    """``requires`` maps a distribution (``torch``, ``triton``) to a specifier set (``">=2.1,<3"``).

    ``build`` is the record a compiled plugin writes next to its binary: ``torch`` (the exact
    version it was compiled against), ``cuda``, ``arch_list``, ``ptx``... ``None`` for pure-Python
    plugins, or ``{"status": "not built"}``-style records when no binary exists yet.
    """

    version: str
    requires: Mapping[str, str] = field(default_factory=dict)
    build: Mapping[str, str] | None = None
    description: str = ""
