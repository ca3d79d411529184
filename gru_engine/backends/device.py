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
* :class:`~gru_engine.backends.emulator.EmulatedDevice` (in ``backends/emulator.py``, names
  re-exported here) -- the CPU stand-in used by the tests: NumPy arrays, the same ``.cu`` files
  compiled by g++ with ``kernels/emulation/cuda_on_cpu.h``, launched through ctypes under checks
  that make GPU bugs fail (race detector, barrier check, shuffled block order, poisoned and
  guarded buffers), GEMMs by NumPy.

Both devices can put every buffer between guard zones (:class:`GuardedAllocator`; always on
the emulator, ``CupyDevice(guards=True)`` on a GPU) so that a kernel writing past a buffer
raises :class:`DeviceMemoryError` naming it.

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

import collections
import functools
import logging
import sys
import weakref
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
    ``graph_launches``; ``kernels`` counts the launches by kernel name (also kept process-wide
    by :func:`kernel_launch_counts`); work recorded by :meth:`capture` counts when it is
    recorded, not when a graph replays it (a replay is one ``graph_launches``).
    """

    name = "abstract"

    def __init__(self):
        self.stats = {}
        self.reset_stats()

    def reset_stats(self):
        self.stats = {"launches": 0, "gemms": 0, "gemm_flops": 0, "copies": 0,
                      "graph_launches": 0, "kernels": collections.Counter()}

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
        self.stats["kernels"][kernel] += 1
        _LAUNCHES[kernel] += 1
        return out

    def _is_array(self, obj) -> bool:
        raise NotImplementedError


_LAUNCHES = collections.Counter()


def kernel_launch_counts() -> collections.Counter:
    """Launches by kernel name through any :class:`Device` of this process since it started
    (a copy; the kernel-coverage test diffs it around each test)."""
    return collections.Counter(_LAUNCHES)


def _dims(value):
    t = (value,) if np.isscalar(value) else tuple(value)
    if not 1 <= len(t) <= 3 or any(int(v) < 1 for v in t):
        raise ValueError(f"grid/block must be 1 to 3 positive ints, got {value!r}")
    return tuple(int(v) for v in t) + (1,) * (3 - len(t))


# ---------------------------------------------------------------------------------------------
# Guard zones and poison (both devices)
# ---------------------------------------------------------------------------------------------
GUARD_BYTES = 256   # each side; a multiple of 64 keeps every buffer 64-byte aligned
GUARD_BYTE = 0xFD   # guard-zone fill
POISON_BYTE = 0xFF  # fresh-buffer fill: float32 NaN, int -1


class DeviceMemoryError(RuntimeError):
    """A kernel wrote outside a device buffer (a guard zone changed)."""


def _allocation_site() -> str:
    """``file:line (function)`` of the first caller outside this package's device modules."""
    f = sys._getframe(2)
    while f is not None and Path(f.f_code.co_filename).name in ("device.py", "emulator.py"):
        f = f.f_back
    if f is None:
        return "?"
    return f"{Path(f.f_code.co_filename).name}:{f.f_lineno} ({f.f_code.co_name})"


class _Strong:
    """A strong reference with the call interface of ``weakref.ref``."""

    def __init__(self, obj):
        self.obj = obj

    def __call__(self):
        return self.obj


