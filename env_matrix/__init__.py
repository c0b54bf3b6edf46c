"""The supported-environment matrix: named, validated descriptions that nox reads.

``load()`` parses ``environments.toml`` into pydantic models and checks it against the project
itself: every torch pin must satisfy the core's own ``torch`` requirement, pins are ordered oldest
first, names are unique, and arch lists parse. Plugin ranges come from each plugin's
``pyproject.toml`` (:func:`plugin_requirements`), never from a second copy here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

__all__ = ["ArchList", "Matrix", "TorchPin", "core_requirements", "load", "plugin_requirements", "supported_plugins"]

ROOT = Path(__file__).resolve().parent.parent
_ARCH = re.compile(r"^\d+\.\d+(\+PTX)?$")


class TorchPin(BaseModel):
    """One torch release the CPU suite runs under."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    torch: str
    python: str
    extra: tuple[str, ...] = ()
    notes: str = ""

    @field_validator("torch")
    @classmethod
    def _exact_version(cls, v: str) -> str:
        try:
            Version(v)
        except InvalidVersion as exc:
            raise ValueError(f"torch: expected an exact version like 2.1.2, found {v!r}") from exc
        return v

    @property
    def version(self) -> Version:
        return Version(self.torch)


class ArchList(BaseModel):
    """A ``TORCH_CUDA_ARCH_LIST`` and what it should give on an sm_90 device."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    value: str
    on_sm90: Literal["sass", "ptx", "rejected"]

    @field_validator("value")
    @classmethod
    def _arch_list(cls, v: str) -> str:
        bad = [a for a in v.split(";") if not _ARCH.match(a.strip())]
        if bad:
            raise ValueError(f"value: expected entries like 8.0 or 9.0+PTX separated by ';', found {bad}")
        return v


class Matrix(BaseModel):
    """The whole matrix (``environments.toml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    python: tuple[str, ...]
    torch_pins: tuple[TorchPin, ...]
    cuda_arch_lists: tuple[ArchList, ...] = ()
    rocm_archs: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Matrix:
        names = [p.name for p in self.torch_pins]
        if len(set(names)) != len(names):
            raise ValueError(f"torch_pins: expected unique names, found {names}")
        versions = [p.version for p in self.torch_pins]
        if versions != sorted(versions):
            raise ValueError(f"torch_pins: expected oldest first, found {[p.torch for p in self.torch_pins]}")
        core = core_requirements().get("torch")
        if core is not None:
            outside = [p.torch for p in self.torch_pins if not core.contains(p.version, prereleases=True)]
            if outside:
                raise ValueError(f"torch_pins: expected versions allowed by the core's torch{core}, found {outside}")
        for pin in self.torch_pins:
            if pin.python not in self.python:
                raise ValueError(f"torch_pins[{pin.name}].python: expected one of {list(self.python)}, found {pin.python}")
        return self

    def pin(self, name: str) -> TorchPin:
        for p in self.torch_pins:
            if p.name == name:
                return p
        raise ValueError(f"name: expected one of {[p.name for p in self.torch_pins]}, found {name!r}")


def _requirements(pyproject: Path) -> dict[str, SpecifierSet]:
    data = tomllib.loads(pyproject.read_text())
    reqs = [Requirement(r) for r in data.get("project", {}).get("dependencies", [])]
    return {r.name: r.specifier for r in reqs}


def core_requirements(root: Path = ROOT) -> dict[str, SpecifierSet]:
    """The core distribution's dependencies, by name (from the top-level pyproject.toml)."""
    return _requirements(root / "pyproject.toml")


def plugin_requirements(root: Path = ROOT) -> dict[str, dict[str, SpecifierSet]]:
    """Each plugin distribution's dependencies, by distribution name, from ``plugins/*/pyproject.toml``."""
    out = {}
    for path in sorted((root / "plugins").glob("*/pyproject.toml")):
        name = tomllib.loads(path.read_text())["project"]["name"]
        out[name] = _requirements(path)
    return out


def supported_plugins(pin: TorchPin, root: Path = ROOT) -> dict[str, bool]:
    """For each plugin, whether its declared torch range admits ``pin``."""
    return {name: reqs.get("torch", SpecifierSet()).contains(pin.version, prereleases=True) for name, reqs in plugin_requirements(root).items()}


def load(path: Path = ROOT / "env_matrix" / "environments.toml") -> Matrix:
    """Parse and validate the matrix; a malformed file raises ``pydantic.ValidationError``."""
    return Matrix.model_validate(tomllib.loads(path.read_text()))
