"""Sessions: ``nox -s tests`` (the CPU suite, Triton kernels through the interpreter), ``lint``,
``bench`` (CPU benchmarks), ``torch_pins`` (each torch pin), ``gpu_matrix`` (on a GPU host),
``ws_check`` (the warp-specialized Triton forward compiled for sm_90 on its verified Triton).
Torch is pinned to the CPU build so no CUDA wheels are downloaded."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).parent))
import env_matrix  # the matrix lives beside this file

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
MATRIX = env_matrix.load()
TORCH = os.environ.get("ATTNCORE_TORCH", f"torch=={MATRIX.pin('ci').torch}")
PLUGINS = sorted(str(p.parent) for p in (ROOT / "plugins").glob("*/pyproject.toml"))
TEST_DEPS = ["pytest>=8", "hypothesis>=6.100", "numpy", "pydantic>=2", "ninja"]  # ninja: the CUDA plugin's CPU emulation builds with it


REFERENCE = str(ROOT / "plugins" / "reference")
WS_TRITON = "3.6.0"  # the release attncore_triton._warpspec was verified on (its compile check runs against it)


def _install_project(session: nox.Session, torch: str = TORCH, extra: tuple[str, ...] = (), strict_plugins: bool = True) -> None:
    """Torch first (pinned), then the core with its reference backend, then the other plugins.

    With ``strict_plugins=False`` the other plugins are installed without their dependencies, so a
    plugin whose pins this torch cannot meet still installs and must show up as *unavailable*.
    """
    session.install(torch, *extra)
    # Local distributions together, so the core's dependency on attncore-reference resolves here.
    session.install("-e", ".", "-e", REFERENCE)
    others = [arg for p in PLUGINS if p != REFERENCE for arg in ("-e", p)]
    if others:
        session.install(*others) if strict_plugins else session.install("--no-deps", *others)


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
    session.install("ruff", "mypy", "nox", "hatchling", *TEST_DEPS)  # hatchling: the CUDA plugin's wheel build hook is type-checked too
    paths = ["core", *PLUGINS, "tests", "benchmarks", "examples", "env_matrix", "noxfile.py"]
    session.run("ruff", "check", *paths)
    session.run("mypy", *paths)


@nox.session(python="3.11", default=False)
@nox.parametrize("pin", [p.name for p in MATRIX.torch_pins])
def torch_pins(session: nox.Session, pin: str) -> None:
    """Run the CPU suite under each torch pin of env_matrix (downloads each torch; slow)."""
    entry = MATRIX.pin(pin)
    _install_project(session, f"torch=={entry.torch}", entry.extra, strict_plugins=False)
    session.install(*TEST_DEPS, *entry.extra)
    session.run("python", "-c", "import torch, attncore; print('torch', torch.__version__); attncore.registry.plugins()")
    session.run("python", "-m", "attncore.info")
    session.run("pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", *session.posargs, env={"TRITON_INTERPRET": "1"})


@nox.session(python="3.11", default=False)
def bench(session: nox.Session) -> None:
    """Run the CPU benchmarks (reference backend vs torch SDPA) and print the tables."""
    _install_project(session)
    session.install("numpy")
    session.run("python", "benchmarks/bench_cpu.py", *session.posargs)


@nox.session(python=False, default=False)
def gpu_matrix(session: nox.Session) -> None:
    """On a GPU host: build the CUDA plugin per env_matrix arch list; check negotiation and kernels (no downloads)."""
    root = Path(session.create_tmp()) / "gpu_matrix"
    tests = ROOT / "plugins" / "cutlass_like" / "tests"
    only = [n for n in os.environ.get("ATTNCORE_GPU_MATRIX_ONLY", "").split(",") if n]  # a subset, by name
    for entry in MATRIX.cuda_arch_lists:
        if only and entry.name not in only:
            continue
        out = root / entry.name
        if out.exists() and os.environ.get("ATTNCORE_GPU_MATRIX_REUSE") != "1":
            shutil.rmtree(out)  # a fresh build per run: the build is part of what is checked
        session.log(f"== {entry.name}: TORCH_CUDA_ARCH_LIST={entry.value!r} (on sm_90: {entry.on_sm90})")
        env = {"ATTNCORE_GPU_MATRIX": entry.name, "ATTNCORE_CUTLASS_DIR": str(out), "TORCH_CUDA_ARCH_LIST": entry.value}
        # exit code 2: the builder refused the list before compiling (an arch this nvcc cannot target); the tests check that refusal
        session.run("python", "-m", "attncore_cutlass", "build", "--arch-list", entry.value, "--out", str(out), env=env, success_codes=[0, 2])
        pytest = ("python", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider")
        session.run(*pytest, "-s", str(tests / "test_gpu_matrix.py"), env=env)  # the negotiation verdict, printed
        session.run(*pytest, str(tests / "test_cutlass_gpu.py"), *session.posargs, env=env)  # the kernels, where the binary runs


@nox.session(python=False, default=False)
def cuda_check(session: nox.Session) -> None:
    """Compile the CUDA kernels with the local nvcc (no GPU): errors, warnings, registers, spills."""
    session.run("python3", str(ROOT / "plugins" / "cutlass_like" / "tools" / "cuda_check.py"), *session.posargs)


@nox.session(python="3.11", default=False)
def ws_check(session: nox.Session) -> None:
    """Compile the warp-specialized Triton forward for sm_90 with the Triton release it is verified on (no GPU)."""
    _install_project(session)
    session.install(*TEST_DEPS, f"triton=={WS_TRITON}")
    session.run("pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "plugins" / "triton_flash" / "tests" / "test_warpspec.py"), *session.posargs)


@nox.session(python="3.11", default=False)
def emulate(session: nox.Session) -> None:
    """Run the CUDA plugin's tensor-core kernels in the CPU emulation (slow; needs CUDA headers)."""
    _install_project(session)
    session.install(*TEST_DEPS)
    session.run("pytest", "-q", "-m", "slow", str(ROOT / "plugins" / "cutlass_like" / "tests" / "test_emulated.py"), *session.posargs)