class GuardedAllocator:
    """Device buffers as views into allocations with :data:`GUARD_BYTES` of
    :data:`GUARD_BYTE` on both sides (``xp``: numpy or cupy). :meth:`check` compares the
    guards of the given buffers (or of every live one) and raises :class:`DeviceMemoryError`
    naming the buffer's shape, dtype and allocation site. With ``enabled=False`` it is plain
    ``xp.empty`` (and ``poison`` still fills)."""

    def __init__(self, xp, enabled=True):
        self._xp, self.enabled = xp, bool(enabled)
        self._live = {}  # id(base) -> (base, shape, dtype, site)

    def empty(self, shape, dtype, poison):
        xp, dtype = self._xp, np.dtype(dtype)
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(d) for d in shape)
        if not self.enabled:
            out = xp.empty(shape, dtype=dtype)
            if poison:
                out.view(np.uint8)[...] = POISON_BYTE
            return out
        n = int(np.prod(shape)) * dtype.itemsize
        base = xp.empty(n + 2 * GUARD_BYTES, dtype=np.uint8)
        base[:GUARD_BYTES] = GUARD_BYTE
        base[GUARD_BYTES + n:] = GUARD_BYTE
        body = base[GUARD_BYTES:GUARD_BYTES + n]
        if poison:
            body[...] = POISON_BYTE
        key = id(base)
        try:  # NumPy arrays: the entry leaves the table when the buffer is freed
            ref = weakref.ref(base, lambda _, k=key, live=self._live: live.pop(k, None))
        except TypeError:  # no weak references: hold it, prune by reference count
            ref = _Strong(base)
            if len(self._live) > 1024:
                self._prune()
        self._live[key] = (ref, shape, dtype, _allocation_site())
        return body.view(dtype).reshape(shape)

    def _prune(self):
        # A strongly held base that only this table still refers to (refcount: the _Strong
        # holder, the loop's variable, getrefcount's argument) belongs to a freed buffer.
        for key in [k for k, (ref, *_rest) in self._live.items()
                    if isinstance(ref, _Strong) and sys.getrefcount(ref.obj) <= 3]:
            del self._live[key]

    def check(self, arrays=None, context=""):
        if not self.enabled:
            return
        if arrays is None:
            self._prune()
            entries = [(ref(), *rest) for ref, *rest in list(self._live.values())]
        else:
            entries = []
            for a in arrays:
                base = getattr(a, "base", None)
                entry = self._live.get(id(base)) if base is not None else None
                if entry is not None and entry[0]() is base:
                    entries.append((base, *entry[1:]))
        for base, shape, dtype, site in entries:
            if base is None:
                continue
            head, tail = base[:GUARD_BYTES], base[base.size - GUARD_BYTES:]
            bad_head = int((head != GUARD_BYTE).sum())
            bad_tail = int((tail != GUARD_BYTE).sum())
            if bad_head or bad_tail:
                where = " and ".join(w for w, n in (("before", bad_head), ("after", bad_tail)) if n)
                raise DeviceMemoryError(
                    f"out-of-bounds write {context}: {bad_head + bad_tail} guard bytes changed "
                    f"{where} the device buffer {dtype} {shape} allocated at {site}")


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
    """A CUDA GPU through CuPy (arrays, NVRTC-compiled kernels, cuBLAS GEMMs).

    guards / poison (both off by default: the behaviour is then exactly CuPy's): every buffer
    from ``empty``/``zeros``/``full``/``to_device`` is a view into an allocation with guard
    zones, checked at :meth:`synchronize`, :meth:`to_host` and :meth:`check_guards` (one small
    device-to-host read per live buffer: a checking mode, not for speed); ``poison`` fills fresh
    ``empty`` buffers with 0xFF bytes (NaN)."""

    name = "cuda"

    def __init__(self, device_id: int = 0, guards: bool = False, poison: bool = False):
        if not cuda_available():
            raise ValueError("device='cuda' needs CuPy and an NVIDIA GPU; CuPy is not installed "
                             "or sees no CUDA device (pip install cupy-cuda12x, or use "
                             "device='cpu')")
        import cupy
        super().__init__()
        self._cp = cupy
        self.device_id = int(device_id)
        self._cp.cuda.Device(self.device_id).use()
        self.guards, self.poison = bool(guards), bool(poison)
        self._alloc = GuardedAllocator(cupy, enabled=True) if self.guards else None

    def _is_array(self, obj):
        return isinstance(obj, self._cp.ndarray)

    def _checked_empty(self, shape, dtype, poison):
        if self._alloc is not None:
            return self._alloc.empty(shape, dtype, poison)
        out = self._cp.empty(shape, dtype=dtype)
        if poison:
            out.view(np.uint8)[...] = POISON_BYTE
        return out

    def empty(self, shape, dtype=np.float32):
        if self._alloc is None and not self.poison:
            return self._cp.empty(shape, dtype=dtype)
        return self._checked_empty(shape, dtype, self.poison)

    def zeros(self, shape, dtype=np.float32):
        if self._alloc is None:
            return self._cp.zeros(shape, dtype=dtype)
        out = self._alloc.empty(shape, dtype, False)
        out[...] = 0
        return out

    def full(self, shape, value, dtype=np.float32):
        if self._alloc is None:
            return self._cp.full(shape, value, dtype=dtype)
        out = self._alloc.empty(shape, dtype, False)
        out[...] = value
        return out

    def to_device(self, host_array, dtype=None):
        if self._alloc is None:
            return self._cp.ascontiguousarray(self._cp.asarray(host_array, dtype=dtype))
        host = np.asarray(host_array, dtype=dtype)
        out = self._alloc.empty(host.shape, host.dtype, False)
        out[...] = self._cp.asarray(host)
        return out

    def to_host(self, array):
        self.check_guards()
        return self._cp.asnumpy(array)

    def check_guards(self):
        """Guard zones of every live buffer intact? (no-op without ``guards``)"""
        if self._alloc is not None:
            self._alloc.check(None, "seen at a synchronisation")

    def copy(self, dst, src):
        self.stats["copies"] += 1
        self._cp.copyto(dst, src)

    def synchronize(self):
        self._cp.cuda.get_current_stream().synchronize()
        self.check_guards()

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
    :class:`~gru_engine.backends.emulator.EmulatedDevice`."""
    if kind == "cuda":
        return CupyDevice()
    if kind == "emulated":
        from .emulator import EmulatedDevice
        return EmulatedDevice()
    raise ValueError(f"unknown device kind {kind!r}; expected 'cuda' or 'emulated'")


_EMULATOR_NAMES = ("EmulatedDevice", "EmulatedGraph", "EmulatedLibrary", "EmulatorChecks",
                   "STRICT", "OFF", "EMU_CXX_FLAGS", "emulation_cache_dir", "_emulated_library")


def __getattr__(name):
    # The emulator lives in backends/emulator.py (which imports this module); its names stay
    # importable from here as before.
    if name in _EMULATOR_NAMES:
        from . import emulator
        return getattr(emulator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
