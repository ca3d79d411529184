"""The device interface under the CUDA backend, and its two implementations.

:class:`Device` is the whole surface the training step and the scorer of
:mod:`gru_engine.backends.cuda` use: allocate (``empty``/``zeros``/``full``), move
(``to_device``/``to_host``/``copy``), multiply (``gemm``) and launch a kernel of ``kernels/*.cu``
by name (``launch``).

* :class:`CupyDevice` -- a real NVIDIA GPU: CuPy arrays, kernels compiled by NVRTC through
  ``cupy.RawModule`` (each source read once per process with ``#line 1 "<file>"`` prepended so
  compiler messages name the real file and line; CuPy caches the binary per device on disk),
  GEMMs by cuBLAS through ``cupy.matmul``.
* :class:`EmulatedDevice` -- the CPU stand-in used by the tests: NumPy arrays, the same ``.cu``
  files compiled by g++ with ``kernels/emulation/cuda_on_cpu.h`` into one shared library per
  file (built once into a cache folder, keyed by a hash of sources, header and flags) and
  launched through ctypes, GEMMs by NumPy.

Launch arguments are checked against the kernel's declared parameters on both devices (pointer
dtype, scalar width); Python ints and floats are converted to the declared scalar type and
``None`` passes a null pointer. GPU detection (:func:`cuda_available`) happens once, lazily;
nothing here imports CuPy unless a :class:`CupyDevice` is asked for.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import kernels as _kernels

logger = logging.getLogger("gru_engine")


class Device:
    """Minimal device API; arrays are the device's own type (NumPy or CuPy), float32 mostly.

    ``stats`` counts ``launches``, ``gemms`` and ``gemm_flops`` (2*m*n*k per GEMM) since the
    last :meth:`reset_stats`, for launch/byte accounting of a training step.
    """

    name = "abstract"

    def __init__(self):
        self.stats = {}
        self.reset_stats()

    def reset_stats(self):
        self.stats = {"launches": 0, "gemms": 0, "gemm_flops": 0}

    # -- memory ---------------------------------------------------------------------------
    def empty(self, shape, dtype=np.float32):
        raise NotImplementedError

    def zeros(self, shape, dtype=np.float32):
        raise NotImplementedError

    def full(self, shape, value, dtype=np.float32):
        raise NotImplementedError

    def to_device(self, host_array, dtype=None):
        """A C-contiguous device copy of a host array (optionally cast to ``dtype``)."""
        raise NotImplementedError

    def to_host(self, array) -> np.ndarray:
        """A NumPy copy of a device array (synchronises)."""
        raise NotImplementedError

    def copy(self, dst, src):
        """Device-to-device copy into ``dst`` (same shape)."""
        raise NotImplementedError

    def synchronize(self):
        """Wait for queued work (no-op on the emulator)."""

    # -- compute --------------------------------------------------------------------------
    def gemm(self, a, b, out=None, trans_a=False, trans_b=False):
        """``out = op(a) @ op(b)``, op = transpose when the flag is set; returns ``out``."""
        raise NotImplementedError

    def launch(self, kernel, grid, block, args, shared_mem=0):
        """Run ``kernel`` (an entry point of ``kernels/*.cu``) on a grid of blocks.

        grid, block: int or up to 3 ints; args: device arrays, ``None`` (null pointer) or
        scalars, in the kernel's parameter order; shared_mem: dynamic shared memory bytes.
        """
        raise NotImplementedError

    # -- shared helpers -------------------------------------------------------------------
    def _convert_args(self, kernel, args, index):
        """Check args against the declared parameter kinds; returns converted values where
        pointers are replaced by ``(array_or_None)`` and scalars by NumPy scalars."""
        if kernel not in index:
            raise ValueError(f"unknown CUDA kernel {kernel!r}; known: {sorted(index)}")
        _, kinds = index[kernel]
        if len(args) != len(kinds):
            raise ValueError(f"kernel {kernel} takes {len(kinds)} arguments, got {len(args)}")
        out = []
        for pos, (arg, kind) in enumerate(zip(args, kinds)):
            if kind[0] == "ptr":
                if arg is None:
                    out.append(None)
                    continue
                if not self._is_array(arg):
                    raise ValueError(f"kernel {kernel} argument {pos}: expected a device array "
                                     f"of {kind[1]}, got {type(arg).__name__}")
                if arg.dtype != np.dtype(kind[1]):
                    raise ValueError(f"kernel {kernel} argument {pos}: dtype {arg.dtype}, "
                                     f"kernel expects {kind[1]}")
                if not arg.flags.c_contiguous:
                    raise ValueError(f"kernel {kernel} argument {pos}: array must be C-contiguous")
                out.append(arg)
            else:
                if self._is_array(arg) or arg is None:
                    raise ValueError(f"kernel {kernel} argument {pos}: expected a {kind[0]} "
                                     f"scalar, got {type(arg).__name__}")
                dtype = np.dtype(kind[0])
                if dtype.kind in "iu":
                    info = np.iinfo(dtype)
                    if not (isinstance(arg, (int, np.integer)) and info.min <= int(arg) <= info.max):
                        raise ValueError(f"kernel {kernel} argument {pos}: {arg!r} is not an "
                                         f"integer or overflows {kind[0]}")
                value = dtype.type(arg)
                out.append(value)
        self.stats["launches"] += 1
        return out

    def _is_array(self, obj) -> bool:
        raise NotImplementedError


def _dims(value):
    t = (value,) if np.isscalar(value) else tuple(value)
    if not 1 <= len(t) <= 3 or any(int(v) < 1 for v in t):
        raise ValueError(f"grid/block must be 1 to 3 positive ints, got {value!r}")
    return tuple(int(v) for v in t) + (1,) * (3 - len(t))


# ---------------------------------------------------------------------------------------------
# Emulated device (CPU)
# ---------------------------------------------------------------------------------------------
EMU_CXX_FLAGS = ("-O1", "-std=c++17", "-fvisibility=hidden", "-shared", "-fPIC", "-w")


def emulation_cache_dir() -> Path:
    """Where emulator libraries are cached: ``$GRU_ENGINE_CUDA_EMU_CACHE`` or
    ``~/.cache/gru_engine/cuda_emu``."""
    env = os.environ.get("GRU_ENGINE_CUDA_EMU_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gru_engine" / "cuda_emu"


class EmulatedLibrary:
    """One ``.cu`` file compiled with g++ and the emulation header, loaded through ctypes."""

    def __init__(self, cu_path, cxx: str | None = None):
        cu_path = Path(cu_path).resolve()
        self.path = cu_path
        source = cu_path.read_text()
        self.entry_points = _kernels.parse_entry_points(source)
        header = _kernels.source_path(_kernels.EMULATION_HEADER)
        cxx = cxx or os.environ.get("CXX", "g++")
        key = hashlib.sha256("\0".join([source, header.read_text(), cxx, *EMU_CXX_FLAGS])
                             .encode()).hexdigest()[:16]
        cache = emulation_cache_dir()
        lib_path = cache / f"{cu_path.stem}-{key}.so"
        if not lib_path.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            wrapper = f'#include "{cu_path}"\n' + "".join(
                f"CUDA_EMU_EXPORT({name})\n" for name in self.entry_points)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                src = Path(tmp) / "wrapper.cpp"
                src.write_text(wrapper)
                tmp_lib = Path(tmp) / lib_path.name
                cmd = [cxx, *EMU_CXX_FLAGS, "-x", "c++", "-include", str(header), str(src),
                       "-o", str(tmp_lib)]
                logger.info("building CUDA emulator library %s", lib_path.name)
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    raise RuntimeError(f"emulator build of {cu_path.name} failed:\n{res.stderr}")
                os.replace(tmp_lib, lib_path)
        self._lib = ctypes.CDLL(str(lib_path))
        self._lib.cuda_emu_last_error.restype = ctypes.c_char_p
        self._fns = {}
        for name in self.entry_points:
            fn = getattr(self._lib, f"cuda_emu_launch_{name}")
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                           ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
            self._fns[name] = fn

    _CTYPES = {"int32": ctypes.c_int32, "int64": ctypes.c_int64, "uint32": ctypes.c_uint32,
               "float32": ctypes.c_float}

    def launch(self, kernel, grid, block, values, shared_mem=0):
        """Launch with already checked values (NumPy arrays / None / NumPy scalars)."""
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
        rc = self._fns[kernel]((ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b),
                               ctypes.c_size_t(int(shared_mem)), ptrs)
        if rc != 0:
            raise RuntimeError(f"emulated launch of {kernel} failed: "
                               f"{self._lib.cuda_emu_last_error().decode()}")


@functools.lru_cache(maxsize=None)
def _emulated_library(filename: str) -> EmulatedLibrary:
    return EmulatedLibrary(_kernels.source_path(filename))


class EmulatedDevice(Device):
    """CUDA kernels on the CPU: NumPy arrays, g++-compiled ``kernels/*.cu`` via the emulator."""

    name = "emulated"

    def _is_array(self, obj):
        return isinstance(obj, np.ndarray)

    def empty(self, shape, dtype=np.float32):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype=np.float32):
        return np.zeros(shape, dtype=dtype)

    def full(self, shape, value, dtype=np.float32):
        return np.full(shape, value, dtype=dtype)

    def to_device(self, host_array, dtype=None):
        return np.array(host_array, dtype=dtype, order="C", copy=True)

    def to_host(self, array):
        return np.array(array, copy=True)

    def copy(self, dst, src):
        np.copyto(dst, src)

    def gemm(self, a, b, out=None, trans_a=False, trans_b=False):
        a2 = a.T if trans_a else a
        b2 = b.T if trans_b else b
        self.stats["gemms"] += 1
        self.stats["gemm_flops"] += 2 * a2.shape[0] * a2.shape[1] * b2.shape[1]
        return np.matmul(a2, b2, out=out)

    def launch(self, kernel, grid, block, args, shared_mem=0):
        index = _kernels.kernel_index()
        values = self._convert_args(kernel, args, index)
        _emulated_library(index[kernel][0]).launch(kernel, grid, block, values, shared_mem)


# ---------------------------------------------------------------------------------------------
# CuPy device (real GPU)
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device (checked once per process)."""
    try:
        import cupy  # noqa: F401  (optional dependency, GPU only)
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError (no driver), ...
        return False


@functools.lru_cache(maxsize=None)
def _cupy_module(filename: str):
    import cupy
    path = _kernels.source_path(filename)
    code = f'#line 1 "{path}"\n' + path.read_text()
    return cupy.RawModule(code=code, options=("-std=c++17",))


class CupyDevice(Device):
    """A CUDA GPU through CuPy (arrays, NVRTC-compiled kernels, cuBLAS GEMMs)."""

    name = "cuda"

    def __init__(self, device_id: int = 0):
        if not cuda_available():
            raise ValueError("device='cuda' needs CuPy and an NVIDIA GPU; CuPy is not installed "
                             "or sees no CUDA device (pip install cupy-cuda12x, or use "
                             "device='cpu')")
        import cupy
        super().__init__()
        self._cp = cupy
        self.device_id = int(device_id)
        self._cp.cuda.Device(self.device_id).use()

    def _is_array(self, obj):
        return isinstance(obj, self._cp.ndarray)

    def empty(self, shape, dtype=np.float32):
        return self._cp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype=np.float32):
        return self._cp.zeros(shape, dtype=dtype)

    def full(self, shape, value, dtype=np.float32):
        return self._cp.full(shape, value, dtype=dtype)

    def to_device(self, host_array, dtype=None):
        return self._cp.ascontiguousarray(self._cp.asarray(host_array, dtype=dtype))

    def to_host(self, array):
        return self._cp.asnumpy(array)

    def copy(self, dst, src):
        self._cp.copyto(dst, src)

    def synchronize(self):
        self._cp.cuda.get_current_stream().synchronize()

    def gemm(self, a, b, out=None, trans_a=False, trans_b=False):
        a2 = a.T if trans_a else a
        b2 = b.T if trans_b else b
        self.stats["gemms"] += 1
        self.stats["gemm_flops"] += 2 * a2.shape[0] * a2.shape[1] * b2.shape[1]
        return self._cp.matmul(a2, b2, out=out)

    def launch(self, kernel, grid, block, args, shared_mem=0):
        index = _kernels.kernel_index()
        values = self._convert_args(kernel, args, index)
        values = [np.uint64(0) if v is None else v for v in values]  # null pointer
        fn = _cupy_module(index[kernel][0]).get_function(kernel)
        fn(_dims(grid), _dims(block), tuple(values), shared_mem=int(shared_mem))


def get_device(kind: str = "cuda") -> Device:
    """``'cuda'`` -> :class:`CupyDevice` (``ValueError`` without CuPy/GPU); ``'emulated'`` ->
    :class:`EmulatedDevice`."""
    if kind == "cuda":
        return CupyDevice()
    if kind == "emulated":
        return EmulatedDevice()
    raise ValueError(f"unknown device kind {kind!r}; expected 'cuda' or 'emulated'")
