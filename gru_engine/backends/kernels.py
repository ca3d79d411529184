"""Locate and describe the CUDA C sources of the engine (``kernels/*.cu``).

From a source checkout the kernels live in ``kernels/`` at the repository root; an installed
wheel carries the same files as the package ``gru_engine.kernels`` (``setup.py`` maps the
folder and ships ``*.cu``, ``*.cuh`` and ``emulation/*.h`` as package data).

Every entry point is an ``extern "C" __global__ void name(params)``; :func:`kernel_index` parses
them so that both devices can check launch arguments against the declared parameter types.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from pathlib import Path

KERNEL_FILES = ("gru_cell.cu", "tensor.cu", "losses.cu", "optim.cu", "ranking.cu",
                "features.cu", "user.cu", "output_features.cu", "context.cu")
EMULATION_HEADER = "emulation/cuda_on_cpu.h"
COMMON_HEADER = "common.cuh"  # device helpers every .cu includes (on the NVRTC/g++ include path)

_ENTRY_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)

# Parameter kinds: ("ptr", numpy dtype name) for pointers, (scalar dtype name,) for values.
_SCALARS = {"int": "int32", "unsigned": "uint32", "unsigned int": "uint32",
            "long long": "int64", "float": "float32"}
_POINTEES = {"float": "float32", "int": "int32", "unsigned": "uint32", "unsigned int": "uint32",
             "unsigned char": "uint8"}


@functools.lru_cache(maxsize=None)
def kernel_dir() -> Path:
    """Folder holding the ``.cu`` files: ``<repo>/kernels`` or the installed ``gru_engine/kernels``."""
    checkout = Path(__file__).resolve().parents[2] / "kernels"
    if (checkout / KERNEL_FILES[0]).is_file():
        return checkout
    spec = importlib.util.find_spec("gru_engine.kernels")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / KERNEL_FILES[0]).is_file():
                return Path(loc)
    raise FileNotFoundError("CUDA kernel sources not found: neither <repo>/kernels nor the "
                            "package gru_engine.kernels holds gru_cell.cu")


def source_path(filename: str) -> Path:
    """Absolute path of one kernel file (e.g. ``'losses.cu'``) or of the emulation header."""
    path = kernel_dir() / filename
    if not path.is_file():
        raise FileNotFoundError(f"kernel source {filename!r} not found in {kernel_dir()}")
    return path


def headers_digest() -> str:
    """Short hash of every ``*.cuh`` the kernels include: part of each compile-cache key (CuPy's
    disk cache hashes the source string only, not the headers it includes)."""
    h = hashlib.sha256()
    for path in sorted(kernel_dir().glob("*.cuh")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def parse_entry_points(source: str) -> dict:
    """``{kernel_name: [param kind, ...]}`` of the ``extern "C" __global__`` functions in source.

    A kind is ``('ptr', dtype_name)`` for a pointer parameter and ``(dtype_name,)`` for a value
    (``int`` -> int32, ``long long`` -> int64, ``unsigned`` -> uint32, ``float`` -> float32).
    """
    out = {}
    for name, params in _ENTRY_RE.findall(source):
        kinds = []
        for raw in params.split(","):
            decl = re.sub(r"\b(const|__restrict__|__restrict|volatile)\b", " ", raw)
            ptr = "*" in decl
            words = decl.replace("*", " ").split()
            base = " ".join(words[:-1])
            table = _POINTEES if ptr else _SCALARS
            if base not in table:
                raise ValueError(f"kernel {name}: unsupported parameter type in {raw.strip()!r}")
            kinds.append(("ptr", table[base]) if ptr else (table[base],))
        out[name] = kinds
    return out


def read_only_params(source: str) -> dict:
    """``{kernel_name: [bool, ...]}``: which parameters are ``const T* __restrict__`` (the kernel
    promises nobody writes that memory during the launch; the emulator's race detector then
    checks writes against it instead of recording every read)."""
    out = {}
    for name, params in _ENTRY_RE.findall(source):
        out[name] = [bool(re.search(r"\bconst\b", raw) and re.search(r"__restrict(__)?\b", raw)
                          and "*" in raw) for raw in params.split(",")]
    return out


@functools.lru_cache(maxsize=None)
def kernel_index() -> dict:
    """``{kernel_name: (filename, [param kinds])}`` over every file of :data:`KERNEL_FILES`."""
    index = {}
    for filename in KERNEL_FILES:
        for name, kinds in parse_entry_points(source_path(filename).read_text()).items():
            if name in index:
                raise ValueError(f"kernel {name} defined in both {index[name][0]} and {filename}")
            index[name] = (filename, kinds)
    return index
