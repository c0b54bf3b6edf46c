"""Errors raised by attncore besides input validation (which raises plain :class:`ValueError`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attncore.dispatch import Selection

__all__ = ["NotSupportedError"]


class NotSupportedError(ValueError):
    """No operator (or not the forced one) can run this call. ``selection`` holds the full trace,
    and the message includes it as a table."""

    def __init__(self, message: str, selection: Selection) -> None:
        super().__init__(message)
        self.selection = selection
