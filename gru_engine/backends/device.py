"""The device interface under the CUDA backend, and its two implementations.

:class:`Device` is the whole surface the training step and the scorer of
:mod:`gru_engine.backends.cuda` use: allocate (``empty``/``zeros``/``full``), move
(``to_device``/``to_host``/``copy``), multiply (``gemm``), launch a kernel of ``kernels/*.cu``
by name (``launch``) and record a fixed sequence of those into a graph replayed with one call
(``capture``; a CUDA graph on the GPU).

* :class:`CupyDevice` -- a real NVIDIA GPU: CuPy arrays, kernels compiled by NVRTC through
  ``cupy.RawModule`` (each source read once per process with ``#line 1 "<file>"`` prepended so
  compiler messages name the real file and line, ``-I <kernels dir>`` so that
  ``#include "common.cuh"`` resolves; CuPy caches the binary per device on disk),
  GEMMs by cuBLAS through ``cupy.matmul``.
* :class:`EmulatedDevice` -- the CPU stand-in used by the tests: NumPy arrays, the same ``.cu``
  files compiled by g++ with ``kernels/emulation/cuda_on_cpu.h`` into one shared library per
  file (built once into a cache folder, keyed by a hash of sources, header and flags) and
  launched through ctypes, GEMMs by NumPy.

Launch arguments are checked against the kernel's declared parameters on both devices (pointer
dtype, scalar width); Python ints and floats are converted to the declared scalar type and
``None`` passes a null pointer. Capture follows CUDA stream-capture semantics on both devices: inside ``capture(fn)`` the work
``fn`` issues is recorded, not run; every array and scalar argument is baked into the graph, so
a replay reads the CURRENT contents of the same buffers with the SAME scalars (a per-step value
passed as a scalar is frozen); allocating or reading back to the host inside a capture is an
error (:class:`GraphCaptureError`). GPU detection (:func:`cuda_available`) happens once, lazily;
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


class GraphCaptureError(RuntimeError):
    """A capture failed: the captured function allocated, synchronised with the host, or (on
    CuPy) called something that cannot be captured. Nothing of the captured work has run."""


class Device:
    """Minimal device API; arrays are the device's own type (NumPy or CuPy), float32 mostly.

    ``stats`` counts the host-side calls since the last :meth:`reset_stats`: ``launches``
    (kernels), ``gemms`` (and ``gemm_flops``, 2*m*n*k each), ``copies`` (device-to-device) and
    ``graph_launches``; work recorded by :meth:`capture` counts when it is recorded, not when a
    graph replays it (a replay is one ``graph_launches``).
    """

    name = "abstract"

    def __init__(self):
        self.stats = {}
        self.reset_stats()

    def reset_stats(self):
        self.stats = {"launches": 0, "gemms": 0, "gemm_flops": 0, "copies": 0,
                      "graph_launches": 0}

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

    def capture(self, fn):
        """Record the ``launch``/``gemm``/``copy`` calls of ``fn()`` (which must not allocate
        or read back) into a graph without running them; returns an object whose ``launch()``
        runs the recorded work once, in order, on the current stream. Raises
        :class:`GraphCaptureError` when ``fn`` does something a capture cannot hold."""
        raise NotImplementedError

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

    def __init__(self, cu_path, cxx: str | None = None, include_dirs=()):
        cu_path = Path(cu_path).resolve()
        self.path = cu_path
        source = cu_path.read_text()
        self.entry_points = _kernels.parse_entry_points(source)
        header = _kernels.source_path(_kernels.EMULATION_HEADER)
        cxx = cxx or os.environ.get("CXX", "g++")
        # kernels/ first, so that `#include "common.cuh"` resolves for a source copied elsewhere
        # (the stand-in CuPy of the tests compiles the string handed to NVRTC from a temp file).
        includes = [f"-I{d}" for d in (_kernels.kernel_dir(), *include_dirs)]
        key = hashlib.sha256("\0".join([source, header.read_text(), _kernels.headers_digest(),
                                        cxx, *EMU_CXX_FLAGS, *includes])
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
                cmd = [cxx, *EMU_CXX_FLAGS, *includes, "-x", "c++", "-include", str(header),
                       str(src), "-o", str(tmp_lib)]
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

    def __init__(self):
        super().__init__()
        self._recording = None  # list of recorded ops while capturing

    def _is_array(self, obj):
        return isinstance(obj, np.ndarray)

    def _no_capture(self, what):
        if self._recording is not None:
            raise GraphCaptureError(f"{what} inside a graph capture (allocate every buffer and "
                                    f"read results back outside the captured function)")

    def empty(self, shape, dtype=np.float32):
        self._no_capture("allocation")
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype=np.float32):
        self._no_capture("allocation")
        return np.zeros(shape, dtype=dtype)

    def full(self, shape, value, dtype=np.float32):
        self._no_capture("allocation")
        return np.full(shape, value, dtype=dtype)

    def to_device(self, host_array, dtype=None):
        self._no_capture("host-to-device upload")
        return np.array(host_array, dtype=dtype, order="C", copy=True)

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
        lib = _emulated_library(index[kernel][0])
        if self._recording is not None:
            self._recording.append((lib.launch, (kernel, grid, block, values, shared_mem), {}))
        else:
            lib.launch(kernel, grid, block, values, shared_mem)

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
    # The header digest rides on the #line directive (a comment: line numbers stay right) so
    # that CuPy's disk cache, keyed by the source string, recompiles when common.cuh changes.
    code = f'#line 1 "{path}"  // headers {_kernels.headers_digest()}\n' + path.read_text()
    return cupy.RawModule(code=code, options=("-std=c++17", f"-I{_kernels.kernel_dir()}"))


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
        self.stats["copies"] += 1
        self._cp.copyto(dst, src)

    def synchronize(self):
        self._cp.cuda.get_current_stream().synchronize()

    def capture(self, fn):
        """CuPy stream capture of ``fn()`` on a private non-blocking stream (the legacy default
        stream cannot capture), under an allocator that refuses every allocation so that a
        memory-pool block can never be baked into the graph; the graph is launched on the
        current stream, ordered after the copies that fill its inputs. Everything ``fn`` calls
        must already be compiled/loaded (run it once uncaptured first). Any failure (an
        allocation, a library call CuPy does not allow during capture) ends the capture and
        raises :class:`GraphCaptureError`."""
        cp = self._cp

        def refuse(size):
            raise GraphCaptureError(f"allocation of {size} bytes inside a graph capture")

        stream = cp.cuda.Stream(non_blocking=True)
        try:
            with stream, cp.cuda.using_allocator(refuse):
                stream.begin_capture()
                try:
                    fn()
                finally:
                    graph = stream.end_capture()
        except GraphCaptureError:
            raise
        except Exception as exc:  # CUDA/cuBLAS/CuPy refusals during capture
            raise GraphCaptureError(f"CUDA graph capture failed: {exc}") from exc
        return _CupyGraph(self, graph, stream)

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


class _CupyGraph:
    """A captured ``cupy.cuda.Graph``; ``launch()`` runs it on the current stream."""

    def __init__(self, device: CupyDevice, graph, capture_stream):
        self._dev, self._graph, self._stream = device, graph, capture_stream

    def launch(self):
        self._dev.stats["graph_launches"] += 1
        self._graph.launch(stream=self._dev._cp.cuda.get_current_stream())


def get_device(kind: str = "cuda") -> Device:
    """``'cuda'`` -> :class:`CupyDevice` (``ValueError`` without CuPy/GPU); ``'emulated'`` ->
    :class:`EmulatedDevice`."""
    if kind == "cuda":
        return CupyDevice()
    if kind == "emulated":
        return EmulatedDevice()
    raise ValueError(f"unknown device kind {kind!r}; expected 'cuda' or 'emulated'")
