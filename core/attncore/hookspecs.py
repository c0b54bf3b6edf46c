"""The plugin contract: hooks a backend distribution implements.

A distribution registers a module (or object) under the ``attncore.plugins`` entry-point group::

    [project.entry-points."attncore.plugins"]
    reference = "attncore_reference.plugin"

and implements these hooks with ``@attncore.hookimpl``. Loading is lazy (on the first dispatch or
``attncore.registry.plugins()``), and isolated: a plugin that fails to import, raises in a hook, returns
something malformed or declares requirements the environment does not meet is listed as unavailable
with the reason; it never breaks ``import attncore`` nor the other plugins.
"""

from __future__ import annotations

from collections.abc import Sequence

import pluggy

from attncore.ops import AttentionOpBase
from attncore.plugin_info import PluginInfo

__all__ = ["attncore_operators", "attncore_plugin_info", "hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("attncore")
hookimpl = pluggy.HookimplMarker("attncore")


@hookspec(firstresult=True)
def attncore_plugin_info() -> PluginInfo:  # type: ignore[empty-body]  # a hook spec has no body
    """Describe the plugin: version, requirements (``{"torch": ">=2.1"}``) and, for compiled
    plugins, the build record (what it was built against). Called before any operator is requested;
    unmet requirements make the plugin unavailable and keep its operators out of the dispatcher."""


@hookspec
def attncore_operators() -> Sequence[type[AttentionOpBase]]:  # type: ignore[empty-body]  # a hook spec has no body
    """Return the operator classes (subclasses of ``AttentionFwOpBase`` or ``AttentionBwOpBase``)
    this plugin provides. Import heavy or fragile modules (compiled extensions, triton) here, not at
    module import, so failures are reported against this hook."""
