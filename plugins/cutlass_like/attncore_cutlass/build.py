"""Building the CUDA extension, ahead of time or on first use, and the record kept beside the binary.

A build compiles ``csrc/`` with nvcc for an explicit ``TORCH_CUDA_ARCH_LIST`` (``"8.0;9.0+PTX"``: SASS
for each entry, PTX too for ``+PTX`` ones) and writes ``build.json`` next to the library: the torch and
CUDA versions it was compiled against, the arch list, whether PTX is embedded, the nvcc version and a
hash of the sources. Negotiation (:mod:`attncore_cutlass.negotiation`) compares that record with the
running torch and GPU, so a mismatched binary is rejected at dispatch time instead of failing with
"no kernel image is available".

Where binaries live, first match wins:

1. ``$ATTNCORE_CUTLASS_DIR`` (a directory holding ``build.json``; ``nox -s gpu_matrix`` uses it);
2. the package's ``_prebuilt/`` (``python -m attncore_cutlass build``, or a wheel built with
   ``ATTNCORE_CUTLASS_BUILD=1``);
3. the cache, ``$ATTNCORE_CUTLASS_CACHE`` or ``~/.cache/attncore/cutlass/<key>``, filled on first use.

This module needs torch only when it builds or loads, and of attncore only the pure-Python
``attncore.cuda_arch`` (the wheel build hook loads it on its own).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

from attncore.cuda_arch import parse_arch_list

__all__ = [
    "EXT_NAME",
    "KEY_FORMAT",
    "PREBUILT",
    "RECORD_NAME",
    "BuildError",
    "BuildRecord",
    "build",
    "build_key",
    "cache_root",
    "gencode_flags",
    "load_extension",
    "cxx11_abi",
    "nvcc_archs",
    "nvcc_version",
    "python_tag",
    "read_record",
    "source_hash",
    "toolkit",
]

CSRC = Path(__file__).parent / "csrc"
PREBUILT = Path(__file__).parent / "_prebuilt"
SOURCES = ("bindings.cpp", "fwd_simt.cu", "bwd_simt.cu", "fwd_tc.cu", "bwd_tc.cu")
HEADERS = ("common.cuh", "emulate.h", "kernels.h", "mma.cuh", "params.h", "tf32_tiles.cuh")
EXT_NAME = "attncore_cutlass_C"
RECORD_NAME = "build.json"
KEY_FORMAT = "torch<release>-cu<cuda>-<python tag>-abi<cxx11 abi>-sm<arch list>-<source hash>"


class BuildError(RuntimeError):
    """The extension could not be built; the message says why and what to change."""


@dataclass(frozen=True)
class BuildRecord:
    """What a binary was built for, as written to ``build.json``."""

    torch: str
    cuda: str
    python: str  # interpreter ABI tag (sys.implementation.cache_tag): the library is a CPython extension
    cxx11_abi: str  # torch's _GLIBCXX_USE_CXX11_ABI ("1"/"0"): the C++ ABI the library links against
    arch_list: str
    ptx: bool
    sources: str
    nvcc: str
    built: str
    key: str
    library: str  # file name of the library next to the record

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], where: str) -> BuildRecord:
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"{where}: build record lacks {', '.join(missing)}")
        return cls(**{n: (bool(data[n]) if n == "ptx" else str(data[n])) for n in names})  # type: ignore[arg-type]  # fields typed per name above


def read_record(directory: Path) -> Optional[BuildRecord]:
    """The record in ``directory`` (``None`` when there is none); a malformed one raises ``ValueError``."""
    path = directory / RECORD_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return BuildRecord.from_mapping(data, str(path))


def source_hash() -> str:
    """sha256 over the CUDA/C++ sources (names and bytes), first 12 hex digits."""
    h = hashlib.sha256()
    for name in sorted(SOURCES + HEADERS):
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    return h.hexdigest()[:12]


def _slug(arch_list: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", arch_list).strip("_")


def build_key(torch_version: str, cuda: str, arch_list: str, sources: str, python: str, cxx11_abi: str) -> str:
    """See :data:`KEY_FORMAT`: one cache directory per torch release, CUDA version, interpreter and C++ ABI,
    arch list and source state."""
    release = torch_version.split("+", maxsplit=1)[0]
    return f"torch{release}-cu{cuda}-{python}-abi{cxx11_abi}-sm{_slug(arch_list)}-{sources}"


def python_tag() -> str:
    """The running interpreter's ABI tag (``cpython-311``)."""
    return str(sys.implementation.cache_tag)


