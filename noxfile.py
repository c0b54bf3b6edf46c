"""Sessions: ``nox -s tests`` (the CPU suite, Triton kernels through the interpreter), ``lint``,
``bench`` (CPU benchmarks). Torch is pinned to the CPU build so no CUDA wheels are downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
TORCH = os.environ.get("ATTNCORE_TORCH", "torch==2.13.0")
PLUGINS = sorted(str(p.parent) for p in (ROOT / "plugins").glob("*/pyproject.toml"))
TEST_DEPS = ["pytest>=8", "hypothesis>=6.100", "numpy"]


def _install_project(session: nox.Session) -> None:
    session.install(TORCH)
    # Local distributions together, so the core's dependency on attncore-reference resolves here.
    session.install("-e", ".", *[arg for p in PLUGINS for arg in ("-e", p)])


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Run the CPU test suite (core, conformance, plugins)."""
    _install_project(session)
    session.install(*TEST_DEPS)
    session.run("pytest", "-q", "-m", "not slow", *session.posargs, env={"TRITON_INTERPRET": "1"})


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """Run ruff and mypy (strict) over core, plugins, tests and this file."""
    _install_project(session)
    session.install("ruff", "mypy", "nox", *TEST_DEPS)
    paths = ["core", *PLUGINS, "tests", "benchmarks", "examples", "noxfile.py"]
    session.run("ruff", "check", *paths)
    session.run("mypy", *paths)


@nox.session(python="3.11", default=False)
def bench(session: nox.Session) -> None:
    """Run the CPU benchmarks (reference backend vs torch SDPA) and print the tables."""
    _install_project(session)
    session.install("numpy")
    session.run("python", "benchmarks/bench_cpu.py", *session.posargs)
