"""The CPU emulator of the CUDA kernels: :class:`EmulatedDevice` and the libraries it launches.

The unchanged ``kernels/*.cu`` files are compiled by g++ against
``kernels/emulation/cuda_on_cpu.h`` into one shared library per file (built once into a cache
folder keyed by a hash of sources, headers and flags) and launched through ctypes; arrays are
NumPy arrays, GEMMs run in NumPy.

The emulator exists to fail where a GPU would misbehave, so by default (:data:`STRICT`) every
launch runs under these checks (:class:`EmulatorChecks`):

* ``races`` -- the race detector: the library is built with g++'s ThreadSanitizer
  instrumentation (``-fsanitize=thread``) whose hooks the header implements; two accesses to one
  byte of global or shared memory from different threads, at least one a write, not both
  atomics, with no barrier between them (or from two blocks of one launch) fail the launch,
  naming both threads and the kernel argument the address belongs to;
* ``barriers`` -- every thread of a block reaches each ``__syncthreads()`` at the same call site
  and equally often;
* ``block_order`` -- ``'random'`` (a seeded shuffle per kernel and launch shape),
  ``'per_launch'`` (a fresh shuffle every launch), ``'reverse'`` or ``'forward'``; a block
  depending on another block of the same launch sees different data;
* ``poison`` -- fresh device buffers (``empty``) are filled with 0xFF bytes (float NaN, int -1),
  so reading memory no kernel wrote yet gives NaN;
* ``guards`` -- every device buffer sits between two 256-byte guard zones of 0xFD bytes, checked
  after each launch on the buffers passed to it; a kernel writing past a buffer raises
  :class:`DeviceMemoryError` naming the buffer, where it was allocated and the kernel.

``GRU_ENGINE_CUDA_EMU_CHECKS=off`` (or ``EmulatedDevice(checks=OFF)``) runs without any of them,
as the emulator did before: benches use that. Threads within a block are always visited in a
fresh seeded order per scheduling round, and shared memory is always poisoned per block.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import logging
import os
import re
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np

from . import kernels as _kernels
from .device import Device, GraphCaptureError, GuardedAllocator, _dims

logger = logging.getLogger("gru_engine")

EMU_CXX_FLAGS = ("-O1", "-std=c++17", "-fvisibility=hidden", "-fPIC", "-w")
# The race detector's build: ThreadSanitizer instrumentation, hooks from the header, no runtime.
RACE_CXX_FLAGS = ("-DCUDA_EMU_RACECHECK", "-fsanitize=thread",
                  "--param", "tsan-instrument-func-entry-exit=0")

# cuda_emu_configure flags (kernels/emulation/cuda_on_cpu.h).
_CHECK_RACES, _CHECK_BARRIERS = 1, 2
_ORDERS = {"forward": 0, "reverse": 4, "random": 8, "per_launch": 16}


@dataclasses.dataclass(frozen=True)
class EmulatorChecks:
    """Which GPU failure modes the emulator reproduces (see the module docstring).

    block_order: 'forward', 'reverse', 'random' (a seeded permutation per kernel and launch
    shape, the same on every launch of that shape: two runs of one computation still give the
    same bits, as the graph-versus-uncaptured tests need) or 'per_launch' (a fresh permutation
    every launch: float atomics then add in a different order each time, as on a GPU).
    seed: picks the permutations (and the thread shuffles); default ``$GRU_ENGINE_CUDA_EMU_SEED``
    or 0 through :func:`default_checks`."""

    races: bool = True
    barriers: bool = True
    block_order: str = "random"
    poison: bool = True
    guards: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.block_order not in _ORDERS:
            raise ValueError(f"block_order must be one of {sorted(_ORDERS)}, got "
                             f"{self.block_order!r}")

    @property
    def flags(self) -> int:
        return ((_CHECK_RACES if self.races else 0) | (_CHECK_BARRIERS if self.barriers else 0)
                | _ORDERS[self.block_order])


STRICT = EmulatorChecks()
OFF = EmulatorChecks(races=False, barriers=False, block_order="forward", poison=False,
                     guards=False)


def default_checks() -> EmulatorChecks:
    """:data:`STRICT` (seeded by ``$GRU_ENGINE_CUDA_EMU_SEED``, default 0; block order from
    ``$GRU_ENGINE_CUDA_EMU_BLOCK_ORDER``, default ``random``), or :data:`OFF` when
    ``$GRU_ENGINE_CUDA_EMU_CHECKS`` is ``off``."""
    env = os.environ.get("GRU_ENGINE_CUDA_EMU_CHECKS", "strict").strip().lower()
    if env not in ("strict", "off"):
        raise ValueError(f"GRU_ENGINE_CUDA_EMU_CHECKS must be 'strict' or 'off', got {env!r}")
    if env == "off":
        return OFF
    seed = int(os.environ.get("GRU_ENGINE_CUDA_EMU_SEED", "0"))
    order = os.environ.get("GRU_ENGINE_CUDA_EMU_BLOCK_ORDER", STRICT.block_order)
    return dataclasses.replace(STRICT, seed=seed, block_order=order)


def emulation_cache_dir() -> Path:
    """Where emulator libraries are cached: ``$GRU_ENGINE_CUDA_EMU_CACHE`` or
    ``~/.cache/gru_engine/cuda_emu``."""
    env = os.environ.get("GRU_ENGINE_CUDA_EMU_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gru_engine" / "cuda_emu"


class EmulatedLibrary:
    """One ``.cu`` file compiled with g++ and the emulation header, loaded through ctypes.

    instrumented: build with the race detector's instrumentation (needed for
    ``checks.races``; about 2x slower kernels)."""

    def __init__(self, cu_path, cxx: str | None = None, include_dirs=(), instrumented=True):
        cu_path = Path(cu_path).resolve()
        self.path = cu_path
        self.instrumented = bool(instrumented)
        source = cu_path.read_text()
        self.entry_points = _kernels.parse_entry_points(source)
        self.read_only = _kernels.read_only_params(source)
        header = _kernels.source_path(_kernels.EMULATION_HEADER)
        cxx = cxx or os.environ.get("CXX", "g++")
        # kernels/ first, so that `#include "common.cuh"` resolves for a source copied elsewhere
        # (the stand-in CuPy of the tests compiles the string handed to NVRTC from a temp file).
        includes = [f"-I{d}" for d in (_kernels.kernel_dir(), *include_dirs)]
        flags = [*EMU_CXX_FLAGS, *(RACE_CXX_FLAGS if self.instrumented else ()), *includes]
        key = hashlib.sha256("\0".join([source, header.read_text(), _kernels.headers_digest(),
                                        cxx, *flags]).encode()).hexdigest()[:16]
        cache = emulation_cache_dir()
        lib_path = cache / f"{cu_path.stem}{'-race' if self.instrumented else ''}-{key}.so"
        if not lib_path.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            wrapper = f'#include "{cu_path}"\n' + "".join(
                f"CUDA_EMU_EXPORT({name})\n" for name in self.entry_points)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                src, obj = Path(tmp) / "wrapper.cpp", Path(tmp) / "wrapper.o"
                src.write_text(wrapper)
                tmp_lib = Path(tmp) / lib_path.name
                # Compile and link in two steps: linking with -fsanitize=thread would pull in
                # the sanitizer runtime, whose hooks the header replaces.
                for cmd in ([cxx, *flags, "-c", "-x", "c++", "-include", str(header), str(src),
                             "-o", str(obj)],
                            [cxx, "-shared", "-Wl,-z,defs", str(obj), "-o", str(tmp_lib)]):
                    logger.info("building CUDA emulator library %s", lib_path.name)
                    res = subprocess.run(cmd, capture_output=True, text=True)
                    if res.returncode != 0:
                        raise RuntimeError(f"emulator build of {cu_path.name} failed:\n{res.stderr}")
                os.replace(tmp_lib, lib_path)
        self._lib = ctypes.CDLL(str(lib_path))
        self._lib.cuda_emu_last_error.restype = ctypes.c_char_p
        self._lib.cuda_emu_configure.argtypes = [ctypes.c_uint, ctypes.c_ulonglong]
        self._lib.cuda_emu_configure.restype = None
        self._lib.cuda_emu_set_read_only.restype = None
        self._fns = {}
        for name in self.entry_points:
            fn = getattr(self._lib, f"cuda_emu_launch_{name}")
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                           ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
            self._fns[name] = fn

    _CTYPES = {"int32": ctypes.c_int32, "int64": ctypes.c_int64, "uint32": ctypes.c_uint32,
               "float32": ctypes.c_float}

    def launch(self, kernel, grid, block, values, shared_mem=0, checks=None):
        """Launch with already checked values (NumPy arrays / None / NumPy scalars) under
        ``checks`` (default :func:`default_checks`; races only on an instrumented build)."""
        checks = default_checks() if checks is None else checks
        flags = checks.flags if self.instrumented else checks.flags & ~_CHECK_RACES
        holders = []
        for v in values:
            if v is None:
                holders.append(ctypes.c_void_p(0))
            elif isinstance(v, np.ndarray):
                holders.append(ctypes.c_void_p(v.ctypes.data))
            else:
                holders.append(self._CTYPES[v.dtype.name](v.item()))
        ptrs = (ctypes.c_void_p * max(1, len(holders)))(*[ctypes.addressof(h) for h in holders])
        g, b = _dims(grid), _dims(block)
        if flags & _CHECK_RACES:
            ro = [(v.ctypes.data, v.ctypes.data + v.nbytes, pos)
                  for pos, (v, flag) in enumerate(zip(values, self.read_only[kernel]))
                  if flag and isinstance(v, np.ndarray) and v.nbytes]
            lo, hi, pos = zip(*ro) if ro else ((), (), ())
            self._lib.cuda_emu_set_read_only(len(ro), (ctypes.c_ulonglong * max(1, len(ro)))(*lo),
                                             (ctypes.c_ulonglong * max(1, len(ro)))(*hi),
                                             (ctypes.c_int * max(1, len(ro)))(*pos))
        # The kernel's name joins the seed: each kernel gets its own block permutation.
        seed = (checks.seed * 0x9E3779B1 + zlib.crc32(kernel.encode())) & (2 ** 64 - 1)
        self._lib.cuda_emu_configure(flags, seed)
        rc = self._fns[kernel]((ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b),
                               ctypes.c_size_t(int(shared_mem)), ptrs)
        if rc != 0:
            msg = self._lib.cuda_emu_last_error().decode()
            raise RuntimeError(f"emulated launch of {kernel} failed: {msg}"
                               f"{_describe_addresses(msg, values)}")


def _describe_addresses(msg, values):
    """Name the kernel argument each global address in an emulator message points into."""
    notes = []
    for hexaddr in re.findall(r"global memory at 0x([0-9a-f]+)", msg):
        addr = int(hexaddr, 16)
        for pos, v in enumerate(values):
            if isinstance(v, np.ndarray) and v.ctypes.data <= addr < v.ctypes.data + v.nbytes:
                off = addr - v.ctypes.data
                notes.append(f"; the address is in argument {pos} ({v.dtype} {v.shape}), flat "
                             f"element {off // v.itemsize}")
                break
    return "".join(notes)


@functools.lru_cache(maxsize=None)
def _emulated_library(filename: str, instrumented: bool = True) -> EmulatedLibrary:
    return EmulatedLibrary(_kernels.source_path(filename), instrumented=instrumented)


class EmulatedDevice(Device):
    """CUDA kernels on the CPU: NumPy arrays, g++-compiled ``kernels/*.cu`` via the emulator.

    checks: an :class:`EmulatorChecks` (default :func:`default_checks`, i.e. :data:`STRICT`).
    Buffers from ``empty``/``zeros``/``full``/``to_device`` are views into guarded allocations
    when ``checks.guards``; ``empty`` is poisoned (0xFF bytes) when ``checks.poison``, zero
    filled otherwise (the lucky case of a fresh GPU allocation)."""

    name = "emulated"

    def __init__(self, checks: EmulatorChecks | None = None):
        super().__init__()
        self.checks = default_checks() if checks is None else checks
        self._alloc = GuardedAllocator(np, enabled=self.checks.guards)
        self._recording = None  # list of recorded ops while capturing

    def _is_array(self, obj):
        return isinstance(obj, np.ndarray)

    def _no_capture(self, what):
        if self._recording is not None:
            raise GraphCaptureError(f"{what} inside a graph capture (allocate every buffer and "
                                    f"read results back outside the captured function)")

    def empty(self, shape, dtype=np.float32):
        self._no_capture("allocation")
        out = self._alloc.empty(shape, dtype, poison=self.checks.poison)
        if not self.checks.poison:
            out[...] = 0  # deterministic: the lucky case, not whatever the heap held
        return out

    def zeros(self, shape, dtype=np.float32):
        self._no_capture("allocation")
        out = self._alloc.empty(shape, dtype, poison=False)
        out[...] = 0
        return out

    def full(self, shape, value, dtype=np.float32):
        self._no_capture("allocation")
        out = self._alloc.empty(shape, dtype, poison=False)
        out[...] = value
        return out

    def to_device(self, host_array, dtype=None):
        self._no_capture("host-to-device upload")
        host = np.asarray(host_array, dtype=dtype)
        out = self._alloc.empty(host.shape, host.dtype, poison=False)
        out[...] = host
        return out

    def to_host(self, array):
        self._no_capture("read-back to the host")
        return np.array(array, copy=True)

    def copy(self, dst, src):
        self.stats["copies"] += 1
        if self._recording is not None:
            self._recording.append((np.copyto, (dst, src), {}))
        else:
            np.copyto(dst, src)

    def gemm(self, a, b, out=None, trans_a=False, trans_b=False):
        a2 = a.T if trans_a else a
        b2 = b.T if trans_b else b
        self.stats["gemms"] += 1
        self.stats["gemm_flops"] += 2 * a2.shape[0] * a2.shape[1] * b2.shape[1]
        if self._recording is not None:
            if out is None:
                raise GraphCaptureError("gemm without out= inside a graph capture allocates")
            self._recording.append((np.matmul, (a2, b2), {"out": out}))
            return out
        return np.matmul(a2, b2, out=out)

    def launch(self, kernel, grid, block, args, shared_mem=0):
        index = _kernels.kernel_index()
        values = self._convert_args(kernel, args, index)
        lib = _emulated_library(index[kernel][0], self.checks.races)
        op = (self._run, (lib, kernel, grid, block, values, shared_mem), {})
        if self._recording is not None:
            self._recording.append(op)
        else:
            op[0](*op[1])

    def _run(self, lib, kernel, grid, block, values, shared_mem):
        lib.launch(kernel, grid, block, values, shared_mem, checks=self.checks)
        if self.checks.guards:
            self._alloc.check([v for v in values if isinstance(v, np.ndarray)],
                              f"after a launch of {kernel}")

    def check_guards(self, arrays=None):
        """Check the guard zones of ``arrays`` (default: every live buffer); raises
        :class:`~gru_engine.backends.device.DeviceMemoryError` naming the buffer."""
        self._alloc.check(arrays, "at check_guards()")

    def capture(self, fn):
        if self._recording is not None:
            raise GraphCaptureError("nested graph capture")
        self._recording = []
        try:
            fn()
        finally:
            ops, self._recording = self._recording, None
        return EmulatedGraph(self, ops)


class EmulatedGraph:
    """What :meth:`EmulatedDevice.capture` recorded: every call with the arrays (views of the
    same memory) and the converted scalars it was given; ``launch()`` replays them in order.
    ``n_nodes`` is the number of recorded kernels, GEMMs and copies."""

    def __init__(self, device: EmulatedDevice, ops):
        self._dev, self._ops = device, ops
        self.n_nodes = len(ops)

    def launch(self):
        self._dev.stats["graph_launches"] += 1
        for fn, args, kwargs in self._ops:
            fn(*args, **kwargs)