def cxx11_abi() -> str:
    """torch's C++ ABI flag (``"1"``, ``"0"``, or ``"?"`` when this torch does not say)."""
    import torch

    flag = getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", None)
    return "?" if flag is None else str(int(bool(flag)))


def cache_root(env: Mapping[str, str] = os.environ) -> Path:
    explicit = env.get("ATTNCORE_CUTLASS_CACHE")
    if explicit:
        return Path(explicit)
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attncore" / "cutlass"


def gencode_flags(arch_list: str) -> list[str]:
    """nvcc flags for ``arch_list``: ``8.0`` -> SASS sm_80; ``9.0a`` -> sm_90a; ``8.0+PTX`` -> SASS and PTX compute_80."""
    try:
        entries = parse_arch_list(arch_list)
    except ValueError as exc:
        raise BuildError(f"TORCH_CUDA_ARCH_LIST: {exc}") from exc
    flags: list[str] = []
    for e in entries:
        num = f"{e.major}{e.minor}{'a' if e.specific else ''}"
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if e.ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def toolkit(env: Mapping[str, str] = os.environ) -> Optional[Path]:
    """The nvcc that would build the extension (``$CUDA_HOME/bin/nvcc``, else the one on ``PATH``), or ``None``."""
    for home in (env.get("CUDA_HOME"), env.get("CUDA_PATH")):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return Path(home) / "bin" / "nvcc"
    found = shutil.which("nvcc")
    return Path(found) if found else None


def _nvcc_output(nvcc: Path, *args: str) -> str:
    return subprocess.run([str(nvcc), *args], check=True, capture_output=True, text=True).stdout


def nvcc_archs(nvcc: Path) -> set[str]:
    """The ``XY`` numbers ``nvcc --list-gpu-arch`` accepts (``{"75", "80", "90", ...}``)."""
    return {line.strip().removeprefix("compute_") for line in _nvcc_output(nvcc, "--list-gpu-arch").splitlines() if line.strip()}


def nvcc_version(nvcc: Path) -> str:
    """``release X.Y`` of ``nvcc --version`` (``"unknown"`` when absent)."""
    m = re.search(r"release (\d+\.\d+)", _nvcc_output(nvcc, "--version"))
    return m.group(1) if m else "unknown"


def _check_archs(arch_list: str, nvcc: Path) -> None:
    supported = nvcc_archs(nvcc)
    missing = [f"{e.major}{e.minor}" for e in parse_arch_list(arch_list) if f"{e.major}{e.minor}" not in supported]
    if missing:
        raise BuildError(
            f"TORCH_CUDA_ARCH_LIST={arch_list!r}: nvcc {nvcc_version(nvcc)} at {nvcc} cannot compile for "
            f"{', '.join('sm_' + m for m in missing)} (it supports {', '.join('sm_' + s for s in sorted(supported, key=int_key))}); "
            "drop those entries, or build with a CUDA toolkit that still has them (CUDA 12.x for sm_60/sm_70)"
        )


def int_key(arch: str) -> int:
    digits = re.sub(r"\D", "", arch)
    return int(digits) if digits else 0


