"""Why an operator cannot run a call: one :class:`Reason` per failed check."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

__all__ = ["Reason"]


@dataclass(frozen=True)
class Reason:
    """One failed check: what was looked at, what was found, what is supported, and how to fix it.

    ``topic`` names the property (``dtype``, ``head dim K``, ``device``, ``attn_bias``...), so a user
    can tell at a glance which part of the call an operator objects to.
    """

    topic: str
    found: str
    supported: str
    fix: Optional[str] = None

    def __str__(self) -> str:
        text = f"{self.topic}: found {self.found}; supported: {self.supported}"
        return f"{text}; fix: {self.fix}" if self.fix else text

    def to_dict(self) -> dict[str, Optional[str]]:
        return asdict(self)
