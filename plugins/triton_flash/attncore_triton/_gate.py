"""On-by-default switches for features that lean on one Triton release's internals.

Such a feature is on when the installed Triton is within the releases it was verified on, and an
environment variable forces it: ``0``/``false``/``no``/``off`` turns it off, ``1``/``true``/``yes``/``on``
turns it on whatever the release (any other value leaves the decision to the release).
"""

from __future__ import annotations

import os
from typing import Optional

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

__all__ = ["ReleaseGate"]

_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")


class ReleaseGate:
    """``env``: the variable; ``verified``: the releases (a PEP 440 specifier); ``text``: them, for people."""

    def __init__(self, env: str, verified: str, text: str) -> None:
        self.env = env
        self.verified = SpecifierSet(verified)
        self.text = text

    def switch(self) -> tuple[str, Optional[bool]]:
        """The variable as read (lower case, stripped) and what it forces: True, False or nothing."""
        value = os.environ.get(self.env, "").strip().lower()
        return value, True if value in _ON else False if value in _OFF else None

    def covers(self, release: Optional[str]) -> bool:
        """Whether ``release`` (a version string, ``None`` when Triton is not installed) was verified."""
        try:
            return release is not None and self.verified.contains(Version(release), prereleases=True)
        except InvalidVersion:
            return False

    def enabled(self, release: Optional[str]) -> bool:
        """The variable when it forces; otherwise whether ``release`` is covered."""
        forced = self.switch()[1]
        return forced if forced is not None else self.covers(release)

    def status(self, release: Optional[str], on: str, off: str, interpreting: Optional[str] = None) -> str:
        """One line for ``info``. ``on``: what the feature does (shown when the release turns it on); ``off``:
        why an unverified release turns it off; ``interpreting``: why Triton's CPU interpreter has it off
        (given when it does)."""
        value, forced = self.switch()
        triton = f"triton {release}" if release is not None else "triton not installed"
        if interpreting is not None:
            return f"off (Triton's CPU interpreter: {interpreting}; {triton})"
        if forced is False:
            return f"off ({self.env}={value}; {triton})"
        if forced:
            return f"on ({self.env}={value}; {triton}{'' if self.covers(release) else f', not within the verified {self.text}'})"
        if self.covers(release):
            return f"on ({on}; {triton}, within the verified {self.text}; {self.env}=0 turns it off)"
        return f"off ({triton}, not within the verified {self.text}: {off}; {self.env}=1 forces it)"