class _Heartbeat:
    """Prints elapsed time every ``every`` seconds while a build runs (nvcc is silent for minutes)."""

    def __init__(self, progress: Callable[[str], None], what: str, every: float = 15.0) -> None:
        self._progress, self._what, self._every = progress, what, every
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._progress(f"{self._what}: still compiling ({time.monotonic() - self._start:.0f} s)")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(arch_list: str, out_dir: Path, *, progress: Callable[[str], None] = _stderr, jobs: Optional[int] = None) -> BuildRecord:
    """Compile the extension for ``arch_list`` into ``out_dir`` and write its record there.

    Raises :class:`BuildError` (with the fix) when there is no nvcc, the torch build has no CUDA, or nvcc
    cannot target an entry of the list.
    """
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise BuildError(f"torch {torch.__version__} is a CPU-only build: install a CUDA build of torch to build attncore-cutlass")
    nvcc = toolkit()
    if nvcc is None:
        raise BuildError("no CUDA toolkit: nvcc is neither in $CUDA_HOME/bin nor on PATH (install the CUDA toolkit matching torch's CUDA)")
    flags = gencode_flags(arch_list)
    _check_archs(arch_list, nvcc)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = source_hash()
    key = build_key(torch.__version__, torch.version.cuda, arch_list, sources, python_tag(), cxx11_abi())
    for stale in [out_dir / RECORD_NAME, *out_dir.glob(f"{EXT_NAME}*.so")]:  # never leave a record beside another build's library
        stale.unlink(missing_ok=True)
    # a name per key and directory: torch renames a second build of one name in a process (name_v1), which
    # would not match the library's init symbol; distinct names never collide
    name = f"{EXT_NAME}_{hashlib.sha256((key + str(out_dir.resolve())).encode()).hexdigest()[:10]}"
    what = f"attncore-cutlass: building CUDA kernels for TORCH_CUDA_ARCH_LIST={arch_list!r}"
    progress(f"{what} into {out_dir} (key {key}); this takes a few minutes, once")
    if jobs is not None:
        os.environ["MAX_JOBS"] = str(jobs)
    start = time.monotonic()
    with _Heartbeat(progress, what):
        cpp_extension.load(
            name=name,
            sources=[str(CSRC / s) for s in SOURCES],
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3", "--threads", "4", *flags],
            build_directory=str(out_dir),
            with_cuda=True,
            verbose=False,
        )
    libs = sorted(out_dir.glob(f"{name}*.so"))
    if not libs:
        raise BuildError(f"the build of {name} in {out_dir} produced no library")
    record = BuildRecord(
        torch=torch.__version__,
        cuda=str(torch.version.cuda),
        python=python_tag(),
        cxx11_abi=cxx11_abi(),
        arch_list=arch_list,
        ptx="+PTX" in arch_list,
        sources=sources,
        nvcc=nvcc_version(nvcc),
        built=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        key=key,
        library=libs[0].name,
    )
    tmp = out_dir / f".{RECORD_NAME}.{os.getpid()}"
    tmp.write_text(record.to_json())
    os.replace(tmp, out_dir / RECORD_NAME)  # readers see the whole record or none
    progress(f"{what}: done in {time.monotonic() - start:.0f} s")
    return record


def load_extension(directory: Path, record: Optional[BuildRecord] = None) -> ModuleType:
    """Import the compiled library in ``directory`` (its record has been checked by then)."""
    import torch  # noqa: F401  # the library links against torch's, which must be loaded first

    record = record if record is not None else read_record(directory)
    if record is None:
        raise ImportError(f"attncore-cutlass: {directory} holds no {RECORD_NAME}")
    lib = directory / record.library
    if not lib.is_file():
        raise ImportError(f"attncore-cutlass: {directory} has a build record but no library {record.library}")
    name = lib.name.split(".")[0]  # the module's init symbol is PyInit_<name>
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) == str(lib):
        return loaded
    spec = importlib.util.spec_from_file_location(name, lib)
    if spec is None or spec.loader is None:
        raise ImportError(f"attncore-cutlass: cannot load {lib}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module
